"""Metric loop closures and relocalization on real RGB-D data, through the real tools (issues 22, 23).

TUM RGB-D freiburg1_rpy (``../shared/data/tum_fr1_rpy``: a handheld Kinect turning about all
axes within ~0.2 m, motion-capture ground truth): ``build_map`` at its defaults makes a map from a
bag of the first 50 frames (ground-truth poses on ``/odom``, registered depth, camera_info beside
the image topic); the other frames are replayed live, at 5 Hz, to ``ros2 launch qaa_vpr_ros
localize.launch.py`` as a second session whose odometry is the ground truth in another frame, at
most 5 Hz and each frame after the node answered the one before (no frame lost to a busy CPU).
Errors are against the ground truth interpolated at the image stamps (the base pose: the camera
pose through the node's default extrinsics, ``OPTICAL_IN_BASE``).

Checked, with the bundled ``models/nordland_tiny`` (trained on Nordland only, so retrieval here is
weak: the query's nearest keyframes by descriptor are verified geometrically):

- with depth: every record with a metric ``geometry`` transform within 3 cm / 2 deg of the truth
  in the median, none off by more than 10 cm or 5 deg, at least 30 of them, and their covariance
  honest (published sigma per axis within [0.5, 2] x the RMS error); ``~/place_match`` carries the
  query's own pose, right within 3 frames of the first frame that sees a mapped view;
- the depth topic withheld: the rotation of the verified records within 2.5 deg in the median;
- no map, the whole sequence: at least 10 geometry-verified online loop closures, none wrong.
"""
from __future__ import annotations

import math
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import test_launch_real as real_launch
import yaml
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from node_harness import Recorder, wait_for
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from qaa_vpr_ros.poses import matrix_quaternion, pose_matrix

pytestmark = [
    pytest.mark.ros, pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:module 'sre_(parse|constants)' is deprecated:DeprecationWarning"),
]

from scripts import tum_rgbd  # noqa: E402

if not tum_rgbd.TUM_FR1_RPY.is_dir():
    pytest.skip(f"real RGB-D data absent: {tum_rgbd.TUM_FR1_RPY} (../shared/data, developers' machines only)",
                allow_module_level=True)

MODEL = real_launch.MODEL
REPO = real_launch.REPO
ros2_env, client, launch = real_launch.ros2_env, real_launch.client, real_launch.launch  # the real tooling's fixtures
MAP_FRAMES = range(50)
RATE_HZ = 5.0  # at most (the replay rate); each frame waits for the node's answer to the one before
NODE = "/localize_node"
# The second session's odometry frame: the ground truth turned 90 deg about z and moved.
WORLD_IN_ODOM = pose_matrix((3.0, -2.0, 0.5), matrix_quaternion(
    np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])))


@pytest.fixture(scope="module")
def tum():
    return tum_rgbd.load_tum()


@pytest.fixture(scope="module")
def tum_map(ros2_env, tum, tmp_path_factory) -> Path:
    """``build_map`` at its defaults on a bag of the first 50 frames (ground truth on /odom), run
    the way a user runs it (``ros2 run qaa_vpr_ros build_map``)."""
    work = tmp_path_factory.mktemp("tum_map")
    bag = tum_rgbd.write_tum_bag(work / "mapping", tum, MAP_FRAMES)
    out = work / "map"
    done = subprocess.run(["ros2", "run", "qaa_vpr_ros", "build_map", str(bag.path), "--model", str(MODEL),
                           "--image-topics", tum_rgbd.RGB_TOPIC, "--depth-topics", tum_rgbd.DEPTH_TOPIC,
                           "--pose-topic", tum_rgbd.ODOM_TOPIC, "-o", str(out), "--no-progress"],
                          env=ros2_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    return out


def _header(msg, stamp_ns: int, frame_id: str) -> None:
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id


def _image(rgb: np.ndarray, stamp_ns: int) -> Image:
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
    msg.data = rgb.tobytes()
    _header(msg, stamp_ns, tum_rgbd.CAMERA_FRAME)
    return msg


def _depth(depth_mm: np.ndarray, stamp_ns: int) -> Image:
    msg = Image(height=depth_mm.shape[0], width=depth_mm.shape[1], encoding="16UC1", step=depth_mm.shape[1] * 2)
    msg.data = depth_mm.astype("<u2").tobytes()
    _header(msg, stamp_ns, tum_rgbd.CAMERA_FRAME)
    return msg


def _camera_info(stamp_ns: int, width: int, height: int) -> CameraInfo:
    k = tum_rgbd.TUM_FR1_INTRINSICS
    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob", d=list(k.distortion),
                     k=[k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0])
    _header(msg, stamp_ns, tum_rgbd.CAMERA_FRAME)
    return msg


