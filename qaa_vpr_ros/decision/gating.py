"""Keyframe gating: which camera frames become queries (time since the last one, travel, rotation,
and where local features exist, a change of view)."""
from __future__ import annotations

import threading

from qaa_vpr_ros.decision.parameters import LocalizeConfig
from qaa_vpr_ros.keyframes import KeyframeSelector, SelectionConfig, ViewFeatures
from qaa_vpr_ros.poses import Pose

__all__ = ["KeyframeGate"]


class KeyframeGate:
    """Per camera: is this frame a new keyframe? (time since the last one, travel, rotation)

    A thread-safe front of :class:`qaa_vpr_ros.keyframes.KeyframeSelector` (the map builder's
    selection, so both keep the same frames) configured by ``min_period_s``,
    ``min_translation_m`` and ``min_rotation_rad``. :meth:`admit` commits the frame as the
    camera's latest keyframe when it passes.
    """

    def __init__(self, config: LocalizeConfig) -> None:
        self.config = config
        self._selector = KeyframeSelector()
        self._last_ns: dict[str, int] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._selector = KeyframeSelector(self._selector.config)
            self._last_ns.clear()

    def admit(self, camera: str, stamp: float, pose: Pose | None, commit: bool = True,
              view: ViewFeatures | None = None) -> bool:
        """Is this frame a new keyframe? ``stamp`` in seconds; ``pose`` the odometry pose at it, or
        None (time gating only). With ``commit`` (default) a passing frame becomes the camera's
        latest keyframe; the node first asks with ``commit=False`` when the frame arrives and
        commits only once it was decoded and processed, so dropped or undecodable frames never
        advance the gate. ``view`` computes the frame's local features for the view rule
        (``min_view_overlap``: a frame the travel and rotation rules skip is a keyframe when its
        view changed); committed, they are the camera's reference for the next frames."""
        cfg = self.config
        position, orientation = pose if pose is not None else (None, None)
        stamp_ns = round(stamp * 1e9)
        with self._lock:
            self._selector.config = SelectionConfig(cfg.min_period_s, cfg.min_translation_m, cfg.min_rotation_rad,
                                                    cfg.min_view_overlap)
            # Time went backwards (a bag replayed again, a simulator reset): start afresh rather
            # than gating every frame until the old stamp is reached.
            jumped = stamp_ns < self._last_ns.get(camera, stamp_ns)
            if not jumped and not self._selector.wants(camera, stamp_ns, position, orientation, view):
                return False
            if commit:
                self._selector.accept(camera, stamp_ns, position, orientation, view)
                self._last_ns[camera] = stamp_ns
            return True
