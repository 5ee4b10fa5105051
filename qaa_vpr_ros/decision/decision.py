"""The accept/reject decision of one query's candidates against one database, and its covariance."""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qaa_vpr_ros.decision.parameters import LocalizeConfig

__all__ = ["Candidate", "ChannelResult", "PlaceMatcher", "covariance_from_score"]


@dataclass
class Candidate:
    """A database keyframe returned for a query, in rank order (0 = best score)."""

    keyframe: Any  # qaa_vpr_ros.maps.Keyframe
    score: float
    rank: int
    accepted: bool = False
    reason: str = ""  # why not accepted: "score" | "recent" | "inconsistent"


@dataclass
class ChannelResult:
    """The decision for one query against one database (``source`` "map" or "online")."""

    source: str
    map_frame: str
    candidates: list[Candidate]

    @property
    def best(self) -> Candidate | None:
        """The best-scoring accepted candidate, or None."""
        return next((c for c in self.candidates if c.accepted), None)


def _position(keyframe: Any) -> np.ndarray | None:
    pos = getattr(keyframe, "position", None)
    if pos is None:
        return None
    arr = np.asarray(pos, dtype=np.float64)
    return arr if arr.shape == (3,) and np.all(np.isfinite(arr)) else None


def _stamp(keyframe: Any) -> float:
    return float(keyframe.stamp_sec) + 1e-9 * float(keyframe.stamp_nanosec)


class PlaceMatcher:
    """Accept/reject the candidates of successive queries against one database.

    Keeps the short history the temporal-consistency check needs; not thread-safe.
    """

    def __init__(self, config: LocalizeConfig, exclude_recent: bool) -> None:
        self.config = config
        self.exclude_recent = exclude_recent
        # One entry per past query: the keyframes that passed score (and exclusion).
        self._history: deque[list[Any]] = deque(maxlen=max(config.consistency_window - 1, 0))

    def set_config(self, config: LocalizeConfig) -> None:
        """Apply new parameters, keeping as much history as the new window allows."""
        self.config = config
        self._history = deque(self._history, maxlen=max(config.consistency_window - 1, 0))

    def reset(self) -> None:
        self._history.clear()

    def _near(self, a: Any, b: Any) -> bool:
        pa, pb = _position(a), _position(b)
        if pa is not None and pb is not None:
            return float(np.linalg.norm(pa - pb)) <= self.config.consistency_radius_m
        return abs(int(a.id) - int(b.id)) <= self.config.consistency_frames

    def decide(self, query_stamp: float, scores: Sequence[float],
               keyframes: Sequence[Any]) -> list[Candidate]:
        """Candidates of one query in rank order, each marked accepted or with a reason.

        Args:
            query_stamp: the query image's stamp, seconds.
            scores: descending similarity scores of the search hits (padding already removed).
            keyframes: the hits' keyframe records (``.id``, ``.stamp_sec``, ``.stamp_nanosec``,
                ``.position``), same order.
        """
        cfg = self.config
        if len(scores) != len(keyframes):
            raise ValueError(f"{len(scores)} scores for {len(keyframes)} keyframes")
        candidates = [Candidate(kf, float(s), rank)
                      for rank, (s, kf) in enumerate(zip(scores, keyframes, strict=True))]
        passing = []
        for c in candidates:
            if c.score < cfg.min_score:
                c.reason = "score"
            elif self.exclude_recent and _stamp(c.keyframe) > query_stamp - cfg.exclude_recent_s:
                c.reason = "recent"
            else:
                passing.append(c)
        for c in passing:
            support = 1 + sum(any(self._near(c.keyframe, kf) for kf in past) for past in self._history)
            c.accepted = support >= cfg.consistency_k
            if not c.accepted:
                c.reason = "inconsistent"
        if self._history.maxlen:
            self._history.append([c.keyframe for c in passing])
        return candidates


def covariance_from_score(score: float, min_score: float, base_diagonal: Sequence[float]) -> list[float]:
    """Row-major 6x6 covariance: ``base_diagonal`` at score 1, growing to 10x at ``min_score``.

    confidence = (score - min_score) / (1 - min_score) clipped to [0, 1];
    variance = base / (0.1 + 0.9 * confidence).
    """
    span = max(1.0 - min_score, 1e-9)
    confidence = min(max((score - min_score) / span, 0.0), 1.0)
    factor = 1.0 / (0.1 + 0.9 * confidence)
    cov = [0.0] * 36
    for i, v in enumerate(base_diagonal):
        cov[7 * i] = float(v) * factor
    return cov
