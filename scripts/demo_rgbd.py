"""RGB-D relocalization demo: a room mapped in one session, relocalized in a second, metric poses.

On the real TUM RGB-D fr1/rpy recording shipped in ``data/tum_fr1_rpy_mini`` (a handheld Kinect
turning about all axes within ~0.2 m; motion-capture ground truth; see its README):

1. records the first :data:`MAP_FRAMES` frames as a rosbag2 (colour, registered depth, camera_info,
   ground truth on ``/odom`` in frame ``map``) and builds a map from it with ``build_map`` at its
   defaults (keyframes by distance, rotation and view change; SIFT features with depth);
2. records the other frames as a second session whose odometry is the ground truth in another
   frame (``odom``, turned 90 deg and moved), and plays that bag through the node's own pipeline
   (:class:`qaa_vpr_ros.pipeline.FramePipeline`, the node's default parameters plus the topics;
   in-process, no DDS), message by message in recorded order as the node receives them;
3. scores each accepted ``~/place_match`` (the query's own pose in the map frame when geometry
   gave a metric transform) against the ground truth, and the session's online loop closures.

Nothing outside the repository is read unless ``--data`` says so.

    python -m scripts.demo_rgbd --out demo_out/rgbd [--data DIR] [--model DIR]
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qaa_vpr_ros.paths import path_argument
from qaa_vpr_ros.poses import matrix_quaternion, pose_matrix
from scripts.tum_rgbd import (
    DEPTH_TOPIC,
    INFO_TOPIC,
    ODOM_TOPIC,
    REPO,
    RGB_TOPIC,
    TumSequence,
    load_tum,
    relative_error,
    write_tum_bag,
)

DEFAULT_DATA = REPO / "data" / "tum_fr1_rpy_mini"
BUNDLED_MODEL = REPO / "models" / "nordland_tiny"
MAP_FRAMES = 25  # the first 25 of the 70 shipped frames (source frames 0-48, ~8 s): the map session
# The second session's odometry frame: the ground truth turned 90 deg about z and moved.
WORLD_IN_ODOM = pose_matrix((3.0, -2.0, 0.5), matrix_quaternion(
    np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])))
# The node's parameters in the demo: its defaults plus the topics (and the CPU: figures that do not
# depend on which device a machine happens to have).
NODE_PARAMETERS = {"image_topics": [RGB_TOPIC], "depth_topics": [DEPTH_TOPIC], "odom_topic": ODOM_TOPIC,
                   "device": "cpu"}
DELIVERY_S = 0.05  # sensor messages reach the node within 50 ms of their stamp (then an image is processed)
RIGHT_M, RIGHT_DEG = 0.10, 10.0  # a right relocalization (the held-out check)
OFF_M, OFF_DEG = 0.10, 5.0  # an estimate off (the TUM acceptance: none may be)
SEEN_DEG = 15.0  # a query frame "sees a mapped view": its viewing direction within 15 deg of a map frame's


def build_rgbd_map(sequence: TumSequence, out: Path, model: Path, map_frames: int) -> Path:
    """The map session's bag and ``build_map`` on it at its defaults; the map folder."""
    from qaa_vpr_ros.map_tools.build import main as build_map_main

    bag = write_tum_bag(out / "rgbd_mapping", sequence, range(map_frames), odom_frame="map", overwrite=True)
    map_dir = out / "rgbd_map"
    code = build_map_main([str(bag.path), "--model", str(model), "--image-topics", RGB_TOPIC,
                           "--depth-topics", DEPTH_TOPIC, "--pose-topic", ODOM_TOPIC, "-o", str(map_dir),
                           "--overwrite", "--no-progress"])
    if code:
        raise SystemExit(f"demo_rgbd: build_map failed with exit code {code}")
    return map_dir


