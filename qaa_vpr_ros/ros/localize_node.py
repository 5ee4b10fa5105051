"""``localize_node``: live place matches and loop closures for a SLAM stack (the ROS edge).

Wiring only; the work is :class:`~qaa_vpr_ros.pipeline.FramePipeline` (no ROS):

- one subscription per camera (``image_topics``); each callback notes the stamp and stores the
  newest message in its camera's one-slot buffer (an overwritten, unprocessed one counts as dropped);
- one inference thread hands the pending frames of all cameras to the pipeline as a batch and
  publishes what comes back (:mod:`.messages` converts);
- outputs (all relative to the node, ``~/``): ``place_match``, ``place_candidates``,
  ``loop_candidates``, ``loop_closure``, ``markers``, ``localization_status``; ``/diagnostics``
  (:mod:`.diagnostics`);
  services ``save_map`` and ``reset``; start-up and loading in :mod:`.startup`. See docs/NODE.md.
"""
from __future__ import annotations

import datetime
import gc
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger

from qaa_vpr_ros.decision import ConfigError, LocalizeConfig, Localizer, PoseHistory, normalize, parameter_table
from qaa_vpr_ros.extrinsics import TransformBuffer
from qaa_vpr_ros.local_features import Intrinsics, camera_info_topic
from qaa_vpr_ros.ros import diagnostics, messages
from qaa_vpr_ros.ros.diagnostics import CameraState, Counters
from qaa_vpr_ros.ros.messages import LOOP_CANDIDATE_DTYPE
from qaa_vpr_ros.ros.outputs import Outputs
from qaa_vpr_ros.ros.startup import StartupError, build_pipeline, declare_parameters, load

if TYPE_CHECKING:  # torch: imported by loading, after the node is up and SIGINT is taken
    from qaa_vpr_ros.extractor import DescriptorExtractor

__all__ = ["LOOP_CANDIDATE_DTYPE", "LocalizeNode"]

