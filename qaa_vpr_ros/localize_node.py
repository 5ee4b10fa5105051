"""``localize_node``: live place matches and loop closures for a SLAM stack (the only rclpy module).

A thin adapter around :mod:`qaa_vpr_ros.decision`:

- one subscription per camera (``image_topics``), each callback only stores the newest message
  in its camera's one-slot buffer (an overwritten, unprocessed message counts as dropped);
- one inference thread takes the pending frames of all cameras as a batch, decodes them
  (:func:`~qaa_vpr_ros.image_conversion.image_from_msg`), runs the
  :class:`~qaa_vpr_ros.extractor.DescriptorExtractor`, lets the :class:`~qaa_vpr_ros.decision.Localizer`
  search and decide, and publishes;
- outputs (all relative to the node, ``~/``): ``place_match``, ``place_candidates``,
  ``loop_candidates``, ``loop_closure``, ``markers``; ``/diagnostics``; services ``save_map`` and
  ``reset``. See docs/NODE.md.
"""
from __future__ import annotations

import datetime
import gc
import math
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseArray, PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import ColorRGBA, Float64MultiArray, Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from qaa_vpr_ros.decision import (
    Candidate,
    ChannelResult,
    ConfigError,
    KeyframeGate,
    LocalizeConfig,
    Localizer,
    ParamSpec,
    PoseHistory,
    Query,
    QueryResult,
    covariance_from_confidence,
    normalize,
    parameter_table,
)
from qaa_vpr_ros.decision.record import (
    OPTICAL_IN_BASE,
    RECORD_DTYPE,
    LoopClosureRecord,
    channel_records,
    covariance_in_match_frame,
    parse_extrinsics,
    with_geometry,
)
from qaa_vpr_ros.extrinsics import CameraTfStatus, ExtrinsicsSource, TransformBuffer
from qaa_vpr_ros.image_conversion import ImageDecodeError, image_from_msg
from qaa_vpr_ros.localize_entry import stop_on_signals
from qaa_vpr_ros.paths import PathError, expand_path
from qaa_vpr_ros.pose_graph_node import records_cloud
from qaa_vpr_ros.verification import Intrinsics, KeyframeVerifier, parse_intrinsics

__all__ = ["LOOP_CANDIDATE_DTYPE", "LocalizeNode", "main"]

# ~/loop_candidates: one PointCloud2 point per LoopClosureRecord (qaa_vpr_ros.decision.record).
LOOP_CANDIDATE_DTYPE = RECORD_DTYPE
_ROS_TYPES = {"bool": ParameterType.PARAMETER_BOOL, "int": ParameterType.PARAMETER_INTEGER,
              "float": ParameterType.PARAMETER_DOUBLE, "str": ParameterType.PARAMETER_STRING,
              "str[]": ParameterType.PARAMETER_STRING_ARRAY,
              "float[]": ParameterType.PARAMETER_DOUBLE_ARRAY}
_UNMATCHED_VARIANCE = 9999.0
_RATE_WINDOW_S = 5.0
FAILED_BATCHES_ERROR = 3  # consecutive failed batches that turn the localizer's diagnostics ERROR
_SPIN_PERIOD_S = 0.1
_SILENT_WARN_REPEAT_S = 30.0
_CLOCK_MISMATCH_S = 60.0  # |image stamp - node clock| beyond this: the stamps come from another clock
_TIME_JUMP_BACK_S = 5.0  # an image stamped this much before the newest one: time jumped back (new session)
_TIME_JUMP_FORWARD_S = 10.0  # an image stamped this much after the newest one: a gap (sequences restart)
_INPUT_TYPES = {"image": ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"),
                "odometry": ("nav_msgs/msg/Odometry",)}
_SHUTDOWN_WORKER_S = 1.0  # an in-flight batch may finish within this, else it is dropped
_SHUTDOWN_EXECUTOR_S = 0.3
_NO_TF_FAILURE = CameraTfStatus()


def descriptor_of(spec: ParamSpec) -> ParameterDescriptor:
    """The ``ParameterDescriptor`` (type, description, range, read-only) of one table row."""
    text = spec.description + (f" One of: {', '.join(spec.choices)}." if spec.choices else "")
    desc = ParameterDescriptor(name=spec.name, type=_ROS_TYPES[spec.type], description=text,
                               read_only=spec.read_only)
    if spec.range is not None and spec.type == "int":
        desc.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=0)]
    elif spec.range is not None and spec.type == "float":
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                        to_value=float(spec.range[1]), step=0.0)]
    if spec.choices:
        desc.additional_constraints = f"one of {list(spec.choices)}"
    return desc


def _time_msg(sec: int, nanosec: int) -> Time:
    return Time(sec=int(sec), nanosec=int(nanosec))


def _pose_msg(position: Any, orientation: Any) -> Pose:
    """A geometry_msgs/Pose; an unknown (NaN) position becomes the identity pose."""
    pose = Pose()
    if position is not None and all(math.isfinite(v) for v in position):
        pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
        qx, qy, qz, qw = (float(v) for v in orientation)
        pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = qx, qy, qz, qw
    else:
        pose.orientation.w = 1.0
    return pose


def _score_color(score: float, min_score: float, accepted: bool) -> ColorRGBA:
    t = min(max((score - min_score) / max(1.0 - min_score, 1e-6), 0.0), 1.0)
    return ColorRGBA(r=1.0 - t, g=t, b=0.0, a=1.0 if accepted else 0.5)


@dataclass
class _Camera:
    """One camera's subscription, one-slot buffer and counters (guarded by the node's lock)."""

    topic: str
    compressed: bool | None  # None: transport auto, type not known yet
    subscription: Any = None
    slot: Any = None  # newest unprocessed message
    received: int = 0
    processed: int = 0
    dropped: int = 0
    gated: int = 0
    bad: int = 0
    last_bad: str = ""
    last_receive: float | None = None  # time.monotonic()
    frame_age_ms: float = math.nan
    receive_times: deque = field(default_factory=lambda: deque(maxlen=4096))
    process_times: deque = field(default_factory=lambda: deque(maxlen=4096))


def _rate(times: deque, now: float) -> float:
    recent = [t for t in list(times) if now - t <= _RATE_WINDOW_S]
    return len(recent) / _RATE_WINDOW_S


