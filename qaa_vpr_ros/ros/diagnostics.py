"""What ``localize_node`` says about itself: per-camera counters, the ``/diagnostics`` statuses,
and the warnings about silent inputs and foreign clocks (docs/NODE.md "/diagnostics")."""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image

from qaa_vpr_ros.decision import LocalizeConfig, Localizer
from qaa_vpr_ros.decision.localization_state import StateUpdate
from qaa_vpr_ros.extrinsics import CameraTfStatus
from qaa_vpr_ros.pipeline import BatchOutput
from qaa_vpr_ros.ros.outputs import Published

__all__ = ["CameraState", "Counters", "camera_status", "clock_differs", "clock_note", "localizer_status",
           "silent_input_warnings"]

RATE_WINDOW_S = 5.0
CLOCK_MISMATCH_S = 60.0  # |image stamp - node clock| beyond this: the stamps come from another clock
SILENT_WARN_REPEAT_S = 30.0
INPUT_TYPES = {"image": ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"),
               "odometry": ("nav_msgs/msg/Odometry",)}
_NO_TF_FAILURE = CameraTfStatus()


@dataclass
class CameraState:
    """One camera's subscription, one-slot buffer and counters (guarded by the node's lock)."""

    topic: str
    compressed: bool | None  # None: transport auto, type not known yet
    subscription: Subscription | None = None
    slot: Image | CompressedImage | None = None  # newest unprocessed message
    received: int = 0
    processed: int = 0
    dropped: int = 0
    gated: int = 0
    bad: int = 0
    last_bad: str = ""
    depth_paired: int = 0  # processed frames with a depth image of a near stamp (depth_topics)
    depth_missing: int = 0  # ... without one within depth_max_age_s
    depth_bad: int = 0  # ... with an undecodable one
    last_depth_error: str = ""
    last_receive: float | None = None  # time.monotonic()
    frame_age_ms: float = math.nan
    receive_times: deque = field(default_factory=lambda: deque(maxlen=4096))
    process_times: deque = field(default_factory=lambda: deque(maxlen=4096))


@dataclass
class Counters:
    """The localizer's counters and last timings (guarded by the node's lock)."""

    queries: int = 0
    accepted: int = 0
    loop_closures: int = 0
    inference_ms: float = math.nan
    search_ms: float = math.nan
    batch: int = 0
    last_score: float = math.nan
    last_match: float | None = None  # time.monotonic() of the last accepted match
    failed_batches: int = 0  # all so far
    failed_in_a_row: int = 0
    batch_error: str = ""  # set after failed batches in a row: diagnostics ERROR

    def count_batch(self, out: BatchOutput, published: list[Published], now: float) -> None:
        """Count a processed batch and what its answers put out (``now``: time.monotonic())."""
        for p in published:
            self.loop_closures += p.loop_closures
            if p.accepted_score is not None:
                self.accepted += 1
                self.last_score, self.last_match = p.accepted_score, now
        if out.answers:
            self.inference_ms, self.search_ms, self.batch = out.inference_ms, out.search_ms, len(out.answers)
            self.queries += len(out.answers)


def rate(times: deque, now: float) -> float:
    recent = [t for t in list(times) if now - t <= RATE_WINDOW_S]
    return len(recent) / RATE_WINDOW_S


def clock_differs(age_ms: float) -> bool:
    return math.isfinite(age_ms) and abs(age_ms) > 1000.0 * CLOCK_MISMATCH_S


def clock_name(use_sim_time: bool) -> str:
    return "sim time (/clock)" if use_sim_time else "system time"


def clock_note(age_ms: float, use_sim_time: bool) -> str:
    """Says that image stamps come from another clock than the node's, and what to do."""
    direction = "behind" if age_ms > 0 else "ahead of"
    text = (f"image stamps are {abs(age_ms) / 1000.0:.0f} s {direction} the node's clock "
            f"({clock_name(use_sim_time)}), so frame_age_ms means nothing: ")
    if use_sim_time:
        return text + "is /clock published by the source of these images (ros2 bag play --clock)?"
    return text + ("replaying a bag? play it with --clock and set use_sim_time:=true; "
                   "a live camera: synchronise its clock with this computer")


def _values(status: DiagnosticStatus, values: dict[str, Any]) -> DiagnosticStatus:
    status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
    return status


def camera_status(name: str, cam: CameraState, cfg: LocalizeConfig, now: float, started: float,
                  use_sim_time: bool, tf: CameraTfStatus | None) -> DiagnosticStatus:
    """``<node>: camera <topic>``: WARN when silent for ``silent_warn_s``."""
    tf = tf or _NO_TF_FAILURE
    silent = now - (cam.last_receive if cam.last_receive is not None else started)
    status = DiagnosticStatus(name=f"{name}: camera {cam.topic}", hardware_id=name)
    status.level, status.message = DiagnosticStatus.OK, "receiving"
    if silent >= cfg.silent_warn_s:
        status.level = DiagnosticStatus.WARN
        status.message = f"no image received for {silent:.1f} s"
        if cam.subscription is None:
            status.message += " (transport auto: no publisher yet to learn the message type from)"
    elif clock_differs(cam.frame_age_ms):  # says so (and the log WARNs); frames still work
        status.message = "receiving; " + clock_note(cam.frame_age_ms, use_sim_time)
    return _values(status, {
        "transport": {None: "unknown", True: "compressed", False: "raw"}[cam.compressed],
        "input_rate_hz": f"{rate(cam.receive_times, now):.2f}",
        "processed_rate_hz": f"{rate(cam.process_times, now):.2f}",
        "received": cam.received, "processed": cam.processed, "dropped": cam.dropped,
        "gated": cam.gated, "bad_messages": cam.bad, "last_bad_message": cam.last_bad,
        "frame_age_ms": f"{cam.frame_age_ms:.1f}", "clock": clock_name(use_sim_time),
        "silent_s": f"{silent:.1f}", "tf_lookup_failures": tf.failures, "tf_last_error": tf.last_error,
        "depth_paired": cam.depth_paired, "depth_missing": cam.depth_missing, "depth_bad": cam.depth_bad,
        "last_depth_error": cam.last_depth_error,
    })


