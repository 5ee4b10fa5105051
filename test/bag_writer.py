"""Write small, real rosbag2 recordings for the map tests (rosbags Writer, no ROS needed).

A synthetic drive: the robot moves along +x at ``speed`` m/s, turning slowly, while cameras record
Nordland images (one image per place, frame i of a camera shows place ``first_place + i``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.typesys import Stores, get_typestore

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
T = TYPESTORE.types
START_NS = 1_700_000_000 * 1_000_000_000
BASE_LAT, BASE_LON = 65.0, 13.0  # Nordland, UTM zone 33W


@dataclass
class Camera:
    topic: str
    season: str = "summer"  # which Nordland folder
    compressed: str | None = None  # None (raw), "jpeg" or "png"
    encoding: str = "rgb8"  # raw encoding: rgb8, bgr8, mono8
    pad: int = 0  # raw row padding bytes
    frame_id: str = "camera"


@dataclass
class Drive:
    """What to record."""

    cameras: list[Camera] = field(default_factory=lambda: [Camera("/cam_front")])
    num_frames: int = 12
    rate_hz: float = 2.0
    speed: float = 3.0  # m/s along the path
    first_place: int = 0
    places: list[int] | None = None  # Nordland place of each frame (default first_place + i)
    odom_topic: str | None = "/odom"
    odom_rate_hz: float = 20.0
    fix_topic: str | None = None
    pose_topic: str | None = None  # geometry_msgs/PoseStamped
    posecov_topic: str | None = None  # geometry_msgs/PoseWithCovarianceStamped
    time_offset_s: float = 0.0  # where on the route the drive starts (pose_at(t + offset))
    pose_lead_s: float = 0.5  # poses start this long before the first image and end after the last
    pose_gap: tuple[float, float] | None = None  # (start, end) seconds with no poses
    corrupt_frames: tuple[int, ...] = ()  # compressed frames whose bytes are garbage
    storage: str = "sqlite3"
    compress_zstd: bool = False


def nordland_image(root: Path, season: str, place: int) -> np.ndarray:
    """RGB uint8 image of a Nordland place (64x32)."""
    path = root / season / f"images-{(place + 1) * 10:05d}.png"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def pose_at(t: float, drive: Drive) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
    """Ground-truth pose at time t (s) since the drive's start: an arc in the x-y plane."""
    t = t + drive.time_offset_s
    yaw = 0.05 * t
    x = drive.speed * t
    y = 0.02 * drive.speed * t * t
    return (x, y, 0.5), (0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0))


def _header(stamp_ns: int, frame_id: str):
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
        frame_id=frame_id,
    )


def image_message(rgb: np.ndarray, camera: Camera, stamp_ns: int, corrupt: bool = False):
    header = _header(stamp_ns, camera.frame_id)
    if camera.compressed:
        ext = ".jpg" if camera.compressed == "jpeg" else ".png"
        data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].reshape(-1)
        if corrupt:
            data = np.frombuffer(b"\xff\xd8\xff\xe0 not a jpeg at all" * 3, np.uint8).copy()
        return T["sensor_msgs/msg/CompressedImage"](header=header, format=camera.compressed, data=data)
    if camera.encoding == "mono8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
    elif camera.encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    else:
        pixels = rgb
    height, width, channels = pixels.shape
    rows = np.zeros((height, width * channels + camera.pad), np.uint8)
    rows[:, : width * channels] = pixels.reshape(height, -1)
    return T["sensor_msgs/msg/Image"](
        header=header, height=height, width=width, encoding=camera.encoding, is_bigendian=0,
        step=rows.shape[1], data=rows.reshape(-1),
    )


