"""The localize node's work on a batch of camera frames, free of ROS (docs/ARCHITECTURE.md).

``localize_node`` hands :meth:`FramePipeline.process` the frames its cameras' one-slot buffers
held and publishes the :class:`BatchOutput` that comes back; nothing here calls back into it.
Per frame, in this order:

1. **gating, once**: the keyframe gate's time rule (no pose needed, so a frame it skips never
   waits for odometry), then the odometry pose at the image stamp (waiting briefly for a sample
   after it) and the gate's full decision with that pose, committed only once the frame decoded;
2. **decoding** (:func:`~qaa_vpr_ros.image_conversion.image_from_msg`);
3. **extraction** of the batch (:class:`~qaa_vpr_ros.extractor.DescriptorExtractor`);
4. **the decision** (:class:`~qaa_vpr_ros.decision.Localizer`);
5. **verification** of accepted online loop closures (:class:`~qaa_vpr_ros.verification.KeyframeVerifier`,
   which un-accepts what geometry rejects);
6. **outputs as data**: the place match with its covariance and each channel's loop-closure
   records (:func:`~qaa_vpr_ros.decision.record.channel_records`), their camera extrinsics from
   :class:`~qaa_vpr_ros.extrinsics.ExtrinsicsSource`.

Image stamps also drive the session: a camera's stamps jumping back start a new session (the
online database, match sequences, verifier images and keyframe gate are cleared, as
:meth:`FramePipeline.reset`, i.e. ``~/reset``); a jump forward restarts the match sequences.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from qaa_vpr_ros.decision import (
    ChannelResult,
    KeyframeGate,
    LocalizeConfig,
    Localizer,
    PoseHistory,
    Query,
    QueryResult,
    covariance_from_confidence,
)
from qaa_vpr_ros.decision.localization_state import LocalizationState, StateUpdate
from qaa_vpr_ros.decision.record import (
    OPTICAL_IN_BASE,
    LoopClosureRecord,
    channel_records,
    covariance_in_match_frame,
    with_geometry,
    with_geometry_rotation,
)
from qaa_vpr_ros.decision.verifier import CandidateVerifier
from qaa_vpr_ros.extrinsics import ExtrinsicsSource
from qaa_vpr_ros.image_conversion import ImageDecodeError, depth_from_msg, image_from_msg
from qaa_vpr_ros.local_features import FeatureConfig, LocalFeatures, extract_local_features
from qaa_vpr_ros.poses import Pose

if TYPE_CHECKING:
    from qaa_vpr_ros.extractor import DescriptorExtractor

__all__ = ["Answer", "BatchOutput", "ChannelAnswer", "DepthImages", "Frame", "FrameOutcome", "FramePipeline",
           "PlaceMatch", "StampJump", "StampJumps", "confidence_floor"]

UNMATCHED_VARIANCE = 9999.0  # diagonal of a published unaccepted best guess (publish_unmatched)
TIME_JUMP_BACK_S = 5.0  # an image stamped this much before its camera's previous one: a new session
TIME_JUMP_FORWARD_S = 10.0  # an image stamped this much after the newest one: a gap (sequences restart)


@dataclass(frozen=True)
class Frame:
    """One camera image as it arrived: its topic, header stamp and frame, and the message itself
    (``sensor_msgs/Image`` or ``CompressedImage``, rclpy's or rosbags' objects alike)."""

    camera: str
    stamp_sec: int
    stamp_nanosec: int
    frame_id: str
    message: Any

    @property
    def stamp(self) -> float:
        """Seconds (float)."""
        return self.stamp_sec + 1e-9 * self.stamp_nanosec


@dataclass(frozen=True)
class FrameOutcome:
    """What became of one frame: ``processed`` (it has an :class:`Answer`), ``gated`` (the keyframe
    gate skipped it) or ``bad`` (undecodable; ``error`` says why)."""

    frame: Frame
    status: Literal["processed", "gated", "bad"]
    error: str = ""
    # The depth pairing of a processed frame of a camera with a depth topic: "paired", "missing"
    # (none within depth_max_age_s) or "bad" (undecodable: depth_error says why); "" otherwise.
    depth: str = ""
    depth_error: str = ""


@dataclass(frozen=True)
class PlaceMatch:
    """What ``~/place_match`` carries for one query: where the query is in ``frame_id`` with a
    covariance (row-major 6x6): the query's own pose when geometry gave a metric relative pose
    (``source`` "geometry"), else the matched keyframe's pose (``source`` "keyframe");
    ``accepted`` False for a best guess (``publish_unmatched``)."""

    frame_id: str
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float]
    covariance: list[float]
    accepted: bool
    score: float
    source: str = "keyframe"


@dataclass(frozen=True)
class ChannelAnswer:
    """One database's answer to a query (``channel.source``: "map" or "online") and its records."""

    channel: ChannelResult
    records: list[LoopClosureRecord]


