"""ROS image messages -> numpy arrays, for the node and the map builder alike.

Works on rclpy message objects and on rosbags-deserialised ones (duck typing):

- ``sensor_msgs/Image``: ``.encoding .height .width .step .is_bigendian .data``
- ``sensor_msgs/CompressedImage``: ``.format .data``

``.data`` may be a numpy array, ``bytes``/``bytearray``/``memoryview``, ``array.array`` or a list.
Every failure raises :class:`ImageDecodeError` with the reason; sizes are checked before anything
is allocated, so a message claiming an absurd size cannot exhaust memory.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "DEPTH_ENCODINGS",
    "SUPPORTED_ENCODINGS",
    "depth_from_msg",
    "image_from_msg",
    "is_compressed",
]

# 50 megapixels: larger than any camera a robot carries, far smaller than a memory bomb.
DEFAULT_MAX_PIXELS = 50_000_000


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into pixels (the message says why)."""


@dataclass(frozen=True)
class _RawLayout:
    channels: int  # samples per pixel in the message
    sample_bytes: int  # 1 or 2
    output: str  # "rgb" | "bgr" | "mono" | "yuyv" | "uyvy" | "bayer_*"


_RAW_LAYOUTS: dict[str, _RawLayout] = {
    "rgb8": _RawLayout(3, 1, "rgb"),
    "bgr8": _RawLayout(3, 1, "bgr"),
    "rgba8": _RawLayout(4, 1, "rgb"),
    "bgra8": _RawLayout(4, 1, "bgr"),
    "rgb16": _RawLayout(3, 2, "rgb"),
    "bgr16": _RawLayout(3, 2, "bgr"),
    "rgba16": _RawLayout(4, 2, "rgb"),
    "bgra16": _RawLayout(4, 2, "bgr"),
    "mono8": _RawLayout(1, 1, "mono"),
    "8uc1": _RawLayout(1, 1, "mono"),
    "mono16": _RawLayout(1, 2, "mono"),
    "16uc1": _RawLayout(1, 2, "mono"),
    "8uc3": _RawLayout(3, 1, "bgr"),  # OpenCV convention
    "8uc4": _RawLayout(4, 1, "bgr"),
    # ROS "yuv422" is UYVY byte order; "yuv422_yuy2" is YUYV.
    "yuv422": _RawLayout(2, 1, "uyvy"),
    "uyvy": _RawLayout(2, 1, "uyvy"),
    "yuv422_yuy2": _RawLayout(2, 1, "yuyv"),
    "yuyv": _RawLayout(2, 1, "yuyv"),
    "bayer_rggb8": _RawLayout(1, 1, "bayer_rggb"),
    "bayer_bggr8": _RawLayout(1, 1, "bayer_bggr"),
    "bayer_gbrg8": _RawLayout(1, 1, "bayer_gbrg"),
    "bayer_grbg8": _RawLayout(1, 1, "bayer_grbg"),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(sorted(_RAW_LAYOUTS))

_YUV_TO_RGB = {"uyvy": cv2.COLOR_YUV2RGB_UYVY, "yuyv": cv2.COLOR_YUV2RGB_YUYV}
# OpenCV names a Bayer pattern by the 2x2 block starting at pixel (1, 1), ROS by the one at (0, 0).
_BAYER_TO_RGB = {
    "bayer_rggb": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg": cv2.COLOR_BayerGB2RGB,
}


def is_compressed(msg_or_typename: Any) -> bool:
    """True for ``sensor_msgs/CompressedImage`` given a type name, a message class or a message.

    Type names may be ``sensor_msgs/msg/CompressedImage`` or ``sensor_msgs/CompressedImage``.
    """
    if isinstance(msg_or_typename, str):
        return msg_or_typename.rstrip("/").split("/")[-1] == "CompressedImage"
    msgtype = getattr(msg_or_typename, "__msgtype__", None)  # rosbags messages and classes
    if isinstance(msgtype, str):
        return is_compressed(msgtype)
    cls = msg_or_typename if isinstance(msg_or_typename, type) else type(msg_or_typename)
    if cls.__name__ in ("CompressedImage", "Image"):
        return cls.__name__ == "CompressedImage"
    return hasattr(msg_or_typename, "format") and not hasattr(msg_or_typename, "encoding")


def image_from_msg(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Decode a raw or compressed image message.

    Returns ``(pixels, encoding)``: ``pixels`` is an owned, C-contiguous uint8 array, H x W x 3 for
    encoding ``"rgb"``/``"bgr"`` or H x W for ``"mono"``. Alpha is dropped, 16-bit samples are
    scaled to 8 bit (x 255/65535), YUV 4:2:2 and Bayer are converted to RGB.

    Raises:
        ImageDecodeError: unknown encoding/format, inconsistent size fields, data shorter than
            ``step * height``, undecodable compressed data, or more than ``max_pixels`` pixels.
    """
    if is_compressed(msg):
        return _decode_compressed(msg, max_pixels)
    return _decode_raw(msg, max_pixels)


DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
"""Depth image encodings :func:`depth_from_msg` reads: 16-bit millimetres (``16UC1``, ``mono16``) or
32-bit float metres (``32FC1``), REP 118."""


def depth_from_msg(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/Image`` depth image -> float32 H x W metres (NaN where there is no depth:
    0 millimetres, NaN, inf or a negative value).

    Raises:
        ImageDecodeError: a compressed message, an encoding not in :data:`DEPTH_ENCODINGS`,
            inconsistent size fields, too short data, or more than ``max_pixels`` pixels.
    """
    if is_compressed(msg):
        raise ImageDecodeError("a CompressedImage is not a depth image this node reads: publish the depth as "
                               f"sensor_msgs/Image ({', '.join(DEPTH_ENCODINGS)})")
    try:
        encoding = str(msg.encoding).strip()
        height, width, step = int(msg.height), int(msg.width), int(msg.step)
        bigendian = bool(msg.is_bigendian)
        data = msg.data
    except AttributeError as err:
        raise ImageDecodeError(f"not a sensor_msgs/Image: missing field {err.name!r}") from err
    sample = {"16uc1": 2, "mono16": 2, "32fc1": 4}.get(encoding.lower())
    if sample is None:
        raise ImageDecodeError(f"unsupported depth encoding {encoding!r}; supported: {', '.join(DEPTH_ENCODINGS)} "
                               "(REP 118: uint16 millimetres or float32 metres)")
    _check_pixels(height, width, max_pixels, f"{encoding} depth image")
    if step < width * sample:
        raise ImageDecodeError(f"{encoding} depth image step {step} is smaller than width x {sample} "
                               f"= {width * sample}")
    length = _data_length(data)
    if length < step * height:
        raise ImageDecodeError(f"{encoding} depth image data has {length} bytes, shorter than step x height "
                               f"= {step} x {height} = {step * height}")
    rows = _byte_view(data)[: step * height].reshape(height, step)[:, : width * sample]
    order = ">" if bigendian else "<"
    if sample == 2:
        millimetres = np.ascontiguousarray(rows).view(f"{order}u2").reshape(height, width)
        depth = millimetres.astype(np.float32) / np.float32(1000.0)
        depth[millimetres == 0] = np.nan
    else:
        depth = np.ascontiguousarray(rows).view(f"{order}f4").reshape(height, width).astype(np.float32)
        depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def _byte_view(data: Any) -> np.ndarray:
    """``.data`` as a 1-D uint8 array without copying where the buffer protocol allows."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageDecodeError(f"image data has dtype {data.dtype}, expected uint8")
        return data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    try:
        view = memoryview(data)  # array.array and other buffer objects
    except TypeError:
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)  # list of ints
        except (TypeError, ValueError, OverflowError) as err:
            raise ImageDecodeError(f"image data of type {type(data).__name__} is not bytes") from err
    if view.itemsize != 1:
        raise ImageDecodeError(f"image data has item size {view.itemsize}, expected bytes")
    return np.frombuffer(view, dtype=np.uint8)


def _data_length(data: Any) -> int:
    if isinstance(data, np.ndarray):
        return int(data.size)
    return len(data)


def _check_pixels(height: int, width: int, max_pixels: int, what: str) -> None:
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"{what} has an empty size {width} x {height} (width x height)")
    if height * width > max_pixels:
        raise ImageDecodeError(
            f"{what} claims {width} x {height} = {height * width} pixels, more than the limit of "
            f"{max_pixels}; raise max_pixels if this camera really is that large"
        )


def _decode_raw(msg: Any, max_pixels: int) -> tuple[np.ndarray, str]:
    try:
        encoding_name = str(msg.encoding)
        height, width, step = int(msg.height), int(msg.width), int(msg.step)
        bigendian = bool(msg.is_bigendian)
        data = msg.data
    except AttributeError as err:
        raise ImageDecodeError(f"not a sensor_msgs/Image: missing field {err.name!r}") from err
    layout = _RAW_LAYOUTS.get(encoding_name.strip().lower())
    if layout is None:
        raise ImageDecodeError(
            f"unsupported image encoding {encoding_name!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    _check_pixels(height, width, max_pixels, f"{encoding_name} image")
    row_bytes = width * layout.channels * layout.sample_bytes
    if step < row_bytes:
        raise ImageDecodeError(
            f"{encoding_name} image step {step} is smaller than width x bytes per pixel "
            f"= {width} x {layout.channels * layout.sample_bytes} = {row_bytes}"
        )
    needed = step * height
    length = _data_length(data)
    if length < needed:
        raise ImageDecodeError(
            f"{encoding_name} image data has {length} bytes, shorter than step x height "
            f"= {step} x {height} = {needed}"
        )
    if layout.output in _YUV_TO_RGB and width % 2:
        raise ImageDecodeError(f"{encoding_name} image width {width} is odd; YUV 4:2:2 needs pairs")

    flat = _byte_view(data)[:needed]
    rows = flat.reshape(height, step)[:, :row_bytes]  # drop the per-row padding
    if layout.sample_bytes == 2:
        samples = rows.view(">u2" if bigendian else "<u2").reshape(height, width, layout.channels)
        # Round to nearest: 65535 -> 255, the cv_bridge scaling of 16-bit to 8-bit images.
        pixels = ((samples.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    else:
        pixels = rows.reshape(height, width, layout.channels)

    if layout.output in _YUV_TO_RGB:
        return cv2.cvtColor(np.ascontiguousarray(pixels), _YUV_TO_RGB[layout.output]), "rgb"
    if layout.output in _BAYER_TO_RGB:
        return cv2.cvtColor(np.ascontiguousarray(pixels[:, :, 0]), _BAYER_TO_RGB[layout.output]), "rgb"
    # Copy: the result must not alias the message buffer (which the caller may reuse).
    if layout.output == "mono":
        return np.array(pixels[:, :, 0], order="C", copy=True), "mono"
    return np.array(pixels[:, :, :3], order="C", copy=True), layout.output


def _compressed_size(buffer: bytes, fmt: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the compressed stream's header, without decoding the pixels."""
    from PIL import Image as PILImage  # header parsing only; OpenCV decodes

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(buffer)) as header:
                return header.size
    except PILImage.DecompressionBombError as err:
        raise ImageDecodeError(
            f"compressed image (format {fmt!r}) claims more pixels than the limit of {max_pixels}: {err}"
        ) from err
    except Exception as err:  # PIL raises several types for garbage
        raise ImageDecodeError(
            f"compressed image (format {fmt!r}, {len(buffer)} bytes) is not a readable image: {err}"
        ) from err


def _decode_compressed(msg: Any, max_pixels: int) -> tuple[np.ndarray, str]:
    try:
        fmt = str(msg.format)
        data = msg.data
    except AttributeError as err:
        raise ImageDecodeError(f"not a sensor_msgs/CompressedImage: missing field {err.name!r}") from err
    if "compresseddepth" in fmt.lower():
        raise ImageDecodeError(f"compressed depth images (format {fmt!r}) are not camera images")
    buffer = _byte_view(data)
    if buffer.size == 0:
        raise ImageDecodeError(f"compressed image (format {fmt!r}) has no data")
    width, height = _compressed_size(buffer.tobytes(), fmt, max_pixels)
    _check_pixels(height, width, max_pixels, f"compressed image (format {fmt!r})")
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise ImageDecodeError(f"compressed image (format {fmt!r}, {buffer.size} bytes) cannot be decoded")
    if decoded.dtype == np.uint16:
        decoded = ((decoded.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif decoded.dtype != np.uint8:
        raise ImageDecodeError(f"compressed image (format {fmt!r}) decodes to {decoded.dtype}, not 8/16 bit")
    if decoded.ndim == 2:
        return np.ascontiguousarray(decoded), "mono"
    if decoded.shape[2] == 1:
        return np.ascontiguousarray(decoded[:, :, 0]), "mono"
    return np.ascontiguousarray(decoded[:, :, :3]), "bgr"  # OpenCV decodes colour as BGR(A)
