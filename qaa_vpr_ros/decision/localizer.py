"""The two databases together: search a prebuilt map and/or the robot's own past keyframes, decide.

- *localization*: each query is searched in a prebuilt :class:`~qaa_vpr_ros.maps.PlaceMap`
  (poses in that map's ``map_frame``);
- *online loop closure*: each query is searched in the robot's own past keyframes (a database
  that grows as it drives, poses in the odometry frame) and then added to it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qaa_vpr_ros.decision.decision import ChannelResult, PlaceMatcher
from qaa_vpr_ros.decision.odometry import Pose
from qaa_vpr_ros.decision.parameters import LocalizeConfig

__all__ = ["Localizer", "Query", "QueryResult"]


@dataclass
class Query:
    """One camera frame to localize. ``pose`` is the odometry pose at its stamp, in ``pose_frame``."""

    camera: str
    stamp_sec: int
    stamp_nanosec: int
    frame_id: str = ""
    pose: Pose | None = None
    pose_frame: str = "odom"

    @property
    def stamp(self) -> float:
        """Seconds (float)."""
        return self.stamp_sec + 1e-9 * self.stamp_nanosec


@dataclass
class QueryResult:
    """Everything decided for one query."""

    query: Query
    map: ChannelResult | None = None  # against the prebuilt map
    online: ChannelResult | None = None  # against the robot's own past keyframes
    keyframe: Any = None  # the query's keyframe as added to the online database

    @property
    def place(self) -> ChannelResult | None:
        """What ``~/place_match`` reports: the prebuilt map when loaded, else the online database."""
        return self.map if self.map is not None else self.online

class Localizer:
    """Searches a prebuilt map and/or the online keyframe database and decides, query by query.

    Not thread-safe: the node calls it from its one inference thread (and services under a lock).
    """

    def __init__(self, config: LocalizeConfig, dim: int, fingerprint: str,
                 prior_map: Any = None, online_frame: str = "odom") -> None:
        self.config = config.validate()
        self.dim = dim
        self.fingerprint = fingerprint
        self.prior_map = prior_map
        self.online_frame = online_frame
        self.online_map = self._new_online_map()
        self.map_matcher = PlaceMatcher(config, exclude_recent=False)
        self.online_matcher = PlaceMatcher(config, exclude_recent=True)

    def _new_online_map(self) -> Any:
        from qaa_vpr_ros.maps import PlaceMap

        return PlaceMap.create(self.dim, self.fingerprint, index_type="flat", map_frame=self.online_frame)

    def set_config(self, config: LocalizeConfig) -> None:
        self.config = config.validate()
        self.map_matcher.set_config(config)
        self.online_matcher.set_config(config)

    def reset(self) -> None:
        """Forget the online database and the consistency histories (the prebuilt map stays)."""
        self.online_map = self._new_online_map()
        self.map_matcher.reset()
        self.online_matcher.reset()

    def save_online(self, folder: str | Path) -> int:
        """Write the online database as a map folder; returns its keyframe count."""
        if len(self.online_map) == 0:
            raise ValueError("the online keyframe database is empty: drive a little (and check "
                             "that images arrive) before saving")
        self.online_map.save(folder)
        return len(self.online_map)

    def _search(self, place_map: Any, descriptors: np.ndarray) -> tuple[np.ndarray, list[list[Any]]]:
        k = min(self.config.top_k, len(place_map))
        result = place_map.search(descriptors, k)
        return np.asarray(result.scores), [list(kfs) for kfs in result.keyframes]

    @staticmethod
    def _hits(scores: np.ndarray, keyframes: list[list[Any]], row: int) -> tuple[list[float], list[Any]]:
        """Row ``row`` of a search result without its padding (missing keyframes)."""
        kfs = [kf for kf in keyframes[row] if kf is not None]
        return [float(s) for s in scores[row, : len(kfs)]], kfs

    def process(self, queries: Sequence[Query], descriptors: np.ndarray) -> list[QueryResult]:
        """Decide for a batch of queries (descriptors (N, D) float32, same order), then add them
        to the online database when online loop closure is on. Queries are decided in stamp order."""
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if descriptors.shape != (len(queries), self.dim):
            raise ValueError(f"descriptors have shape {descriptors.shape}, "
                             f"expected ({len(queries)}, {self.dim})")
        results = [QueryResult(q) for q in queries]
        if not queries:
            return results
        order = sorted(range(len(queries)), key=lambda i: queries[i].stamp)
        if self.prior_map is not None and len(self.prior_map) > 0:
            scores, kfs = self._search(self.prior_map, descriptors)
            frame = self.prior_map.map_frame
            for i in order:
                s, k = self._hits(scores, kfs, i)
                results[i].map = ChannelResult("map", frame, self.map_matcher.decide(queries[i].stamp, s, k))
        elif self.prior_map is not None:
            for i in order:
                results[i].map = ChannelResult("map", self.prior_map.map_frame, [])
        if self.config.online_loop_closure:
            if len(self.online_map) > 0:
                scores, kfs = self._search(self.online_map, descriptors)
            for i in order:
                if len(self.online_map) > 0:
                    s, k = self._hits(scores, kfs, i)
                    cands = self.online_matcher.decide(queries[i].stamp, s, k)
                else:
                    cands = self.online_matcher.decide(queries[i].stamp, [], [])
                results[i].online = ChannelResult("online", self.online_frame, cands)
            self._add_online([queries[i] for i in order], descriptors[order], [results[i] for i in order])
        return results

    def _add_online(self, queries: list[Query], descriptors: np.ndarray, results: list[QueryResult]) -> None:
        from qaa_vpr_ros.maps import Keyframe

        start = len(self.online_map)
        keyframes = []
        for n, q in enumerate(queries):
            if q.pose is not None:
                position, orientation = q.pose
            else:
                position, orientation = (math.nan, math.nan, math.nan), (0.0, 0.0, 0.0, 1.0)
            keyframes.append(Keyframe(
                id=start + n, stamp_sec=q.stamp_sec, stamp_nanosec=q.stamp_nanosec, camera=q.camera,
                frame_id=q.frame_id, position=tuple(position), orientation=tuple(orientation),
                source="online"))
        self.online_map.add(descriptors, keyframes)
        for r, kf in zip(results, keyframes, strict=True):
            r.keyframe = kf
