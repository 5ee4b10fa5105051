"""TUM RGB-D freiburg1_rpy (``../shared/data/tum_fr1_rpy``, its README) as the project's real RGB-D
data: frames, ground-truth poses, and rosbag2 recordings of them for the tests, demos and benchmarks.

A recording (:func:`write_tum_bag`) holds what a robot's RGB-D camera and odometry publish:

- ``/camera/rgb/image_raw``: rgb8 colour at the rgb stamps;
- ``/camera/depth/image_raw``: the depth registered to colour, 16UC1 (millimetres) or 32FC1
  (metres), at the depth stamps (a few ms from the rgb ones, as in TUM);
- ``/camera/rgb/camera_info``: the sequence's intrinsics (:data:`TUM_FR1_INTRINSICS`, or its folder's
  ``intrinsics.txt``) with their plumb_bob distortion;
- ``/odom``: nav_msgs/Odometry of ``base_link`` in the odometry frame: the motion-capture ground
  truth (100 Hz) of the camera, moved to the base with :data:`OPTICAL_IN_BASE` (the node's default
  camera extrinsics), optionally expressed in another frame (``world_in_odom``: a second session).

Stamps are integer nanoseconds parsed from the files' text (no float rounding); poses are 4x4
``T_a_b`` matrices (``qaa_vpr_ros.poses`` conventions).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from qaa_vpr_ros.bag_writer import (
    BagWriter,
    Storage,
    camera_info_message,
    depth_message,
    image_message,
    odometry_message,
)
from qaa_vpr_ros.decision.record import OPTICAL_IN_BASE
from qaa_vpr_ros.local_features import Intrinsics
from qaa_vpr_ros.poses import interpolate_pose, matrix_quaternion, pose_matrix, transform_error

__all__ = ["DEPTH_TOPIC", "INFO_TOPIC", "ODOM_TOPIC", "OPTICAL_IN_BASE", "RGB_TOPIC", "TUM_FR1_INTRINSICS",
           "TUM_FR1_RPY", "TumBag", "TumFrame", "TumSequence", "downsampled_intrinsics", "load_tum", "relative_error",
           "write_tum_bag"]

REPO = Path(__file__).resolve().parents[1]
TUM_FR1_RPY = REPO.parent / "shared" / "data" / "tum_fr1_rpy"
"""Where the developers' copy lives (``../shared/data/tum_fr1_rpy`` beside the repository)."""

TUM_FR1_INTRINSICS = Intrinsics(fx=517.3, fy=516.5, cx=318.6, cy=255.3,
                                distortion=(0.2624, -0.9531, -0.0054, 0.0026, 1.1633))
"""TUM's published freiburg1 colour calibration (k1 k2 p1 p2 k3); depth is registered to colour."""

INTRINSICS_FILE = "intrinsics.txt"  # optional in a TUM folder: "fx fy cx cy k1 k2 p1 p2 k3" (one line)
DEPTH_PER_METRE = 5000.0  # TUM depth PNGs: metres = value / 5000, 0 = no depth
RGB_TOPIC = "/camera/rgb/image_raw"
DEPTH_TOPIC = "/camera/depth/image_raw"
INFO_TOPIC = "/camera/rgb/camera_info"
ODOM_TOPIC = "/odom"
CAMERA_FRAME = "camera_rgb_optical_frame"
ODOM_MARGIN_NS = 100_000_000  # odometry written from 0.1 s before the first image to 0.1 s after the last


def stamp_ns(text: str) -> int:
    """A TUM stamp ("1305031229.528748", seconds) -> integer nanoseconds, exactly."""
    seconds, _, fraction = text.strip().partition(".")
    if not seconds.isdigit() or (fraction and not fraction.isdigit()) or len(fraction) > 9:
        raise ValueError(f"not a TUM stamp (seconds with up to 9 decimals): {text!r}")
    return int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0") or 0)


@dataclass(frozen=True)
class TumFrame:
    """One associated colour/depth pair."""

    rgb_stamp_ns: int
    depth_stamp_ns: int
    rgb_path: Path
    depth_path: Path


