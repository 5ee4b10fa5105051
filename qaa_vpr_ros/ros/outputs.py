"""``localize_node``'s publishers and what it publishes for each answer (docs/NODE.md "Outputs")."""
from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING

from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from nav_msgs.msg import Path as PathMsg
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float64MultiArray, Header
from visualization_msgs.msg import MarkerArray

from qaa_vpr_ros.decision import LocalizeConfig, Localizer
from qaa_vpr_ros.decision.localization_state import StateUpdate
from qaa_vpr_ros.pipeline import Answer
from qaa_vpr_ros.ros import messages

if TYPE_CHECKING:  # faiss: imported with the map, when loading
    from qaa_vpr_ros.maps import PlaceMap

__all__ = ["Outputs", "Published"]

_MAP_GREY, _ONLINE_YELLOW = (0.6, 0.6, 0.6), (1.0, 0.8, 0.0)


class Published:
    """What one answer put out: the accepted place match's score (None: none) and loop closures."""

    def __init__(self) -> None:
        self.accepted_score: float | None = None
        self.loop_closures = 0


class Outputs:
    """The node's output topics (all relative to the node): ``place_match``, ``place_candidates``,
    ``loop_candidates``, ``loop_closure``, ``markers``, ``localization_status``, and the adapters'
    topics (parameters)."""

    def __init__(self, node: Node, cfg: LocalizeConfig) -> None:
        self.place_match = node.create_publisher(PoseWithCovarianceStamped, "~/place_match", 10)
        self.place_candidates = node.create_publisher(PoseArray, "~/place_candidates", 10)
        self.loop_candidates = node.create_publisher(PointCloud2, "~/loop_candidates", 10)
        self.loop_closure = node.create_publisher(PathMsg, "~/loop_closure", 10)
        # Loop-closure adapters (docs/NODE.md "Adapters").
        self.lio_sam = node.create_publisher(Float64MultiArray, cfg.lio_sam_topic, 10) if cfg.lio_sam_topic else None
        self.initialpose = (node.create_publisher(PoseWithCovarianceStamped, cfg.initialpose_topic, 10)
                            if cfg.initialpose_topic else None)
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        # Same topic, two transient-local publishers of depth 1: the map keyframes (published once)
        # stay latched for late subscribers however many candidate/loop markers follow on the other.
        self.keyframe_markers = node.create_publisher(MarkerArray, "~/markers", latched)
        self.markers = node.create_publisher(MarkerArray, "~/markers", latched)
        # Latched: a late subscriber hears the current state at once (published on each change and
        # every diagnostics_period_s).
        self.localization_status = node.create_publisher(DiagnosticStatus, "~/localization_status", latched)
        self._name = node.get_fully_qualified_name()
        self._loop_marker_id = 0
        self.online_markers_published = 0  # keyframes in the last online marker; -1: publish again
        self._online_markers_time = -math.inf

    def publish(self, answer: Answer, min_score: float) -> Published:
        """Everything for one processed frame, in the order consumers expect: place match,
        candidates, then per database the record table, the adapters, markers and the loop closure."""
        q, place, out = answer.query, answer.result.place, Published()
        if answer.place_match is not None:
            self.place_match.publish(messages.place_match_msg(q, answer.place_match))
            if answer.place_match.accepted:
                out.accepted_score = answer.place_match.score
        if place is not None and self.place_candidates.get_subscription_count():  # built only for a listener
            self.place_candidates.publish(messages.candidates_msg(q, place))
        # Per-query markers only while someone (RViz) listens: they cost as much as the answers
        # (scripts/bench_node.py), and a late subscriber gets only the newest one anyway (depth 1).
        markers = MarkerArray() if self.markers.get_subscription_count() else None
        for channel, records in ((c.channel, c.records) for c in answer.channels):
            header = Header(stamp=messages.time_msg(q.stamp_sec, q.stamp_nanosec), frame_id=channel.map_frame)
            self.loop_candidates.publish(messages.records_cloud(header, records))
            best_record = next((r for r in records if r.accepted), None)
            if best_record is not None and self.lio_sam is not None and best_record.is_online:
                self.lio_sam.publish(messages.lio_sam_msg(best_record))
            if (best_record is not None and self.initialpose is not None and not best_record.is_online
                    and answer.localization is not None and answer.localization.publish_initialpose):
                self.initialpose.publish(messages.initialpose_msg(best_record))  # not every match: the state says
            if markers is not None:
                markers.markers.extend(messages.candidate_markers(header, channel, min_score))
            best = channel.best
            if best is not None and q.pose is not None and best.keyframe.has_pose:
                path = messages.loop_closure_msg(q, channel, best)
                self.loop_closure.publish(path)
                out.loop_closures += 1
                if markers is not None and q.pose_frame == channel.map_frame:
                    markers.markers.append(messages.loop_line_marker(path, self._loop_marker_id))
                    self._loop_marker_id += 1
        if markers is not None and markers.markers:
            self.markers.publish(markers)
        if answer.localization is not None and answer.localization.changed:
            self.publish_localization(answer.localization)
        return out

    def publish_localization(self, update: StateUpdate) -> None:
        """``~/localization_status``: localized / lost and since when."""
        self.localization_status.publish(messages.localization_status_msg(self._name, update))

    def publish_map_keyframes(self, prior_map: PlaceMap) -> None:
        self.keyframe_markers.publish(MarkerArray(markers=[messages.keyframe_marker(
            prior_map.keyframes, prior_map.map_frame, "map_keyframes", _MAP_GREY)]))

    def publish_online_keyframes(self, localizer: Localizer, lock: threading.Lock) -> None:
        """Online keyframes as one POINTS marker, when they changed, at most every 2 s (``lock``
        guards the localizer)."""
        now = time.monotonic()
        if now - self._online_markers_time < 2.0:
            return
        with lock:
            online = localizer.online_map
            if len(online) == self.online_markers_published:
                return
            self._online_markers_time, self.online_markers_published = now, len(online)
            marker = messages.keyframe_marker(online.keyframes, online.map_frame, "online_keyframes", _ONLINE_YELLOW)
        self.markers.publish(MarkerArray(markers=[marker]))
