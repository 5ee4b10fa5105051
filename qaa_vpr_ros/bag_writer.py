"""Write rosbag2 recordings (.db3 or .mcap) of cameras, depth, odometry and camera_info, without ROS.

The one bag writer of the project: the demos, the benchmarks and the tests record their drives
with it, and a user can make a small test bag for ``build_map`` the same way::

    with BagWriter(Path("drive"), storage="mcap") as bag:
        bag.write("/odom", stamp_ns, odometry_message(stamp_ns, (x, y, 0.0), (0.0, 0.0, 0.0, 1.0)))
        bag.write("/camera/image_raw", stamp_ns, image_message(rgb, stamp_ns))

Messages are rosbags' ROS 2 Humble types (what ``qaa_vpr_ros.bags`` reads); stamps are integer
nanoseconds; images are RGB uint8 (H, W, 3) arrays, depth images uint16 millimetres or float metres (H, W).
Messages are written in the order given.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.typesys import Stores, get_typestore

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
_T = TYPESTORE.types

Storage = Literal["sqlite3", "mcap"]
Vector3 = tuple[float, float, float]
Quaternion = tuple[float, float, float, float]  # x, y, z, w


def header(stamp_ns: int, frame_id: str) -> Any:
    """std_msgs/Header at ``stamp_ns`` (nanoseconds since the epoch)."""
    return _T["std_msgs/msg/Header"](
        stamp=_T["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
        frame_id=frame_id,
    )


def image_message(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera", *, encoding: str = "rgb8",
                  compressed: Literal["jpeg", "png"] | None = None, jpeg_quality: int | None = None,
                  pad: int = 0) -> Any:
    """sensor_msgs/Image (``encoding`` rgb8, bgr8 or mono8; ``pad`` bytes at the end of each row) of
    an RGB uint8 (H, W, 3) image, or sensor_msgs/CompressedImage when ``compressed`` names a format."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image_message: expected an RGB uint8 (H, W, 3) array, got {rgb.dtype} {rgb.shape}")
    head = header(stamp_ns, frame_id)
    if compressed is not None:
        if compressed not in ("jpeg", "png"):
            raise ValueError(f"image_message: compressed must be 'jpeg' or 'png', not {compressed!r}")
        options = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if jpeg_quality is not None else []
        ok, data = cv2.imencode(".jpg" if compressed == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                options)
        if not ok:
            raise ValueError(f"image_message: OpenCV could not encode a {rgb.shape} image as {compressed}")
        return _T["sensor_msgs/msg/CompressedImage"](header=head, format=compressed, data=data.reshape(-1))
    if encoding == "mono8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding == "rgb8":
        pixels = rgb
    else:
        raise ValueError(f"image_message: encoding must be rgb8, bgr8 or mono8, not {encoding!r}")
    height, width, channels = pixels.shape
    if pad:
        rows = np.zeros((height, width * channels + pad), np.uint8)
        rows[:, : width * channels] = pixels.reshape(height, -1)
    else:
        rows = np.ascontiguousarray(pixels).reshape(height, -1)
    return _T["sensor_msgs/msg/Image"](header=head, height=height, width=width, encoding=encoding, is_bigendian=0,
                                       step=rows.shape[1], data=rows.reshape(-1))


DepthEncoding = Literal["16UC1", "32FC1"]
MAX_DEPTH_MM = 65535  # what 16UC1 holds


def depth_message(depth: np.ndarray, stamp_ns: int, frame_id: str = "camera", encoding: DepthEncoding | None = None,
                  *, bigendian: bool = False) -> Any:
    """sensor_msgs/Image of a depth image (REP 118), what ``image_conversion.depth_from_msg`` reads.

    ``depth``: uint16 (H, W) millimetres (0 = no depth) -> ``16UC1``, or float32/float64 (H, W)
    metres (NaN = no depth) -> ``32FC1``. ``encoding`` forces the other one: ``"16UC1"`` from
    metres rounds to whole millimetres (NaN, inf and values <= 0 -> 0); ``"32FC1"`` from
    millimetres divides by 1000 (0 -> NaN). ``bigendian`` writes the samples big-endian.

    Raises ValueError for another dtype or shape, an unknown encoding, or metres beyond 65.535 m
    asked for as ``16UC1``."""
    depth = np.asarray(depth)
    if depth.ndim != 2 or min(depth.shape) == 0 or not (depth.dtype == np.uint16 or depth.dtype.kind == "f"):
        raise ValueError(f"depth_message: expected a uint16 (H, W) millimetre or float (H, W) metre array, got "
                         f"{depth.dtype} {depth.shape}")
    if encoding is None:
        encoding = "16UC1" if depth.dtype == np.uint16 else "32FC1"
    if encoding == "16UC1":
        if depth.dtype == np.uint16:
            samples = depth
        else:
            metres = depth.astype(np.float64)
            valid = np.isfinite(metres) & (metres > 0)
            millimetres = np.rint(np.where(valid, metres, 0.0) * 1000.0)
            if millimetres.max() > MAX_DEPTH_MM:
                raise ValueError(f"depth_message: {float(metres[valid].max()):.3f} m does not fit 16UC1 (uint16 "
                                 f"millimetres, at most {MAX_DEPTH_MM / 1000:.3f} m); write it as 32FC1")
            samples = millimetres.astype(np.uint16)
        dtype = ">u2" if bigendian else "<u2"
    elif encoding == "32FC1":
        if depth.dtype == np.uint16:
            samples = depth.astype(np.float32) / np.float32(1000.0)
            samples[depth == 0] = np.nan
        else:
            samples = depth.astype(np.float32)
        dtype = ">f4" if bigendian else "<f4"
    else:
        raise ValueError(f"depth_message: encoding must be '16UC1' (millimetres) or '32FC1' (metres), not {encoding!r}")
    height, width = samples.shape
    rows = np.ascontiguousarray(samples, dtype=dtype).view(np.uint8).reshape(height, -1)
    return _T["sensor_msgs/msg/Image"](header=header(stamp_ns, frame_id), height=height, width=width,
                                       encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1],
                                       data=rows.reshape(-1))


