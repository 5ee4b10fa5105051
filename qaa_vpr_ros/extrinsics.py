"""Camera extrinsics ``T_base_camera`` for the node: TF first, else the ``camera_extrinsics`` parameter.

Runs without ROS. The TF buffer is anything with ``tf2_ros.Buffer``'s ``lookup_transform`` and
``all_frames_as_yaml`` (:class:`TransformBuffer`); the node builds a real one when ``tf2_ros`` is
importable, tests hand in a small object of their own.

A failed lookup is never silent and never fatal: the camera falls back to its
``camera_extrinsics`` entry (or the caller's default), the failure is counted per camera
(:meth:`ExtrinsicsSource.failures`, shown in ``/diagnostics``), and :meth:`ExtrinsicsSource.lookup`
returns a warning to log at most once per ``warn_repeat_s`` per camera and kind of failure. When
the TF tree has frames but not ``base_frame``, the warning says so and names the parameter: a
wrong ``base_frame`` fails every lookup, however long one waits for TF.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import yaml

from qaa_vpr_ros.poses import pose_matrix

__all__ = ["CameraTfStatus", "ExtrinsicsSource", "TransformBuffer", "tf_frames"]

WARN_REPEAT_S = 60.0  # a camera's TF warning repeats at most this often (the count goes on)
_FRAMES_CHECK_S = 1.0  # the TF tree's frame list is read at most this often (only while lookups fail)


class TransformBuffer(Protocol):
    """What the node needs of a ``tf2_ros.Buffer``."""

    def lookup_transform(self, target_frame: str, source_frame: str, time: Any, timeout: Any = ...) -> Any:
        """A ``geometry_msgs/TransformStamped`` (``.transform.translation``, ``.transform.rotation``)
        of ``source_frame`` in ``target_frame``; raises (tf2's ``LookupException``, ...) when unknown."""
        ...

    def all_frames_as_yaml(self) -> str:
        """tf2's frame listing: ``{child_frame: {parent: frame, ...}, ...}`` as YAML (``[]`` when empty)."""
        ...


@dataclass(frozen=True)
class CameraTfStatus:
    """One camera's failed TF lookups (a snapshot)."""

    failures: int = 0
    last_error: str = ""  # "<exception type>: <text>" of the newest failure
    base_frame_missing: bool = False  # the newest classified failure: base_frame is not in the tree


_OK = CameraTfStatus()


def tf_frames(buffer: TransformBuffer) -> set[str]:
    """Every frame the buffer knows (children and their parents); empty when it cannot say."""
    try:
        listing = yaml.safe_load(buffer.all_frames_as_yaml() or "")
    except Exception:  # a buffer that cannot list its frames: nothing to say
        return set()
    if not isinstance(listing, dict):
        return set()
    frames = {str(name) for name in listing}
    frames.update(str(v["parent"]) for v in listing.values() if isinstance(v, dict) and v.get("parent"))
    return frames


class ExtrinsicsSource:
    """``T_base_camera`` (4x4) per camera: TF (``base_frame`` -> the image's ``frame_id``) when a
    buffer is given and knows the transform, else ``fixed[camera]`` (the ``camera_extrinsics``
    parameter), else the caller's default. Thread-safe."""

    def __init__(self, base_frame: str, fixed: dict[str, np.ndarray], buffer: TransformBuffer | None = None,
                 latest: Any = None, warn_repeat_s: float = WARN_REPEAT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``latest``: the ``time`` argument meaning "the latest transform" (``rclpy.time.Time()``)."""
        self.base_frame = base_frame
        self.fixed = dict(fixed)
        self.buffer = buffer
        self._latest = latest
        self._warn_repeat_s = warn_repeat_s
        self._clock = clock
        self._lock = threading.Lock()
        self._status: dict[str, CameraTfStatus] = {}
        self._warned: dict[tuple[str, bool], float] = {}  # (camera, base_frame_missing) -> clock()
        self._frames: set[str] = set()
        self._frames_read = -math.inf

    def lookup(self, camera: str, frame_id: str, default: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        """(``T_base_camera``, a warning to log now or ""). No frame_id or no buffer: no lookup."""
        if self.buffer is not None and frame_id:
            try:
                t = self.buffer.lookup_transform(self.base_frame, frame_id, self._latest)
            except Exception as err:  # tf2's exceptions, or whatever a buffer raises
                return self._fallback(camera, default), self._failed(camera, frame_id, err)
            r, v = t.transform.rotation, t.transform.translation
            if self._status.get(camera, _OK).base_frame_missing:  # base_frame has appeared in the tree
                with self._lock:
                    self._status[camera] = replace(self._status[camera], base_frame_missing=False)
            return pose_matrix((v.x, v.y, v.z), (r.x, r.y, r.z, r.w)), ""
        return self._fallback(camera, default), ""

    def failures(self) -> dict[str, CameraTfStatus]:
        """camera -> its failed lookups so far (cameras that never failed are absent)."""
        with self._lock:
            return dict(self._status)

    def base_frame_missing(self) -> bool:
        """The newest classified failure of some camera found ``base_frame`` absent from the TF tree."""
        with self._lock:
            return any(s.base_frame_missing for s in self._status.values())

    def _fallback(self, camera: str, default: np.ndarray | None) -> np.ndarray:
        return self.fixed.get(camera, np.eye(4) if default is None else default)

    def _failed(self, camera: str, frame_id: str, err: Exception) -> str:
        text = f"{type(err).__name__}: {err}".strip()
        now = self._clock()
        with self._lock:
            if now - self._frames_read >= _FRAMES_CHECK_S:  # tf2 lists its frames in YAML: not every frame
                self._frames, self._frames_read = tf_frames(self.buffer), now
            frames = self._frames
            # An empty tree is TF not (yet) received; a tree without base_frame is a wrong base_frame.
            missing = bool(frames) and self.base_frame not in frames
            old = self._status.get(camera, CameraTfStatus())
            self._status[camera] = replace(old, failures=old.failures + 1, last_error=text,
                                           base_frame_missing=missing)
            if now - self._warned.get((camera, missing), -math.inf) < self._warn_repeat_s:
                return ""
            self._warned[(camera, missing)] = now
        using = ("its camera_extrinsics entry" if camera in self.fixed
                 else "the default (camera_extrinsics has no entry for it)")
        repeat = f"warned at most every {self._warn_repeat_s:g} s per camera, counted in /diagnostics"
        if missing:
            shown = ", ".join(sorted(frames)[:12]) + (", ..." if len(frames) > 12 else "")
            return (f"base_frame '{self.base_frame}' is not in the TF tree (its frames: {shown}): set the "
                    f"parameter base_frame to the robot's base frame; camera '{camera}' (frame_id "
                    f"'{frame_id}') uses {using} meanwhile ({text}; {repeat})")
        return (f"no TF transform from base_frame '{self.base_frame}' to frame_id '{frame_id}' of camera "
                f"'{camera}': {text}; using {using} ({repeat})")