def replay_session(bag: Path, map_dir: Path, model: Path):
    """Play a recorded session through the node's pipeline as the node would receive it: odometry,
    camera_info and depth to their inputs; each image processed once everything stamped up to
    :data:`DELIVERY_S` after it has arrived. Returns (the pipeline's answers, keyframes in the map)."""
    from qaa_vpr_ros.bags import open_bag
    from qaa_vpr_ros.decision import LocalizeConfig, Localizer
    from qaa_vpr_ros.decision.parameters import parse_extrinsics
    from qaa_vpr_ros.decision.verifier import CandidateVerifier
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.extrinsics import ExtrinsicsSource
    from qaa_vpr_ros.local_features import Intrinsics
    from qaa_vpr_ros.maps import PlaceMap, map_session
    from qaa_vpr_ros.model import load_model
    from qaa_vpr_ros.pipeline import Frame, FramePipeline

    # What the node's start-up does (qaa_vpr_ros/ros/startup.py: build_pipeline, load), without rclpy.
    cfg = LocalizeConfig.from_dict({"model": str(model), "map": str(map_dir), **NODE_PARAMETERS}).validate()
    verifier = CandidateVerifier(cfg) if cfg.verify_geometry else None
    pipeline = FramePipeline(cfg, ExtrinsicsSource(cfg.base_frame, parse_extrinsics(cfg.camera_extrinsics)),
                             verifier)
    extractor = DescriptorExtractor(load_model(cfg.model, device="cpu"), device=cfg.device, batch_size=16)
    prior = PlaceMap.load(cfg.map, expected_fingerprint=extractor.fingerprint)
    pipeline.attach(extractor, Localizer(cfg, extractor.dim, extractor.fingerprint, prior,
                                         online_frame=cfg.odom_frame), map_session(prior.map_id, cfg.map))
    answers, pending = [], []

    def process_due(now_ns: int | None) -> None:
        while pending and (now_ns is None or now_ns > pending[0][0] + DELIVERY_S * 1e9):
            _, msg = pending.pop(0)
            out = pipeline.process([Frame(RGB_TOPIC, msg.header.stamp.sec, msg.header.stamp.nanosec,
                                          msg.header.frame_id, msg)])
            answers.extend(out.answers)

    with open_bag(bag) as recording:
        for topic, msgtype, stamp_ns, raw in recording.messages([RGB_TOPIC, DEPTH_TOPIC, INFO_TOPIC, ODOM_TOPIC]):
            process_due(stamp_ns)
            msg = recording.deserialize(raw, msgtype)
            stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            if topic == ODOM_TOPIC:
                p, q = msg.pose.pose.position, msg.pose.pose.orientation
                pipeline.add_odometry(stamp, ((p.x, p.y, p.z), (q.x, q.y, q.z, q.w)), msg.header.frame_id)
            elif topic == INFO_TOPIC:
                if verifier is not None and verifier.intrinsics(RGB_TOPIC) is None:
                    verifier.set_intrinsics(RGB_TOPIC, Intrinsics.from_camera_info(msg.k, msg.d))
            elif topic == DEPTH_TOPIC:
                pipeline.depth.add(RGB_TOPIC, stamp, msg)
            else:
                pipeline.stamps.note(RGB_TOPIC, stamp)
                pending.append((stamp_ns, msg))
        process_due(None)
    return answers, len(prior)


def seen_frames(sequence: TumSequence, map_frames: int, queries: list[int]) -> list[int]:
    """The query frames whose viewing direction is within SEEN_DEG of a map frame's (ground truth)."""
    map_z = sequence.camera_pose([sequence.frames[j].rgb_stamp_ns for j in range(map_frames)])[:, :3, 2]
    query_z = sequence.camera_pose([sequence.frames[i].rgb_stamp_ns for i in queries])[:, :3, 2]
    angles = np.degrees(np.arccos(np.clip(query_z @ map_z.T, -1.0, 1.0))).min(axis=1)
    return [i for i, angle in zip(queries, angles, strict=True) if angle < SEEN_DEG]


@dataclass
class RgbdResult:
    """What the demo measured: per relocalized query frame (index into the sequence) its
    ``~/place_match`` error against the ground truth (metres, degrees, the match's ``source``),
    the (metres, degrees) errors of the session's accepted geometry-verified online loop closures,
    and the query frames that see a mapped view (:data:`SEEN_DEG`)."""

    map_frames: int
    queries: list[int]
    keyframes: int
    errors: dict[int, tuple[float, float, str]]
    online: list[tuple[float, float]]
    seen: list[int]

    @property
    def right(self) -> list[int]:
        """Query frames relocalized within RIGHT_M and RIGHT_DEG, in order."""
        return [q for q, (e_t, e_r, _) in sorted(self.errors.items()) if e_t <= RIGHT_M and e_r <= RIGHT_DEG]

    @property
    def first_right_after_seen(self) -> int | None:
        """Frames from the first that sees a mapped view to the first right relocalization (None: none)."""
        return self.right[0] - self.seen[0] if self.right and self.seen else None

    def summary(self) -> list[str]:
        """The lines the demo prints (the README quotes them)."""
        geometry = sum(source == "geometry" for *_, source in self.errors.values())
        lines = [f"map: {self.keyframes} keyframes; relocalized {len(self.errors)}/{len(self.queries)} frames "
                 f"({geometry} with the query's own pose from geometry; {len(self.seen)} frames see a mapped view "
                 f"within {SEEN_DEG:.0f} deg)"]
        if self.errors:
            pos = np.array([e[0] for e in self.errors.values()]) * 100.0
            rot = np.array([e[1] for e in self.errors.values()])
            off = int(np.sum((pos > 100.0 * OFF_M) | (rot > OFF_DEG)))
            lines.append(f"place_match error: position median {np.median(pos):.1f} cm, max {pos.max():.1f} cm; "
                         f"rotation median {np.median(rot):.1f} deg, max {rot.max():.1f} deg "
                         f"({off} off by more than {100 * OFF_M:.0f} cm or {OFF_DEG:.0f} deg)")
        after = self.first_right_after_seen
        right = f"first right relocalization (within {100 * RIGHT_M:.0f} cm and {RIGHT_DEG:.0f} deg)"
        if after is None:
            lines.append(f"{right}: none")
        else:
            when = "at" if after == 0 else "before" if after < 0 else f"{after} frame{'s' if after > 1 else ''} after"
            lines.append(f"{right}: {when} the first frame that sees a mapped view "
                         f"(session frame {self.seen[0] - self.map_frames + 1})")
        wrong = sum(e_t > OFF_M or e_r > OFF_DEG for e_t, e_r in self.online)
        lines.append(f"online loop closures in the session (geometry-verified): {len(self.online)}, {wrong} wrong "
                     f"(off by more than {100 * OFF_M:.0f} cm or {OFF_DEG:.0f} deg)")
        return lines


