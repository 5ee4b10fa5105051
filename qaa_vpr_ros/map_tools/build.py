"""build_map: rosbag2 recordings -> a place map.

Pipeline: a reader thread walks the bags (image messages in log-time order), interpolates the pose
topic to each image stamp, selects keyframes per camera and decodes them; a bounded queue hands
them to the main thread, which runs the descriptor extractor in batches. Reading overlaps
inference and memory stays bounded whatever the bag length.

Keyframe k (numbered over all bags, in order) belongs to chunk k // chunk_size. Each finished chunk
(descriptors + records) is written atomically to ``<output>.work/``; ``--resume`` skips finished
chunks, so an interrupted build (Ctrl-C, kill -9) loses at most one chunk and ends with the same
map. ``--shard i/N`` processes chunks c with c % N == i; ``merge_maps`` puts the shards together.

Every keyframe of a camera with intrinsics (its ``camera_info`` topic, else ``--camera-intrinsics``)
also gets its local features (SIFT keypoints and descriptors), and with ``--depth-topics`` each
keypoint's depth from the depth image of the nearest stamp within ``--depth-max-age`` (depth
images are kept a short while per camera: the colour image may come first in the bag).

Keyframes (per camera): the first image, then an image at least ``--min-interval`` after the last
keyframe that moved ``--min-distance`` or turned ``--min-rotation`` from it, or, for a camera with
intrinsics, whose view changed: less than ``--min-view-overlap`` of its local features match the
last keyframe's (ratio test, as verification matches). Features of an image the pose rules skip
are extracted for that test only; the selection is decided in the reader, before the chunking,
so every build path keeps the same keyframes.

Example::

    build_map run1/ --model model/ --image-topics /cam_front /cam_rear --pose-topic /odom -o run1_map
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import queue
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qaa_vpr_ros.atomic import atomic_write_bytes, atomic_write_text
from qaa_vpr_ros.bags import (
    IMAGE_TYPES,
    BagError,
    OpenBag,
    ReadStats,
    TopicError,
    bag_message_count,
    bag_sha256,
    check_topics,
    iter_image_messages,
    open_bag,
    read_pose_track,
    resolve_bag,
)
from qaa_vpr_ros.image_conversion import ImageDecodeError, depth_from_msg, image_from_msg
from qaa_vpr_ros.keyframes import KeyframeSelector, PoseSkip, PoseTrack, Selected, SelectionConfig
from qaa_vpr_ros.local_features import (
    FeatureConfig,
    Intrinsics,
    LocalFeatures,
    add_depth,
    camera_info_topic,
    extract_local_features,
    parse_intrinsics,
)
from qaa_vpr_ros.maps import INDEX_TYPES, Keyframe, MapError, PlaceMap, check_map_id, new_map_id
from qaa_vpr_ros.maps.features import (
    FLAG_DEPTH,
    FLAG_FEATURES,
    PackedFeatures,
    check_feature_index,
    feature_bytes,
    feature_config_of,
    pack_features,
)
from qaa_vpr_ros.paths import expand_path, path_argument
from qaa_vpr_ros.progress import progress_bar

__all__ = ["BuildOptions", "BuildResult", "build_map", "main"]

WORK_FORMAT = 2  # 2: chunks carry local features
# Depth images kept per camera for pairing: those within --depth-max-age + DEPTH_WAIT_S of the
# newest, at most DEPTH_HISTORY; a keyframe waits for its depth image at most DEPTH_WAIT_S of log time.
DEPTH_WAIT_S = 1.0
DEPTH_HISTORY = 64
# The view rule's threshold (--min-view-overlap): on TUM fr1/rpy (Kinect, motion blur) consecutive
# frames share 0.33 of their SIFT features (median; p10 0.16), so a threshold well below 0.16 is
# not set off by blur alone; 0.10 of 700 features is ~70 ratio-test matches, about what PnP needs
# for verify_features' 30 inliers: every image between two keyframes still verifies against one.
DEFAULT_MIN_VIEW_OVERLAP = 0.10
# Testing hook: SIGKILL this process after writing this many chunks (simulates a crash mid-build).
CRASH_AFTER_CHUNKS_ENV = "QAA_VPR_ROS_CRASH_AFTER_CHUNKS"


@dataclass(frozen=True)
class BuildOptions:
    """What to read and how to pick keyframes. Everything except ``index_*``/``map_frame``/``map_id``
    is part of the build identity that ``--resume`` checks."""

    image_topics: tuple[str, ...] = ()  # empty: every Image/CompressedImage topic of the first bag
    pose_topic: str | None = None
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    max_pose_gap_s: float = 2.0
    chunk_size: int = 256
    shard: tuple[int, int] = (0, 1)  # (index, count)
    allow_truncated: bool = False  # keep what a damaged bag yields up to the damage, and go on
    map_frame: str | None = None  # default: the pose topic's frame ("utm" for NavSatFix), else "map"
    # The map's id, which loop-closure records name it by (docs/MAPS.md). Default: the first bag's
    # name + the first 8 hex digits of the build id, the same for every shard of one build.
    map_id: str | None = None
    index_type: str = "flat"
    index_params: dict[str, Any] = field(default_factory=dict)
    prefetch: int = 64  # decoded keyframes waiting for the extractor (bounds memory)
    # Local features (None: none). Depth topics pair with the cameras in order; intrinsics by
    # camera topic (a camera_info topic beside the image topic overrides them).
    local_features: FeatureConfig | None = field(default_factory=FeatureConfig)
    depth_topics: tuple[str, ...] = ()
    depth_max_age_s: float = 0.05
    camera_intrinsics: dict[str, Intrinsics] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        index, count = self.shard
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard must be i/N with 0 <= i < N, got {index}/{count}")
        if self.max_pose_gap_s <= 0:
            raise ValueError(f"max_pose_gap_s must be > 0, got {self.max_pose_gap_s}")
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {self.prefetch}")
        if not self.depth_max_age_s > 0:
            raise ValueError(f"depth_max_age_s must be > 0, got {self.depth_max_age_s}")
        if len(set(self.depth_topics)) != len(self.depth_topics):
            raise ValueError(f"--depth-topics names a topic twice: {list(self.depth_topics)}")
        both = sorted(set(self.depth_topics) & set(self.image_topics))
        if both:
            raise ValueError(f"{both} given both as image (camera) and as depth topics; a depth topic is never "
                             "a camera")
        if self.image_topics and self.depth_topics and len(self.depth_topics) != len(self.image_topics):
            raise ValueError(f"--depth-topics has {len(self.depth_topics)} topics for {len(self.image_topics)} "
                             f"--image-topics {list(self.image_topics)}: give one depth topic per camera, in the "
                             "same order")
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index type {self.index_type!r} not one of {INDEX_TYPES}")
        if self.map_id is not None:
            try:
                check_map_id(self.map_id)
            except MapError as err:
                raise ValueError(str(err)) from err


@dataclass
class CameraStats:
    images: int = 0
    keyframes: int = 0
    outside_pose_range: int = 0
    in_pose_gap: int = 0
    undecodable: int = 0
    not_selected: int = 0
    view_keyframes: int = 0  # of keyframes: taken by the view rule (the pose rules would have skipped them)


@dataclass
class BuildResult:
    """What a build did: the map, counts per camera, skipped messages, timings."""

    map: PlaceMap
    output: Path
    keyframes_total: int  # over all shards
    keyframes_built: int  # descriptors computed in this run
    chunks_resumed: int
    cameras: dict[str, CameraStats]
    skipped: dict[str, Any]
    seconds: float
    local_features: dict[str, Any] = field(default_factory=dict)  # what the summary reports (_feature_report)


@dataclass
class _Candidate:
    index: int  # global keyframe number
    keyframe: Keyframe
    image: np.ndarray
    encoding: str
    images_seen: int
    features: LocalFeatures | None = None
    view: _View | None = None  # its features without depth, when the view rule computed them


class _View:
    """An image's local features without depth, computed on first call (the view rule's input,
    :class:`qaa_vpr_ros.keyframes.KeyframeSelector`); the decoded image is kept for the keyframe."""

    def __init__(self, msg: Any, config: FeatureConfig) -> None:
        self.msg, self.config = msg, config
        self._decoded: tuple[np.ndarray, str] | ImageDecodeError | None = None
        self._features: LocalFeatures | None = None

    def decoded(self) -> tuple[np.ndarray, str]:
        """(image, encoding) as :func:`image_from_msg` gives them; raises its ImageDecodeError."""
        if self._decoded is None:
            try:
                self._decoded = image_from_msg(self.msg)
            except ImageDecodeError as err:
                self._decoded = err
        if isinstance(self._decoded, ImageDecodeError):
            raise self._decoded
        return self._decoded

    def __call__(self) -> LocalFeatures | None:
        if self._features is None:
            try:
                image, encoding = self.decoded()
            except ImageDecodeError:
                return None  # no view to compare: the pose rules decide alone
            self._features = extract_local_features(_feature_image(image, encoding), None, self.config)
        return self._features


def _feature_image(image: np.ndarray, encoding: str) -> np.ndarray:
    """The decoded image as extract_local_features takes it (RGB or mono)."""
    return image[:, :, ::-1] if encoding == "bgr" else image


@dataclass
class _Pending:
    """A keyframe waiting for its depth image (the colour image may come first in the bag)."""

    candidate: _Candidate
    log_time_ns: int
    resolved: bool = False
    depth_msg: Any = None  # the paired depth image, once resolved (None: no pair)


@dataclass
class _BagPlan:
    path: Path
    name: str
    sha256: str


# A keyframe as the plan of a planned build sees it: (images of its bag before it, camera, stamp_ns,
# position, orientation): enough to restart the selection at any keyframe without reading before it.
_PlannedKeyframe = tuple[int, str, int, "tuple[float, ...] | None", "tuple[float, ...] | None"]


@dataclass(frozen=True)
class _ChunkStart:
    """Where a planned work unit starts reading: its first bag, skipping that bag's first
    ``skip_images`` images, with the selection state the sequential pass had there."""

    first_index: int  # global number of the unit's first keyframe
    skip_images: int
    selector_latest: dict[str, Any]
    # camera -> the bag ordinal of its latest keyframe: the unit extracts its features for the view rule
    view_ordinals: dict[str, int] = field(default_factory=dict)


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class _KeyframeReader(threading.Thread):
    """Reader thread: bags -> selected, decoded keyframes -> bounded queue (in keyframe order)."""

    def __init__(
        self,
        bags: Sequence[_BagPlan],
        options: BuildOptions,
        topics: Sequence[str],
        wanted_chunk: Any,
        out: queue.Queue,
        stop: threading.Event,
        *,
        utm_zone: str | None = None,
        start: _ChunkStart | None = None,
        end_index: int | None = None,
        final_checks: bool = True,
    ) -> None:
        super().__init__(name="build_map-reader", daemon=True)
        self.bags, self.options, self.topics = bags, options, list(topics)
        self.wanted_chunk = wanted_chunk  # chunk index -> bool: decode and hand over?
        self.out, self.stop = out, stop
        self.cameras: dict[str, CameraStats] = {t: CameraStats() for t in topics}
        self.read_stats = ReadStats()
        self.truncated: dict[str, str] = {}
        self.map_frame: str | None = None
        self.utm_zone: str | None = utm_zone  # a planned unit gets the zone of the whole build
        # A planned work unit: start inside its first bag, stop before keyframe end_index.
        self.unit_start, self.end_index, self.final_checks = start, end_index, final_checks
        self.keyframes_total = start.first_index if start is not None else 0
        self.images_seen = 0
        self.planned: list[_PlannedKeyframe] | None = None  # set to [] to record the plan of a bag
        self.depth_of = dict(zip(self.topics, options.depth_topics, strict=True)) if options.depth_topics else {}

    def _past_end(self) -> bool:
        return self.end_index is not None and self.keyframes_total >= self.end_index

    def _put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        try:
            for position, plan in enumerate(self.bags):
                if self.stop.is_set() or self._past_end():
                    break
                # Each bag is its own recording: selection starts afresh (or where a planned unit starts).
                selector = KeyframeSelector(self.options.selection)
                skip = 0
                if position == 0 and self.unit_start is not None:
                    selector.restore(self.unit_start.selector_latest)
                    skip = self.unit_start.skip_images
                try:
                    with open_bag(plan.path) as bag:
                        self._read_bag(bag, plan, selector, skip)
                except BagError as err:
                    if isinstance(err, TopicError) or not self.options.allow_truncated:
                        raise
                    self.truncated[plan.name] = str(err)
            if self.final_checks:
                self._check_topics_deserialised()
            self._put(("end", None))
        except BaseException as err:  # hand every failure to the main thread
            self._put(("error", err))

    def _check_topics_deserialised(self) -> None:
        _check_topics_deserialised(self.read_stats, self.cameras)

    def summary(self) -> _ReadSummary:
        return _ReadSummary(self.keyframes_total, self.map_frame, self.utm_zone, self.cameras, self.read_stats,
                            self.truncated)

    def _read_bag(self, bag: OpenBag, plan: _BagPlan, selector: KeyframeSelector, skip: int = 0) -> None:
        track: PoseTrack | None = None
        if self.options.pose_topic:
            track = read_pose_track(
                bag, self.options.pose_topic, self.options.max_pose_gap_s, self.utm_zone, self.read_stats
            )
            self.utm_zone = self.utm_zone or track.utm_zone
            self.map_frame = self.map_frame or track.frame_id
        # A survey (planned is not None) extracts nothing: it reads no depth images.
        depth_topics = list(self.depth_of.values()) if self.options.local_features and self.planned is None else []
        if depth_topics:
            check_topics(bag, depth_topics, ("sensor_msgs/msg/Image",), "depth")
        history: dict[str, deque] = {d: deque(maxlen=DEPTH_HISTORY) for d in depth_topics}
        newest: dict[str, int] = {}
        pending: deque[_Pending] = deque()
        ordinal = -1  # images of this bag before this one
        view_ordinals = self.unit_start.view_ordinals if self.unit_start is not None and skip else {}
        for image_msg in iter_image_messages(bag, self.topics + depth_topics, self.read_stats):
            if self.stop.is_set():
                return
            if image_msg.topic in history:
                self._remember_depth(history[image_msg.topic], newest, image_msg)
                self._release(pending, history, newest, image_msg.log_time_ns)
                continue
            ordinal += 1
            if ordinal < skip:
                if view_ordinals.get(image_msg.topic) == ordinal and self._view_rule(image_msg.topic):
                    selector.restore_view(image_msg.topic, _View(image_msg.msg, self.options.local_features))
                continue
            if self._past_end():
                if not pending:
                    return
                continue  # read on only for the depth images of the keyframes waiting
            self.images_seen += 1
            stats = self.cameras[image_msg.topic]
            stats.images += 1
            position = orientation = None
            if track is not None:
                pose = track.interpolate(image_msg.stamp_ns)
                if pose is PoseSkip.OUTSIDE:
                    stats.outside_pose_range += 1
                    continue
                if pose is PoseSkip.GAP:
                    stats.in_pose_gap += 1
                    continue
                position, orientation = pose
            view = _View(image_msg.msg, self.options.local_features) if self._view_rule(image_msg.topic) else None
            selected = selector.decide(image_msg.topic, image_msg.stamp_ns, position, orientation, view)
            if selected is None:
                stats.not_selected += 1
                continue
            try:
                image, encoding = view.decoded() if view is not None else image_from_msg(image_msg.msg)
            except ImageDecodeError:
                stats.undecodable += 1  # the next good image of this camera may become the keyframe
                continue
            selector.accept(image_msg.topic, image_msg.stamp_ns, position, orientation, view)
            if selected is Selected.VIEW:
                stats.view_keyframes += 1
            if self.planned is not None:
                _, kept_position, kept_orientation = selector.latest()[image_msg.topic]
                self.planned.append((ordinal, image_msg.topic, image_msg.stamp_ns, kept_position, kept_orientation))
            stats.keyframes += 1
            index = self.keyframes_total
            self.keyframes_total += 1
            if not self.wanted_chunk(index // self.options.chunk_size):
                continue
            keyframe = Keyframe(
                id=index,
                stamp_sec=image_msg.stamp_ns // 1_000_000_000,
                stamp_nanosec=image_msg.stamp_ns % 1_000_000_000,
                camera=image_msg.topic,
                frame_id=image_msg.frame_id,
                position=position if position is not None else (math.nan, math.nan, math.nan),
                orientation=orientation if orientation is not None else (0.0, 0.0, 0.0, 1.0),
                utm_zone=track.utm_zone if track is not None else None,
                source=plan.name,
            )
            pending.append(_Pending(_Candidate(index, keyframe, image, encoding, self.images_seen, view=view),
                                    image_msg.log_time_ns))
            self._release(pending, history, newest, image_msg.log_time_ns)
        self._release(pending, history, newest, None)  # the end of the bag: no depth image comes any more

    def _view_rule(self, camera: str) -> bool:
        """Does the view rule select this camera's keyframes (features on, intrinsics known, threshold set)?"""
        return (self.options.local_features is not None and self.options.selection.min_view_overlap > 0
                and camera in self.options.camera_intrinsics)

    def _remember_depth(self, history: deque, newest: dict[str, int], msg: Any) -> None:
        """Keep a depth image (not decoded yet) in its camera's short history."""
        history.append((msg.stamp_ns, msg.msg))
        newest[msg.topic] = max(newest.get(msg.topic, msg.stamp_ns), msg.stamp_ns)
        horizon = newest[msg.topic] - int((self.options.depth_max_age_s + DEPTH_WAIT_S) * 1e9)
        while history and history[0][0] < horizon:
            history.popleft()

    def _release(self, pending: deque[_Pending], history: dict[str, deque], newest: dict[str, int],
                 now_ns: int | None) -> None:
        """Pair every waiting keyframe whose depth image is settled (one stamped past its window has
        come, it waited DEPTH_WAIT_S of log time, or ``now_ns`` None: the bag ended), then hand over
        the settled ones at the head of the queue, in keyframe order. Pairing depends only on the
        bag's messages, so every build path pairs alike."""
        max_age = int(self.options.depth_max_age_s * 1e9)
        for item in pending:
            if item.resolved:
                continue
            stamp = item.candidate.keyframe.stamp_ns
            depth_topic = self.depth_of.get(item.candidate.keyframe.camera)
            if depth_topic in history and now_ns is not None:
                settled = newest.get(depth_topic, -1) >= stamp + max_age
                if not settled and now_ns - item.log_time_ns < max_age + int(DEPTH_WAIT_S * 1e9):
                    continue
            if depth_topic in history:
                near = [(abs(t - stamp), t, m) for t, m in history[depth_topic] if abs(t - stamp) <= max_age]
                item.depth_msg = min(near, key=lambda n: (n[0], n[1]))[2] if near else None
            item.resolved = True
        while pending and pending[0].resolved:
            item = pending.popleft()
            item.candidate.features = self._features(item)
            self._put(("keyframe", item.candidate))

    def _features(self, item: _Pending) -> LocalFeatures | None:
        """The local features of a keyframe: none without a feature config or intrinsics; without
        depth when it has no (decodable) depth pair."""
        candidate = item.candidate
        if self.options.local_features is None or candidate.keyframe.camera not in self.options.camera_intrinsics:
            return None
        depth = None
        if item.depth_msg is not None:
            try:
                depth = depth_from_msg(item.depth_msg)
            except ImageDecodeError:
                depth = None  # counted with the keyframes that had no depth pair
        if candidate.view is not None:  # extracted for the view rule: the same SIFT, only the depth is new
            features = candidate.view()
            if features is not None:
                return add_depth(features, candidate.image.shape, depth, self.options.local_features)
        image = _feature_image(candidate.image, candidate.encoding)
        return extract_local_features(image, depth, self.options.local_features)