def _clock_differs(age_ms: float) -> bool:
    return math.isfinite(age_ms) and abs(age_ms) > 1000.0 * _CLOCK_MISMATCH_S


def _check_model_files(model: str) -> None:
    """Fail fast, before torch loads, on an unreadable config.json or safetensors header."""
    import json

    from safetensors import safe_open

    path = expand_path(model)
    if path.is_dir():
        files = [path / "config.json", path / "model.safetensors"]
    elif path.suffix == ".safetensors":
        files = [path.parent / "config.json", path]
    else:
        return  # .pt/.pth/.ckpt: only torch reads them
    for file in files:
        if not file.is_file():
            continue  # load_model names what is missing
        try:
            if file.suffix == ".json":
                json.loads(file.read_text())
            else:
                with safe_open(str(file), framework="numpy") as weights:
                    weights.keys()
        except Exception as err:  # OSError, JSONDecodeError, SafetensorError
            raise StartupError(f"model {model!r} cannot be read: {file}: {err}: set model:= to an intact model "
                               "folder (copy it again) or a .pt/.pth/.ckpt file") from err


class StartupError(RuntimeError):
    """A fatal start-up problem (model, map, device); the message names the culprit and the fix."""


def _check_path(name: str, path: str, expected: str) -> None:
    """Fail fast, before torch loads, when parameter ``name``'s path is missing or unreadable."""
    try:
        target = expand_path(path)
    except PathError as err:  # $VAR not set
        raise StartupError(f"{name} {path!r}: {err}: set the variable or {name}:= to {expected}") from err
    if not target.exists():
        raise StartupError(f"{name} {path!r} does not exist: set {name}:= to {expected}")
    if not os.access(target, os.R_OK | (os.X_OK if target.is_dir() else 0)):
        raise StartupError(f"{name} {path!r} is not readable by this user: fix its permissions "
                           f"(chmod -R a+rX) or set {name}:= to {expected}")


