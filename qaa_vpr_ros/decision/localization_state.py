"""The localization state against the prebuilt map: localized or lost, since when, and when a
relocalization consumer (Nav2 AMCL, slam_toolbox: ``initialpose``) should hear of it.

Time is the image stamps' (seconds), never a wall clock, so a bag replay or sim time behaves:

- **localized** from an accepted map match on; **lost** once no accepted map match came for
  ``lost_after_s`` (since = the last match's stamp + ``lost_after_s``), and before the first
  match after start-up or a reset ("never localized"; since = the first query's stamp).
- **initialpose** is due on the first accepted match with a pose (the first relocalization, or
  the first after being lost), and afterwards only for a *correction*: when the accepted pose
  differs from the pose the last published ``initialpose`` predicts by more than
  ``initialpose_min_correction_m`` or ``initialpose_min_correction_rad``. The prediction is that
  pose moved by the odometry since then (``T_map_pub * T_odom_pub^-1 * T_odom_now``), or the
  pose itself without odometry (or when the odometry frame changed).
- Only map matches count: online loop closures are in the odometry frame and never localize.

Thread-safe: the pipeline updates it per query, the node reads :meth:`LocalizationState.current`
for its status topic and ``~/reset`` (or a jump back of the stamps) calls :meth:`reset`.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from qaa_vpr_ros.decision.parameters import LocalizeConfig
from qaa_vpr_ros.poses import Pose, pose_matrix, rotation_angle

if TYPE_CHECKING:
    from qaa_vpr_ros.decision.localizer import Query
    from qaa_vpr_ros.decision.record import LoopClosureRecord

__all__ = ["LocalizationState", "StateUpdate"]

ONLINE_SOURCE = "online"  # an online loop closure's source: never counts as a map match


@dataclass(frozen=True)
class StateUpdate:
    """The state after one query (or now, from :meth:`LocalizationState.current`).

    ``since``: image stamp (s) the state began; None before any query. ``last_match``: stamp of
    the last accepted map match, None when none since start-up or the last reset. ``source``: that
    match's pose source ("geometry": the query's own pose from geometric verification, "keyframe"
    and the record's other transform sources). ``publish_initialpose`` with ``reason`` (first
    relocalization, after being lost, or the correction's size); ``changed``: the state differs
    from the one before this query."""

    state: Literal["localized", "lost"]
    since: float | None
    last_match: float | None
    source: str = ""
    publish_initialpose: bool = False
    reason: str = ""
    changed: bool = False

    @property
    def message(self) -> str:
        """One line for people: ``localized since <stamp>`` / ``lost since <stamp> ...``."""
        since = "" if self.since is None else f" since {self.since:.3f}"
        if self.state == "localized":
            return f"localized{since} (last map match {self.last_match:.3f}, {self.source})"
        if self.last_match is None:
            return f"lost{since}: never localized (no accepted map match yet)"
        return f"lost{since}: no accepted map match since {self.last_match:.3f}"


def _matrix(pose: Pose | np.ndarray | None) -> np.ndarray | None:
    """4x4 of a 4x4 or a (position, quaternion); None for None or anything not finite."""
    if pose is None:
        return None
    matrix = np.asarray(pose, np.float64) if isinstance(pose, np.ndarray) else pose_matrix(*pose)
    if matrix.shape != (4, 4):
        raise ValueError(f"a pose is a 4x4 matrix or (position, quaternion), got shape {matrix.shape}")
    return matrix if np.isfinite(matrix).all() else None


class LocalizationState:
    """Localized / lost and the ``initialpose`` policy (module docstring) for ``config``'s
    ``lost_after_s``, ``initialpose_min_correction_m`` and ``initialpose_min_correction_rad``."""

    def __init__(self, config: LocalizeConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Start afresh (``~/reset``, a jump back of the stamps): lost, never localized."""
        with self._lock:
            self._state: Literal["localized", "lost"] = "lost"
            self._since: float | None = None
            self._newest: float | None = None  # newest query stamp (cameras' stamps interleave)
            self._last_match: float | None = None
            self._source = ""
            # The last published initialpose: T_map_base, and the odometry T_odom_base and frame then.
            self._published: tuple[np.ndarray, np.ndarray | None, str] | None = None

    def current(self) -> StateUpdate:
        """The state now (as of the newest query), for a periodic status."""
        with self._lock:
            return StateUpdate(self._state, self._since, self._last_match, self._source)

    def update(self, stamp_s: float, accepted: bool, pose: Pose | np.ndarray | None, source: str,
               odometry: Pose | np.ndarray | None = None, odometry_frame: str = "") -> StateUpdate:
        """One processed query at image stamp ``stamp_s`` (s): ``accepted`` whether it has an
        accepted map match, ``pose`` the robot's pose by that match in the map frame (4x4 or
        (position, quaternion); None: unknown, e.g. a keyframe without a pose), ``source`` the
        match's pose source ("online": an online loop closure, ignored). ``odometry``: the query's
        odometry pose in ``odometry_frame`` (None: no odometry)."""
        cfg = self.config
        with self._lock:
            now = stamp_s if self._newest is None else max(self._newest, stamp_s)
            self._newest = now
            before = self._state
            if self._since is None:
                self._since = stamp_s  # lost from the first query on: never localized
            if (self._state == "localized" and self._last_match is not None
                    and now - self._last_match > cfg.lost_after_s):
                self._state, self._since, self._published = "lost", self._last_match + cfg.lost_after_s, None
            publish, reason = False, ""
            if accepted and source != ONLINE_SOURCE:
                if self._state == "lost":
                    reason = "first relocalization" if self._last_match is None else "relocalized after being lost"
                    self._state, self._since = "localized", stamp_s
                self._last_match = stamp_s if self._last_match is None else max(self._last_match, stamp_s)
                self._source = source
                matrix = _matrix(pose)
                if matrix is not None:
                    odom = _matrix(odometry)
                    if self._published is None:
                        publish, reason = True, reason or "first pose after a match without one"
                    else:
                        moved_m, turned_rad = self._correction(matrix, odom, odometry_frame)
                        if (moved_m > cfg.initialpose_min_correction_m
                                or turned_rad > cfg.initialpose_min_correction_rad):
                            publish, reason = True, f"correction of {moved_m:.3f} m, {turned_rad:.3f} rad"
                    if publish:
                        self._published = (matrix, odom, odometry_frame)
            return StateUpdate(self._state, self._since, self._last_match, self._source, publish,
                               reason if publish else "", self._state != before)

    def observe(self, query: Query, records: Sequence[LoopClosureRecord]) -> StateUpdate:
        """:meth:`update` for one query from its map records (``~/loop_candidates`` rows against the
        prebuilt map; online ones are skipped): the accepted one's robot pose in the map frame
        (``match pose * T_match_query``, what ``initialpose`` carries) and transform source."""
        record = next((r for r in records if r.accepted and not r.is_online), None)
        pose = None
        if record is not None and all(math.isfinite(v) for v in record.match_position):
            pose = record.query_pose_in_match_frame()
        return self.update(query.stamp, record is not None, pose, record.transform_source if record else "",
                           query.pose, query.pose_frame)

    def _correction(self, matrix: np.ndarray, odom: np.ndarray | None, odom_frame: str) -> tuple[float, float]:
        """(metres, radians) between ``matrix`` and the pose the last initialpose predicts now."""
        published, published_odom, published_frame = self._published  # type: ignore[misc]
        predicted = published
        if odom is not None and published_odom is not None and odom_frame == published_frame:
            predicted = published @ np.linalg.inv(published_odom) @ odom
        delta = np.linalg.inv(predicted) @ matrix
        return float(np.linalg.norm(delta[:3, 3])), rotation_angle(delta[:3, :3])
