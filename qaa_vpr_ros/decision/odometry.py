"""Odometry poses: the recent history of the odometry topic and the pose at an image stamp."""
from __future__ import annotations

import bisect
import threading
import time

# Pose and interpolate_pose are re-exported from their home, qaa_vpr_ros.poses.
from qaa_vpr_ros.poses import Pose, interpolate_pose

__all__ = ["Pose", "PoseHistory", "interpolate_pose"]

class PoseHistory:
    """Recent odometry poses, kept in stamp order; :meth:`lookup` interpolates to a stamp. Thread-safe."""

    def __init__(self, maxlen: int = 2000) -> None:
        self.maxlen = maxlen
        self._stamps: list[float] = []
        self._items: list[tuple[Pose, str]] = []
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        self._last_add: float | None = None  # time.monotonic() of the newest add

    def add(self, stamp: float, pose: Pose, frame_id: str) -> None:
        with self._lock:
            self._last_add = time.monotonic()
            self._added.notify_all()
            if self._stamps and stamp < self._stamps[-1] - 1.0:
                # Time jumped back (a bag replayed again, a simulator reset): start afresh.
                self._stamps.clear()
                self._items.clear()
            i = bisect.bisect_right(self._stamps, stamp)
            self._stamps.insert(i, stamp)
            self._items.insert(i, (pose, frame_id))
            if len(self._stamps) > self.maxlen:
                del self._stamps[: len(self._stamps) - self.maxlen]
                del self._items[: len(self._items) - self.maxlen]

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._items.clear()
            self._last_add = None

    def wait_for(self, stamp: float, timeout_s: float, live_s: float = 1.0) -> bool:
        """Wait (at most ``timeout_s`` of wall time) until a sample at or after ``stamp`` is in.

        Odometry often arrives a little after the image it belongs to (another process, another
        DDS queue, a loaded CPU); looking up too early returns a stale pose. Waits only while the
        odometry is live (a sample added within ``live_s``), so a stopped odometry topic costs
        nothing. Returns whether the history now reaches ``stamp``.
        """
        deadline = time.monotonic() + timeout_s
        with self._added:
            while not self._stamps or self._stamps[-1] < stamp:
                now = time.monotonic()
                if now >= deadline or self._last_add is None or now - self._last_add > live_s:
                    return False
                self._added.wait(min(deadline, self._last_add + live_s) - now)
            return True

    def lookup(self, stamp: float, max_age_s: float) -> tuple[Pose, str] | None:
        """``(pose, frame_id)`` at ``stamp``: interpolated between the samples around it when both
        are within ``max_age_s`` of it, else the nearest sample within ``max_age_s``, else None."""
        with self._lock:
            if not self._stamps:
                return None
            i = bisect.bisect_left(self._stamps, stamp)
            before = i - 1 if i > 0 else None
            after = i if i < len(self._stamps) else None
            if after is not None and self._stamps[after] == stamp:
                return self._items[after]
            if before is not None and after is not None:
                t0, t1 = self._stamps[before], self._stamps[after]
                (p0, frame), (p1, _) = self._items[before], self._items[after]
                if stamp - t0 <= max_age_s and t1 - stamp <= max_age_s:
                    return interpolate_pose(p0, p1, (stamp - t0) / (t1 - t0)), frame
            near = min((j for j in (before, after) if j is not None), key=lambda j: abs(self._stamps[j] - stamp))
            if abs(self._stamps[near] - stamp) > max_age_s:
                return None
            return self._items[near]
