"""Reading rosbag2 recordings (sqlite3 or mcap, zstd too) with rosbags, without ROS.

A bag is a folder with ``metadata.yaml`` or a bare ``.db3`` / ``.mcap`` file. Message types come
from the definitions stored in the bag; bags without them (recorded before Iron) fall back to the
Humble typestore. Every failure raises :class:`BagError` naming the bag.
"""
from __future__ import annotations

import hashlib
import math
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import ReaderError as Rosbag2ReaderError
from rosbags.typesys import Stores, get_typestore

from qaa_vpr_ros.keyframes import PoseTrack, latlon_to_utm, utm_zone
from qaa_vpr_ros.paths import expand_path

__all__ = [
    "IMAGE_TYPES",
    "POSE_TYPES",
    "BagError",
    "TopicError",
    "ImageMessage",
    "bag_message_count",
    "bag_sha256",
    "bag_topics",
    "iter_image_messages",
    "message_stamp_ns",
    "open_bag",
    "read_pose_track",
    "resolve_bag",
]

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
POSE_TYPES = (
    "nav_msgs/msg/Odometry",
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "sensor_msgs/msg/NavSatFix",
)
DEFAULT_TYPESTORE = Stores.ROS2_HUMBLE
# Errors a damaged bag raises from deep inside rosbags / sqlite / mcap / zstd.
_READ_ERRORS = (AnyReaderError, Rosbag2ReaderError, sqlite3.DatabaseError, OSError, EOFError, ValueError, KeyError,
                IndexError, AssertionError, RuntimeError, MemoryError, OverflowError, struct.error)


class BagError(RuntimeError):
    """A bag that cannot be opened or read; the message names the bag and what to do."""


class TopicError(BagError):
    """A requested topic is missing from a bag or has the wrong type (the bag itself is fine)."""


def resolve_bag(path: str | Path) -> Path:
    """Check that ``path`` (``~`` and variables expanded) is a rosbag2 folder or a .db3/.mcap file."""
    path = expand_path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    if path.is_dir():
        if not (path / "metadata.yaml").is_file():
            storage = sorted(path.glob("*.db3")) + sorted(path.glob("*.mcap"))
            hint = f"; pass the storage file itself, e.g. {storage[0]}" if len(storage) == 1 else ""
            raise BagError(f"bag folder {path} has no metadata.yaml{hint}")
        return path
    if path.suffix not in (".db3", ".mcap"):
        raise BagError(f"bag {path} is neither a rosbag2 folder nor a .db3/.mcap file")
    return path