class LocalizeNode(Node):
    """The ROS edge of the localizer. Raises :class:`ConfigError` on invalid start-up parameters."""

    def __init__(self, node_name: str = "localize_node", *, freeze_gc: bool = False,
                 tf_buffer: TransformBuffer | None = None, **kwargs: Any) -> None:
        """``freeze_gc``: once loaded, exempt everything loaded so far (model, map, ROS) from Python's
        cyclic garbage collector (:func:`gc.freeze`): a full collection traversed its ~400,000
        objects for ~170 ms, a stall of one or two frames whenever one came due. For a process
        of its own (main() sets it); other owners of the process decide for themselves.
        ``tf_buffer``: where camera extrinsics are looked up; None: a ``tf2_ros.Buffer`` fed by a
        ``TransformListener`` when tf2_ros is importable, else none (``camera_extrinsics`` only)."""
        super().__init__(node_name, **kwargs)
        self._freeze_gc = freeze_gc
        self._specs = {spec.name: spec for spec in parameter_table()}
        try:
            for spec in self._specs.values():
                try:
                    self.declare_parameter(spec.name, spec.default, descriptor_of(spec))
                except Exception as err:  # rclpy's InvalidParameter*Exception: name the parameter
                    raise ConfigError(f"parameter '{spec.name}': {err}") from err
            values = {name: self.get_parameter(name).value for name in self._specs}
            self.config = LocalizeConfig.from_dict(values).validate()
        except ConfigError:
            super().destroy_node()
            raise
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._lock = threading.Condition()  # cameras' slots and counters
        self._db_lock = threading.Lock()  # the localizer (worker, services, parameter changes)
        self._stop = threading.Event()
        self.gate = KeyframeGate(self.config)
        self.poses = PoseHistory()
        self.extractor: Any = None
        self._map_session = "map"  # match_session of records against the prior map (set by _load)
        self.localizer: Localizer | None = None
        self.state = "loading"
        self.state_message = "loading model"
        self._failed_batches = 0  # consecutive; a successful batch resets it
        self._failed_batches_total = 0
        self._batch_error = ""  # set after FAILED_BATCHES_ERROR failures in a row: diagnostics ERROR
        self.fatal_error: str | None = None  # set once by a fatal start-up error; main() then exits 1
        self._stats = {"queries": 0, "accepted": 0, "loop_closures": 0, "inference_ms": math.nan,
                       "search_ms": math.nan, "batch": 0, "last_score": math.nan, "last_match": None,
                       "time_jumps_back": 0, "time_jumps_forward": 0}
        self._newest_stamp: float | None = None  # newest image stamp received (any camera)
        self._camera_stamp: dict[str, float] = {}  # topic -> its latest image stamp
        self._since_jump: set[str] = set()  # cameras heard from since the last backward jump
        self._pending_jump: tuple[str, float, float] | None = None  # (back|forward, from, to) for the worker
        self._online_markers_published = 0
        self._online_markers_time = -math.inf
        self._loop_marker_id = 0
        self._started = time.monotonic()

        self._io_group = ReentrantCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self.place_match_pub = self.create_publisher(PoseWithCovarianceStamped, "~/place_match", 10)
        self.place_candidates_pub = self.create_publisher(PoseArray, "~/place_candidates", 10)
        self.loop_candidates_pub = self.create_publisher(PointCloud2, "~/loop_candidates", 10)
        self.loop_closure_pub = self.create_publisher(PathMsg, "~/loop_closure", 10)
        # Loop-closure adapters (docs/NODE.md "Adapters") and camera extrinsics.
        self.lio_sam_pub = (self.create_publisher(Float64MultiArray, self.config.lio_sam_topic, 10)
                            if self.config.lio_sam_topic else None)
        self.initialpose_pub = (self.create_publisher(PoseWithCovarianceStamped, self.config.initialpose_topic, 10)
                                if self.config.initialpose_topic else None)
        if tf_buffer is None:
            try:
                from tf2_ros import Buffer, TransformListener
            except ImportError:  # pip-installed rclpy: no TF; camera_extrinsics (or identity) is used
                pass
            else:
                tf_buffer = Buffer()
                self._tf_listener = TransformListener(tf_buffer, self)
        self.extrinsics = ExtrinsicsSource(self.config.base_frame, parse_extrinsics(self.config.camera_extrinsics),
                                           tf_buffer, latest=rclpy.time.Time())
        self._verifier: KeyframeVerifier | None = None
        if self.config.verify_geometry:
            self._verifier = KeyframeVerifier(self.config.verify_max_images)
            for camera, intrinsics in parse_intrinsics(self.config.camera_intrinsics).items():
                self._verifier.set_intrinsics(camera, intrinsics)
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        # Same topic, two transient-local publishers of depth 1: the map keyframes (published once)
        # stay latched for late subscribers however many candidate/loop markers follow on the other.
        self.keyframe_markers_pub = self.create_publisher(MarkerArray, "~/markers", latched)
        self.markers_pub = self.create_publisher(MarkerArray, "~/markers", latched)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/save_map", self._on_save_map, callback_group=self._service_group)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=self._service_group)

        cfg = self.config
        # Timers run on the steady clock: with use_sim_time a ROS-time timer stops while /clock
        # stands still (a paused or looping bag) and /diagnostics would go quiet.
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._image_qos = QoSProfile(
            depth=cfg.qos_depth, history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE,
            reliability=ReliabilityPolicy.RELIABLE if cfg.reliable else ReliabilityPolicy.BEST_EFFORT)
        self.cameras: dict[str, _Camera] = {}
        for topic in cfg.image_topics:
            if cfg.transport == "auto":
                compressed = True if topic.rstrip("/").endswith("/compressed") else None
            else:
                compressed = cfg.transport == "compressed"
            self.cameras[topic] = _Camera(topic, compressed)
        self._subscribe_known_cameras()
        if any(c.subscription is None for c in self.cameras.values()):
            self._auto_timer = self.create_timer(0.5, self._subscribe_known_cameras, clock=self._steady)
        if cfg.odom_topic:
            self.create_subscription(Odometry, cfg.odom_topic, self._on_odom, self._image_qos,
                                     callback_group=self._io_group)
        if self._verifier is not None:  # intrinsics from each camera's sibling camera_info topic
            for topic in cfg.image_topics:
                base = topic[: -len("/compressed")] if topic.endswith("/compressed") else topic
                info_topic = base.rsplit("/", 1)[0] + "/camera_info"
                self.create_subscription(CameraInfo, info_topic, lambda msg, cam=topic: self._on_camera_info(cam, msg),
                                         10, callback_group=self._io_group)
        self.create_timer(cfg.diagnostics_period_s, self._publish_diagnostics, clock=self._steady)
        self._odom_last: float | None = None  # time.monotonic() of the last odometry message
        self._silent_warned: dict[str, float] = {}  # topic -> time.monotonic() of its last WARN
        self.create_timer(1.0, self._watch_inputs, clock=self._steady)
        self._worker = threading.Thread(target=self._run, name="localize_inference", daemon=True)
        self._worker.start()

    # --- parameters ---------------------------------------------------------------------------
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: normalize(p.name, p.value) for p in params if p.name in self._specs}
        if not changes:
            return SetParametersResult(successful=True)
        candidate = replace(self.config, **changes)
        problems = candidate.problems()
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        self.config = candidate
        self.gate.config = candidate
        with self._db_lock:
            if self.localizer is not None:
                self.localizer.set_config(candidate)
        return SetParametersResult(successful=True)

    # --- inputs -------------------------------------------------------------------------------
    def _subscribe_known_cameras(self) -> None:
        """Create subscriptions whose message type is known (transport auto: from the graph)."""
        types = None
        for cam in self.cameras.values():
            if cam.subscription is not None:
                continue
            if cam.compressed is None:
                if types is None:
                    types = dict(self.get_topic_names_and_types())
                found = types.get(self.resolve_topic_name(cam.topic), [])
                if "sensor_msgs/msg/CompressedImage" in found:
                    cam.compressed = True
                elif "sensor_msgs/msg/Image" in found:
                    cam.compressed = False
                else:
                    continue
            msg_type = CompressedImage if cam.compressed else Image
            cam.subscription = self.create_subscription(
                msg_type, cam.topic, lambda msg, cam=cam: self._on_image(cam, msg), self._image_qos,
                callback_group=self._io_group)
            self.get_logger().info(f"subscribed to {cam.topic} ({msg_type.__name__})")
        if all(c.subscription is not None for c in self.cameras.values()) and hasattr(self, "_auto_timer"):
            self._auto_timer.cancel()

    def _on_image(self, cam: _Camera, msg: Any) -> None:
        """Never blocks: counts, gates, and replaces the camera's one-slot buffer."""
        now = time.monotonic()
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        found = self.poses.lookup(stamp, self.config.odom_max_age_s)
        # Only asks: the gate advances once the frame is decoded and processed (see _process).
        admitted = self.gate.admit(cam.topic, stamp, found[0] if found else None, commit=False)
        with self._lock:
            self._note_stamp(cam.topic, stamp)
            cam.received += 1
            cam.last_receive = now
            cam.receive_times.append(now)
            if not admitted:
                cam.gated += 1
                return
            if cam.slot is not None:
                cam.dropped += 1
            cam.slot = msg
            self._lock.notify()

    def _on_odom(self, msg: Odometry) -> None:
        self._odom_last = time.monotonic()
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        self.poses.add(stamp, ((p.x, p.y, p.z), (q.x, q.y, q.z, q.w)), msg.header.frame_id or self.config.odom_frame)

    def _note_stamp(self, camera: str, stamp: float) -> None:
        """Under ``self._lock``, for every image received: notes a jump of the image stamps (a bag
        looped or replayed, a simulator reset, a gap in a recording); the worker acts on it.

        Back: a camera's own stamps go back (so one camera on another clock never counts); the
        other cameras following it back into the new timeline are the same jump. Forward: past the
        newest stamp of any camera."""
        last, newest = self._camera_stamp.get(camera), self._newest_stamp
        self._camera_stamp[camera] = stamp
        if last is not None and stamp < last - _TIME_JUMP_BACK_S:
            if camera in self._since_jump:  # not a camera catching up with the last jump back
                self._pending_jump = ("back", last, stamp)
                self._since_jump.clear()
                self._newest_stamp = stamp
        elif newest is not None and stamp > newest + _TIME_JUMP_FORWARD_S:
            if self._pending_jump is None or self._pending_jump[0] != "back":
                self._pending_jump = ("forward", newest, stamp)
        self._since_jump.add(camera)
        if self._newest_stamp is None or stamp > self._newest_stamp:
            self._newest_stamp = stamp

    def _on_time_jump(self, kind: str, old: float, new: float) -> None:
        """Back: a new session (online database and sequences cleared, as ``~/reset``; the prior map
        stays). Forward: the sequences restart, the online database stays. See docs/NODE.md."""
        with self._lock:
            self._stats[f"time_jumps_{kind}"] += 1
        with self._db_lock:
            if self.localizer is None:
                return
            if kind == "back":
                dropped = len(self.localizer.online_map)
                self.localizer.reset()
                self._online_markers_published = -1
                if self._verifier is not None:  # keyframe ids start again: drop their images
                    self._verifier.reset()
            else:
                self.localizer.restart_sequences()
        if kind == "back":
            self.get_logger().warning(
                f"image stamps jumped back {old - new:.1f} s (from {old:.3f} to {new:.3f}: a bag looped or "
                f"replayed, a simulator reset): new session, {dropped} online keyframes and the match sequences "
                "cleared (call ~/save_map before a replay loops to keep them)")
        else:
            self.get_logger().warning(
                f"image stamps jumped forward {new - old:.1f} s (from {old:.3f} to {new:.3f}: a gap in the "
                "recording, a bag played from an offset, or no camera for that long): the match sequences restart")

    # --- silent inputs and clocks -------------------------------------------------------------
    def _watch_inputs(self) -> None:
        """WARN in the log when an input has been silent for ``silent_warn_s`` (again at most every
        _SILENT_WARN_REPEAT_S per topic), naming why and the topics of that kind that do exist."""
        now = time.monotonic()
        cfg = self.config
        with self._lock:
            inputs = [("image", cam.topic, cam.last_receive) for cam in self.cameras.values()]
            ages = [cam.frame_age_ms for cam in self.cameras.values()]
        if cfg.odom_topic:
            inputs.append(("odometry", cfg.odom_topic, self._odom_last))
        due = []
        for kind, topic, last in inputs:
            silent = now - (last if last is not None else self._started)
            if silent < cfg.silent_warn_s:
                self._silent_warned.pop(topic, None)
            elif now - self._silent_warned.get(topic, -math.inf) >= _SILENT_WARN_REPEAT_S:
                self._silent_warned[topic] = now
                due.append((kind, topic, silent))
        graph = self.get_topic_names_and_types() if due else []
        for kind, topic, silent in due:
            resolved = self.resolve_topic_name(topic)
            publishers = self.count_publishers(resolved)
            why = "no publisher" if publishers == 0 else (
                f"{publishers} publisher(s), but nothing arrives: check that it publishes and its QoS")
            if publishers and kind == "image" and cfg.reliable:
                why += " (reliable: true needs a reliable publisher)"
            types = _INPUT_TYPES[kind]
            existing = [f"{name} [{', '.join(t for t in found if t in types)}]" for name, found in graph
                        if name != resolved and any(t in types for t in found)]
            param = "image_topics" if kind == "image" else "odom_topic"
            self.get_logger().warning(
                f"no {kind} received on {resolved} for {silent:.0f} s ({why}); {kind} topics that exist: "
                f"{', '.join(existing) if existing else 'none'}; set {param}:= to the right one")
        for age in ages:
            if _clock_differs(age):
                self.get_logger().warning(self._clock_note(age), throttle_duration_sec=_SILENT_WARN_REPEAT_S)
                break

    def _clock_name(self) -> str:
        return "sim time (/clock)" if self.get_parameter("use_sim_time").value else "system time"

    def _clock_note(self, age_ms: float) -> str:
        """Says that image stamps come from another clock than the node's, and what to do."""
        direction = "behind" if age_ms > 0 else "ahead of"
        text = (f"image stamps are {abs(age_ms) / 1000.0:.0f} s {direction} the node's clock ({self._clock_name()}), "
                "so frame_age_ms means nothing: ")
        if self.get_parameter("use_sim_time").value:
            return text + "is /clock published by the source of these images (ros2 bag play --clock)?"
        return text + ("replaying a bag? play it with --clock and set use_sim_time:=true; "
                       "a live camera: synchronise its clock with this computer")

    # --- inference thread ---------------------------------------------------------------------
    def _load(self) -> None:
        """Load the model, the extractor and the map. Raises :class:`StartupError` (fatal)."""
        cfg = self.config
        if not cfg.model:
            raise StartupError("parameter 'model' is empty: set model:=<model folder or .pt/.pth/.ckpt file> "
                               "(launch argument or params file)")
        _check_path("model", cfg.model, "a model folder (config.json + model.safetensors) or a .pt/.pth/.ckpt file")
        _check_model_files(cfg.model)
        if cfg.map:
            _check_path("map", cfg.map, "a map folder made by build_map, or map:='' for online loop closure only")
            from qaa_vpr_ros.maps import MapError, read_manifest  # no torch: a broken map fails fast

            try:
                read_manifest(cfg.map)
            except (MapError, OSError) as err:
                raise StartupError(f"map {cfg.map!r} cannot be read: {err}: rebuild it with build_map (or restore "
                                   "it), or set map:='' for online loop closure only") from err
        if cfg.backend == "onnxruntime":
            if not cfg.onnx:
                raise StartupError("backend 'onnxruntime' needs parameter 'onnx': set onnx:=<file from "
                                   "export_onnx --model MODEL --out FILE>, or backend:=torch")
            _check_path("onnx", cfg.onnx, "the .onnx file export_onnx wrote for this model")
        import torch  # alone first (torchvision and timm take seconds more): an unusable device fails fast

        if cfg.backend == "torch" and cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise StartupError(f"device {cfg.device!r} requested but CUDA is not available here: set device:=cpu, "
                               "or device:=auto to take CUDA only when present")
        from qaa_vpr_ros.extractor import DescriptorExtractor
        from qaa_vpr_ros.maps import PlaceMap, map_session
        from qaa_vpr_ros.model import load_model

        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        try:
            model = load_model(cfg.model, device="cpu")
        except Exception as err:  # CheckpointError, OSError, config errors: all mean "this model won't do"
            raise StartupError(f"model {cfg.model!r} failed to load ({err}): set model:= to a release/checkpoint "
                               "folder or a .pt/.pth/.ckpt file that load_model accepts") from err
        try:
            extractor = DescriptorExtractor(model, device=cfg.device, batch_size=max(16, len(self.cameras)),
                                            precision=cfg.precision, backend=cfg.backend,
                                            onnx_path=cfg.onnx if cfg.backend == "onnxruntime" else None)
        except ValueError as err:  # wrong ONNX file, missing execution provider, unsupported precision
            raise StartupError(f"backend {cfg.backend!r} cannot run model {cfg.model!r}: {err}") from err
        prior_map = None
        if cfg.map:
            self.state_message = f"loading map {cfg.map}"
            try:
                prior_map = PlaceMap.load(cfg.map, expected_fingerprint=extractor.fingerprint,
                                          trusted=cfg.map_trusted)
            except Exception as err:  # MapError (names the fix), OSError
                raise StartupError(f"map {cfg.map!r} failed to load with model {cfg.model!r}: {err}") from err
            if cfg.map_frame:
                prior_map.map_frame = cfg.map_frame
            self._map_session = map_session(prior_map.map_id, cfg.map)  # a format-1 map: its folder name
        with self._db_lock:
            self.localizer = Localizer(self.config, extractor.dim, extractor.fingerprint, prior_map,
                                       online_frame=cfg.odom_frame)
        self.extractor = extractor
        if prior_map is not None:
            self._publish_map_markers(prior_map)

    def _run(self) -> None:
        try:
            self._load()
        except Exception as err:  # fatal: main() exits non-zero so launch/supervisors can act
            message = str(err) if isinstance(err, StartupError) else f"start-up failed: {err!r}"
            self._fail(" ".join(message.split()))  # one line, whatever the exception text held
            return
        if self._freeze_gc:
            gc.collect()  # what is garbage already goes now (once, ~0.2 s) rather than staying forever
            gc.freeze()
        self.state, self.state_message = "ready", "ready"
        self.get_logger().info(
            f"ready: device {self.extractor.device}, backend {self.extractor.backend} "
            f"{' '.join(self.extractor.providers)}, descriptor dim {self.extractor.dim}, "
            f"map {len(self.localizer.prior_map) if self.localizer.prior_map else 0} keyframes")
        while not self._stop.is_set():
            with self._lock:
                self._lock.wait_for(lambda: self._stop.is_set() or any(
                    c.slot is not None for c in self.cameras.values()), timeout=0.2)
                batch = [(cam, cam.slot) for cam in self.cameras.values() if cam.slot is not None]
                for cam, _ in batch:
                    cam.slot = None
            if batch and not self._stop.is_set():
                try:
                    self._process(batch)
                    self._failed_batches, self._batch_error = 0, ""
                except Exception as err:  # keep running; the next batch may well succeed
                    if self._stop.is_set():  # shutting down: publishers may be gone; drop silently
                        return
                    self._failed_batches += 1
                    self._failed_batches_total += 1
                    if self._failed_batches >= FAILED_BATCHES_ERROR:  # not a glitch: say so in /diagnostics
                        self._batch_error = f"{self._failed_batches} batches failed in a row, last: {err!r}"
                    self.get_logger().error(f"processing a batch failed: {err!r}")

    def _fail(self, message: str) -> None:
        """A fatal start-up error: one ERROR line, ERROR in /diagnostics, and main() exits with 1."""
        self.state, self.state_message = "error", message
        self.get_logger().error(message)
        try:
            self._publish_diagnostics()
        except Exception:  # best effort; the log line above is what counts
            pass
        self.fatal_error = message

    def _process(self, batch: list[tuple[_Camera, Any]]) -> None:
        with self._lock:
            jump, self._pending_jump = self._pending_jump, None
        if jump is not None:
            self._on_time_jump(*jump)
        cfg = self.config
        now_ros = self.get_clock().now().nanoseconds * 1e-9
        cams, images, encodings, queries = [], [], [], []
        for cam, msg in batch:
            try:
                image, encoding = image_from_msg(msg, max_pixels=cfg.max_image_pixels)
            except ImageDecodeError as err:
                with self._lock:
                    cam.bad += 1
                    cam.last_bad = str(err)
                self.get_logger().warning(f"{cam.topic}: bad image message: {err}", throttle_duration_sec=5.0)
                continue
            stamp = msg.header.stamp
            if cfg.odom_topic:  # odometry may trail the image: wait (briefly) for the sample after it
                self.poses.wait_for(stamp.sec + 1e-9 * stamp.nanosec, cfg.odom_max_age_s)
            found = self.poses.lookup(stamp.sec + 1e-9 * stamp.nanosec, cfg.odom_max_age_s)
            if not self.gate.admit(cam.topic, stamp.sec + 1e-9 * stamp.nanosec, found[0] if found else None):
                with self._lock:  # a frame processed meanwhile (another slot) already covers this one
                    cam.gated += 1
                continue
            queries.append(Query(camera=cam.topic, stamp_sec=stamp.sec, stamp_nanosec=stamp.nanosec,
                                 frame_id=msg.header.frame_id, pose=found[0] if found else None,
                                 pose_frame=found[1] if found else cfg.odom_frame))
            cams.append((cam, now_ros - (stamp.sec + 1e-9 * stamp.nanosec)))
            images.append(image)
            encodings.append(encoding)
        if not images:
            return
        t0 = time.perf_counter()
        descriptors = self.extractor.extract(images, encodings)
        t1 = time.perf_counter()
        with self._db_lock:
            results = self.localizer.process(queries, descriptors)
        t2 = time.perf_counter()
        for result, image in zip(results, images, strict=True):
            if self._verifier is not None:  # may un-accept an online loop closure (docs/NODE.md)
                outcome = self._verifier.check(result, image)  # never raises: an error is a rejection
                if outcome is not None and outcome.rejection in ("opencv_error", "error"):
                    self.get_logger().warning(f"{result.query.camera}: geometric verification failed, loop "
                                              f"closure rejected: {outcome.reason}", throttle_duration_sec=10.0)
            self._publish(result)
        done = time.monotonic()
        with self._lock:
            for cam, age in cams:
                cam.processed += 1
                cam.process_times.append(done)
                cam.frame_age_ms = 1000.0 * age
            self._stats.update(inference_ms=1000.0 * (t1 - t0), search_ms=1000.0 * (t2 - t1), batch=len(images))
            self._stats["queries"] += len(results)

    # --- outputs ------------------------------------------------------------------------------
    def _publish(self, result: QueryResult) -> None:
        cfg = self.config
        q = result.query
        place = result.place
        if place is not None:
            best = place.best
            header = Header(stamp=_time_msg(q.stamp_sec, q.stamp_nanosec), frame_id=place.map_frame)
            match = None
            if best is not None and best.keyframe.has_pose:  # never an identity pose for an unknown one
                match = PoseWithCovarianceStamped(header=header)
                match.pose.pose = _pose_msg(best.keyframe.position, best.keyframe.orientation)
                floor = cfg.loop_min_confidence if place.source == "online" else cfg.min_confidence
                match.pose.covariance = covariance_from_confidence(best.confidence, floor, cfg.covariance_base)
                with self._lock:
                    self._stats.update(last_score=best.score, last_match=time.monotonic())
                    self._stats["accepted"] += 1
            elif cfg.publish_unmatched and place.candidates and place.candidates[0].keyframe.has_pose:
                match = PoseWithCovarianceStamped(header=header)
                top = place.candidates[0].keyframe if place.candidates else None
                match.pose.pose = _pose_msg(top.position if top else None, top.orientation if top else None)
                match.pose.covariance = [_UNMATCHED_VARIANCE if i % 7 == 0 else 0.0 for i in range(36)]
            if match is not None:
                self.place_match_pub.publish(match)
            if self.place_candidates_pub.get_subscription_count():  # built only for a listener
                self.place_candidates_pub.publish(PoseArray(
                    header=header, poses=[_pose_msg(c.keyframe.position, c.keyframe.orientation)
                                          for c in place.candidates]))
        # Per-query markers only while someone (RViz) listens: they cost as much as the answers
        # (scripts/bench_node.py), and a late subscriber gets only the newest one anyway (depth 1).
        markers = MarkerArray() if self.markers_pub.get_subscription_count() else None
        for channel in (result.map, result.online):
            if channel is None:
                continue
            header = Header(stamp=_time_msg(q.stamp_sec, q.stamp_nanosec), frame_id=channel.map_frame)
            records = self._records(result, channel)
            self.loop_candidates_pub.publish(records_cloud(header, records))
            self._publish_adapters(channel, records)
            if markers is not None:
                markers.markers.extend(self._candidate_markers(header, channel))
            best = channel.best
            if best is not None and q.pose is not None and best.keyframe.has_pose:
                self._publish_loop_closure(q, channel, best, markers)
        if markers is not None and markers.markers:
            self.markers_pub.publish(markers)

    def _extrinsic(self, camera: str, frame_id: str, default: np.ndarray | None = None) -> np.ndarray:
        """T_base_camera of a camera: TF (base_frame -> the image's frame_id) when available, else
        the camera_extrinsics parameter, else ``default`` (identity). A failed lookup is counted
        (/diagnostics) and logged, at most once a minute per camera (qaa_vpr_ros.extrinsics)."""
        matrix, warning = self.extrinsics.lookup(camera, frame_id, default)
        if warning:
            self.get_logger().warning(warning)
        return matrix

    def _records(self, result: QueryResult, channel: ChannelResult) -> list[LoopClosureRecord]:
        """The ~/loop_candidates rows of one query against one database (docs/NODE.md)."""
        cfg = self.config
        floor = cfg.loop_min_confidence if channel.source == "online" else cfg.min_confidence
        session = "online" if channel.source == "online" else self._map_session
        frames = {result.query.camera: result.query.frame_id}
        frames.update({c.keyframe.camera: c.keyframe.frame_id for c in channel.candidates})
        keyframe = result.keyframe
        records = channel_records(
            result.query, channel, session,
            lambda c: covariance_from_confidence(c.confidence, floor, cfg.covariance_base if c.offset is None
                                                 else cfg.covariance_sequence),
            query_keyframe_id=int(keyframe.id) if keyframe is not None else -1,
            extrinsics=lambda camera: self._extrinsic(camera, frames.get(camera, "")))
        if self._verifier is None or channel.source != "online":
            return records
        out = []
        for r in records:
            v = self._verifier.verification_of(r.match_keyframe_id, r.query_stamp_sec, r.query_stamp_nanosec)
            if v is not None and r.accepted:
                # Geometry is in the optical frames: without extrinsics, the REP 103 optical axes.
                e_match = self._extrinsic(r.match_camera, frames.get(r.match_camera, ""), OPTICAL_IN_BASE)
                e_query = self._extrinsic(r.camera, frames.get(r.camera, ""), OPTICAL_IN_BASE)
                r = with_geometry(r, v.rotation, v.inliers, e_match, e_query)
            out.append(r)
        return out

    def _on_camera_info(self, camera: str, msg: CameraInfo) -> None:
        if self._verifier is not None and self._verifier.intrinsics(camera) is None:
            try:
                self._verifier.set_intrinsics(camera, Intrinsics.from_camera_info(msg.k, msg.d))
            except ValueError as err:
                self.get_logger().warning(f"camera_info for {camera}: {err}", throttle_duration_sec=30.0)

    def _publish_adapters(self, channel: ChannelResult, records: list[LoopClosureRecord]) -> None:
        """LIO-SAM's stamp pair for an accepted online loop closure; the robot's pose in the map
        frame (Nav2 initialpose) for an accepted map match."""
        best = next((r for r in records if r.accepted), None)
        if best is None:
            return
        if self.lio_sam_pub is not None and best.is_online:
            self.lio_sam_pub.publish(Float64MultiArray(data=[best.query_stamp, best.match_stamp]))
        if self.initialpose_pub is not None and not best.is_online and all(
                math.isfinite(v) for v in best.match_position):
            msg = PoseWithCovarianceStamped(header=Header(
                stamp=_time_msg(best.query_stamp_sec, best.query_stamp_nanosec), frame_id=best.match_frame))
            msg.pose.pose = _pose_msg(*best.query_pose_in_match_frame())
            msg.pose.covariance = list(covariance_in_match_frame(best))
            self.initialpose_pub.publish(msg)

    def _publish_loop_closure(self, q: Query, channel: ChannelResult, best: Candidate,
                              markers: MarkerArray | None) -> None:
        kf = best.keyframe
        path = PathMsg(header=Header(stamp=_time_msg(q.stamp_sec, q.stamp_nanosec), frame_id=channel.map_frame))
        query_pose = PoseStamped(header=Header(stamp=_time_msg(q.stamp_sec, q.stamp_nanosec),
                                               frame_id=q.pose_frame))
        query_pose.pose = _pose_msg(*(q.pose if q.pose is not None else (None, None)))
        match_pose = PoseStamped(header=Header(stamp=_time_msg(kf.stamp_sec, kf.stamp_nanosec),
                                               frame_id=channel.map_frame))
        match_pose.pose = _pose_msg(kf.position, kf.orientation)
        path.poses = [query_pose, match_pose]
        self.loop_closure_pub.publish(path)
        with self._lock:
            self._stats["loop_closures"] += 1
        if markers is not None and q.pose is not None and q.pose_frame == channel.map_frame and kf.has_pose:
            line = Marker(header=path.header, ns="loop_closures", id=self._loop_marker_id, type=Marker.LINE_LIST,
                          action=Marker.ADD, points=[query_pose.pose.position, match_pose.pose.position])
            line.scale.x = 0.2
            line.color = ColorRGBA(r=0.1, g=0.4, b=1.0, a=1.0)
            line.pose.orientation.w = 1.0
            self._loop_marker_id += 1
            markers.markers.append(line)

    def _candidate_markers(self, header: Header, channel: ChannelResult) -> list[Marker]:
        out = []
        for c in channel.candidates:
            if not c.keyframe.has_pose:
                continue
            m = Marker(header=header, ns=f"{channel.source}_candidates", id=c.rank, type=Marker.SPHERE,
                       action=Marker.ADD, pose=_pose_msg(c.keyframe.position, c.keyframe.orientation))
            m.scale.x = m.scale.y = m.scale.z = 1.0 if c.accepted else 0.5
            m.color = _score_color(c.score, self.config.min_score, c.accepted)
            m.lifetime.sec = 2
            out.append(m)
        return out

    def _keyframe_marker(self, keyframes: list[Any], frame: str, ns: str, color: ColorRGBA) -> Marker:
        m = Marker(header=Header(frame_id=frame), ns=ns, id=0, type=Marker.POINTS, action=Marker.ADD)
        m.pose.orientation.w = 1.0
        m.scale.x = m.scale.y = 0.3
        m.color = color
        m.points = [Point(x=float(k.position[0]), y=float(k.position[1]), z=float(k.position[2]))
                    for k in keyframes if k.has_pose]
        return m

    def _publish_map_markers(self, prior_map: Any) -> None:
        marker = self._keyframe_marker(prior_map.keyframes, prior_map.map_frame, "map_keyframes",
                                       ColorRGBA(r=0.6, g=0.6, b=0.6, a=1.0))
        self.keyframe_markers_pub.publish(MarkerArray(markers=[marker]))

    def _publish_online_markers(self) -> None:
        """Online keyframes as one POINTS marker, when they changed, at most every 2 s."""
        now = time.monotonic()
        if now - self._online_markers_time < 2.0:
            return
        with self._db_lock:
            if self.localizer is None or len(self.localizer.online_map) == self._online_markers_published:
                return
            self._online_markers_time = now
            online = self.localizer.online_map
            self._online_markers_published = len(online)
            marker = self._keyframe_marker(online.keyframes, online.map_frame, "online_keyframes",
                                           ColorRGBA(r=1.0, g=0.8, b=0.0, a=1.0))
        self.markers_pub.publish(MarkerArray(markers=[marker]))

    # --- services -----------------------------------------------------------------------------
    def _on_save_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        folder = self.config.save_map_folder or os.path.join(
            os.path.expanduser("~"), ".ros", "qaa_vpr_ros",
            "online_map_" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
        with self._db_lock:
            if self.localizer is None:
                response.success, response.message = False, f"not ready: {self.state_message}"
                return response
            try:
                Path(folder).parent.mkdir(parents=True, exist_ok=True)
                count = self.localizer.save_online(folder)
                map_id = self.localizer.online_map.map_id  # records name the saved session by it
            except Exception as err:
                response.success, response.message = False, f"save_map to {folder} failed: {err}"
                return response
        response.success, response.message = True, f"saved {count} keyframes to {folder} (map_id {map_id!r})"
        self.get_logger().info(response.message)
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._db_lock:
            if self.localizer is None:
                response.success, response.message = False, f"not ready: {self.state_message}"
                return response
            dropped = len(self.localizer.online_map)
            self.localizer.reset()
            self._online_markers_published = -1
            if self._verifier is not None:  # keyframe ids start again: drop their images
                self._verifier.reset()
        self.gate.reset()
        response.success, response.message = True, f"cleared {dropped} online keyframes"
        return response

    # --- diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        self._publish_online_markers()
        cfg = self.config
        now = time.monotonic()
        name = self.get_fully_qualified_name()
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        tf_failures = self.extrinsics.failures()  # camera -> CameraTfStatus, cameras that failed
        with self._lock:
            stats = dict(self._stats)
            for cam in self.cameras.values():
                silent = now - (cam.last_receive if cam.last_receive is not None else self._started)
                status = DiagnosticStatus(name=f"{name}: camera {cam.topic}", hardware_id=name)
                status.level, status.message = DiagnosticStatus.OK, "receiving"
                if silent >= cfg.silent_warn_s:
                    status.level = DiagnosticStatus.WARN
                    status.message = f"no image received for {silent:.1f} s"
                    if cam.subscription is None:
                        status.message += " (transport auto: no publisher yet to learn the message type from)"
                elif _clock_differs(cam.frame_age_ms):  # says so (and the log WARNs); frames still work
                    status.message = "receiving; " + self._clock_note(cam.frame_age_ms)
                values = {
                    "transport": {None: "unknown", True: "compressed", False: "raw"}[cam.compressed],
                    "input_rate_hz": f"{_rate(cam.receive_times, now):.2f}",
                    "processed_rate_hz": f"{_rate(cam.process_times, now):.2f}",
                    "received": cam.received, "processed": cam.processed, "dropped": cam.dropped,
                    "gated": cam.gated, "bad_messages": cam.bad, "last_bad_message": cam.last_bad,
                    "frame_age_ms": f"{cam.frame_age_ms:.1f}", "clock": self._clock_name(),
                    "silent_s": f"{silent:.1f}",
                    "tf_lookup_failures": tf_failures.get(cam.topic, _NO_TF_FAILURE).failures,
                    "tf_last_error": tf_failures.get(cam.topic, _NO_TF_FAILURE).last_error,
                }
                status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
                array.status.append(status)
        loc = self.localizer
        status = DiagnosticStatus(name=f"{name}: localizer", hardware_id=name)
        status.message = self.state_message
        if self.state == "error":
            status.level = DiagnosticStatus.ERROR
        elif self.state == "loading":
            status.level = DiagnosticStatus.WARN
        elif self._batch_error:
            status.level, status.message = DiagnosticStatus.ERROR, self._batch_error
        elif self.extrinsics.base_frame_missing():  # every TF lookup fails until the parameter is fixed
            status.level = DiagnosticStatus.WARN
            status.message = (f"{self.state_message}; base_frame '{cfg.base_frame}' is not in the TF tree: "
                              "set the parameter base_frame (extrinsics: camera_extrinsics or identity meanwhile)")
        else:
            status.level = DiagnosticStatus.OK
        last = stats["last_match"]
        values = {
            "state": self.state, "device": str(self.extractor.device) if self.extractor else "",
            "model": cfg.model, "map": cfg.map,
            "map_keyframes": len(loc.prior_map) if loc is not None and loc.prior_map is not None else 0,
            "online_keyframes": len(loc.online_map) if loc is not None else 0,
            "online_memory_mb": f"{loc.online_memory_bytes() / 1e6:.3f}" if loc is not None else "0.000",
            "online_thinned": loc.online_thinned if loc is not None else 0,
            "queries": stats["queries"], "accepted_matches": stats["accepted"],
            "loop_closures": stats["loop_closures"], "batch_size": stats["batch"],
            "inference_ms": f"{stats['inference_ms']:.2f}", "search_ms": f"{stats['search_ms']:.3f}",
            "last_match_score": f"{stats['last_score']:.4f}",
            "last_match_age_s": f"{now - last:.1f}" if last is not None else "never",
            "dropped_total": sum(c.dropped for c in self.cameras.values()),
            "bad_messages_total": sum(c.bad for c in self.cameras.values()),
            "failed_batches": self._failed_batches_total,
            "time_jumps_back": stats["time_jumps_back"], "time_jumps_forward": stats["time_jumps_forward"],
            "tf_lookup_failures": sum(f.failures for f in tf_failures.values()),
            # every camera's count, map keyframes' cameras included (they have no status of their own)
            "tf_lookup_failures_by_camera": "; ".join(f"{c}: {f.failures}" for c, f in sorted(tf_failures.items())),
        }
        if self._verifier is not None:  # verify_geometry: outcomes, rejections per reason class
            values.update({f"verify_{k}": n for k, n in self._verifier.counts().items()})
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array.status.append(status)
        self.diagnostics_pub.publish(array)

    # --- lifecycle ----------------------------------------------------------------------------
    def stop_worker(self, timeout: float) -> bool:
        """Ask the inference thread to stop; True when it ended within ``timeout`` s.

        A batch in flight finishes (its outputs are published) or, if it outlasts ``timeout``,
        is dropped silently: once stopping, the worker publishes nothing and logs no errors.
        """
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=timeout)
        return not self._worker.is_alive()

    def destroy_node(self) -> None:
        """Stop the inference thread (unless a stop was already asked for), then destroy the node."""
        if not self._stop.is_set():
            self.stop_worker(timeout=10.0)
        super().destroy_node()