def _odometry(pose: np.ndarray, stamp_ns: int) -> Odometry:
    msg = Odometry(child_frame_id="base_link")
    _header(msg, stamp_ns, "odom")
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = (float(v) for v in pose[:3, 3])
    q.x, q.y, q.z, q.w = matrix_quaternion(pose[:3, :3])
    return msg


def replay(client, tum, frames, recorder: Recorder, *, depth: bool,
           world_in_odom: np.ndarray = WORLD_IN_ODOM) -> None:
    """Publish ``frames`` as a camera at RATE_HZ at most: odometry (the ground truth in the
    session's frame, 100 Hz up to 50 ms past each image), camera_info, the registered depth, the
    image; the next frame goes once the node answered this one (its loop candidates arrived, or
    10 s passed), so no frame is dropped for want of CPU: what is checked is the accuracy, on any
    machine (the speed is measured by the bench, not by a test)."""
    image_pub = client.create_publisher(Image, tum_rgbd.RGB_TOPIC, 10)
    depth_pub = client.create_publisher(Image, tum_rgbd.DEPTH_TOPIC, 10)
    info_pub = client.create_publisher(CameraInfo, tum_rgbd.INFO_TOPIC, 10)
    odom_pub = client.create_publisher(Odometry, tum_rgbd.ODOM_TOPIC, 50)
    wait_for(lambda: image_pub.get_subscription_count() > 0, 60.0, "the node's image subscription")
    gt = tum.gt_stamps_ns
    sent = int(tum.frames[frames[0]].rgb_stamp_ns) - 200_000_000
    start = time.monotonic()
    for n, i in enumerate(frames):
        frame = tum.frames[i]
        upto = int(frame.rgb_stamp_ns) + 50_000_000
        rows = np.flatnonzero((gt > sent) & (gt <= upto))
        poses = world_in_odom @ tum.base_pose(gt[rows]) if len(rows) else []
        for row, pose in zip(rows, poses, strict=True):
            odom_pub.publish(_odometry(pose, int(gt[row])))
        sent = upto
        rgb = tum.rgb(i)
        info_pub.publish(_camera_info(frame.rgb_stamp_ns, rgb.shape[1], rgb.shape[0]))
        if depth:
            depth_pub.publish(_depth(np.rint(tum.depth_png(i) / 5.0).astype(np.uint16), frame.depth_stamp_ns))
        image_pub.publish(_image(rgb, frame.rgb_stamp_ns))
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not any(_stamp_ns(m) == frame.rgb_stamp_ns
                                                      for m in recorder.get("records")[-4:]):
            time.sleep(0.005)
        time.sleep(max(0.0, start + (n + 1) / RATE_HZ - time.monotonic()))
    for pub in (image_pub, depth_pub, info_pub, odom_pub):
        client.destroy_publisher(pub)


