"""A small TF buffer for tests: a tree of static transforms with ``tf2_ros.Buffer``'s
``lookup_transform`` and ``all_frames_as_yaml``, failing with tf2's own messages.

Handed to ``LocalizeNode(tf_buffer=...)`` and ``ExtrinsicsSource`` (tf2_ros is not installable
here); not a test module itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qaa_vpr_ros.decision.record import matrix_quaternion


class LookupException(Exception):
    """As tf2.LookupException: a frame the tree does not have."""


class ConnectivityException(Exception):
    """As tf2.ConnectivityException: both frames exist, in different trees."""


@dataclass
class _Xyzw:
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    w: float = 0.0


@dataclass
class _Transform:
    translation: _Xyzw
    rotation: _Xyzw


@dataclass
class TransformStamped:
    """The fields of geometry_msgs/TransformStamped the node reads."""

    transform: _Transform


class StaticTfTree:
    """``edges``: child frame -> (parent frame, ``T_parent_child`` 4x4). ``calls`` records every
    ``(target_frame, source_frame)`` asked for."""

    def __init__(self, edges: dict[str, tuple[str, np.ndarray]]) -> None:
        self.edges = dict(edges)
        self.calls: list[tuple[str, str]] = []

    def frames(self) -> set[str]:
        return set(self.edges) | {parent for parent, _ in self.edges.values()}

    def _in_root(self, frame: str) -> tuple[str, np.ndarray]:
        transform = np.eye(4)
        while frame in self.edges:
            frame, t_parent_child = self.edges[frame]
            transform = t_parent_child @ transform
        return frame, transform

    def lookup_transform(self, target_frame: str, source_frame: str, time: object,
                         timeout: object = None) -> TransformStamped:
        self.calls.append((target_frame, source_frame))
        for argument, frame in (("target_frame", target_frame), ("source_frame", source_frame)):
            if frame not in self.frames():
                raise LookupException(f'"{frame}" passed to lookupTransform argument {argument} does not exist. ')
        target_root, t_root_target = self._in_root(target_frame)
        source_root, t_root_source = self._in_root(source_frame)
        if target_root != source_root:
            raise ConnectivityException(f"Could not find a connection between '{target_frame}' and "
                                        f"'{source_frame}' because they are not part of the same tree.")
        t = np.linalg.inv(t_root_target) @ t_root_source
        return TransformStamped(_Transform(_Xyzw(*t[:3, 3]), _Xyzw(*matrix_quaternion(t[:3, :3]))))

    def all_frames_as_yaml(self) -> str:
        if not self.edges:
            return "[]"  # tf2's listing of an empty tree
        return "".join(f"{child}: \n  parent: '{parent}'\n  broadcaster: 'test'\n"
                       for child, (parent, _) in self.edges.items())