def _check_topics_deserialised(read_stats: ReadStats, cameras: dict[str, CameraStats]) -> None:
    """A topic none of whose messages deserialise is an error (wrong type or definition), not
    an empty map; a few damaged messages among good ones are only counted."""
    for topic, failed in read_stats.undeserialisable_by_topic.items():
        if failed and topic in cameras and cameras[topic].images == 0:
            raise BagError(
                f"image topic {topic!r}: none of its {failed} messages could be deserialised as its "
                "recorded type (corrupt data or a different message definition); nothing was built"
            )


@dataclass
class _ReadSummary:
    """What reading the bags found, besides the keyframes (the manifest's build record)."""

    keyframes_total: int
    map_frame: str | None
    utm_zone: str | None
    cameras: dict[str, CameraStats]
    read_stats: ReadStats
    truncated: dict[str, str]


# --- chunk files ---------------------------------------------------------------------------------
def _chunk_path(work: Path, chunk: int) -> Path:
    return work / f"chunk-{chunk:06d}.npz"


def _write_chunk(path: Path, descriptors: np.ndarray, keyframes: Sequence[Keyframe],
                 features: Sequence[LocalFeatures | None]) -> None:
    buffer = io.BytesIO()
    packed = pack_features(features)
    np.savez(
        buffer,
        features_index=packed.index,
        features_keypoints=packed.keypoints,
        features_descriptors=packed.descriptors,
        features_depth=packed.depth_mm,
        descriptors=np.asarray(descriptors, np.float16).reshape(len(keyframes), -1),
        id=np.array([k.id for k in keyframes], np.int64),
        stamp_sec=np.array([k.stamp_sec for k in keyframes], np.int64),
        stamp_nanosec=np.array([k.stamp_nanosec for k in keyframes], np.int64),
        camera=np.array([k.camera for k in keyframes], str),
        frame_id=np.array([k.frame_id for k in keyframes], str),
        position=np.array([k.position for k in keyframes], np.float64).reshape(-1, 3),
        orientation=np.array([k.orientation for k in keyframes], np.float64).reshape(-1, 4),
        utm_zone=np.array([k.utm_zone or "" for k in keyframes], str),
        source=np.array([k.source for k in keyframes], str),
    )
    atomic_write_bytes(path, buffer.getvalue())