def run_session(ros2_env, client, launch, tum, frames, *, map_folder: Path | None, depth: bool):
    """One live session through ``ros2 launch``: (place matches, records) as received."""
    from qaa_vpr_ros.ros.messages import records_from_cloud

    # Reliable image QoS (parameter `reliable`): a 0.9 MB image over DDS on a loaded machine is now
    # and then lost in best-effort transport, and this test checks accuracy, not the transport.
    params = yaml.safe_load((REPO / "config" / "localize.yaml").read_text())
    params["/**"]["ros__parameters"]["reliable"] = True
    params_file = Path(tempfile.mkdtemp()) / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    args = [f"model:={MODEL}", "device:=cpu", f"image_topics:={tum_rgbd.RGB_TOPIC}", "odom_topic:=/odom",
            f"params_file:={params_file}"]
    if map_folder is not None:
        args.append(f"map:={map_folder}")
    if depth:
        args.append(f"depth_topics:={tum_rgbd.DEPTH_TOPIC}")
    run = launch(*args)
    recorder = Recorder()
    subs = [client.create_subscription(PoseWithCovarianceStamped, f"{NODE}/place_match",
                                       recorder.callback("place_match"), 100),
            client.create_subscription(PointCloud2, f"{NODE}/loop_candidates", recorder.callback("records"), 100)]
    try:
        run.wait_line(r"ready: device", 120.0)
        replay(client, tum, frames, recorder, depth=depth)
        _wait_quiet(recorder, "records", 3.0, 60.0)
    finally:
        for sub in subs:
            client.destroy_subscription(sub)
        run.signal_group(2)
    records = [r for msg in recorder.get("records") for r in records_from_cloud(msg)]
    return recorder.get("place_match"), records, run


def _wait_quiet(recorder: Recorder, topic: str, quiet_s: float, timeout: float) -> None:
    """Until nothing new arrived on ``topic`` for ``quiet_s`` (the node has worked off its input)."""
    deadline, count, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        now = len(recorder.get(topic))
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.2)