@dataclass
class Answer:
    """Everything to publish for one processed frame."""

    result: QueryResult
    place_match: PlaceMatch | None
    channels: list[ChannelAnswer]
    age_s: float  # the caller's clock at the start of processing minus the image stamp (NaN: no clock)
    localization: StateUpdate | None = None  # the localization state after this query (initialpose due?)

    @property
    def query(self) -> Query:
        return self.result.query


@dataclass(frozen=True)
class StampJump:
    """Image stamps jumped ``kind`` ("back" or "forward") from ``old`` to ``new`` (seconds)."""

    kind: Literal["back", "forward"]
    old: float
    new: float

    def describe(self, dropped_online: int) -> str:
        """The log line: what happened, the likely cause, and what was cleared."""
        if self.kind == "back":
            return (f"image stamps jumped back {self.old - self.new:.1f} s (from {self.old:.3f} to {self.new:.3f}: "
                    f"a bag looped or replayed, a simulator reset): new session, {dropped_online} online keyframes "
                    "and the match sequences cleared (call ~/save_map before a replay loops to keep them)")
        return (f"image stamps jumped forward {self.new - self.old:.1f} s (from {self.old:.3f} to {self.new:.3f}: "
                "a gap in the recording, a bag played from an offset, or no camera for that long): the match "
                "sequences restart")


@dataclass
class BatchOutput:
    """The result of :meth:`FramePipeline.process`, in the order of the frames given."""

    outcomes: list[FrameOutcome] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    jump: StampJump | None = None  # applied before this batch
    dropped_online: int = 0  # online keyframes cleared by a jump back
    inference_ms: float = math.nan
    features_ms: float = math.nan  # local features of the batch (verification)
    search_ms: float = math.nan  # the decision and verification
    warnings: list[str] = field(default_factory=list)  # for the log, each already rate-limited (TF)
    verification_errors: list[str] = field(default_factory=list)  # for the log (OpenCV or other errors)


def confidence_floor(config: LocalizeConfig, source: str) -> float:
    """The confidence an accepted candidate of database ``source`` has at least: the one that
    its covariance is scaled from (``loop_min_confidence`` online, ``min_confidence`` for the map)."""
    return config.loop_min_confidence if source == "online" else config.min_confidence


