"""image_from_msg on real rclpy messages, rosbags-deserialised messages and plain duck types."""
from __future__ import annotations

import array
import struct
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from qaa_vpr_ros.image_conversion import ImageDecodeError, image_from_msg, is_compressed

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
BagImage = TYPESTORE.types["sensor_msgs/msg/Image"]
BagCompressedImage = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]
BagHeader = TYPESTORE.types["std_msgs/msg/Header"]
BagTime = TYPESTORE.types["builtin_interfaces/msg/Time"]


def rclpy_types():
    try:
        from sensor_msgs.msg import CompressedImage, Image
    except ImportError:  # pragma: no cover - the dev venv has the ROS wheels
        pytest.skip("sensor_msgs (ROS 2 wheels) not importable")
    return Image, CompressedImage


def random_rgb(height: int = 6, width: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def rclpy_image(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False):
    Image, _ = rclpy_types()
    height = pixels.shape[0]
    rows = pixels.reshape(height, -1).view(np.uint8)
    padded = np.zeros((height, rows.shape[1] + pad), np.uint8)
    padded[:, : rows.shape[1]] = rows
    msg = Image()
    msg.height, msg.width = height, pixels.shape[1]
    msg.encoding, msg.is_bigendian = encoding, int(bigendian)
    msg.step = padded.shape[1]
    msg.data = padded.tobytes()
    return msg


def bag_image(pixels: np.ndarray, encoding: str, pad: int = 0):
    height = pixels.shape[0]
    rows = pixels.reshape(height, -1)
    padded = np.zeros((height, rows.shape[1] + pad), np.uint8)
    padded[:, : rows.shape[1]] = rows
    header = BagHeader(stamp=BagTime(sec=1, nanosec=2), frame_id="camera")
    return BagImage(
        header=header, height=height, width=pixels.shape[1], encoding=encoding, is_bigendian=0,
        step=padded.shape[1], data=padded.reshape(-1),
    )


@pytest.mark.parametrize("pad", [0, 5])
def test_rgb8_and_bgr8_round_trip_with_step_padding(pad):
    pixels = random_rgb()
    for encoding in ("rgb8", "bgr8"):
        decoded, kind = image_from_msg(rclpy_image(pixels, encoding, pad=pad))
        assert kind == encoding[:3]
        assert decoded.dtype == np.uint8 and decoded.shape == pixels.shape
        np.testing.assert_array_equal(decoded, pixels)


def test_alpha_is_dropped():
    rgba = np.concatenate([random_rgb(), np.full((6, 8, 1), 7, np.uint8)], axis=2)
    decoded, kind = image_from_msg(rclpy_image(rgba, "rgba8", pad=3))
    assert kind == "rgb"
    np.testing.assert_array_equal(decoded, rgba[:, :, :3])
    decoded, kind = image_from_msg(rclpy_image(rgba, "bgra8"))
    assert kind == "bgr"
    np.testing.assert_array_equal(decoded, rgba[:, :, :3])


def test_mono8_is_returned_as_two_dimensional():
    mono = random_rgb()[:, :, 0].copy()
    decoded, kind = image_from_msg(rclpy_image(mono, "mono8", pad=2))
    assert kind == "mono" and decoded.shape == (6, 8)
    np.testing.assert_array_equal(decoded, mono)


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_is_scaled_to_eight_bit_honouring_endianness(bigendian):
    values = np.array([[0, 257, 65535, 32768]], np.uint16)
    wire = values.astype(">u2" if bigendian else "<u2")
    Image, _ = rclpy_types()
    msg = Image()
    msg.height, msg.width, msg.encoding, msg.step = 1, 4, "mono16", 10
    msg.is_bigendian = int(bigendian)
    msg.data = wire.tobytes() + b"\x00\x00"  # 2 bytes of row padding
    decoded, kind = image_from_msg(msg)
    assert kind == "mono"
    np.testing.assert_array_equal(decoded, [[0, 1, 255, 128]])


def pack_yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """RGB -> packed 4:2:2 (Y, chroma averaged over pixel pairs), 2 bytes per pixel."""
    r, g, b = (rgb[:, :, i].astype(np.float64) for i in range(3))
    # BT.601 video range, what USB cameras send.
    y = np.round(16 + 0.257 * r + 0.504 * g + 0.098 * b).astype(np.int32)
    cb = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    cr = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    u = np.round((cb[:, 0::2] + cb[:, 1::2]) / 2).astype(np.int32)
    v = np.round((cr[:, 0::2] + cr[:, 1::2]) / 2).astype(np.int32)
    packed = np.zeros((rgb.shape[0], rgb.shape[1] // 2, 4), np.uint8)
    if order == "uyvy":
        packed[..., 0], packed[..., 1], packed[..., 2], packed[..., 3] = u, y[:, 0::2], v, y[:, 1::2]
    else:
        packed[..., 0], packed[..., 1], packed[..., 2], packed[..., 3] = y[:, 0::2], u, y[:, 1::2], v
    return packed.reshape(rgb.shape[0], rgb.shape[1], 2)


@pytest.mark.parametrize(("encoding", "order"), [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuyv", "yuyv"),
                                                 ("yuv422_yuy2", "yuyv")])
def test_yuv422_variants_decode_to_rgb(encoding, order):
    rgb = np.zeros((4, 8, 3), np.uint8)
    rgb[:, :4] = (200, 40, 30)
    rgb[:, 4:] = (20, 90, 220)
    decoded, kind = image_from_msg(rclpy_image(pack_yuv422(rgb, order), encoding, pad=4))
    assert kind == "rgb" and decoded.shape == rgb.shape
    assert np.abs(decoded.astype(int) - rgb).max() <= 6


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns_give_the_right_colour(pattern):
    colour = {"r": 220, "g": 120, "b": 30}
    mosaic = np.zeros((8, 8), np.uint8)
    for (dy, dx), channel in zip([(0, 0), (0, 1), (1, 0), (1, 1)], pattern, strict=True):
        mosaic[dy::2, dx::2] = colour[channel]
    decoded, kind = image_from_msg(rclpy_image(mosaic, f"bayer_{pattern}8"))
    assert kind == "rgb"
    np.testing.assert_allclose(decoded[3, 3], (220, 120, 30), atol=2)


def test_rosbags_deserialised_image_is_accepted():
    pixels = random_rgb(5, 7, seed=3)
    decoded, kind = image_from_msg(bag_image(pixels, "rgb8", pad=3))
    assert kind == "rgb"
    np.testing.assert_array_equal(decoded, pixels)
    # After a CDR round trip, as the map builder sees it.
    msg = bag_image(pixels, "bgr8", pad=1)
    raw = TYPESTORE.serialize_cdr(msg, BagImage.__msgtype__)
    decoded, kind = image_from_msg(TYPESTORE.deserialize_cdr(raw, BagImage.__msgtype__))
    assert kind == "bgr"
    np.testing.assert_array_equal(decoded, pixels)


@pytest.mark.parametrize("container", [bytes, bytearray, list, lambda b: array.array("B", b), np.frombuffer])
def test_data_container_types(container):
    pixels = random_rgb(3, 4)
    data = container(pixels.tobytes()) if container is not np.frombuffer else np.frombuffer(
        pixels.tobytes(), np.uint8)
    msg = SimpleNamespace(encoding="rgb8", height=3, width=4, step=12, is_bigendian=0, data=data)
    decoded, _ = image_from_msg(msg)
    np.testing.assert_array_equal(decoded, pixels)


def test_output_is_an_owned_copy():
    msg = rclpy_image(random_rgb(), "rgb8")
    before = bytes(msg.data)
    decoded, _ = image_from_msg(msg)
    decoded[:] = 0
    assert decoded.flags.c_contiguous and decoded.flags.writeable
    assert bytes(msg.data) == before


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_compressed_rclpy_and_rosbags(ext):
    _, CompressedImage = rclpy_types()
    pixels = np.zeros((16, 24, 3), np.uint8)
    pixels[:, :12] = (10, 200, 60)  # RGB
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage()
    msg.format = "rgb8; jpeg compressed bgr8" if ext == ".jpg" else "png"
    msg.data = buffer.tobytes()
    bag_msg = BagCompressedImage(header=BagHeader(stamp=BagTime(sec=0, nanosec=0), frame_id="c"),
                                 format=msg.format, data=buffer.reshape(-1))
    for message in (msg, bag_msg):
        decoded, kind = image_from_msg(message)
        assert kind == "bgr" and decoded.shape == pixels.shape
        error = np.abs(decoded[:, :, ::-1].astype(int) - pixels)
        if ext == ".png":
            assert error.max() == 0
        else:  # JPEG: close away from the colour edge at column 12 (chroma is subsampled across it)
            assert error[:, list(range(6)) + list(range(18, 24))].max() <= 8


def test_compressed_mono_and_sixteen_bit_png():
    mono = np.arange(64, dtype=np.uint8).reshape(8, 8)
    decoded, kind = image_from_msg(SimpleNamespace(format="png", data=cv2.imencode(".png", mono)[1]))
    assert kind == "mono"
    np.testing.assert_array_equal(decoded, mono)
    deep = np.full((4, 4), 65535, np.uint16)
    png16 = cv2.imencode(".png", deep)[1].tobytes()
    decoded, kind = image_from_msg(SimpleNamespace(format="png", data=png16))
    assert kind == "mono" and decoded.dtype == np.uint8 and (decoded == 255).all()


def test_is_compressed():
    Image, CompressedImage = rclpy_types()
    assert is_compressed("sensor_msgs/msg/CompressedImage")
    assert is_compressed("sensor_msgs/CompressedImage")
    assert not is_compressed("sensor_msgs/msg/Image")
    assert is_compressed(CompressedImage) and is_compressed(CompressedImage())
    assert not is_compressed(Image) and not is_compressed(Image())
    assert is_compressed(BagCompressedImage) and not is_compressed(BagImage)
    assert is_compressed(SimpleNamespace(format="jpeg", data=b""))


# --- bad messages: one exception type, a reason in the message ---------------------------------
def test_unknown_encoding_is_refused_with_the_list():
    msg = rclpy_image(random_rgb(), "rgb8")
    msg.encoding = "32FC1"
    with pytest.raises(ImageDecodeError, match=r"unsupported image encoding '32FC1'.*rgb8"):
        image_from_msg(msg)


def test_data_shorter_than_step_times_height():
    msg = rclpy_image(random_rgb(), "rgb8", pad=2)
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(ImageDecodeError, match="shorter than step x height"):
        image_from_msg(msg)


def test_step_smaller_than_a_row():
    msg = rclpy_image(random_rgb(), "rgb8")
    msg.step = 8 * 3 - 1
    with pytest.raises(ImageDecodeError, match="step 23 is smaller than width x bytes per pixel"):
        image_from_msg(msg)


def test_undecodable_jpeg():
    _, CompressedImage = rclpy_types()
    msg = CompressedImage()
    msg.format = "jpeg"
    msg.data = b"\xff\xd8\xff\xe0 certainly not a jpeg"
    with pytest.raises(ImageDecodeError, match="jpeg"):
        image_from_msg(msg)
    msg.data = b""
    with pytest.raises(ImageDecodeError, match="no data"):
        image_from_msg(msg)


def test_absurd_raw_size_is_refused_before_allocating():
    msg = SimpleNamespace(encoding="rgb8", height=100_000, width=100_000, step=300_000, is_bigendian=0,
                          data=b"\x00" * 10)
    with pytest.raises(ImageDecodeError, match="more than the limit"):
        image_from_msg(msg)
    small = rclpy_image(random_rgb(), "rgb8")
    with pytest.raises(ImageDecodeError, match="more than the limit of 40"):
        image_from_msg(small, max_pixels=40)


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 16)  # a few rows' worth; decoding would need far more
    data_chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return b"\x89PNG\r\n\x1a\n" + chunk + data_chunk


def test_absurd_compressed_size_is_refused_from_the_header():
    msg = SimpleNamespace(format="png", data=png_header_only(100_000, 100_000))
    with pytest.raises(ImageDecodeError, match="more pixels than the limit"):
        image_from_msg(msg)
    msg = SimpleNamespace(format="png", data=png_header_only(10_000, 6_000))  # 60 MP > 50 MP default
    with pytest.raises(ImageDecodeError, match="claims 10000 x 6000 = 60000000 pixels, more than the limit"):
        image_from_msg(msg)


def test_error_is_a_value_error():
    assert issubclass(ImageDecodeError, ValueError)
    with pytest.raises(ValueError):
        image_from_msg(SimpleNamespace(encoding="rgb8", height=0, width=4, step=12, is_bigendian=0, data=b""))