def bag_sha256(path: str | Path) -> str:
    """sha256 over the bag's files (names and contents, sorted by name)."""
    path = resolve_bag(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def bag_message_count(path: str | Path, topics: Sequence[str]) -> int | None:
    """Messages on ``topics`` according to metadata.yaml (None for bare storage files)."""
    path = resolve_bag(path)
    if not path.is_dir():
        return None
    try:
        info = yaml.safe_load((path / "metadata.yaml").read_text(encoding="utf-8"))
        entries = info["rosbag2_bagfile_information"]["topics_with_message_count"]
        return sum(int(e["message_count"]) for e in entries if e["topic_metadata"]["name"] in topics)
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise BagError(f"bag {path} has an unreadable metadata.yaml: {err}") from err


class OpenBag:
    """An open bag: its reader plus a deserialiser that falls back to the default typestore."""

    def __init__(self, path: Path, reader: AnyReader) -> None:
        self.path = path
        self.reader = reader
        self._fallback = get_typestore(DEFAULT_TYPESTORE)

    @property
    def topics(self) -> dict[str, str]:
        """topic -> message type."""
        return {c.topic: c.msgtype for c in self.reader.connections}

    def message_count(self, topics: Sequence[str]) -> int:
        return sum(c.msgcount for c in self.reader.connections if c.topic in topics)

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        store = self.reader.typestore if msgtype in self.reader.typestore.fielddefs else self._fallback
        return store.deserialize_cdr(raw, msgtype)

    def messages(self, topics: Sequence[str]) -> Iterator[tuple[str, str, int, bytes]]:
        """(topic, msgtype, log time ns, raw CDR) in log-time order; read errors -> BagError."""
        connections = [c for c in self.reader.connections if c.topic in topics]
        if not connections:
            return
        count = 0
        iterator = self.reader.messages(connections=connections)
        while True:
            try:
                connection, timestamp, raw = next(iterator)
            except StopIteration:
                return
            except _READ_ERRORS as err:
                raise BagError(
                    f"bag {self.path} is damaged after {count} messages of {', '.join(topics)}: "
                    f"{type(err).__name__}: {err}"
                ) from err
            count += 1
            yield connection.topic, connection.msgtype, timestamp, raw


MCAP_MAGIC = b"\x89MCAP0\r\n"
MAX_CHUNK_BYTES = 1 << 30  # a chunk claiming to decompress to more is refused (1 GiB)


def check_mcap_framing(path: Path) -> None:
    """Walk an MCAP file's top-level records and check every length field against the file size
    (and each chunk's uncompressed size against MAX_CHUNK_BYTES) before the reader trusts them:
    one flipped byte in a length must be a :class:`BagError`, not a multi-GB allocation."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(8) != MCAP_MAGIC:
            return  # not MCAP framing at all: the reader names that itself
        pos = 8
        while pos < size - 8:
            head = f.read(9)
            if len(head) < 9:
                raise BagError(f"bag file {path} is truncated at byte {pos} (record header)")
            op, length = head[0], struct.unpack("<Q", head[1:])[0]
            if length > size - pos - 9:
                raise BagError(f"bag file {path}: record at byte {pos} (opcode {op:#x}) claims {length} bytes, "
                               f"the file has {size - pos - 9} left: corrupt or cut off")
            if op == 0x06 and length >= 24:  # chunk: start, end, uncompressed_size (u64 each), ...
                uncompressed = struct.unpack("<Q", f.read(24)[16:24])[0]
                if uncompressed > MAX_CHUNK_BYTES:
                    raise BagError(f"bag file {path}: chunk at byte {pos} claims {uncompressed} bytes "
                                   f"uncompressed (limit {MAX_CHUNK_BYTES}): corrupt")
            pos += 9 + length
            f.seek(pos)
            if op == 0x02:  # footer
                break


@contextmanager
def open_bag(path: str | Path) -> Iterator[OpenBag]:
    """Open a bag for reading (context manager)."""
    path = resolve_bag(path)
    for file in ([path] if path.is_file() else sorted(path.glob("*.mcap"))):
        if file.suffix == ".mcap":
            check_mcap_framing(file)
    try:
        reader = AnyReader([path], default_typestore=get_typestore(DEFAULT_TYPESTORE))
        reader.open()
    except _READ_ERRORS as err:
        hint = " (an mcap cut off by a crash can be fixed with `mcap recover`)" if ".mcap" in str(err) or \
            path.suffix == ".mcap" or any(path.glob("*.mcap*")) else ""
        raise BagError(
            f"bag {path} cannot be opened, it is truncated or corrupt{hint}: {type(err).__name__}: {err}"
        ) from err
    try:
        yield OpenBag(path, reader)
    finally:
        try:
            reader.close()
        except _READ_ERRORS:
            pass


def bag_topics(path: str | Path) -> dict[str, str]:
    """topic -> message type of a bag."""
    with open_bag(path) as bag:
        return bag.topics


def message_stamp_ns(msg: Any, log_time_ns: int) -> int:
    """The header stamp in ns; the bag's log time when the header stamp is zero or absent."""
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if stamp is None:
        return int(log_time_ns)
    value = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    return value if value > 0 else int(log_time_ns)


@dataclass
class ImageMessage:
    """One deserialised (not yet decoded) image message of a camera topic."""

    topic: str
    msgtype: str
    stamp_ns: int
    log_time_ns: int
    frame_id: str
    msg: Any


@dataclass
class ReadStats:
    """Counts of messages that could not be used, by reason."""

    undeserialisable: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    undeserialisable_by_topic: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def check_topics(bag: OpenBag, topics: Sequence[str], allowed: Sequence[str], what: str) -> None:
    """BagError unless every topic is in the bag with one of the ``allowed`` types."""
    available = bag.topics
    for topic in topics:
        if topic not in available:
            candidates = sorted(t for t, typ in available.items() if typ in allowed)
            raise TopicError(
                f"{what} topic {topic!r} is not in bag {bag.path}; {what} topics there: "
                f"{', '.join(candidates) or 'none'}"
            )
        if available[topic] not in allowed:
            raise TopicError(
                f"{what} topic {topic!r} in bag {bag.path} has type {available[topic]}, "
                f"expected one of {', '.join(allowed)}"
            )


def iter_image_messages(bag: OpenBag, topics: Sequence[str], stats: ReadStats | None = None) -> Iterator[ImageMessage]:
    """Deserialised image messages of ``topics`` in log-time order (undeserialisable ones counted)."""
    check_topics(bag, topics, IMAGE_TYPES, "image")
    for topic, msgtype, log_time, raw in bag.messages(topics):
        try:
            msg = bag.deserialize(raw, msgtype)
        except Exception:  # a damaged message: count it, keep going (callers judge whole topics)
            if stats is not None:
                stats.undeserialisable += 1
                stats.undeserialisable_by_topic[topic] = stats.undeserialisable_by_topic.get(topic, 0) + 1
            continue
        frame_id = str(getattr(getattr(msg, "header", None), "frame_id", ""))
        yield ImageMessage(topic, msgtype, message_stamp_ns(msg, log_time), log_time, frame_id, msg)


def _pose_of(msg: Any, msgtype: str) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
    pose = msg.pose.pose if msgtype in (POSE_TYPES[0], POSE_TYPES[2]) else msg.pose
    p, q = pose.position, pose.orientation
    return (float(p.x), float(p.y), float(p.z)), (float(q.x), float(q.y), float(q.z), float(q.w))


def read_pose_track(
    bag: OpenBag, topic: str, max_gap_s: float = 2.0, zone: str | None = None, stats: ReadStats | None = None
) -> PoseTrack:
    """All poses of ``topic`` (Odometry, PoseStamped, PoseWithCovarianceStamped or NavSatFix).

    NavSatFix fixes are projected to UTM (easting, northing, altitude) in ``zone``, by default the
    zone of the first valid fix; fixes with status NO_FIX or non-finite coordinates are skipped
    (counted in ``stats``). Orientation is identity for NavSatFix.
    """
    check_topics(bag, [topic], POSE_TYPES, "pose")
    msgtype = bag.topics[topic]
    stamps: list[int] = []
    positions: list[tuple[float, float, float]] = []
    orientations: list[tuple[float, float, float, float]] = []
    frame_id = ""
    for _, _, log_time, raw in bag.messages([topic]):
        try:
            msg = bag.deserialize(raw, msgtype)
        except Exception:
            if stats is not None:
                stats.undeserialisable += 1
            continue
        if msgtype == "sensor_msgs/msg/NavSatFix":
            lat, lon, alt = float(msg.latitude), float(msg.longitude), float(msg.altitude)
            if int(msg.status.status) < 0 or not (math.isfinite(lat) and math.isfinite(lon)):
                if stats is not None:
                    stats.count("navsatfix without fix")
                continue
            zone = zone or utm_zone(lat, lon)
            easting, northing, _ = latlon_to_utm(lat, lon, zone)
            positions.append((easting, northing, alt if math.isfinite(alt) else 0.0))
            orientations.append((0.0, 0.0, 0.0, 1.0))
            frame_id = "utm"
        else:
            position, orientation = _pose_of(msg, msgtype)
            positions.append(position)
            orientations.append(orientation)
            frame_id = frame_id or str(msg.header.frame_id)
        stamps.append(message_stamp_ns(msg, log_time))
    if not stamps:
        raise TopicError(f"pose topic {topic!r} in bag {bag.path} has no usable poses")
    return PoseTrack.from_samples(stamps, positions, orientations, frame_id, zone, max_gap_s)