def localizer_status(name: str, state: str, state_message: str, cfg: LocalizeConfig, counters: Counters,
                     cameras: list[CameraState], localizer: Localizer | None, device: str, now: float,
                     jumps: tuple[int, int], tf_failures: dict[str, CameraTfStatus], base_frame_missing: bool,
                     verify_counts: dict[str, int] | None,
                     localization: StateUpdate | None = None) -> DiagnosticStatus:
    """``<node>: localizer``: ERROR on a fatal start-up error or failed batches in a row, WARN while
    loading or while ``base_frame`` is not in the TF tree. ``localization``: the state against the
    map (``~/localization_status``), also as key-values here."""
    status = DiagnosticStatus(name=f"{name}: localizer", hardware_id=name, message=state_message)
    if state == "error":
        status.level = DiagnosticStatus.ERROR
    elif state == "loading":
        status.level = DiagnosticStatus.WARN
    elif counters.batch_error:
        status.level, status.message = DiagnosticStatus.ERROR, counters.batch_error
    elif base_frame_missing:  # every TF lookup fails until the parameter is fixed
        status.level = DiagnosticStatus.WARN
        status.message = (f"{state_message}; base_frame '{cfg.base_frame}' is not in the TF tree: "
                          "set the parameter base_frame (extrinsics: camera_extrinsics or identity meanwhile)")
    else:
        status.level = DiagnosticStatus.OK
    loc, last = localizer, counters.last_match
    values = {
        "state": state, "device": device, "model": cfg.model, "map": cfg.map,
        "map_keyframes": len(loc.prior_map) if loc is not None and loc.prior_map is not None else 0,
        "online_keyframes": len(loc.online_map) if loc is not None else 0,
        "online_memory_mb": f"{loc.online_memory_bytes() / 1e6:.3f}" if loc is not None else "0.000",
        "online_thinned": loc.online_thinned if loc is not None else 0,
        "queries": counters.queries, "accepted_matches": counters.accepted,
        "loop_closures": counters.loop_closures, "batch_size": counters.batch,
        "inference_ms": f"{counters.inference_ms:.2f}", "search_ms": f"{counters.search_ms:.3f}",
        "last_match_score": f"{counters.last_score:.4f}",
        "last_match_age_s": f"{now - last:.1f}" if last is not None else "never",
        "dropped_total": sum(c.dropped for c in cameras),
        "bad_messages_total": sum(c.bad for c in cameras),
        "failed_batches": counters.failed_batches,
        "time_jumps_back": jumps[0], "time_jumps_forward": jumps[1],
        "tf_lookup_failures": sum(f.failures for f in tf_failures.values()),
        # every camera's count, map keyframes' cameras included (they have no status of their own)
        "tf_lookup_failures_by_camera": "; ".join(f"{c}: {f.failures}" for c, f in sorted(tf_failures.items())),
    }
    if localization is not None:
        values.update({"localization": localization.state, "localization_message": localization.message})
    if verify_counts is not None:  # verify_geometry: outcomes, rejections per reason class
        values.update({f"verify_{k}": n for k, n in verify_counts.items()})
    return _values(status, values)


def silent_input_warnings(node: Node, cfg: LocalizeConfig, inputs: list[tuple[str, str, float | None]],
                          started: float, warned: dict[str, float]) -> list[str]:
    """WARN lines for inputs (kind, topic, last receive on time.monotonic()) silent for
    ``silent_warn_s`` (again at most every SILENT_WARN_REPEAT_S per topic, ``warned`` remembers),
    naming why and the topics of that kind that do exist."""
    now = time.monotonic()
    due = []
    for kind, topic, last in inputs:
        silent = now - (last if last is not None else started)
        if silent < cfg.silent_warn_s:
            warned.pop(topic, None)
        elif now - warned.get(topic, -math.inf) >= SILENT_WARN_REPEAT_S:
            warned[topic] = now
            due.append((kind, topic, silent))
    graph = node.get_topic_names_and_types() if due else []
    out = []
    for kind, topic, silent in due:
        resolved = node.resolve_topic_name(topic)
        publishers = node.count_publishers(resolved)
        why = "no publisher" if publishers == 0 else (
            f"{publishers} publisher(s), but nothing arrives: check that it publishes and its QoS")
        if publishers and kind == "image" and cfg.reliable:
            why += " (reliable: true needs a reliable publisher)"
        types = INPUT_TYPES[kind]
        existing = [f"{topic_name} [{', '.join(t for t in found if t in types)}]" for topic_name, found in graph
                    if topic_name != resolved and any(t in types for t in found)]
        param = "image_topics" if kind == "image" else "odom_topic"
        out.append(f"no {kind} received on {resolved} for {silent:.0f} s ({why}); {kind} topics that exist: "
                   f"{', '.join(existing) if existing else 'none'}; set {param}:= to the right one")
    return out