class DepthImages:
    """A short history of depth images per camera, to pair each colour image with the depth image
    of the nearest stamp (thread-safe: depth arrives on the node's callbacks, the pipeline looks up)."""

    def __init__(self, history: int = 8) -> None:
        from collections import deque

        self._history = history
        self._deque = deque
        self._images: dict[str, Any] = {}
        self._cond = threading.Condition()

    def add(self, camera: str, stamp: float, message: Any) -> None:
        with self._cond:
            queue = self._images.setdefault(camera, self._deque(maxlen=self._history))
            queue.append((stamp, message))
            self._cond.notify_all()

    def lookup(self, camera: str, stamp: float, max_age_s: float, wait: bool = True) -> Any | None:
        """The message of the nearest stamp within ``max_age_s`` of ``stamp``; with ``wait``, waits up
        to ``max_age_s`` (wall clock) for one stamped at or after ``stamp`` when none is yet (colour
        may come first). None: no pair."""
        deadline = time.monotonic() + max_age_s

        def newest() -> float:
            queue = self._images.get(camera)
            return queue[-1][0] if queue else -math.inf

        with self._cond:
            while wait and newest() < stamp and time.monotonic() < deadline:
                self._cond.wait(max(deadline - time.monotonic(), 0.0))
            queue = list(self._images.get(camera, ()))
        if not queue:
            return None
        gap, message = min(((abs(s - stamp), m) for s, m in queue), key=lambda x: x[0])
        return message if gap <= max_age_s else None

    def clear(self) -> None:
        with self._cond:
            self._images.clear()


class _FrameFeatures:
    """A frame's local features, computed on first call and kept (the view rule of the keyframe
    gate and verification share them)."""

    def __init__(self, compute: Callable[[], LocalFeatures | None]) -> None:
        self._compute: Callable[[], LocalFeatures | None] | None = compute
        self._value: LocalFeatures | None = None

    def __call__(self) -> LocalFeatures | None:
        if self._compute is not None:
            self._value, self._compute = self._compute(), None
        return self._value