def main(args: list[str] | None = None, stop: threading.Event | None = None) -> int:
    """Console script ``localize_node`` (``ros2 run qaa_vpr_ros localize_node --ros-args ...``).

    Exit codes: 0 after SIGINT/SIGTERM (within about a second, idle or busy, no traceback);
    1 after a fatal start-up error (model, map, device: one ERROR line naming it and the fix);
    2 for invalid parameters. A non-zero code lets launch's ``respawn``/``on_exit`` act. Ends the
    process itself (``os._exit``) once ROS is shut down: call it as a program, not as a function.
    ``stop``: set by SIGINT/SIGTERM handlers installed earlier (the console script,
    :mod:`qaa_vpr_ros.localize_entry`, installs them before importing this module).
    """
    if stop is None:
        # Our own handlers instead of rclpy's: no KeyboardInterrupt can surface mid-shutdown.
        on_main = threading.current_thread() is threading.main_thread()
        stop = stop_on_signals() if on_main else threading.Event()
    if stop.is_set():  # stopped while this module was being imported: nothing started yet
        return 0
    # Fast DDS publishes asynchronously by default: publish() queues the sample and a flow
    # controller thread sends it, which on a busy CPU held each ~/loop_candidates table back by
    # about 1 ms (up to 4 ms). Our messages are small (a table of <= top_k rows of 826 bytes), so
    # send them from the publishing thread. Only rmw_fastrtps reads this; the user's own setting wins.
    os.environ.setdefault("RMW_FASTRTPS_PUBLICATION_MODE", "SYNCHRONOUS")
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = LocalizeNode(freeze_gc=True)
    except ConfigError as err:
        print(f"localize_node: invalid parameters: {err}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    # One thread runs the (short) callbacks; inference has its own thread. Single-threaded, no
    # callback is still in flight when the executor shuts down (rclpy's MultiThreadedExecutor
    # destroys its guard condition before joining its pool, and a late callback then fails).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        # spin_once returns at least every _SPIN_PERIOD_S so a signal is acted on promptly.
        while not stop.is_set() and node.fatal_error is None and rclpy.ok():
            executor.spin_once(timeout_sec=_SPIN_PERIOD_S)
    except ExternalShutdownException:
        pass
    finally:
        node.stop_worker(timeout=_SHUTDOWN_WORKER_S)  # a batch still running then is dropped, unpublished
        executor.shutdown(timeout_sec=_SHUTDOWN_EXECUTOR_S)
        node.destroy_node()
        rclpy.try_shutdown()
    code = 1 if node.fatal_error is not None else 0
    # ROS is shut down in order above. Python's own teardown after that (torch's and timm's module
    # state, the inference thread if a batch outlived _SHUTDOWN_WORKER_S) took 2.5-4 s on a loaded
    # 2-core machine, beyond the 2 s a supervisor or launch should wait: end the process here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