def relocalize(sequence: TumSequence, out: Path, model: Path, map_frames: int = MAP_FRAMES,
               log: Callable[[str], None] = print) -> RgbdResult:
    """The demo (module docstring) on ``sequence``, its bags and map written under ``out``."""
    if not 0 < map_frames < len(sequence):
        raise ValueError(f"{sequence.folder} has {len(sequence)} frames; the demo maps the first "
                         f"{map_frames} and relocalizes the rest")
    out.mkdir(parents=True, exist_ok=True)
    height, width = sequence.rgb(0).shape[:2]
    folder = sequence.folder.absolute()
    shown = folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder
    log(f"[RGB-D 1/2] {shown}: {len(sequence)} frames {width}x{height}; mapping the first {map_frames} "
        "with build_map at its defaults")
    map_dir = build_rgbd_map(sequence, out, model, map_frames)
    queries = list(range(map_frames, len(sequence)))
    session = write_tum_bag(out / "rgbd_session2", sequence, queries, world_in_odom=WORLD_IN_ODOM, overwrite=True)
    log(f"[RGB-D 2/2] relocalizing the other {len(queries)} frames, a second session (odometry in another "
        "frame), through the node's pipeline at its defaults ...")
    answers, keyframes = replay_session(session.path, map_dir, model)
    index = {sequence.frames[i].rgb_stamp_ns: i for i in queries}
    errors = {}
    online = []
    for answer in answers:
        q = index[answer.query.stamp_sec * 10**9 + answer.query.stamp_nanosec]
        match = answer.place_match
        if match is not None and match.accepted:
            truth = sequence.base_pose([sequence.frames[q].rgb_stamp_ns])[0]
            errors[q] = (*relative_error(pose_matrix(match.position, match.orientation), truth), match.source)
        for channel in answer.channels:
            for r in channel.records:
                if r.is_online and r.accepted and r.transform_source == "geometry":
                    a, b = sequence.base_pose([r.match_stamp_sec * 10**9 + r.match_stamp_nanosec,
                                               r.query_stamp_sec * 10**9 + r.query_stamp_nanosec])
                    online.append(relative_error(r.relative_matrix, np.linalg.inv(a) @ b))
    return RgbdResult(map_frames, queries, keyframes, errors, online, seen_frames(sequence, map_frames, queries))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out/rgbd", type=path_argument, help="folder for the bags and map")
    parser.add_argument("--data", type=path_argument, default=DEFAULT_DATA,
                        help="TUM RGB-D folder (default: the fr1/rpy subset shipped in data/tum_fr1_rpy_mini)")
    parser.add_argument("--model", type=path_argument, default=BUNDLED_MODEL,
                        help="model folder (default: the bundled Nordland model)")
    parser.add_argument("--map-frames", type=int, default=MAP_FRAMES,
                        help=f"frames of the map session (default {MAP_FRAMES}; the rest are the second session)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        sequence = load_tum(Path(args.data))
        result = relocalize(sequence, Path(args.out), Path(args.model), args.map_frames)
    except (OSError, ValueError) as err:
        raise SystemExit(f"demo_rgbd: {err} (see data/tum_fr1_rpy_mini/README.md)") from err
    print("\n" + "\n".join(result.summary()))
    print(f"(RGB-D part: {time.monotonic() - started:.0f} s)")
    return 0 if result.right else 1


__all__ = ["RgbdResult", "main", "relocalize", "replay_session"]

if __name__ == "__main__":
    raise SystemExit(main())