def _read_chunk(path: Path) -> tuple[np.ndarray, list[Keyframe], list[LocalFeatures | None]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        packed = PackedFeatures(arrays["features_index"], arrays["features_keypoints"],
                                arrays["features_descriptors"], arrays["features_depth"])
        problem = check_feature_index(packed.index, len(packed.keypoints), "its features_index")
        if problem is not None:
            raise ValueError(problem)
        features = [packed.features(row) for row in range(len(packed.index))]
    except (ValueError, OSError, KeyError) as err:
        raise MapError(f"work chunk {path} is unreadable ({err}); delete it and rerun with --resume") from err
    keyframes = [
        Keyframe(
            id=int(arrays["id"][i]),
            stamp_sec=int(arrays["stamp_sec"][i]),
            stamp_nanosec=int(arrays["stamp_nanosec"][i]),
            camera=str(arrays["camera"][i]),
            frame_id=str(arrays["frame_id"][i]),
            position=tuple(float(v) for v in arrays["position"][i]),
            orientation=tuple(float(v) for v in arrays["orientation"][i]),
            utm_zone=str(arrays["utm_zone"][i]) or None,
            source=str(arrays["source"][i]),
        )
        for i in range(len(arrays["id"]))
    ]
    return arrays["descriptors"], keyframes, features


# --- the build ---------------------------------------------------------------------------------
DEPTH_ENCODINGS = ("16uc1", "32fc1")  # an image topic whose first message has one is a depth image


def _is_depth_image_topic(bag: OpenBag, topic: str) -> bool:
    """Whether the first message of an Image topic has a depth encoding (16UC1 or 32FC1)."""
    if bag.topics.get(topic) != "sensor_msgs/msg/Image":
        return False
    for _, msgtype, _, raw in bag.messages([topic]):
        try:
            return str(bag.deserialize(raw, msgtype).encoding).strip().lower() in DEPTH_ENCODINGS
        except Exception:  # an undeserialisable first message: the reader counts it as a camera's
            return False
    return False


def _resolve_topics(bags: Sequence[_BagPlan], options: BuildOptions) -> tuple[str, ...]:
    """The camera topics: ``--image-topics``, else every Image/CompressedImage topic of the first bag
    that is not a depth topic (named in ``--depth-topics``, or of a depth encoding)."""
    if options.image_topics:
        return tuple(options.image_topics)
    with open_bag(bags[0].path) as bag:
        candidates = sorted(t for t, typ in bag.topics.items() if typ in IMAGE_TYPES and t not in options.depth_topics)
        topics = tuple(t for t in candidates if not _is_depth_image_topic(bag, t))
    if not topics:
        raise BagError(f"bag {bags[0].path} has no sensor_msgs/Image or CompressedImage topic that is not a depth "
                       "image")
    if options.depth_topics and len(options.depth_topics) != len(topics):
        raise TopicError(f"--depth-topics has {len(options.depth_topics)} topics but bag {bags[0].path} has "
                         f"{len(topics)} cameras {list(topics)}; pass --image-topics with one depth topic per "
                         "camera, in the same order")
    return topics


def _first_intrinsics(bag: OpenBag, topic: str) -> Intrinsics | None:
    """The intrinsics of the first valid CameraInfo on ``topic`` (an all-zero K is not valid)."""
    for _, msgtype, _, raw in bag.messages([topic]):
        try:
            msg = bag.deserialize(raw, msgtype)
            return Intrinsics.from_camera_info(msg.k, msg.d)
        except Exception:  # undeserialisable or uncalibrated: try the next one
            continue
    return None


def _resolve_intrinsics(bags: Sequence[_BagPlan], topics: Sequence[str], options: BuildOptions
                        ) -> dict[str, Intrinsics]:
    """Each camera's intrinsics: the first valid CameraInfo beside its topic (the same in every bag
    that has one), else ``options.camera_intrinsics``; cameras with neither are left out."""
    unknown = sorted(set(options.camera_intrinsics) - set(topics))
    if unknown:
        raise ValueError(f"--camera-intrinsics names {unknown}, not cameras of this build {list(topics)}")
    found: dict[str, tuple[str, Intrinsics]] = {}
    for plan in bags:
        try:
            with open_bag(plan.path) as bag:
                in_bag = {t: _first_intrinsics(bag, camera_info_topic(t)) for t in topics
                          if bag.topics.get(camera_info_topic(t)) == "sensor_msgs/msg/CameraInfo"}
        except BagError:
            if not options.allow_truncated:
                raise
            continue  # the reader keeps what the damaged bag yields and names it in the manifest
        for topic, intrinsics in in_bag.items():
            if intrinsics is None:
                continue
            first = found.setdefault(topic, (plan.name, intrinsics))
            if first[1] != intrinsics:
                raise MapError(f"camera {topic}: {camera_info_topic(topic)} gives intrinsics {first[1].as_list()} "
                               f"in bag {first[0]} but {intrinsics.as_list()} in bag {plan.name}; a map holds one "
                               "calibration per camera: build the bags into separate maps")
    resolved = {**options.camera_intrinsics, **{t: i for t, (_, i) in found.items()}}
    return {t: resolved[t] for t in topics if t in resolved}


def _identity(bags: Sequence[_BagPlan], topics: Sequence[str], options: BuildOptions, fingerprint: str,
              batch_size: int) -> dict[str, Any]:
    return {
        "work_format": WORK_FORMAT,
        "bags": [{"name": b.name, "sha256": b.sha256} for b in bags],
        "image_topics": list(topics),
        "pose_topic": options.pose_topic,
        "selection": dataclasses.asdict(options.selection),
        "max_pose_gap_s": options.max_pose_gap_s,
        "chunk_size": options.chunk_size,
        "batch_size": batch_size,
        "model_fingerprint": fingerprint,
        "allow_truncated": options.allow_truncated,
        "local_features": None if options.local_features is None else dataclasses.asdict(options.local_features),
        "depth_topics": list(options.depth_topics),
        "depth_max_age_s": options.depth_max_age_s,
        "cameras": {t: c.as_list() for t, c in sorted(options.camera_intrinsics.items())},
    }


def _prepare_work(work: Path, identity: dict[str, Any], resume: bool, fresh: bool = False) -> list[int]:
    """Create or check the work folder; returns the chunks already finished.

    ``fresh`` (``--overwrite`` without ``--resume``) discards the chunks of an earlier build."""
    record = work / "build.json"
    if work.exists() and fresh and not resume:
        shutil.rmtree(work)
    if work.exists():
        if not resume:
            raise MapError(
                f"work folder {work} exists from an interrupted build; rerun with --resume to continue "
                "it, or with --overwrite (or delete it) to start over"
            )
        try:
            previous = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise MapError(f"{record} is unreadable ({err}); delete {work} to start over") from err
        for key in sorted(set(identity) | set(previous)):
            if identity.get(key) != previous.get(key):
                raise MapError(
                    f"cannot resume: {work} was started with {key}={previous.get(key)!r}, this run has "
                    f"{identity.get(key)!r}; use the same arguments, or delete {work} to start over"
                )
        return sorted(int(p.name[6:12]) for p in work.glob("chunk-??????.npz"))
    work.mkdir(parents=True)
    atomic_write_text(record, json.dumps(identity, indent=2, sort_keys=True) + "\n")
    return []


def _start(bags: Sequence[str | Path], output: Path, options: BuildOptions, fingerprint: str, batch_size: int,
           resume: bool, overwrite: bool
           ) -> tuple[list[_BagPlan], tuple[str, ...], dict[str, Any], str, Path, set[int], BuildOptions]:
    """What every build fixes first: the bags, topics, build identity and id, the work folder, the
    chunks an earlier run finished and the options with every camera's intrinsics resolved."""
    PlaceMap.create(1, "", options.index_type, **options.index_params)  # bad index parameters fail now
    plans = []
    for bag in bags:
        path = resolve_bag(bag)
        plans.append(_BagPlan(path, path.name, bag_sha256(path)))
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise BagError(f"bags must have distinct names (keyframes record their source bag): {names}")
    topics = _resolve_topics(plans, options)
    options = dataclasses.replace(options, camera_intrinsics=_resolve_intrinsics(plans, topics, options))
    identity = _identity(plans, topics, options, fingerprint, batch_size)
    work = output.with_name(output.name + ".work")
    done = set(_prepare_work(work, identity, resume, fresh=overwrite))
    return plans, topics, identity, _digest(identity), work, done, options


def _extract_chunks(reader: _KeyframeReader, items: queue.Queue, extractor: Any, work: Path, chunk_size: int,
                    batch_size: int, bar: Any) -> int:
    """Start ``reader`` and turn what it hands over into chunk files: batches of ``batch_size``
    that restart at every chunk (so a chunk's descriptors do not depend on who computes it).
    Returns the keyframes computed."""
    reader.start()
    crash_after = int(os.environ.get(CRASH_AFTER_CHUNKS_ENV, "0") or 0)
    built = written = 0
    chunk: int | None = None
    chunk_keyframes: list[Keyframe] = []
    chunk_descriptors: list[np.ndarray] = []
    chunk_features: list[LocalFeatures | None] = []
    batch: list[_Candidate] = []

    def run_batch() -> None:
        nonlocal built
        if batch:
            descriptors = extractor.extract([c.image for c in batch], [c.encoding for c in batch])
            chunk_descriptors.append(np.asarray(descriptors, np.float32))
            chunk_keyframes.extend(c.keyframe for c in batch)
            chunk_features.extend(c.features for c in batch)
            built += len(batch)
            batch.clear()

    def flush_chunk() -> None:
        nonlocal written
        run_batch()
        if chunk is not None and chunk_keyframes:
            _write_chunk(_chunk_path(work, chunk), np.concatenate(chunk_descriptors), chunk_keyframes, chunk_features)
            written += 1
            if crash_after and written >= crash_after:
                os.kill(os.getpid(), signal.SIGKILL)
        chunk_keyframes.clear()
        chunk_descriptors.clear()
        chunk_features.clear()

    while True:
        kind, payload = items.get()
        if kind == "error":
            raise payload
        if kind == "end":
            flush_chunk()
            return built
        candidate: _Candidate = payload
        candidate_chunk = candidate.index // chunk_size
        if candidate_chunk != chunk:
            flush_chunk()
            chunk = candidate_chunk
        batch.append(candidate)
        if len(batch) >= batch_size:
            run_batch()
        # Both counts as of this keyframe: the reader thread runs up to --prefetch keyframes ahead.
        bar.set_postfix(keyframes=candidate.index + 1, refresh=False)
        bar.update(candidate.images_seen - bar.n)


def build_map(
    bags: Sequence[str | Path],
    output: str | Path,
    extractor: Any,
    options: BuildOptions | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    keep_work: bool = False,
    progress: bool = True,
) -> BuildResult:
    """Build (or resume building) a map from ``bags`` with ``extractor`` and save it to ``output``.

    ``extractor``: a :class:`qaa_vpr_ros.extractor.DescriptorExtractor` (uses ``.extract``, ``.dim``,
    ``.fingerprint``, ``.batch_size``).

    Raises:
        BagError: a bag is missing, unreadable or lacks a topic.
        MapError: the output exists (without ``overwrite``), or a resume does not match.
    """
    options = options or BuildOptions()
    started = time.monotonic()
    output = _checked_output(output, bags, overwrite)
    batch_size = int(getattr(extractor, "batch_size", 16))
    plans, topics, identity, build_id, work, done, options = _start(bags, output, options, extractor.fingerprint,
                                                                    batch_size, resume, overwrite)
    shard_index, shard_count = options.shard

    def wanted(chunk: int) -> bool:
        return chunk % shard_count == shard_index and chunk not in done

    items: queue.Queue = queue.Queue(maxsize=options.prefetch)
    stop = threading.Event()
    reader = _KeyframeReader(plans, options, topics, wanted, items, stop)
    counts = []
    for plan in plans:
        try:
            counts.append(bag_message_count(plan.path, topics))
        except BagError:  # only the progress bar's total is lost; the reader reports real damage
            counts.append(None)
    bar = _progress_bar(None if None in counts else sum(counts), progress)
    try:
        built = _extract_chunks(reader, items, extractor, work, options.chunk_size, batch_size, bar)
    except BaseException:
        if not any(work.glob("chunk-*.npz")):  # nothing to resume: do not block the next run
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        stop.set()
        reader.join(timeout=5.0)
        bar.set_postfix(keyframes=reader.keyframes_total, refresh=False)
        bar.update(max(0, reader.images_seen - bar.n))
        bar.close()

    place_map, skipped = _finish(work, reader, options, extractor, topics, plans, build_id, identity, output,
                                 keep_work)
    return BuildResult(
        place_map, output, reader.keyframes_total, built, len(done), reader.cameras, skipped,
        time.monotonic() - started, place_map.info["build"]["local_features"],
    )


def _checked_output(output: str | Path, bags: Sequence[str | Path], overwrite: bool) -> Path:
    """The expanded output folder, once the build may write it (not there, or ``overwrite``) and
    has bags to read."""
    output = expand_path(output)
    if output.exists() and not overwrite:
        raise MapError(f"output {output} exists; pass --overwrite to replace it")
    if not bags:
        raise BagError("no bags given")
    return output


def _finish(work: Path, reader: _KeyframeReader | _ReadSummary, options: BuildOptions, extractor: Any,
            topics: Sequence[str], plans: Sequence[_BagPlan], build_id: str, identity: dict[str, Any],
            output: Path, keep_work: bool) -> tuple[PlaceMap, dict[str, Any]]:
    """Assemble and save the map from the chunk files (one build or a planned one alike), drop the
    work folder unless kept; the map and what the reading skipped."""
    place_map = _assemble(work, reader, options, extractor, topics, plans, build_id, identity)
    place_map.save(output)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    skipped = {
        "undeserialisable_messages": reader.read_stats.undeserialisable,
        **reader.read_stats.reasons,
        "damaged_bags": dict(reader.truncated),
    }
    return place_map, skipped


def _assemble(work: Path, reader: _KeyframeReader | _ReadSummary, options: BuildOptions, extractor: Any,
              topics: Sequence[str], plans: Sequence[_BagPlan], build_id: str, identity: dict[str, Any]) -> PlaceMap:
    """The map from this shard's chunk files, in keyframe order."""
    map_frame = options.map_frame or reader.map_frame or "map"
    map_id = options.map_id or new_map_id(plans[0].name, build_id[:8])
    place_map = PlaceMap.create(extractor.dim, extractor.fingerprint, options.index_type, map_frame, map_id,
                                **options.index_params)
    shard_index, shard_count = options.shard
    n_chunks = -(-reader.keyframes_total // options.chunk_size)
    for c in range(shard_index, n_chunks, shard_count):
        path = _chunk_path(work, c)
        if not path.exists():
            raise MapError(f"work chunk {path} is missing after the build; rerun with --resume")
        descriptors, keyframes, features = _read_chunk(path)
        place_map.add(descriptors.astype(np.float32), keyframes, features)
    for topic, intrinsics in options.camera_intrinsics.items():
        place_map.set_camera(topic, intrinsics)
    if options.local_features is not None:
        place_map.feature_config = feature_config_of(options.local_features)
    place_map.sources = [
        {"name": p.name, "path": str(p.path.resolve()), "sha256": p.sha256, "image_topics": list(topics),
         "pose_topic": options.pose_topic}
        for p in plans
    ]
    place_map.info = {
        "build": {
            "build_id": build_id,
            "shard": {"index": shard_index, "count": shard_count},
            "chunk_size": options.chunk_size,
            "keyframes_total": reader.keyframes_total,
            "selection": identity["selection"],
            "max_pose_gap_s": options.max_pose_gap_s,
            "cameras": {t: dataclasses.asdict(s) for t, s in reader.cameras.items()},
            "damaged_bags": dict(reader.truncated),
            "undeserialisable_messages": reader.read_stats.undeserialisable,
            "skipped_pose_messages": dict(reader.read_stats.reasons),
            "local_features": _feature_report(place_map, options, topics),
        }
    }
    return place_map


def _feature_report(place_map: PlaceMap, options: BuildOptions, topics: Sequence[str]) -> dict[str, Any]:
    """What the build stored of local features (from the map: right after a resume too)."""
    index = place_map.feature_index
    flags = index[:, 2]
    with_features = (flags & FLAG_FEATURES) != 0
    depth_of = dict(zip(topics, options.depth_topics, strict=True)) if options.depth_topics else {}
    paired = np.array([kf.camera in depth_of for kf in place_map.keyframes], bool)
    sizes = feature_bytes(index)[with_features]
    cameras = [kf.camera for kf in place_map.keyframes]
    return {
        "keyframes_with_features": int(with_features.sum()),
        "keyframes_with_depth": int(((flags & FLAG_DEPTH) != 0).sum()),
        "missing_depth_pairs": int((paired & with_features & ((flags & FLAG_DEPTH) == 0)).sum()),
        "mean_bytes_per_keyframe": float(sizes.mean()) if len(sizes) else 0.0,
        "max_bytes_per_keyframe": int(sizes.max()) if len(sizes) else 0,
        "without_intrinsics": {t: cameras.count(t) for t in topics if t not in options.camera_intrinsics},
        "disabled": options.local_features is None,
    }


def _progress_bar(total: int | None, enabled: bool) -> Any:
    return progress_bar(total, unit="img", desc="build_map", enabled=enabled)  # plain lines in a log


# --- the planned build (build_map --ray): work units on a pool of workers ------------------------
# Testing hook: the first work unit to see this path creates it and SIGKILLs its own worker process.
KILL_WORKER_ONCE_ENV = "QAA_VPR_ROS_KILL_WORKER_ONCE"


@dataclass(frozen=True)
class ExtractorSpec:
    """How each worker of a planned build makes its own extractor (the model is loaded where it runs)."""

    model: str
    device: str = "auto"
    batch_size: int = 16
    precision: str = "auto"
    backend: str = "torch"
    onnx: str | None = None

    def load(self, device: str | None = None) -> Any:
        from qaa_vpr_ros.extractor import DescriptorExtractor
        from qaa_vpr_ros.model import load_model

        if not Path(self.model).exists():
            raise MapError(f"model {self.model} does not exist")
        return DescriptorExtractor(load_model(self.model), device=device or self.device, batch_size=self.batch_size,
                                   precision=self.precision, backend=self.backend, onnx_path=self.onnx)


class WorkerPool:
    """What a planned build needs from a distributed engine (:mod:`qaa_vpr_ros.map_tools.ray_build`)."""

    def map(self, function: Any, calls: Sequence[tuple], labels: Sequence[str], *, gpu: bool,
            on_done: Any = None) -> list[Any]:
        """``function(*call)`` for every call, results in order; ``on_done(result)`` as each
        finishes; a failing call's exception is raised (its label names what failed)."""
        raise NotImplementedError


@dataclass
class _BagSurvey:
    name: str
    keyframes: list[_PlannedKeyframe]
    summary: _ReadSummary


def _named(err: BaseException, names: Sequence[str]) -> BaseException:
    """``err`` with the bag(s) it happened in named, when it does not already name one."""
    if not isinstance(err, Exception) or any(name in str(err) for name in names):
        return err
    where = ", ".join(names)
    if isinstance(err, (BagError, MapError)):
        return type(err)(f"bag {where}: {err}")
    return BagError(f"bag {where}: {type(err).__name__}: {err}")


def survey_bag(plan: _BagPlan, options: BuildOptions, topics: Sequence[str], utm_zone: str | None) -> _BagSurvey:
    """The plan of one bag (a planned build's first work unit; no model): the sequential reader's
    pass over it (poses, selection, decoding of the selected images only), recording for each
    keyframe where it is and what the selection had kept before it."""
    out: queue.Queue = queue.Queue()
    reader = _KeyframeReader([plan], options, topics, lambda _chunk: False, out, threading.Event(),
                             utm_zone=utm_zone, final_checks=False)
    reader.planned = []
    reader.run()  # in this thread: it only reports the end or an error
    kind, payload = out.get_nowait()
    if kind == "error":
        raise _named(payload, [plan.name])
    return _BagSurvey(plan.name, reader.planned, reader.summary())


_WORKER_EXTRACTORS: dict[tuple[ExtractorSpec, str | None], Any] = {}  # one per worker process


def build_chunk(spec: ExtractorSpec, plans: Sequence[_BagPlan], options: BuildOptions, topics: Sequence[str],
                utm_zone: str | None, start: _ChunkStart, end_index: int, work: Path, device: str | None,
                torch_threads: int, kill_flag: str | None) -> int:
    """One chunk of a planned build (a work unit): read ``plans`` from ``start`` up to keyframe
    ``end_index``, extract in batches as the sequential build does, write the chunk file.
    Returns the keyframes computed."""
    import torch

    torch.set_num_threads(torch_threads)
    key = (spec, device)
    if key not in _WORKER_EXTRACTORS:
        _WORKER_EXTRACTORS[key] = spec.load(device)
    extractor = _WORKER_EXTRACTORS[key]
    if kill_flag:
        try:
            os.close(os.open(kill_flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.kill(os.getpid(), signal.SIGKILL)  # a worker dying mid-build (tests of the retry)
        except FileExistsError:
            pass
    chunk = start.first_index // options.chunk_size
    items: queue.Queue = queue.Queue(maxsize=options.prefetch)
    stop = threading.Event()
    reader = _KeyframeReader(plans, options, topics, lambda c: c == chunk, items, stop, utm_zone=utm_zone,
                             start=start, end_index=end_index, final_checks=False)
    try:
        return _extract_chunks(reader, items, extractor, work, options.chunk_size, spec.batch_size,
                               _progress_bar(None, False))
    except Exception as err:
        raise _named(err, [p.name for p in plans]) from err
    finally:
        stop.set()
        reader.join(timeout=5.0)


def _merge_surveys(surveys: Sequence[_BagSurvey], topics: Sequence[str]) -> _ReadSummary:
    """The bags' surveys as one sequential pass would have counted them."""
    cameras = {t: CameraStats() for t in topics}
    stats = ReadStats()
    truncated: dict[str, str] = {}
    for survey in surveys:
        part = survey.summary
        for topic, counts in part.cameras.items():
            for name, value in dataclasses.asdict(counts).items():
                setattr(cameras[topic], name, getattr(cameras[topic], name) + value)
        stats.undeserialisable += part.read_stats.undeserialisable
        for reason, n in part.read_stats.reasons.items():
            stats.reasons[reason] = stats.reasons.get(reason, 0) + n
        for topic, n in part.read_stats.undeserialisable_by_topic.items():
            stats.undeserialisable_by_topic[topic] = stats.undeserialisable_by_topic.get(topic, 0) + n
        truncated.update(part.truncated)
    _check_topics_deserialised(stats, cameras)
    map_frame = next((s.summary.map_frame for s in surveys if s.summary.map_frame), None)
    zone = next((s.summary.utm_zone for s in surveys if s.summary.utm_zone), None)
    total = sum(len(s.keyframes) for s in surveys)
    return _ReadSummary(total, map_frame, zone, cameras, stats, truncated)


def _chunk_starts(surveys: Sequence[_BagSurvey], chunk_size: int, chunks: Sequence[int]
                  ) -> dict[int, tuple[int, _ChunkStart]]:
    """Chunk -> (its first bag, where reading starts): keyframe k of the build is keyframe
    k - offset of its bag, offsets being the prefix sums of the bags' keyframe counts."""
    wanted = {c * chunk_size: c for c in chunks}
    starts: dict[int, tuple[int, _ChunkStart]] = {}
    offset = 0
    for b, survey in enumerate(surveys):
        latest: dict[str, Any] = {}  # what KeyframeSelector.accept kept, keyframe by keyframe
        ordinals: dict[str, int] = {}  # where each camera's latest keyframe is in the bag (the view rule's)
        for local, (ordinal, camera, stamp, position, orientation) in enumerate(survey.keyframes):
            chunk = wanted.get(offset + local)
            if chunk is not None:
                starts[chunk] = (b, _ChunkStart(offset + local, ordinal, dict(latest), dict(ordinals)))
            latest[camera] = (stamp, position, orientation)
            ordinals[camera] = ordinal
        offset += len(survey.keyframes)
    return starts


def build_map_planned(
    bags: Sequence[str | Path],
    output: str | Path,
    spec: ExtractorSpec,
    options: BuildOptions,
    pool: WorkerPool,
    *,
    resume: bool = False,
    overwrite: bool = False,
    keep_work: bool = False,
    progress: bool = True,
    device: str | None = None,
    torch_threads: int = 1,
) -> BuildResult:
    """The map :func:`build_map` writes, built by ``pool``'s workers (docs/MAPS.md, "On a cluster").

    1. Plan: one task per bag surveys it (:func:`survey_bag`, no model); the keyframe counts give
       each bag's first keyframe number, the records where each chunk starts.
    2. One task per unfinished chunk (:func:`build_chunk`) extracts with its own extractor
       (``device``; ``torch_threads`` threads) and writes the chunk file, as the sequential build.
    3. The driver assembles the map from the chunk files (:func:`_assemble`), as the sequential build.
    ``resume`` skips the chunks an interrupted build finished (sequential or planned alike).
    """
    started = time.monotonic()
    output = _checked_output(output, bags, overwrite)
    if options.shard != (0, 1):
        raise ValueError("--shard is for a build without --ray: the cluster plans the work itself")
    extractor = spec.load("cpu")  # the fingerprint and dim; the workers load their own
    plans, topics, identity, build_id, work, done, options = _start(bags, output, options, extractor.fingerprint,
                                                                    spec.batch_size, resume, overwrite)
    try:
        labels = [f"bag {p.path}" for p in plans]
        surveys = pool.map(survey_bag, [(p, options, topics, None) for p in plans], labels, gpu=False)
        # NavSatFix poses are projected into the zone of the first bag that has a fix (as when read in order).
        zone = next((s.summary.utm_zone for s in surveys if s.summary.utm_zone), None)
        again = [i for i, s in enumerate(surveys) if s.summary.utm_zone not in (None, zone)]
        if again:
            redone = pool.map(survey_bag, [(plans[i], options, topics, zone) for i in again],
                              [labels[i] for i in again], gpu=False)
            for i, survey in zip(again, redone, strict=True):
                surveys[i] = survey
        summary = _merge_surveys(surveys, topics)
        total = summary.keyframes_total
        todo = [c for c in range(-(-total // options.chunk_size)) if c not in done]
        starts = _chunk_starts(surveys, options.chunk_size, todo)
        first_of_bag = np.cumsum([0] + [len(s.keyframes) for s in surveys])
        kill_flag = os.environ.get(KILL_WORKER_ONCE_ENV) or None
        calls, unit_labels, sizes = [], [], []
        for c in todo:
            first_bag, start = starts[c]
            end = min(start.first_index + options.chunk_size, total)
            last_bag = int(np.searchsorted(first_of_bag, end - 1, side="right")) - 1
            calls.append((spec, plans[first_bag:last_bag + 1], options, topics, zone, start, end, work, device,
                          torch_threads, kill_flag))
            unit_labels.append(f"keyframes {start.first_index}..{end - 1} of bag "
                               f"{', '.join(str(p.path) for p in plans[first_bag:last_bag + 1])}")
            sizes.append(end - start.first_index)
        bar = progress_bar(sum(sizes), unit="kf", desc="build_map (keyframes, all workers)", enabled=progress)
        try:
            built = pool.map(build_chunk, calls, unit_labels, gpu=True, on_done=bar.update)
        finally:
            bar.close()
    except BaseException:
        if not any(work.glob("chunk-*.npz")):  # nothing to resume: do not block the next run
            shutil.rmtree(work, ignore_errors=True)
        raise
    place_map, skipped = _finish(work, summary, options, extractor, topics, plans, build_id, identity, output,
                                 keep_work)
    return BuildResult(place_map, output, total, sum(built), len(done), summary.cameras, skipped,
                       time.monotonic() - started, place_map.info["build"]["local_features"])


# --- CLI -----------------------------------------------------------------------------------------
def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from err
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard i/N needs 0 <= i < N, got {text!r}")
    return index, count


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    """--index and its parameters (shared with merge_maps)."""
    group = parser.add_argument_group("index")
    group.add_argument("--index", choices=INDEX_TYPES, default="flat",
                       help="exact inner product (flat, default), IVF-PQ or HNSW")
    group.add_argument("--pca-dim", type=int, help="reduce descriptors to this dim by PCA inside the index")
    group.add_argument("--nlist", type=int, help="ivfpq: inverted lists (default ~4 sqrt(N))")
    group.add_argument("--pq-m", type=int, help="ivfpq: sub-quantisers (must divide the dim)")
    group.add_argument("--nbits", type=int, help="ivfpq: bits per code (default 8)")
    group.add_argument("--nprobe", type=int, help="ivfpq: lists visited per query (default 16)")
    group.add_argument("--hnsw-m", type=int, help="hnsw: neighbours per node (default 32)")
    group.add_argument("--ef-construction", type=int, help="hnsw: build-time beam (default 40)")
    group.add_argument("--ef-search", type=int, help="hnsw: search-time beam (default 64)")


def index_params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    params = {
        "pca_dim": args.pca_dim, "nlist": args.nlist, "m": args.pq_m, "nbits": args.nbits,
        "nprobe": args.nprobe, "M": args.hnsw_m, "ef_construction": args.ef_construction,
        "ef_search": args.ef_search,
    }
    allowed = {"flat": {"pca_dim"}, "ivfpq": {"pca_dim", "nlist", "m", "nbits", "nprobe"},
               "hnsw": {"pca_dim", "M", "ef_construction", "ef_search"}}[args.index]
    extra = sorted(k for k, v in params.items() if v is not None and k not in allowed)
    if extra:
        raise MapError(f"index parameter(s) {extra} do not apply to --index {args.index}")
    return {k: v for k, v in params.items() if v is not None}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="build_map", description=__doc__.split("\n\n")[0])
    parser.add_argument("bags", nargs="+", type=path_argument,
                        help="rosbag2 folders (with metadata.yaml) or .db3/.mcap files")
    parser.add_argument("-o", "--output", required=True, type=path_argument, help="map folder to write")
    parser.add_argument("--model", required=True, type=path_argument,
                        help="model folder or .pt/.ckpt file (qaa_vpr_ros.model.load_model)")
    parser.add_argument("--image-topics", nargs="+", default=[],
                        help="camera topics (sensor_msgs/Image or CompressedImage); default: all in the first bag")
    parser.add_argument("--pose-topic", help="Odometry, PoseStamped, PoseWithCovarianceStamped or NavSatFix topic; "
                        "without it keyframes carry stamps only")
    parser.add_argument("--map-frame", help="frame of the keyframe poses (default: the pose topic's frame_id, "
                        "'utm' for NavSatFix)")
    parser.add_argument("--map-id",
                        help="id that loop-closure records name this map by (at most 64 UTF-8 bytes, not 'online'); "
                             "default: the first bag's name + 8 hex digits of the build id")
    parser.add_argument("--min-interval", type=float, default=0.0,
                        help="seconds between keyframes of a camera (default 0)")
    parser.add_argument("--min-distance", type=float, default=1.0,
                        help="metres travelled between keyframes (default 1.0)")
    parser.add_argument("--min-rotation", type=float, default=0.26,
                        help="radians turned between keyframes (default 0.26)")
    parser.add_argument("--min-view-overlap", type=float, default=DEFAULT_MIN_VIEW_OVERLAP, metavar="SHARE",
                        help="also a keyframe when less than this share of an image's local features match the "
                             "camera's last keyframe's (cameras with intrinsics; 0 disables; default "
                             f"{DEFAULT_MIN_VIEW_OVERLAP})")
    parser.add_argument("--max-pose-gap", type=float, default=2.0,
                        help="seconds between poses beyond which images get no pose (skipped, counted; default 2)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                        help="inference backend (default torch); onnxruntime runs the --onnx file")
    parser.add_argument("--onnx", type=path_argument,
                        help="with --backend onnxruntime: the file export_onnx wrote for --model "
                        "(the map gets the same fingerprint as with torch)")
    parser.add_argument("--chunk-size", type=int, default=256, help="keyframes per resumable chunk (default 256)")
    parser.add_argument("--prefetch", type=int, default=64, help="decoded keyframes queued for the model (default 64)")
    parser.add_argument("--shard", type=_shard, default=(0, 1), help="process part i of N (merge with merge_maps)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted build from <output>.work")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output map")
    parser.add_argument("--keep-work", action="store_true", help="keep <output>.work after success")
    parser.add_argument("--allow-truncated", action="store_true",
                        help="use a damaged bag up to the damage (counted in the manifest) instead of failing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("local features (geometric verification of matches, docs/MAPS.md)")
    group.add_argument("--depth-topics", nargs="+", default=[], metavar="DEPTH",
                       help="registered depth images (sensor_msgs/Image 16UC1 millimetres or 32FC1 metres), one per "
                            "camera in --image-topics order; never taken as cameras")
    group.add_argument("--camera-intrinsics", default="",
                       help="'TOPIC fx fy cx cy [k1 k2 p1 p2 k3]; ...' for cameras without a camera_info topic beside "
                            "the image topic (/ns/image_raw -> /ns/camera_info, which wins)")
    group.add_argument("--depth-max-age", type=float, default=0.05, metavar="SECONDS",
                       help="pair a keyframe with the depth image of the nearest stamp within this (default 0.05)")
    group.add_argument("--max-local-features", type=int, default=FeatureConfig.max_features, metavar="N",
                       help=f"strongest SIFT features kept per keyframe (default {FeatureConfig.max_features})")
    group.add_argument("--no-local-features", action="store_true",
                       help="store no local features (matches against the map are then not verified)")
    add_ray_arguments(parser)
    add_index_arguments(parser)
    return parser


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """--ray and its placement (shared with eval_map)."""
    group = parser.add_argument_group("cluster (optional extra: pip install qaa_vpr_ros[ray])")
    group.add_argument("--ray", nargs="?", const="auto", metavar="auto|ADDRESS|local",
                       help="build as Ray tasks: auto (the running cluster, default), ADDRESS, or local (a private "
                            "Ray on this machine); the same map as without (docs/MAPS.md)")
    group.add_argument("--ray-gpus-per-task", type=float,
                       help="GPUs per extraction task (default: 1 where the cluster has GPUs, else 0)")
    group.add_argument("--ray-cpus-per-task", type=int, default=1,
                       help="CPUs per task, also its torch threads (default 1)")
    group.add_argument("--ray-max-retries", type=int, default=3,
                       help="retries of a task whose worker process died (default 3)")


def ray_pool(args: argparse.Namespace) -> Any:
    """The Ray pool for --ray (RayMissingError without the extra, ValueError on bad placement)."""
    from qaa_vpr_ros.map_tools.ray_build import RayOptions, RayPool

    return RayPool(RayOptions(args.ray, args.ray_gpus_per_task, args.ray_cpus_per_task, args.ray_max_retries))


def ray_device(args: argparse.Namespace, pool: Any) -> str:
    """A task's device: --device when given, else cuda where the task holds a GPU, else cpu."""
    if args.device != "auto":
        return args.device
    return "cuda" if pool.gpus_per_task > 0 else "cpu"


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        options = BuildOptions(
            image_topics=tuple(args.image_topics),
            pose_topic=args.pose_topic,
            selection=SelectionConfig(args.min_interval, args.min_distance, args.min_rotation,
                                      0.0 if args.no_local_features else args.min_view_overlap),
            max_pose_gap_s=args.max_pose_gap,
            chunk_size=args.chunk_size,
            shard=args.shard,
            allow_truncated=args.allow_truncated,
            map_frame=args.map_frame,
            map_id=args.map_id,
            index_type=args.index,
            index_params=index_params_from_args(args),
            prefetch=args.prefetch,
            local_features=None if args.no_local_features else FeatureConfig(max_features=args.max_local_features),
            depth_topics=tuple(args.depth_topics),
            depth_max_age_s=args.depth_max_age,
            camera_intrinsics=parse_intrinsics(args.camera_intrinsics),
        )
    except (ValueError, MapError) as err:
        parser.error(str(err))
    if args.ray and args.shard != (0, 1):
        parser.error("--shard and --ray do not mix: with --ray the cluster plans the work itself")
    spec = ExtractorSpec(str(args.model), args.device, args.batch_size, args.precision, args.backend,
                         str(args.onnx) if args.onnx else None)
    try:
        if args.ray:
            from qaa_vpr_ros.map_tools.ray_build import RayMissingError

            try:
                pool = ray_pool(args)
            except RayMissingError as err:
                print(f"build_map: error: {err}", file=sys.stderr)
                return 2
            except ValueError as err:
                parser.error(str(err))
            with pool:
                result = build_map_planned(
                    args.bags, args.output, spec, options, pool, resume=args.resume, overwrite=args.overwrite,
                    keep_work=args.keep_work, progress=not args.no_progress, device=ray_device(args, pool),
                    torch_threads=args.ray_cpus_per_task,
                )
        else:
            result = build_map(
                args.bags, args.output, spec.load(), options, resume=args.resume, overwrite=args.overwrite,
                keep_work=args.keep_work, progress=not args.no_progress,
            )
    except KeyboardInterrupt:
        print(f"build_map: interrupted; finished chunks are kept in {args.output}.work — rerun with --resume",
              file=sys.stderr)
        return 130
    except (BagError, MapError, ValueError, OSError, RuntimeError) as err:
        print(f"build_map: error: {err}", file=sys.stderr)
        return 1
    print(_summary(result))
    return 0


def _summary(result: BuildResult) -> str:
    lines = [
        f"map {result.output}: {len(result.map)} keyframes ({result.keyframes_built} computed, "
        f"{result.chunks_resumed} chunks resumed) in {result.seconds:.1f} s",
    ]
    for topic, s in result.cameras.items():
        lines.append(
            f"  {topic}: {s.images} images, {s.keyframes} keyframes ({s.view_keyframes} by view change); skipped: "
            f"{s.outside_pose_range} outside pose range, {s.in_pose_gap} in pose gaps, {s.undecodable} undecodable"
        )
    damaged = result.skipped.get("damaged_bags") or {}
    for name, why in damaged.items():
        lines.append(f"  damaged bag {name} (used up to the damage): {why}")
    if result.skipped.get("undeserialisable_messages"):
        lines.append(f"  {result.skipped['undeserialisable_messages']} undeserialisable messages skipped")
    lines.extend(_feature_lines(result.local_features))
    return "\n".join(lines)


def _feature_lines(report: dict[str, Any]) -> list[str]:
    if not report or report.get("disabled"):
        return ["  no local features (--no-local-features): matches against this map are not verified"]
    lines = [f"  local features: {report['keyframes_with_features']} keyframes with features, "
             f"{report['keyframes_with_depth']} with depth, {report['missing_depth_pairs']} without a depth image "
             f"pair; {report['mean_bytes_per_keyframe'] / 1e3:.1f} kB per keyframe on average"]
    for topic, n in report.get("without_intrinsics", {}).items():
        lines.append(f"  warning: camera {topic} has no intrinsics (no CameraInfo on {camera_info_topic(topic)}, "
                     f"none in --camera-intrinsics): its {n} keyframes have no local features and cannot be "
                     "verified")
    return lines


if __name__ == "__main__":
    sys.exit(main())
