"""The real RGB-D data (``scripts/tum_rgbd.py``): TUM fr1/rpy read from ../shared/data, its ground
truth interpolated, and rosbag2 recordings of it that read back through the package's own reader
(colour, depth in both encodings, camera_info, odometry of the base in another frame)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from qaa_vpr_ros.bags import iter_image_messages, open_bag, read_pose_track
from qaa_vpr_ros.image_conversion import depth_from_msg, image_from_msg
from qaa_vpr_ros.local_features import Intrinsics
from qaa_vpr_ros.poses import pose_matrix
from scripts.tum_rgbd import (
    DEPTH_TOPIC,
    INFO_TOPIC,
    ODOM_TOPIC,
    OPTICAL_IN_BASE,
    RGB_TOPIC,
    TUM_FR1_INTRINSICS,
    TUM_FR1_RPY,
    load_tum,
    relative_error,
    stamp_ns,
    write_tum_bag,
)

FRAMES = [0, 4, 5, 60]  # a gap, neighbours, and one far on
WORLD_IN_ODOM = pose_matrix((3.0, -2.0, 0.5), (0.0, 0.0, math.sin(0.6), math.cos(0.6)))  # yaw 69 deg


@pytest.fixture(scope="module")
def tum():
    if not (TUM_FR1_RPY / "associations.txt").is_file():
        pytest.skip(f"shared test data absent: {TUM_FR1_RPY} (see ../shared/data/README.md)")
    return load_tum(TUM_FR1_RPY)


def test_stamps_are_parsed_exactly() -> None:
    assert stamp_ns("1305031229.528748") == 1_305_031_229_528_748_000
    assert stamp_ns("1305031225.9334") == 1_305_031_225_933_400_000
    with pytest.raises(ValueError, match="not a TUM stamp"):
        stamp_ns("1305031225.9e3")


def test_sequence_frames_images_and_intrinsics(tum) -> None:
    assert len(tum) == 139
    rgb_stamps = np.array([f.rgb_stamp_ns for f in tum.frames])
    depth_stamps = np.array([f.depth_stamp_ns for f in tum.frames])
    assert np.all(np.diff(rgb_stamps) > 0)
    assert np.all(np.abs(depth_stamps - rgb_stamps) < 25_000_000)  # associated within 25 ms
    assert tum.rgb(3).shape == (480, 640, 3) and tum.rgb(3).dtype == np.uint8
    raw, depth = tum.depth_png(3), tum.depth_m(3)
    assert depth.dtype == np.float32 and np.array_equal(np.isnan(depth), raw == 0)
    assert np.allclose(depth[raw > 0], raw[raw > 0] / 5000.0)
    assert 0.3 < np.nanmedian(depth) < 5.0  # a room seen by a Kinect
    assert TUM_FR1_INTRINSICS == Intrinsics(517.3, 516.5, 318.6, 255.3, (0.2624, -0.9531, -0.0054, 0.0026, 1.1633))


def test_ground_truth_is_interpolated_linearly_and_by_slerp(tum) -> None:
    j = 1000
    gt, pos, quat = tum.gt_stamps_ns, tum.gt_positions, tum.gt_quaternions
    at_sample = tum.camera_pose([gt[j]])[0]
    assert np.allclose(at_sample, pose_matrix(pos[j], quat[j]), atol=1e-12)
    stamp = int(gt[j] + 0.3 * (gt[j + 1] - gt[j]))
    pose = tum.camera_pose([stamp])[0]
    assert np.allclose(pose[:3, 3], pos[j] + 0.3 * (pos[j + 1] - pos[j]), atol=1e-9)
    slerp = Slerp([0.0, 1.0], Rotation.from_quat(quat[j:j + 2]))  # an independent slerp
    assert np.allclose(pose[:3, :3], slerp([0.3]).as_matrix()[0], atol=1e-6)
    # offset_s moves the lookup; the base pose is the camera pose without OPTICAL_IN_BASE
    assert np.allclose(tum.camera_pose([gt[j] - 10_000_000], offset_s=0.01)[0], at_sample, atol=1e-9)
    assert np.allclose(tum.base_pose([stamp])[0] @ OPTICAL_IN_BASE, pose, atol=1e-12)
    with pytest.raises(ValueError, match="outside the ground truth"):
        tum.camera_pose([gt[0] - 1])


@pytest.mark.parametrize(("depth", "storage", "rate_scale"),
                         [("16UC1", "sqlite3", 1.0), ("32FC1", "mcap", 2.0), (None, "sqlite3", 1.0)])
def test_bag_reads_back_through_the_package_reader(tmp_path, tum, depth, storage, rate_scale) -> None:
    bag = write_tum_bag(tmp_path / "bag", tum, FRAMES, depth=depth, odom_frame="session2_odom",
                        world_in_odom=WORLD_IN_ODOM, storage=storage, rate_scale=rate_scale)
    origin = bag.odom_stamps_ns[0]

    def written(stamp: int) -> int:
        return origin + round((stamp - origin) * rate_scale)

    rgb_stamps = [tum.frames[i].rgb_stamp_ns for i in FRAMES]
    depth_stamps = [tum.frames[i].depth_stamp_ns for i in FRAMES]
    with open_bag(tmp_path / "bag") as opened:
        expected = {RGB_TOPIC: "sensor_msgs/msg/Image", INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
                    ODOM_TOPIC: "nav_msgs/msg/Odometry"} | ({DEPTH_TOPIC: "sensor_msgs/msg/Image"} if depth else {})
        assert opened.topics == expected
        colour = list(iter_image_messages(opened, [RGB_TOPIC]))
        assert [m.stamp_ns for m in colour] == [written(s) for s in rgb_stamps]
        pixels, encoding = image_from_msg(colour[1].msg)
        assert encoding == "rgb" and np.array_equal(pixels, tum.rgb(FRAMES[1]))
        if depth:
            depths = list(iter_image_messages(opened, [DEPTH_TOPIC]))
            assert [m.stamp_ns for m in depths] == [written(s) for s in depth_stamps]  # the depth stamps
            assert {m.msg.encoding for m in depths} == {depth}
            for message, i in zip(depths, FRAMES, strict=True):
                back, truth = depth_from_msg(message.msg), tum.depth_m(i)
                assert np.array_equal(np.isnan(back), np.isnan(truth))
                if depth == "32FC1":
                    assert np.array_equal(back[~np.isnan(back)], truth[~np.isnan(truth)])
                else:
                    assert np.nanmax(np.abs(back - truth)) <= 0.0005 + 1e-6  # to the millimetre
        infos = [opened.deserialize(raw, "sensor_msgs/msg/CameraInfo") for *_, raw in opened.messages([INFO_TOPIC])]
        assert len(infos) == len(FRAMES)
        assert Intrinsics.from_camera_info(infos[0].k, infos[0].d) == TUM_FR1_INTRINSICS
        assert (infos[0].width, infos[0].height, infos[0].distortion_model) == (640, 480, "plumb_bob")
        assert infos[0].header.frame_id == colour[0].frame_id
        track = read_pose_track(opened, ODOM_TOPIC)
        odom = next(opened.deserialize(raw, "nav_msgs/msg/Odometry") for *_, raw in opened.messages([ODOM_TOPIC]))
    assert (track.frame_id, odom.child_frame_id) == ("session2_odom", "base_link")
    assert len(track) == len(bag.odom_stamps_ns) and np.all(np.diff(track.stamps_ns) < 15_000_000 * rate_scale)
    images = rgb_stamps + (depth_stamps if depth else [])  # odometry covers every image, with a margin
    assert track.stamps_ns[0] < written(min(images)) - 90_000_000 * rate_scale
    assert track.stamps_ns[-1] > written(max(images)) + 90_000_000 * rate_scale
    truth = WORLD_IN_ODOM @ tum.base_pose(rgb_stamps)
    for stamp, expected_pose in zip(rgb_stamps, truth, strict=True):
        position, orientation = track.interpolate(written(stamp))
        metres, degrees = relative_error(pose_matrix(position, orientation), expected_pose)
        assert metres < 0.001 and degrees < 0.05, (stamp, metres, degrees)


def test_bad_requests_are_named(tmp_path, tum) -> None:
    with pytest.raises(ValueError, match=r"frames must be indices in \[0, 139\)"):
        write_tum_bag(tmp_path / "a", tum, [0, 139])
    with pytest.raises(ValueError, match="world_in_odom must be a rigid"):
        write_tum_bag(tmp_path / "b", tum, [0], world_in_odom=2 * np.eye(4))
    with pytest.raises(FileNotFoundError, match="associations.txt is missing"):
        load_tum(tmp_path)


def test_relative_error_in_metres_and_degrees() -> None:
    truth = pose_matrix((1.0, 2.0, 3.0), (0.1, 0.2, 0.3, 0.9))
    nudge = pose_matrix((0.03, 0.0, -0.04), (0.0, math.sin(math.radians(1.0)), 0.0, math.cos(math.radians(1.0))))
    metres, degrees = relative_error(truth @ nudge, truth)
    assert metres == pytest.approx(0.05) and degrees == pytest.approx(2.0)