@dataclass(frozen=True, eq=False)
class TumSequence:
    """A TUM RGB-D sequence: its associated frames, its ground truth (camera poses in the
    motion-capture world frame; ``gt_quaternions`` as (qx, qy, qz, qw)) and its colour camera's
    intrinsics (depth is registered to colour)."""

    folder: Path
    frames: tuple[TumFrame, ...]
    gt_stamps_ns: np.ndarray  # (M,) int64, increasing
    gt_positions: np.ndarray  # (M, 3) metres
    gt_quaternions: np.ndarray  # (M, 4)
    intrinsics: Intrinsics = TUM_FR1_INTRINSICS

    def __len__(self) -> int:
        return len(self.frames)

    def rgb(self, i: int) -> np.ndarray:
        """Frame ``i``'s colour image, RGB uint8 (H, W, 3) (480 x 640 in TUM)."""
        bgr = cv2.imread(str(self.frames[i].rgb_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read colour image {self.frames[i].rgb_path}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def depth_png(self, i: int) -> np.ndarray:
        """Frame ``i``'s depth image as stored: uint16 (H, W), metres = value / 5000, 0 = none."""
        depth = cv2.imread(str(self.frames[i].depth_path), cv2.IMREAD_UNCHANGED)
        if depth is None or depth.dtype != np.uint16 or depth.ndim != 2:
            raise ValueError(f"{self.frames[i].depth_path}: expected a 16-bit single-channel PNG, got "
                             f"{None if depth is None else (depth.dtype, depth.shape)}")
        return depth

    def depth_m(self, i: int) -> np.ndarray:
        """Frame ``i``'s depth, float32 (H, W) metres, NaN where there is none."""
        raw = self.depth_png(i)
        depth = raw.astype(np.float32) / np.float32(DEPTH_PER_METRE)
        depth[raw == 0] = np.nan
        return depth

    def camera_pose(self, stamps_ns: Sequence[int] | np.ndarray, offset_s: float = 0.0) -> np.ndarray:
        """(N, 4, 4) ``T_world_camera`` (the optical frame) at ``stamps_ns`` + ``offset_s``: the ground
        truth interpolated (position linear, rotation slerp: ``qaa_vpr_ros.poses.interpolate_pose``).

        Raises ValueError for a stamp outside the ground truth's time span."""
        stamps = np.atleast_1d(np.asarray(stamps_ns, dtype=np.int64)) + int(round(offset_s * 1e9))
        gt = self.gt_stamps_ns
        outside = (stamps < gt[0]) | (stamps > gt[-1])
        if outside.any():
            raise ValueError(f"{self.folder}: stamp {int(stamps[outside][0])} ns lies outside the ground truth "
                             f"({int(gt[0])}..{int(gt[-1])} ns)")
        out = np.empty((len(stamps), 4, 4))
        for n, stamp in enumerate(stamps):
            j = int(np.clip(np.searchsorted(gt, stamp, side="right"), 1, len(gt) - 1))
            t = float(stamp - gt[j - 1]) / float(gt[j] - gt[j - 1])
            before = (tuple(self.gt_positions[j - 1]), tuple(self.gt_quaternions[j - 1]))
            after = (tuple(self.gt_positions[j]), tuple(self.gt_quaternions[j]))
            position, orientation = interpolate_pose(before, after, t)
            out[n] = pose_matrix(position, orientation)
        return out

    def base_pose(self, stamps_ns: Sequence[int] | np.ndarray, offset_s: float = 0.0) -> np.ndarray:
        """(N, 4, 4) ``T_world_base``: :meth:`camera_pose` @ inv(:data:`OPTICAL_IN_BASE`), the base a
        node without camera extrinsics assumes (REP 103, x forward, the camera looking forward)."""
        return self.camera_pose(stamps_ns, offset_s) @ np.linalg.inv(OPTICAL_IN_BASE)


def load_tum(folder: Path = TUM_FR1_RPY) -> TumSequence:
    """Read ``associations.txt`` and ``groundtruth.txt`` of a TUM RGB-D folder (images stay on disk),
    and its ``intrinsics.txt`` when it has one (else :data:`TUM_FR1_INTRINSICS`).

    Raises FileNotFoundError naming a missing file, ValueError naming a malformed line."""
    folder = Path(folder)
    frames = []
    for number, fields in _rows(folder / "associations.txt", 4):
        rgb, depth = folder / fields[1], folder / fields[3]
        for path in (rgb, depth):
            if not path.is_file():
                raise FileNotFoundError(f"{folder / 'associations.txt'} line {number} names {path}, which is missing")
        frames.append(TumFrame(stamp_ns(fields[0]), stamp_ns(fields[2]), rgb, depth))
    truth = list(_rows(folder / "groundtruth.txt", 8))
    if not frames or len(truth) < 2:
        raise ValueError(f"{folder}: {len(frames)} associated frames and {len(truth)} ground-truth poses; "
                         "need at least one frame and two poses")
    gt_stamps = np.array([stamp_ns(f[0]) for _, f in truth], dtype=np.int64)
    if np.any(np.diff(gt_stamps) <= 0):
        raise ValueError(f"{folder / 'groundtruth.txt'}: stamps are not strictly increasing")
    values = np.array([[float(v) for v in f[1:]] for _, f in truth])
    return TumSequence(folder, tuple(frames), gt_stamps, values[:, :3], values[:, 3:], _intrinsics(folder))


def _intrinsics(folder: Path) -> Intrinsics:
    path = folder / INTRINSICS_FILE
    if not path.is_file():
        return TUM_FR1_INTRINSICS
    rows = list(_rows(path, 9))
    if len(rows) != 1:
        raise ValueError(f"{path}: expected one line 'fx fy cx cy k1 k2 p1 p2 k3', got {len(rows)}")
    number, fields = rows[0]
    try:
        return Intrinsics.from_parameter([float(v) for v in fields])
    except ValueError as err:
        raise ValueError(f"{path} line {number}: {err}") from err


def downsampled_intrinsics(intrinsics: Intrinsics, factor: int) -> Intrinsics:
    """The intrinsics of the image shrunk by an integer ``factor`` (each new pixel the mean of a
    ``factor`` x ``factor`` block). Pixel centres are at integer coordinates (OpenCV's convention),
    so old x = factor * new x + (factor - 1) / 2: fx / factor and (cx + 0.5) / factor - 0.5. The
    distortion coefficients act on normalised coordinates and stay as they are."""
    if factor < 1:
        raise ValueError(f"downsampled_intrinsics: factor must be an integer >= 1, got {factor}")
    k = intrinsics
    return Intrinsics(k.fx / factor, k.fy / factor, (k.cx + 0.5) / factor - 0.5, (k.cy + 0.5) / factor - 0.5,
                      k.distortion)


def _rows(path: Path, count: int):
    """(line number, fields) of a TUM text file's data lines (``#`` lines are comments)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (a TUM RGB-D folder holds associations.txt and groundtruth.txt)")
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) != count:
            raise ValueError(f"{path} line {number}: expected {count} fields, got {len(fields)}: {line!r}")
        yield number, fields


@dataclass(frozen=True)
class TumBag:
    """What :func:`write_tum_bag` recorded (stamps as written, i.e. after ``rate_scale``)."""

    path: Path
    frames: tuple[int, ...]  # sequence indices, in order
    rgb_stamps_ns: tuple[int, ...]
    depth_stamps_ns: tuple[int, ...]  # empty without depth
    odom_stamps_ns: tuple[int, ...]
    topics: dict[str, str]  # topic -> message type


def write_tum_bag(path: Path, sequence: TumSequence, frames: Sequence[int], *,
                  depth: Literal["16UC1", "32FC1"] | None = "16UC1", odom_frame: str = "odom",
                  world_in_odom: np.ndarray | None = None, storage: Storage = "sqlite3", rate_scale: float = 1.0,
                  rgb_topic: str = RGB_TOPIC, depth_topic: str = DEPTH_TOPIC, info_topic: str = INFO_TOPIC,
                  odom_topic: str = ODOM_TOPIC, overwrite: bool = False) -> TumBag:
    """Record ``frames`` (indices into ``sequence``) as a rosbag2 folder at ``path`` (module docstring).

    ``depth``: the depth encoding, or None for no depth topic. ``world_in_odom``: 4x4
    ``T_odom_world`` applied to the ground truth (identity: odometry = ground truth). ``rate_scale``:
    stamps stretched about the first one (2.0 = a replay at half speed; 1.0 keeps them real).
    Odometry: every ground-truth sample from 0.1 s before the first image to 0.1 s after the last.
    Messages go in stamp order; each message's bag time is its header stamp.

    Raises ValueError for an empty or out-of-range frame list, a bad ``world_in_odom`` or
    ``rate_scale``, or an image stamp outside the ground truth."""
    order = sorted({int(i) for i in frames})
    if not order or order[0] < 0 or order[-1] >= len(sequence):
        raise ValueError(f"write_tum_bag: frames must be indices in [0, {len(sequence)}), got {list(frames)[:10]}")
    if not rate_scale > 0:
        raise ValueError(f"write_tum_bag: rate_scale must be > 0, got {rate_scale}")
    odom_in = np.eye(4) if world_in_odom is None else np.asarray(world_in_odom, np.float64)
    if odom_in.shape != (4, 4) or not np.allclose(odom_in[3], (0, 0, 0, 1)) or not np.allclose(
            odom_in[:3, :3] @ odom_in[:3, :3].T, np.eye(3), atol=1e-6):
        raise ValueError(f"write_tum_bag: world_in_odom must be a rigid 4x4 transform, got\n{odom_in}")
    chosen = [sequence.frames[i] for i in order]
    image_stamps = [f.rgb_stamp_ns for f in chosen] + ([f.depth_stamp_ns for f in chosen] if depth else [])
    first, last = min(image_stamps), max(image_stamps)
    gt = sequence.gt_stamps_ns
    if first < gt[0] or last > gt[-1]:
        raise ValueError(f"write_tum_bag: image stamps {first}..{last} ns reach outside the ground truth "
                         f"({int(gt[0])}..{int(gt[-1])} ns)")
    odom_rows = np.flatnonzero((gt >= first - ODOM_MARGIN_NS) & (gt <= last + ODOM_MARGIN_NS))
    odom_rows = np.union1d(odom_rows, [max(0, odom_rows[0] - 1), min(len(gt) - 1, odom_rows[-1] + 1)])
    origin = int(gt[odom_rows[0]])  # the first message

    def scaled(stamp: int) -> int:
        return origin + int(round((stamp - origin) * rate_scale))

    # (stamp, kind, which): messages are made as they are written, so a long bag never sits in memory.
    events = [(scaled(f.rgb_stamp_ns), 0, i) for i, f in zip(order, chosen, strict=True)]
    if depth:
        events += [(scaled(f.depth_stamp_ns), 1, i) for i, f in zip(order, chosen, strict=True)]
    events += [(scaled(int(gt[row])), 2, int(row)) for row in odom_rows]
    events.sort()
    base_in_camera = np.linalg.inv(OPTICAL_IN_BASE)
    info = sequence.intrinsics
    topics = {rgb_topic: "sensor_msgs/msg/Image", info_topic: "sensor_msgs/msg/CameraInfo",
              odom_topic: "nav_msgs/msg/Odometry", **({depth_topic: "sensor_msgs/msg/Image"} if depth else {})}
    with BagWriter(Path(path), storage, overwrite=overwrite) as bag:
        for topic, msgtype in topics.items():
            bag.add_topic(topic, msgtype)
        for stamp, kind, which in events:
            if kind == 0:
                rgb = sequence.rgb(which)
                bag.write(rgb_topic, stamp, image_message(rgb, stamp, CAMERA_FRAME))
                bag.write(info_topic, stamp, camera_info_message(stamp, rgb.shape[1], rgb.shape[0],
                                                                 (info.fx, info.fy, info.cx, info.cy), CAMERA_FRAME,
                                                                 info.distortion))
            elif kind == 1:
                raw = sequence.depth_png(which)
                if depth == "16UC1":  # value / 5000 m = value / 5 mm
                    msg = depth_message(np.rint(raw / 5.0).astype(np.uint16), stamp, CAMERA_FRAME)
                else:
                    msg = depth_message(sequence.depth_m(which), stamp, CAMERA_FRAME, "32FC1")
                bag.write(depth_topic, stamp, msg)
            else:
                pose = odom_in @ pose_matrix(sequence.gt_positions[which], sequence.gt_quaternions[which]) \
                    @ base_in_camera
                bag.write(odom_topic, stamp, odometry_message(stamp, tuple(pose[:3, 3]),
                                                              matrix_quaternion(pose[:3, :3]), odom_frame))
    by_kind = {k: tuple(s for s, kind, _ in events if kind == k) for k in (0, 1, 2)}
    return TumBag(Path(path), tuple(order), by_kind[0], by_kind[1], by_kind[2], topics)


def relative_error(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(translation metres, rotation degrees) of 4x4 ``estimate`` against 4x4 ``truth``
    (the norms of ``qaa_vpr_ros.poses.transform_error``)."""
    error = transform_error(np.asarray(estimate, np.float64), np.asarray(truth, np.float64))
    return float(np.linalg.norm(error[:3])), float(np.degrees(np.linalg.norm(error[3:])))