def odometry_message(stamp_ns: int, position: Vector3, orientation: Quaternion = (0.0, 0.0, 0.0, 1.0),
                     frame_id: str = "odom", child_frame_id: str = "base_link") -> Any:
    """nav_msgs/Odometry: the pose of ``child_frame_id`` in ``frame_id``; zero twist and covariances."""
    x, y, z = (float(v) for v in position)
    qx, qy, qz, qw = (float(v) for v in orientation)
    zero3 = _T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
    pose = _T["geometry_msgs/msg/Pose"](position=_T["geometry_msgs/msg/Point"](x=x, y=y, z=z),
                                        orientation=_T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw))
    return _T["nav_msgs/msg/Odometry"](
        header=header(stamp_ns, frame_id), child_frame_id=child_frame_id,
        pose=_T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36, np.float64)),
        twist=_T["geometry_msgs/msg/TwistWithCovariance"](
            twist=_T["geometry_msgs/msg/Twist"](linear=zero3, angular=zero3), covariance=np.zeros(36, np.float64)),
    )


def camera_info_message(stamp_ns: int, width: int, height: int, k: tuple[float, float, float, float],
                        frame_id: str = "camera", distortion: tuple[float, ...] = ()) -> Any:
    """sensor_msgs/CameraInfo of a pinhole camera, ``k`` = (fx, fy, cx, cy); plumb_bob when
    ``distortion`` coefficients are given."""
    fx, fy, cx, cy = (float(v) for v in k)
    intrinsics = np.array([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
    projection = np.array([fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])
    roi = _T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return _T["sensor_msgs/msg/CameraInfo"](
        header=header(stamp_ns, frame_id), height=height, width=width,
        distortion_model="plumb_bob" if distortion else "", d=np.asarray(distortion, np.float64), k=intrinsics,
        r=np.eye(3).reshape(-1), p=projection, binning_x=0, binning_y=0, roi=roi,
    )


class BagWriter:
    """A new rosbag2 folder at ``path`` (rosbag2 format version 9); a context manager.

    ``storage``: "sqlite3" (.db3) or "mcap"; ``compress_zstd``: zstd file compression;
    ``overwrite``: remove an existing folder at ``path`` first (otherwise that is an error, as in
    ``ros2 bag record``). A topic's connection is made at its first message, or declared in
    advance with :meth:`add_topic` (declaration order = connection order).
    """

    def __init__(self, path: Path, storage: Storage = "sqlite3", *, compress_zstd: bool = False,
                 overwrite: bool = False) -> None:
        if storage not in ("sqlite3", "mcap"):
            raise ValueError(f"BagWriter: storage must be 'sqlite3' or 'mcap', not {storage!r}")
        self.path = Path(path)
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        if compress_zstd:
            self._writer.set_compression(CompressionMode.FILE, CompressionFormat.ZSTD)
        self._connections: dict[str, Any] = {}
        self._open = False

    def __enter__(self) -> BagWriter:
        self._writer.open()
        self._open = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._open = False
        self._writer.close()

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Declare ``topic`` with type ``msgtype`` (e.g. "sensor_msgs/msg/Image") before its first message."""
        if not self._open:
            raise RuntimeError(f"BagWriter: {self.path} is not open; use it as a context manager")
        known = self._connections.get(topic)
        if known is not None:
            if known.msgtype != msgtype:
                raise ValueError(f"BagWriter: topic {topic} is {known.msgtype} in {self.path}, not {msgtype}")
            return
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=TYPESTORE)

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None:
        """Append ``msg`` (a rosbags message, e.g. from :func:`image_message`) on ``topic`` at ``stamp_ns``."""
        msgtype = msg.__msgtype__
        self.write_serialized(topic, msgtype, stamp_ns, TYPESTORE.serialize_cdr(msg, msgtype))

    def write_serialized(self, topic: str, msgtype: str, stamp_ns: int, data: bytes) -> None:
        """Append already CDR-serialised bytes (or, in a test, bytes that are deliberately not CDR)."""
        self.add_topic(topic, msgtype)
        self._writer.write(self._connections[topic], int(stamp_ns), data)


def storage_file(bag: Path) -> Path:
    """The single .db3/.mcap file of a bag folder written with one storage file."""
    files = sorted(Path(bag).glob("*.db3")) + sorted(Path(bag).glob("*.mcap"))
    if len(files) != 1:
        raise ValueError(f"{bag}: expected one .db3 or .mcap file, found {[f.name for f in files]}")
    return files[0]