FAILED_BATCHES_ERROR = 3  # consecutive failed batches that turn the localizer's diagnostics ERROR


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
            cfg = declare_parameters(self, self._specs.values())
        except ConfigError:
            super().destroy_node()
            raise
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.pipeline = build_pipeline(self, cfg, tf_buffer)
        self._lock = threading.Condition()  # cameras' slots and counters
        self._stop = threading.Event()
        self.state, self.state_message = "loading", "loading model"
        self.fatal_error: str | None = None  # set once by a fatal start-up error; main() then exits 1
        self.counters = Counters()
        self._started = time.monotonic()
        self._odom_last: float | None = None  # time.monotonic() of the last odometry message
        self._silent_warned: dict[str, float] = {}  # topic -> time.monotonic() of its last WARN

        io, services = ReentrantCallbackGroup(), MutuallyExclusiveCallbackGroup()
        self.outputs = Outputs(self, cfg)
        self.place_candidates_pub = self.outputs.place_candidates
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/save_map", self._on_save_map, callback_group=services)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=services)
        # Timers run on the steady clock: with use_sim_time a ROS-time timer stops while /clock
        # stands still (a paused or looping bag) and /diagnostics would go quiet.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._image_qos = QoSProfile(
            depth=cfg.qos_depth, history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE,
            reliability=ReliabilityPolicy.RELIABLE if cfg.reliable else ReliabilityPolicy.BEST_EFFORT)
        self._io_group = io
        self.cameras: dict[str, CameraState] = {}
        for topic in cfg.image_topics:
            auto = True if topic.rstrip("/").endswith("/compressed") else None
            self.cameras[topic] = CameraState(topic, auto if cfg.transport == "auto" else cfg.transport == "compressed")
        self._subscribe_known_cameras()
        if any(c.subscription is None for c in self.cameras.values()):
            self._auto_timer = self.create_timer(0.5, self._subscribe_known_cameras, clock=steady)
        if cfg.odom_topic:
            self.create_subscription(Odometry, cfg.odom_topic, self._on_odom, self._image_qos, callback_group=io)
        if self.pipeline.verifier is not None:  # intrinsics from each camera's sibling camera_info topic
            for topic in cfg.image_topics:
                self.create_subscription(CameraInfo, camera_info_topic(topic),
                                         lambda msg, cam=topic: self._on_camera_info(cam, msg), 10, callback_group=io)
            for topic, depth in self.pipeline.depth_of.items():  # registered depth, paired by stamp
                self.create_subscription(Image, depth, lambda msg, cam=topic: self._on_depth(cam, msg),
                                         self._image_qos, callback_group=io)
        self.create_timer(cfg.diagnostics_period_s, self._publish_diagnostics, clock=steady)
        self.create_timer(1.0, self._watch_inputs, clock=steady)
        self._worker = threading.Thread(target=self._run, name="localize_inference", daemon=True)
        self._worker.start()

    @property
    def config(self) -> LocalizeConfig:
        return self.pipeline.config

    @property
    def poses(self) -> PoseHistory:
        return self.pipeline.poses

    @property
    def localizer(self) -> Localizer | None:
        return self.pipeline.localizer

    @property
    def extractor(self) -> DescriptorExtractor | None:
        return self.pipeline.extractor

    # --- parameters and inputs ----------------------------------------------------------------
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: normalize(p.name, p.value) for p in params if p.name in self._specs}
        if not changes:
            return SetParametersResult(successful=True)
        candidate = replace(self.config, **changes)
        problems = candidate.problems()
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        self.pipeline.set_config(candidate)
        return SetParametersResult(successful=True)

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

    def _on_image(self, cam: CameraState, msg: Image | CompressedImage) -> None:
        """Never blocks: notes the stamp, counts, and replaces the camera's one-slot buffer (the
        keyframe gate decides in the inference thread, once, see qaa_vpr_ros.pipeline)."""
        now = time.monotonic()
        self.pipeline.stamps.note(cam.topic, msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec)
        with self._lock:
            cam.received += 1
            cam.last_receive = now
            cam.receive_times.append(now)
            if cam.slot is not None:
                cam.dropped += 1
            cam.slot = msg
            self._lock.notify()

    def _on_odom(self, msg: Odometry) -> None:
        self._odom_last = time.monotonic()
        self.pipeline.add_odometry(*messages.odometry_of(msg))

    def _on_depth(self, camera: str, msg: Image) -> None:
        self.pipeline.depth.add(camera, msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec, msg)

    def _on_camera_info(self, camera: str, msg: CameraInfo) -> None:
        verifier = self.pipeline.verifier
        if verifier is not None and verifier.intrinsics(camera) is None:
            try:
                verifier.set_intrinsics(camera, Intrinsics.from_camera_info(msg.k, msg.d))
            except ValueError as err:
                self.get_logger().warning(f"camera_info for {camera}: {err}", throttle_duration_sec=30.0)

    # --- the inference thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            loaded = load(self.config, len(self.cameras), progress=lambda text: setattr(self, "state_message", text))
        except Exception as err:  # fatal: main() exits non-zero so launch/supervisors can act
            message = str(err) if isinstance(err, StartupError) else f"start-up failed: {err!r}"
            self._fail(" ".join(message.split()))  # one line, whatever the exception text held
            return
        self.pipeline.attach(loaded.extractor, loaded.localizer, loaded.map_session)
        if loaded.prior_map is not None:
            self.outputs.publish_map_keyframes(loaded.prior_map)
        if self._freeze_gc:
            gc.collect()  # what is garbage already goes now (once, ~0.2 s) rather than staying forever
            gc.freeze()
        self.state, self.state_message = "ready", "ready"
        ex = loaded.extractor
        self.get_logger().info(f"ready: device {ex.device}, backend {ex.backend} {' '.join(ex.providers)}, "
                               f"descriptor dim {ex.dim}, map {len(loaded.prior_map or [])} keyframes")
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
                    self.counters.failed_in_a_row, self.counters.batch_error = 0, ""
                except Exception as err:  # keep running; the next batch may well succeed
                    if self._stop.is_set():  # shutting down: publishers may be gone; drop silently
                        return
                    self.counters.failed_in_a_row += 1
                    self.counters.failed_batches += 1
                    if self.counters.failed_in_a_row >= FAILED_BATCHES_ERROR:  # not a glitch: say so
                        self.counters.batch_error = (f"{self.counters.failed_in_a_row} batches failed in a row, "
                                                     f"last: {err!r}")
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

    def _process(self, batch: list[tuple[CameraState, Image | CompressedImage]]) -> None:
        """One batch (camera, message) through the pipeline, then publish and count."""
        now_s = self.get_clock().now().nanoseconds * 1e-9
        out = self.pipeline.process([messages.frame_of(cam.topic, msg) for cam, msg in batch], now_s)
        if out.jump is not None:  # the pipeline acted on it (docs/NODE.md "Time")
            self.outputs.online_markers_published = -1
            self.get_logger().warning(out.jump.describe(out.dropped_online))
        for warning in out.warnings:  # rate-limited where they arise (TF: once a minute per camera)
            self.get_logger().warning(warning)
        for error in out.verification_errors:
            self.get_logger().warning(error, throttle_duration_sec=10.0)
        published = [self.outputs.publish(answer, self.config.min_score) for answer in out.answers]
        done = time.monotonic()
        with self._lock:
            for (cam, _), outcome in zip(batch, out.outcomes, strict=True):
                if outcome.status == "gated":
                    cam.gated += 1
                elif outcome.status == "bad":
                    cam.bad, cam.last_bad = cam.bad + 1, outcome.error
            for outcome in out.outcomes:
                cam = self.cameras[outcome.frame.camera]
                if outcome.depth == "paired":
                    cam.depth_paired += 1
                elif outcome.depth == "missing":
                    cam.depth_missing += 1
                elif outcome.depth == "bad":
                    cam.depth_bad, cam.last_depth_error = cam.depth_bad + 1, outcome.depth_error
            for answer in out.answers:
                cam = self.cameras[answer.query.camera]
                cam.processed += 1
                cam.process_times.append(done)
                cam.frame_age_ms = 1000.0 * answer.age_s
            self.counters.count_batch(out, published, done)
        for outcome in out.outcomes:
            if outcome.status == "bad":
                self.get_logger().warning(f"{outcome.frame.camera}: bad image message: {outcome.error}",
                                          throttle_duration_sec=5.0)

    # --- services -----------------------------------------------------------------------------
    def _on_save_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        folder = self.config.save_map_folder or os.path.join(
            os.path.expanduser("~"), ".ros", "qaa_vpr_ros",
            "online_map_" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
        if not self.pipeline.ready:
            response.success, response.message = False, f"not ready: {self.state_message}"
            return response
        try:
            Path(folder).parent.mkdir(parents=True, exist_ok=True)
            count, map_id = self.pipeline.save_online(folder)  # records name the saved session by its map_id
        except Exception as err:
            response.success, response.message = False, f"save_map to {folder} failed: {err}"
            return response
        response.success, response.message = True, f"saved {count} keyframes to {folder} (map_id {map_id!r})"
        self.get_logger().info(response.message)
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if not self.pipeline.ready:
            response.success, response.message = False, f"not ready: {self.state_message}"
            return response
        dropped = self.pipeline.reset()
        self.outputs.online_markers_published = -1
        response.success, response.message = True, f"cleared {dropped} online keyframes"
        return response

    # --- diagnostics --------------------------------------------------------------------------
    def _use_sim_time(self) -> bool:
        return bool(self.get_parameter("use_sim_time").value)

    def _watch_inputs(self) -> None:
        """WARN when an input is silent (diagnostics.silent_input_warnings) or stamped by another clock."""
        with self._lock:
            inputs = [("image", cam.topic, cam.last_receive) for cam in self.cameras.values()]
            ages = [cam.frame_age_ms for cam in self.cameras.values()]
        if self.config.odom_topic:
            inputs.append(("odometry", self.config.odom_topic, self._odom_last))
        for line in diagnostics.silent_input_warnings(self, self.config, inputs, self._started, self._silent_warned):
            self.get_logger().warning(line)
        for age in ages:
            if diagnostics.clock_differs(age):
                self.get_logger().warning(diagnostics.clock_note(age, self._use_sim_time()),
                                          throttle_duration_sec=diagnostics.SILENT_WARN_REPEAT_S)
                break

    def _publish_diagnostics(self) -> None:
        if self.localizer is not None:
            self.outputs.publish_online_keyframes(self.localizer, self.pipeline.lock)
        cfg, pipe, now, name = self.config, self.pipeline, time.monotonic(), self.get_fully_qualified_name()
        sim, tf = self._use_sim_time(), pipe.extrinsics.failures()  # camera -> CameraTfStatus, cameras that failed
        localization = pipe.localization.current()
        self.outputs.publish_localization(localization)
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        with self._lock:
            counters = replace(self.counters)
            cameras = list(self.cameras.values())
            array.status = [diagnostics.camera_status(name, cam, cfg, now, self._started, sim, tf.get(cam.topic))
                            for cam in cameras]
        array.status.append(diagnostics.localizer_status(
            name, self.state, self.state_message, cfg, counters, cameras, self.localizer,
            str(self.extractor.device) if self.extractor else "", now, (pipe.stamps.back, pipe.stamps.forward), tf,
            pipe.extrinsics.base_frame_missing(), pipe.verifier.counts() if pipe.verifier is not None else None,
            localization))
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