def write_drive(path: Path, root: Path, drive: Drive) -> Path:
    """Record ``drive`` into a new rosbag2 folder at ``path``; returns ``path``."""
    plugin = StoragePlugin.MCAP if drive.storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(path, version=9, storage_plugin=plugin)
    if drive.compress_zstd:
        writer.set_compression(CompressionMode.FILE, CompressionFormat.ZSTD)
    messages: list[tuple[int, str, object, str]] = []
    for camera in drive.cameras:
        msgtype = "sensor_msgs/msg/CompressedImage" if camera.compressed else "sensor_msgs/msg/Image"
        for i in range(drive.num_frames):
            stamp = START_NS + int(round(i / drive.rate_hz * 1e9))
            place = drive.places[i] if drive.places is not None else drive.first_place + i
            rgb = nordland_image(root, camera.season, place)
            msg = image_message(rgb, camera, stamp, corrupt=i in drive.corrupt_frames)
            messages.append((stamp, camera.topic, msg, msgtype))
    duration = (drive.num_frames - 1) / drive.rate_hz
    n_poses = int((duration + 2 * drive.pose_lead_s) * drive.odom_rate_hz) + 1
    for j in range(n_poses):
        t = -drive.pose_lead_s + j / drive.odom_rate_hz
        if drive.pose_gap and drive.pose_gap[0] < t < drive.pose_gap[1]:
            continue
        stamp = START_NS + int(round(t * 1e9))
        (x, y, z), (qx, qy, qz, qw) = pose_at(t, drive)
        point = T["geometry_msgs/msg/Point"](x=x, y=y, z=z)
        quat = T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw)
        pose = T["geometry_msgs/msg/Pose"](position=point, orientation=quat)
        if drive.odom_topic:
            cov = np.zeros(36, np.float64)
            odom = T["nav_msgs/msg/Odometry"](
                header=_header(stamp, "odom"), child_frame_id="base_link",
                pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=cov),
                twist=T["geometry_msgs/msg/TwistWithCovariance"](
                    twist=T["geometry_msgs/msg/Twist"](
                        linear=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                        angular=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                    ),
                    covariance=cov,
                ),
            )
            messages.append((stamp, drive.odom_topic, odom, "nav_msgs/msg/Odometry"))
        if drive.pose_topic:
            msg = T["geometry_msgs/msg/PoseStamped"](header=_header(stamp, "map"), pose=pose)
            messages.append((stamp, drive.pose_topic, msg, "geometry_msgs/msg/PoseStamped"))
        if drive.posecov_topic:
            msg = T["geometry_msgs/msg/PoseWithCovarianceStamped"](
                header=_header(stamp, "map"),
                pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36, np.float64)),
            )
            messages.append((stamp, drive.posecov_topic, msg, "geometry_msgs/msg/PoseWithCovarianceStamped"))
        if drive.fix_topic:
            # Small-offset local tangent plane: ~111 km per degree of latitude.
            lat = BASE_LAT + y / 111_320.0
            lon = BASE_LON + x / (111_320.0 * math.cos(math.radians(BASE_LAT)))
            fix = T["sensor_msgs/msg/NavSatFix"](
                header=_header(stamp, "gps"),
                status=T["sensor_msgs/msg/NavSatStatus"](status=0, service=1),
                latitude=lat, longitude=lon, altitude=z, position_covariance=np.zeros(9),
                position_covariance_type=0,
            )
            messages.append((stamp, drive.fix_topic, fix, "sensor_msgs/msg/NavSatFix"))
    messages.sort(key=lambda m: m[0])
    with writer:
        connections = {}
        for _, topic, _, msgtype in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=TYPESTORE)
        for stamp, topic, msg, msgtype in messages:
            writer.write(connections[topic], stamp, TYPESTORE.serialize_cdr(msg, msgtype))
    return path


def storage_file(bag: Path) -> Path:
    """The single .db3/.mcap file of a bag folder."""
    files = sorted(bag.glob("*.db3")) + sorted(bag.glob("*.mcap"))
    assert len(files) == 1, files
    return files[0]


def save_tiny_model(folder: Path, config: dict, seed: int = 0) -> Path:
    """A randomly initialised tiny model saved as a project checkpoint folder (for --model)."""
    import torch

    from qaa_vpr_ros.model import build_model, save_checkpoint

    torch.manual_seed(seed)
    save_checkpoint(build_model(config, image_size=(56, 56)).eval(), folder)
    return folder


def distinct_places(model_folder: Path, root: Path, count: int, max_cosine: float = 0.99) -> list[int]:
    """Nordland places whose descriptors (summer and winter) the tiny random model tells apart.

    A random-weight model maps some different images to nearly the same descriptor; tests about
    the map machinery must not depend on such accidents, so they use places that stay distinct.
    """
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.model import load_model

    extractor = DescriptorExtractor(load_model(model_folder), device="cpu", batch_size=32)
    candidates = list(range(0, 2400, 7))[: 6 * count]
    per_season = [
        extractor.extract([nordland_image(root, season, p) for p in candidates]) for season in ("summer", "winter")
    ]
    chosen: list[int] = []
    for i in range(len(candidates)):
        if all(float(d[i] @ d[j]) < max_cosine for d in per_season for j in chosen):
            chosen.append(i)
            if len(chosen) == count:
                return [candidates[j] for j in chosen]
    raise RuntimeError(f"only {len(chosen)} distinct places found for the test model")

