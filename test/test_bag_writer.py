"""The package's one bag writer (``qaa_vpr_ros.bag_writer``): what it records reads back through the
package's own bag reader, image for image and pose for pose, in both storage formats."""
from __future__ import annotations

import numpy as np
import pytest

from qaa_vpr_ros.bag_writer import (
    BagWriter,
    camera_info_message,
    depth_message,
    image_message,
    odometry_message,
    storage_file,
)
from qaa_vpr_ros.bags import iter_image_messages, open_bag, read_pose_track
from qaa_vpr_ros.image_conversion import depth_from_msg, image_from_msg

START_NS = 1_700_000_000 * 10**9


def _frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_images_and_odometry_read_back_through_the_package_reader(tmp_path, storage) -> None:
    frames = _frames(4)
    cameras = {"/rgb": {}, "/bgr": {"encoding": "bgr8"}, "/padded": {"pad": 5},
               "/png": {"compressed": "png"}}
    with BagWriter(tmp_path / "bag", storage) as bag:
        for i, rgb in enumerate(frames):
            stamp = START_NS + i * 100_000_000
            bag.write("/odom", stamp, odometry_message(stamp, (2.0 * i, 1.0, 0.5), (0.0, 0.0, 0.6, 0.8)))
            for topic, options in cameras.items():
                bag.write(topic, stamp, image_message(rgb, stamp, "cam", **options))
            bag.write("/info", stamp, camera_info_message(stamp, 32, 24, (30.0, 31.0, 16.0, 12.0)))
    assert storage_file(tmp_path / "bag").suffix == (".mcap" if storage == "mcap" else ".db3")
    with open_bag(tmp_path / "bag") as opened:
        assert opened.topics["/info"] == "sensor_msgs/msg/CameraInfo"
        for topic in cameras:
            messages = list(iter_image_messages(opened, [topic]))
            assert [m.stamp_ns for m in messages] == [START_NS + i * 100_000_000 for i in range(4)], topic
            for message, rgb in zip(messages, frames, strict=True):
                pixels, encoding = image_from_msg(message.msg)
                assert message.frame_id == "cam"
                assert np.array_equal(pixels if encoding == "rgb" else pixels[:, :, ::-1], rgb), topic
        track = read_pose_track(opened, "/odom")
        assert np.allclose(track.positions[:, 0], [0.0, 2.0, 4.0, 6.0])
        assert np.allclose(track.orientations[-1], (0.0, 0.0, 0.6, 0.8))
        raw = next(r for t, _, _, r in opened.messages(["/info"]))
        info = opened.deserialize(raw, "sensor_msgs/msg/CameraInfo")
        assert list(info.k) == [30.0, 0.0, 16.0, 0.0, 31.0, 12.0, 0.0, 0.0, 1.0]


def test_jpeg_quality_is_applied(tmp_path) -> None:
    rgb = _frames(1)[0]
    small = image_message(rgb, START_NS, compressed="jpeg", jpeg_quality=10)
    large = image_message(rgb, START_NS, compressed="jpeg", jpeg_quality=95)
    assert small.format == "jpeg" and len(small.data) < len(large.data)


def test_an_existing_folder_is_kept_unless_overwrite(tmp_path) -> None:
    with BagWriter(tmp_path / "bag") as bag:
        bag.write("/odom", START_NS, odometry_message(START_NS, (1.0, 0.0, 0.0)))
    with pytest.raises(Exception, match="exists"), BagWriter(tmp_path / "bag"):
        pass
    with BagWriter(tmp_path / "bag", "mcap", overwrite=True) as bag:
        bag.write("/odom", START_NS, odometry_message(START_NS, (3.0, 0.0, 0.0)))
    with open_bag(tmp_path / "bag") as opened:
        assert read_pose_track(opened, "/odom").positions[:, 0].tolist() == [3.0]


def test_a_topic_keeps_its_type_and_bad_input_is_named(tmp_path) -> None:
    with BagWriter(tmp_path / "bag") as bag:
        bag.write("/cam", START_NS, image_message(_frames(1)[0], START_NS))
        with pytest.raises(ValueError, match="/cam is sensor_msgs/msg/Image"):
            bag.write("/cam", START_NS, odometry_message(START_NS, (0.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match="float64"):
        image_message(np.zeros((4, 4, 3)), START_NS)
    with pytest.raises(ValueError, match="rgb16"):
        image_message(_frames(1)[0], START_NS, encoding="rgb16")
    with pytest.raises(ValueError, match="storage"):
        BagWriter(tmp_path / "other", "rosbag1")  # type: ignore[arg-type]


def _depth_mm() -> np.ndarray:
    """uint16 millimetres with holes (0), near (1 mm) and far (65.535 m) samples."""
    depth = np.random.default_rng(1).integers(0, 65536, (6, 7), dtype=np.uint16)
    depth[0, :3] = (0, 1, 65535)
    return depth


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize(("given", "encoding"), [("mm", None), ("mm", "32FC1"), ("m", None), ("m", "16UC1")])
def test_depth_reads_back_through_depth_from_msg(tmp_path, given, encoding, bigendian) -> None:
    millimetres = _depth_mm()
    metres = np.where(millimetres > 0, millimetres / 1000.0, np.nan).astype(np.float32)
    msg = depth_message(millimetres if given == "mm" else metres, START_NS, "depth_cam", encoding,
                        bigendian=bigendian)
    assert msg.encoding == encoding or (encoding is None and msg.encoding == ("16UC1" if given == "mm" else "32FC1"))
    assert msg.is_bigendian == int(bigendian) and msg.step == 7 * (2 if msg.encoding == "16UC1" else 4)
    with BagWriter(tmp_path / "bag") as bag:  # and through a real bag, as the node and build_map get it
        bag.write("/depth", START_NS, msg)
    with open_bag(tmp_path / "bag") as opened:
        raw = next(r for _, _, _, r in opened.messages(["/depth"]))
        read = opened.deserialize(raw, "sensor_msgs/msg/Image")
    back = depth_from_msg(read)
    assert read.header.frame_id == "depth_cam" and back.dtype == np.float32
    assert np.array_equal(np.isnan(back), millimetres == 0)
    assert np.allclose(back[millimetres > 0], metres[millimetres > 0], rtol=0, atol=1e-7)


def test_depth_in_metres_is_rounded_to_millimetres_for_16uc1() -> None:
    metres = np.array([[0.0004, 0.0006, 1.2344, 1.2346], [np.nan, np.inf, -1.0, 65.535]])
    msg = depth_message(metres, START_NS, encoding="16UC1")
    assert np.frombuffer(bytes(msg.data), "<u2").tolist() == [0, 1, 1234, 1235, 0, 0, 0, 65535]
    with pytest.raises(ValueError, match="65.536 m does not fit 16UC1"):
        depth_message(np.array([[65.536]]), START_NS, encoding="16UC1")


def test_bad_depth_input_is_named() -> None:
    with pytest.raises(ValueError, match="int32"):
        depth_message(np.zeros((4, 4), np.int32), START_NS)
    with pytest.raises(ValueError, match=r"\(4, 4, 1\)"):
        depth_message(np.zeros((4, 4, 1), np.uint16), START_NS)
    with pytest.raises(ValueError, match="'mono16'"):
        depth_message(np.zeros((4, 4), np.uint16), START_NS, encoding="mono16")  # type: ignore[arg-type]
