"""Odometry poses: the recent history of the odometry topic and the pose at an image stamp."""
from __future__ import annotations

import threading
from collections import deque

__all__ = ["Pose", "PoseHistory"]

Pose = tuple[tuple[float, float, float], tuple[float, float, float, float]]
"""(position (x, y, z) in metres, orientation (qx, qy, qz, qw)) in some frame."""

class PoseHistory:
    """Recent odometry poses; :meth:`lookup` returns the one nearest a stamp. Thread-safe."""

    def __init__(self, maxlen: int = 2000) -> None:
        self._items: deque[tuple[float, Pose, str]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, stamp: float, pose: Pose, frame_id: str) -> None:
        with self._lock:
            self._items.append((stamp, pose, frame_id))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def lookup(self, stamp: float, max_age_s: float) -> tuple[Pose, str] | None:
        """``(pose, frame_id)`` of the odometry message nearest ``stamp`` within ``max_age_s``."""
        with self._lock:
            if not self._items:
                return None
            best = min(self._items, key=lambda item: abs(item[0] - stamp))
        if abs(best[0] - stamp) > max_age_s:
            return None
        return best[1], best[2]