def _stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _errors(estimates: list[np.ndarray], truths: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position error m, rotation error deg, per-axis translation error (N, 3) in the truth's parent frame)."""
    pos, rot, axes = [], [], []
    for est, truth in zip(estimates, truths, strict=True):
        axes.append(est[:3, 3] - truth[:3, 3])
        pos.append(float(np.linalg.norm(axes[-1])))
        cos = (np.trace(truth[:3, :3].T @ est[:3, :3]) - 1.0) / 2.0
        rot.append(math.degrees(math.acos(min(1.0, max(-1.0, cos)))))
    return np.array(pos), np.array(rot), np.array(axes).reshape(-1, 3)


def _record_errors(tum, records):
    """Errors of the records' T_match_query against the ground truth (base frames)."""
    truths = [np.linalg.inv(tum.base_pose([r.match_stamp_sec * 10**9 + r.match_stamp_nanosec])[0])
              @ tum.base_pose([r.query_stamp_sec * 10**9 + r.query_stamp_nanosec])[0] for r in records]
    return _errors([r.relative_matrix for r in records], truths)


def _honest(records, axes_error: np.ndarray) -> np.ndarray:
    """Per translation axis: RMS published sigma / RMS error (the issue wants [0.5, 2])."""
    sigma = np.sqrt(np.array([np.diag(r.covariance_matrix)[:3] for r in records]))
    return np.sqrt((sigma ** 2).mean(0)) / np.sqrt((axes_error ** 2).mean(0))


def _first_seen(tum, frames) -> int:
    """The first query frame whose viewing direction is within 15 deg of a map frame's (ground truth)."""
    map_z = tum.camera_pose([tum.frames[j].rgb_stamp_ns for j in MAP_FRAMES])[:, :3, 2]
    for i in frames:
        z = tum.camera_pose([tum.frames[i].rgb_stamp_ns])[0][:3, 2]
        if np.degrees(np.arccos(np.clip(map_z @ z, -1.0, 1.0))).min() < 15.0:
            return i
    raise AssertionError("no query frame sees a mapped view")


def test_metric_relocalization_with_depth_through_ros2_launch(ros2_env, client, launch, tum, tum_map) -> None:
    frames = list(range(50, len(tum)))
    matches, records, run = run_session(ros2_env, client, launch, tum, frames, map_folder=tum_map, depth=True)
    index = {tum.frames[i].rgb_stamp_ns: i for i in frames}

    metric = [r for r in records if r.transform_source == "geometry" and not r.is_online]
    assert len(metric) >= 30, f"{len(metric)} metric geometry records\n{run.output[-3000:]}"
    pos, rot, axes = _record_errors(tum, metric)
    assert np.median(pos) <= 0.03 and np.median(rot) <= 2.0, (np.median(pos), np.median(rot))
    assert not np.any((pos > 0.10) | (rot > 5.0)), sorted(zip(pos, rot, strict=True))[-5:]
    ratio = _honest(metric, axes)
    print(f"\n{len(metric)} metric geometry records: median {100 * np.median(pos):.2f} cm / {np.median(rot):.2f} deg, "
          f"max {100 * pos.max():.2f} cm / {rot.max():.2f} deg; sigma / RMS error per axis {np.round(ratio, 2)}")
    assert np.all((ratio >= 0.5) & (ratio <= 2.0)), f"sigma / RMS error per axis {ratio}"

    # ~/place_match: the query's own pose in the map frame (= the first session's odometry frame).
    assert matches, "no place match published"
    stamps = [_stamp_ns(m) for m in matches]
    estimates = [pose_matrix((m.pose.pose.position.x, m.pose.pose.position.y, m.pose.pose.position.z),
                             (m.pose.pose.orientation.x, m.pose.pose.orientation.y, m.pose.pose.orientation.z,
                              m.pose.pose.orientation.w)) for m in matches]
    pos, rot, _ = _errors(estimates, list(tum.base_pose(stamps)))
    assert np.median(pos) <= 0.03 and np.median(rot) <= 2.0, (np.median(pos), np.median(rot))
    assert not np.any((pos > 0.10) | (rot > 5.0)), sorted(zip(pos, rot, strict=True))[-5:]
    right = [index[s] for s, p, r in zip(stamps, pos, rot, strict=True) if p <= 0.10 and r <= 10.0]
    seen = _first_seen(tum, frames)
    print(f"{len(matches)} place matches of {len(frames)} frames: median {100 * np.median(pos):.2f} cm / "
          f"{np.median(rot):.2f} deg, max {100 * pos.max():.2f} cm / {rot.max():.2f} deg; first right at frame "
          f"{right[:1]}, first mapped view at frame {seen}")
    assert right and right[0] <= seen + 3, f"first right relocalization at frame {right[:1]}, view seen at {seen}"


def test_depth_withheld_still_verifies_the_rotation(ros2_env, client, launch, tum, tum_map) -> None:
    frames = list(range(50, len(tum)))
    _, records, run = run_session(ros2_env, client, launch, tum, frames, map_folder=tum_map, depth=False)
    verified = [r for r in records if r.transform_source in ("geometry", "geometry_rotation") and not r.is_online]
    assert len(verified) >= 30, f"{len(verified)} verified records\n{run.output[-3000:]}"
    _, rot, _ = _record_errors(tum, verified)
    sources = {s: sum(r.transform_source == s for r in verified) for s in ("geometry", "geometry_rotation")}
    print(f"\ndepth withheld: {len(verified)} verified records {sources}, rotation median {np.median(rot):.2f} deg")
    assert np.median(rot) <= 2.5, np.median(rot)


def test_online_loop_closures_over_the_whole_sequence(ros2_env, client, launch, tum) -> None:
    frames = list(range(len(tum)))
    _, records, run = run_session(ros2_env, client, launch, tum, frames, map_folder=None, depth=True)
    closures = {(r.query_stamp_sec, r.query_stamp_nanosec): r for r in records
                if r.is_online and r.accepted and r.transform_source == "geometry"}
    assert len(closures) >= 10, f"{len(closures)} geometry-verified loop closures\n{run.output[-3000:]}"
    pos, rot, _ = _record_errors(tum, list(closures.values()))
    print(f"\n{len(closures)} online loop closures: median {100 * np.median(pos):.2f} cm / {np.median(rot):.2f} deg, "
          f"max {100 * pos.max():.2f} cm / {rot.max():.2f} deg")
    assert not np.any((pos > 0.10) | (rot > 5.0)), sorted(zip(pos, rot, strict=True))[-5:]