class StampJumps:
    """Notes every image stamp as it arrives (thread-safe) and tells a jump of the stamps (a bag
    looped or replayed, a simulator reset, a gap in a recording) once.

    Back: a camera's own stamps go back by more than :data:`TIME_JUMP_BACK_S` (so one camera on
    another clock never counts); the other cameras following it back into the new timeline are
    the same jump. Forward: more than :data:`TIME_JUMP_FORWARD_S` past the newest stamp of any camera."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest: float | None = None
        self._camera: dict[str, float] = {}  # camera -> its latest stamp
        self._since_back: set[str] = set()  # cameras heard from since the last jump back
        self._pending: StampJump | None = None
        self.back = 0  # jumps back taken so far
        self.forward = 0

    def note(self, camera: str, stamp: float) -> None:
        with self._lock:
            last, newest = self._camera.get(camera), self._newest
            self._camera[camera] = stamp
            if last is not None and stamp < last - TIME_JUMP_BACK_S:
                if camera in self._since_back:  # not a camera catching up with the last jump back
                    self._pending = StampJump("back", last, stamp)
                    self._since_back.clear()
                    self._newest = stamp
            elif newest is not None and stamp > newest + TIME_JUMP_FORWARD_S:
                if self._pending is None or self._pending.kind != "back":
                    self._pending = StampJump("forward", newest, stamp)
            self._since_back.add(camera)
            if self._newest is None or stamp > self._newest:
                self._newest = stamp

    def take(self) -> StampJump | None:
        """The jump noted since the last call, if any (a jump back wins over a forward one)."""
        with self._lock:
            jump, self._pending = self._pending, None
            if jump is not None:
                self.back += jump.kind == "back"
                self.forward += jump.kind == "forward"
            return jump


class FramePipeline:
    """From camera frames to what the node publishes (module docstring). Thread-safe: one thread
    processes; odometry, stamps, parameter changes and the services may come from others.

    Built before the model is loaded (odometry and stamps are noted meanwhile); :meth:`attach`
    gives it the extractor and localizer, after which :attr:`ready` is True."""

    def __init__(self, config: LocalizeConfig, extrinsics: ExtrinsicsSource,
                 verifier: CandidateVerifier | None = None) -> None:
        self.config = config
        self.extrinsics = extrinsics
        self.verifier = verifier
        self.depth = DepthImages()
        self.depth_of = {image: depth for image, depth in zip(config.image_topics, config.depth_topics, strict=False)
                         if depth}
        self.feature_config = FeatureConfig(max_features=config.local_features_max)
        self.poses = PoseHistory()
        self.gate = KeyframeGate(config)
        self.stamps = StampJumps()
        self.localization = LocalizationState(config)  # localized / lost, the initialpose policy
        self.extractor: DescriptorExtractor | None = None
        self.localizer: Localizer | None = None
        self.map_session = "map"  # match_session of records against the prior map
        self.lock = threading.Lock()  # the localizer and verifier (processing, services, parameters)

    @property
    def ready(self) -> bool:
        return self.localizer is not None

    def attach(self, extractor: DescriptorExtractor, localizer: Localizer, map_session: str = "map") -> None:
        """The loaded model's extractor and the localizer (prior map and online database)."""
        with self.lock:
            self.extractor, self.localizer, self.map_session = extractor, localizer, map_session

    def set_config(self, config: LocalizeConfig) -> None:
        """A validated change of parameters, effective from the next frame."""
        self.config = config
        self.gate.config = config
        self.localization.config = config
        if self.verifier is not None:
            self.verifier.config = config
        with self.lock:
            if self.localizer is not None:
                self.localizer.set_config(config)

    def add_odometry(self, stamp: float, pose: Pose, frame_id: str) -> None:
        self.poses.add(stamp, pose, frame_id or self.config.odom_frame)

    def reset(self) -> int:
        """A new session (``~/reset``, a jump back of the stamps): the online database, the match
        sequences, the verifier's keyframe images, the keyframe gate and the localization state start
        afresh (the prior map stays). Returns the number of online keyframes dropped (0 before loading)."""
        with self.lock:
            dropped = 0
            if self.localizer is not None:
                dropped = len(self.localizer.online_map)
                self.localizer.reset()
        self.gate.reset()
        self.localization.reset()
        return dropped

    def save_online(self, folder: str | Path) -> tuple[int, str]:
        """Save the online database as a map; (keyframes saved, its map_id). Raises when not loaded."""
        with self.lock:
            if self.localizer is None:
                raise RuntimeError("not loaded")
            count = self.localizer.save_online(folder)
            return count, self.localizer.online_map.map_id

    # --- the batch --------------------------------------------------------------------------
    def process(self, frames: Sequence[Frame], now_s: float = math.nan) -> BatchOutput:
        """Gate, decode, extract, decide, verify and make the outputs of ``frames`` (at most one
        per camera). ``now_s``: the caller's clock (seconds) for each answer's ``age_s``."""
        if self.localizer is None or self.extractor is None:
            raise RuntimeError("FramePipeline.process before attach()")
        out = BatchOutput()
        out.jump = self.stamps.take()
        if out.jump is not None:
            if out.jump.kind == "back":
                out.dropped_online = self.reset()
            else:
                with self.lock:
                    self.localizer.restart_sequences()
        cfg = self.config
        taken: list[tuple[Frame, Query, np.ndarray, str, _FrameFeatures]] = []
        for frame in frames:
            query, by_view = self._admit(frame, cfg)
            if query is None:
                out.outcomes.append(FrameOutcome(frame, "gated"))
                continue
            try:
                image, encoding = image_from_msg(frame.message, max_pixels=cfg.max_image_pixels)
            except ImageDecodeError as err:
                out.outcomes.append(FrameOutcome(frame, "bad", str(err)))
                continue
            depth, status, error = self._depth(frame, cfg)
            feats = _FrameFeatures(lambda f=frame, i=image, d=depth: self._features(f, i, d, out.verification_errors))
            # The motion rules skip it: a keyframe still if its view changed (features compared with
            # the last keyframe's; only now, as they cost far more than a pose).
            if by_view and not self.gate.admit(frame.camera, frame.stamp, query.pose, commit=False, view=feats):
                out.outcomes.append(FrameOutcome(frame, "gated"))
                continue
            self.gate.admit(frame.camera, frame.stamp, query.pose, view=feats)  # commit: decoded and taken
            out.outcomes.append(FrameOutcome(frame, "processed", depth=status, depth_error=error))
            taken.append((frame, query, image, encoding, feats))
        if not taken:
            return out
        t0 = time.perf_counter()
        descriptors = self.extractor.extract([t[2] for t in taken], [t[3] for t in taken])
        t1 = time.perf_counter()
        features = [feats() for *_, feats in taken]
        t2 = time.perf_counter()
        with self.lock:
            results = self.localizer.process([t[1] for t in taken], descriptors, features)
            online = self.localizer.online_map
            for (frame, *_), feats in zip(taken, features, strict=True):
                if feats is not None and frame.camera not in online.cameras:  # a saved online map carries them
                    online.set_camera(frame.camera, self.verifier.intrinsics(frame.camera))
            for result, feats in zip(results, features, strict=True):
                if self.verifier is not None:
                    out.verification_errors.extend(self.verifier.verify(result, feats, self.localizer))
        t3 = time.perf_counter()
        out.inference_ms, out.features_ms, out.search_ms = (1000.0 * (t1 - t0), 1000.0 * (t2 - t1),
                                                            1000.0 * (t3 - t2))
        for (frame, *_), result in zip(taken, results, strict=True):
            channels = self._channels(result, out.warnings)
            out.answers.append(Answer(result, self._place_match(result, channels), channels, now_s - frame.stamp))
        for answer in out.answers:  # map matches only: online closures are in the odometry frame
            answer.localization = self.localization.observe(
                answer.query, next((a.records for a in answer.channels if a.channel.source == "map"), []))
        return out

    def _depth(self, frame: Frame, cfg: LocalizeConfig) -> tuple[np.ndarray | None, str, str]:
        """The depth image paired with ``frame`` (metres), its pairing status and error."""
        topic = self.depth_of.get(frame.camera)
        if topic is None or self.verifier is None or self.verifier.intrinsics(frame.camera) is None:
            return None, "", ""
        message = self.depth.lookup(frame.camera, frame.stamp, cfg.depth_max_age_s)
        if message is None:
            return None, "missing", ""
        try:
            return depth_from_msg(message, max_pixels=cfg.max_image_pixels), "paired", ""
        except ImageDecodeError as err:
            return None, "bad", str(err)

    def _features(self, frame: Frame, image: np.ndarray, depth: np.ndarray | None,
                  errors: list[str]) -> LocalFeatures | None:
        """The query's local features, when its camera's intrinsics are known (else None: nothing to
        verify with). An extraction error is logged and leaves the query without features."""
        if self.verifier is None or self.verifier.intrinsics(frame.camera) is None:
            return None
        try:
            return extract_local_features(image, depth, self.feature_config)
        except Exception as err:  # cv2.error, a depth image of another shape: never out of the batch
            errors.append(f"{frame.camera}: local features failed, the frame is not verified: {err!r}")
            return None

    def _admit(self, frame: Frame, cfg: LocalizeConfig) -> tuple[Query | None, bool]:
        """The frame's query (with its odometry pose) when the keyframe gate takes it, else None;
        and whether only the view rule can still take it (the motion rules skip it, the view rule
        is on and the camera's features can be computed): then the caller decides with features.
        The time rule needs no pose: a frame it skips never waits for odometry."""
        stamp = frame.stamp
        if not self.gate.admit(frame.camera, stamp, None, commit=False):
            return None, False
        if cfg.odom_topic:  # odometry may trail the image: wait (briefly) for the sample after it
            self.poses.wait_for(stamp, cfg.odom_max_age_s)
        found = self.poses.lookup(stamp, cfg.odom_max_age_s)
        pose, pose_frame = found if found is not None else (None, cfg.odom_frame)
        query = Query(camera=frame.camera, stamp_sec=frame.stamp_sec, stamp_nanosec=frame.stamp_nanosec,
                      frame_id=frame.frame_id, pose=pose, pose_frame=pose_frame)
        if pose is not None and not self.gate.admit(frame.camera, stamp, pose, commit=False):
            view_rule = (cfg.min_view_overlap > 0 and self.verifier is not None
                         and self.verifier.intrinsics(frame.camera) is not None)
            return (query, True) if view_rule else (None, False)
        return query, False

    def _place_match(self, result: QueryResult, channels: list[ChannelAnswer]) -> PlaceMatch | None:
        """The accepted match: the query's own pose when geometry gave a metric relative pose (the
        matched keyframe's pose composed with it, the covariance from the verification carried into
        the map frame), else the matched keyframe's pose. With ``publish_unmatched``, the best guess."""
        place, cfg = result.place, self.config
        if place is None:
            return None
        best = place.best
        if best is not None and best.keyframe.has_pose:  # never an identity pose for an unknown one
            record = next((r for a in channels if a.channel is place for r in a.records
                           if r.accepted and r.match_keyframe_id == int(best.keyframe.id)), None)
            if record is not None and record.transform_source == "geometry":
                position, orientation = record.query_pose_in_match_frame()
                return PlaceMatch(place.map_frame, position, orientation, list(covariance_in_match_frame(record)),
                                  True, best.score, "geometry")
            return PlaceMatch(place.map_frame, tuple(best.keyframe.position), tuple(best.keyframe.orientation),
                              covariance_from_confidence(best.confidence, confidence_floor(cfg, place.source),
                                                         cfg.covariance_base), True, best.score)
        if cfg.publish_unmatched and place.candidates and place.candidates[0].keyframe.has_pose:
            top = place.candidates[0]
            return PlaceMatch(place.map_frame, tuple(top.keyframe.position), tuple(top.keyframe.orientation),
                              [UNMATCHED_VARIANCE if i % 7 == 0 else 0.0 for i in range(36)], False, top.score)
        return None

    def _channels(self, result: QueryResult, warnings: list[str]) -> list[ChannelAnswer]:
        return [ChannelAnswer(channel, self._records(result, channel, warnings))
                for channel in (result.map, result.online) if channel is not None]

    def _records(self, result: QueryResult, channel: ChannelResult, warnings: list[str]) -> list[LoopClosureRecord]:
        """The ``~/loop_candidates`` rows of one query against one database (docs/NODE.md)."""
        cfg = self.config
        floor = confidence_floor(cfg, channel.source)
        session = "online" if channel.source == "online" else self.map_session
        frames = {result.query.camera: result.query.frame_id}
        frames.update({c.keyframe.camera: c.keyframe.frame_id for c in channel.candidates})

        def extrinsic(camera: str, default: np.ndarray | None = None) -> np.ndarray:
            matrix, warning = self.extrinsics.lookup(camera, frames.get(camera, ""), default)
            if warning:
                warnings.append(warning)
            return matrix

        keyframe = result.keyframe
        records = channel_records(
            result.query, channel, session,
            lambda c: covariance_from_confidence(c.confidence, floor, cfg.covariance_base if c.offset is None
                                                 else cfg.covariance_sequence),
            query_keyframe_id=int(keyframe.id) if keyframe is not None else -1, extrinsics=extrinsic)
        out = []
        for candidate, r in zip(channel.candidates, records, strict=True):
            v = candidate.verification
            if v is not None and v.accepted:
                # Geometry is in the optical frames: without extrinsics, the REP 103 optical axes.
                e_match, e_query = extrinsic(r.match_camera, OPTICAL_IN_BASE), extrinsic(r.camera, OPTICAL_IN_BASE)
                if v.metric:
                    r = with_geometry(r, v.matrix, v.covariance, v.inliers, e_match, e_query)
                else:
                    r = with_geometry_rotation(r, v.rotation, v.covariance[3:, 3:], v.inliers, e_match, e_query)
            out.append(r)
        return out

