"""Synthetic drives for the map tests, recorded as real rosbag2 folders with the package's one bag
writer (``qaa_vpr_ros.bag_writer``, no ROS needed).

A synthetic drive: the robot moves along +x at ``speed`` m/s, turning slowly, while cameras record
Nordland images (one image per place, frame i of a camera shows place ``first_place + i``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from qaa_vpr_ros.bag_writer import TYPESTORE, BagWriter, header, image_message, odometry_message, storage_file

__all__ = ["TYPESTORE", "Camera", "Drive", "distinct_places", "nordland_image", "pose_at", "save_tiny_model",
           "storage_file", "write_drive"]
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


def camera_image(rgb: np.ndarray, camera: Camera, stamp_ns: int, corrupt: bool = False):
    """The message ``camera`` records for ``rgb``; ``corrupt``: compressed bytes that are no image."""
    msg = image_message(rgb, stamp_ns, camera.frame_id, encoding=camera.encoding, compressed=camera.compressed,
                        pad=camera.pad)
    if camera.compressed and corrupt:
        msg.data = np.frombuffer(b"\xff\xd8\xff\xe0 not a jpeg at all" * 3, np.uint8).copy()
    return msg


def write_drive(path: Path, root: Path, drive: Drive) -> Path:
    """Record ``drive`` into a new rosbag2 folder at ``path``; returns ``path``."""
    messages: list[tuple[int, str, object]] = []
    for camera in drive.cameras:
        for i in range(drive.num_frames):
            stamp = START_NS + int(round(i / drive.rate_hz * 1e9))
            place = drive.places[i] if drive.places is not None else drive.first_place + i
            rgb = nordland_image(root, camera.season, place)
            messages.append((stamp, camera.topic, camera_image(rgb, camera, stamp, corrupt=i in drive.corrupt_frames)))
    duration = (drive.num_frames - 1) / drive.rate_hz
    n_poses = int((duration + 2 * drive.pose_lead_s) * drive.odom_rate_hz) + 1
    for j in range(n_poses):
        t = -drive.pose_lead_s + j / drive.odom_rate_hz
        if drive.pose_gap and drive.pose_gap[0] < t < drive.pose_gap[1]:
            continue
        stamp = START_NS + int(round(t * 1e9))
        (x, y, z), quaternion = pose_at(t, drive)
        odom = odometry_message(stamp, (x, y, z), quaternion)
        if drive.odom_topic:
            messages.append((stamp, drive.odom_topic, odom))
        if drive.pose_topic:
            messages.append((stamp, drive.pose_topic,
                             T["geometry_msgs/msg/PoseStamped"](header=header(stamp, "map"), pose=odom.pose.pose)))
        if drive.posecov_topic:
            msg = T["geometry_msgs/msg/PoseWithCovarianceStamped"](
                header=header(stamp, "map"),
                pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=odom.pose.pose,
                                                               covariance=np.zeros(36, np.float64)),
            )
            messages.append((stamp, drive.posecov_topic, msg))
        if drive.fix_topic:
            # Small-offset local tangent plane: ~111 km per degree of latitude.
            lat = BASE_LAT + y / 111_320.0
            lon = BASE_LON + x / (111_320.0 * math.cos(math.radians(BASE_LAT)))
            fix = T["sensor_msgs/msg/NavSatFix"](
                header=header(stamp, "gps"),
                status=T["sensor_msgs/msg/NavSatStatus"](status=0, service=1),
                latitude=lat, longitude=lon, altitude=z, position_covariance=np.zeros(9),
                position_covariance_type=0,
            )
            messages.append((stamp, drive.fix_topic, fix))
    messages.sort(key=lambda m: m[0])
    storage = "mcap" if drive.storage == "mcap" else "sqlite3"
    with BagWriter(path, storage, compress_zstd=drive.compress_zstd) as bag:
        for stamp, topic, msg in messages:
            bag.write(topic, stamp, msg)
    return path


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

