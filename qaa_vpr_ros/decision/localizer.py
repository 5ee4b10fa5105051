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
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import ThreadpoolController

from qaa_vpr_ros.decision.decision import Candidate, ChannelResult, Hypotheses, SequenceMatcher
from qaa_vpr_ros.decision.parameters import LocalizeConfig
from qaa_vpr_ros.decision.sequence import KeyframeTable
from qaa_vpr_ros.poses import Pose

if TYPE_CHECKING:
    from qaa_vpr_ros.local_features import LocalFeatures
    from qaa_vpr_ros.maps.place_map import Keyframe, PlaceMap

__all__ = ["SEARCH_DEPTH", "Localizer", "Query", "QueryResult"]

SEARCH_DEPTH = 4
"""Each query searches ``SEARCH_DEPTH * top_k`` neighbours, of which ``top_k`` spread-out ones
become hypotheses (see :meth:`SequenceMatcher._spread`)."""


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
    keyframe: Keyframe | None = None  # the query's keyframe as added to the online database

    @property
    def place(self) -> ChannelResult | None:
        """What ``~/place_match`` reports: the prebuilt map when loaded, else the online database."""
        return self.map if self.map is not None else self.online

class Localizer:
    """Searches a prebuilt map and/or the online keyframe database and decides, query by query.

    Holds each database's descriptors and poses once in memory (:class:`KeyframeTable`) for the
    sequence evidence. Not thread-safe: the node calls it from its one inference thread (and
    services under a lock).
    """

    def __init__(self, config: LocalizeConfig, dim: int, fingerprint: str,
                 prior_map: PlaceMap | None = None, online_frame: str = "odom") -> None:
        self.config = config.validate()
        self.dim = dim
        self.fingerprint = fingerprint
        self.prior_map = prior_map
        self.online_frame = online_frame
        self._prior_keyframes = prior_map.keyframes if prior_map is not None else []
        self._prior_row_of_id = {int(i): r for r, i in enumerate(prior_map.ids)} if prior_map is not None else {}
        prior_table = KeyframeTable.from_map(prior_map) if prior_map is not None else KeyframeTable(dim)
        # An exact map is searched by the decision's own product (see _prior_search).
        self._prior_exact = prior_map is not None and prior_map.is_exact
        self.map_matcher = SequenceMatcher(self.config, prior_table)
        self.online_thinned = 0  # online keyframes dropped by the online_max_keyframes cap, in total
        self._blas = ThreadpoolController()
        self._new_online()

    def _new_online(self) -> None:
        from qaa_vpr_ros.maps import PlaceMap

        self.online_map = PlaceMap.create(self.dim, self.fingerprint, index_type="flat", map_frame=self.online_frame)
        self._online_keyframes: list[Keyframe] = []
        self._next_online_id = 0  # ids stay unique when the cap thins the database
        self.online_matcher = SequenceMatcher(self.config, KeyframeTable(self.dim), online=True)
        self._path_m = 0.0
        self._last_position: np.ndarray | None = None
        self._step, self._step_stamp = 0, math.nan

    def set_config(self, config: LocalizeConfig) -> None:
        self.config = config.validate()
        self.map_matcher.set_config(self.config)
        self.online_matcher.set_config(self.config)

    def reset(self) -> None:
        """Forget the online database and the sequences (the prebuilt map stays)."""
        self._new_online()
        self.map_matcher.reset()

    def restart_sequences(self) -> None:
        """Forget the sequences only (the databases stay): after a gap in time the frames before it
        are no contiguous route to align. The odometry path length keeps counting."""
        self.map_matcher.reset()
        self.online_matcher.reset()

    def save_online(self, folder: str | Path) -> int:
        """Write the online database as a map folder; returns its keyframe count."""
        if len(self.online_map) == 0:
            raise ValueError("the online keyframe database is empty: drive a little (and check "
                             "that images arrive) before saving")
        self.online_map.save(folder)
        return len(self.online_map)

    def _prior_search(self, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(hits, sims)``: (N, k) prior-map rows of each query's search hits (-1: none) and, for an
        exact (flat) map, (N, M) each query's similarity to every map row (else None).

        A flat map is searched here as one product with the decision's own float32 copy of the
        descriptors (the values the faiss index holds, the same work as its exact search): the
        sequence evidence then reads the query's similarities from it instead of recomputing them."""
        k = min(SEARCH_DEPTH * self.config.top_k, len(self.prior_map))
        if self._prior_exact:
            sims = descriptors @ self.map_matcher.table.descriptors.T  # (N, M)
            return np.stack([_top_rows(s, k) for s in sims]), sims
        ids = self.prior_map.search(descriptors, k).ids
        return np.vectorize(lambda i: self._prior_row_of_id.get(int(i), -1), otypes=[np.int64])(ids), None

    def _online_hits(self, sims: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Rows of the ``SEARCH_DEPTH * top_k`` most similar online keyframes among those in ``mask``
        (``sims``: the query's similarity to every online keyframe, one matrix-vector product)."""
        rows = np.flatnonzero(mask)
        if len(rows) == 0:
            return rows
        return rows[_top_rows(sims[rows], SEARCH_DEPTH * self.config.top_k)]

    def _recent_rivals(self, q: Query, path_m: float) -> np.ndarray:
        """Online rows too recent to be loop closures but not the immediate past (further back than
        ``confidence_radius_m`` of travel, or ``confidence_frames`` keyframes without odometry):
        their sequence scores are the baseline a loop closure must beat."""
        table, cfg = self.online_matcher.table, self.config
        if math.isnan(path_m):
            mask = ~table.eligible(q.stamp - cfg.exclude_recent_s, None)
            mask[max(len(table) - cfg.confidence_frames, 0):] = False
            return mask
        path = table.path_m
        with np.errstate(invalid="ignore"):
            return (path < path_m - cfg.confidence_radius_m) & ~table.eligible(
                q.stamp - cfg.exclude_recent_s, path_m - cfg.loop_min_travel_m)

    def _advance_path(self, query: Query) -> float:
        """Odometry path length (m) at this query; NaN when it has no pose."""
        if query.pose is None or not all(math.isfinite(v) for v in query.pose[0]):
            return math.nan
        position = np.asarray(query.pose[0], np.float64)
        if self._last_position is not None:
            self._path_m += float(np.linalg.norm(position - self._last_position))
        self._last_position = position
        return self._path_m

    def _candidates(self, hyp: Hypotheses, keyframes: Sequence[Keyframe]) -> list[Candidate]:
        out = []
        for rank in range(min(self.config.top_k, len(hyp.rows))):
            first = rank == 0
            out.append(Candidate(
                keyframe=keyframes[int(hyp.rows[rank])], score=float(hyp.frame_score[rank]), rank=rank,
                accepted=first and hyp.accepted, reason=hyp.reason if first else "not best",
                sequence_score=float(hyp.sequence_score[rank]), support=int(hyp.support[rank]),
                confidence=float(hyp.confidence[rank]), offset=hyp.offset if first else None))
        return out

    def _hits(self, channel: ChannelResult, rows: np.ndarray, descriptor: np.ndarray, table: KeyframeTable,
              keyframes: Sequence[Keyframe]) -> list[Candidate]:
        """The ``verify_candidates`` best search hits (rows, best first) not among the channel's candidates."""
        count = self.config.verify_candidates if self.config.verify_geometry else 0
        taken = {int(c.keyframe.id) for c in channel.candidates}
        out = []
        for rank, row in enumerate(np.asarray(rows, np.int64)[:count]):
            if row < 0 or int(keyframes[int(row)].id) in taken:
                continue
            score = float(table.descriptors[int(row)] @ descriptor)
            out.append(Candidate(keyframe=keyframes[int(row)], score=score, rank=rank, reason="search hit"))
        return out

    def process(self, queries: Sequence[Query], descriptors: np.ndarray,
                features: Sequence[LocalFeatures | None] | None = None) -> list[QueryResult]:
        """Decide for a batch of queries (descriptors (N, D) float32, same order) in stamp order;
        with online loop closure on, each query joins the online database after its decision, with
        its local features (``features``, same order; None: none) for geometric verification.

        BLAS runs single-threaded meanwhile: the decision's products are small (a few dozen rows),
        where waking a second thread costs more than it saves, and on a busy CPU far more
        (``scripts/bench_decision.py``: 2x slower with 2 threads on 2 loaded cores)."""
        with self._blas.limit(limits=1, user_api="blas"):
            return self._process(queries, descriptors, features)

    def _process(self, queries: Sequence[Query], descriptors: np.ndarray,
                 features: Sequence[LocalFeatures | None] | None) -> list[QueryResult]:
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if descriptors.shape != (len(queries), self.dim):
            raise ValueError(f"descriptors have shape {descriptors.shape}, "
                             f"expected ({len(queries)}, {self.dim})")
        results = [QueryResult(q) for q in queries]
        if not queries:
            return results
        cfg = self.config
        order = sorted(range(len(queries)), key=lambda i: queries[i].stamp)
        prior = self.prior_map is not None and len(self.prior_map) > 0
        prior_hits, prior_sims = self._prior_search(descriptors) if prior else (None, None)
        for i in order:
            q, d = queries[i], descriptors[i]
            path_m = self._advance_path(q)
            if q.stamp != self._step_stamp:
                self._step, self._step_stamp = self._step + 1, q.stamp
            if prior:
                # A row of a batch's product is a view that would keep the whole batch alive in the track.
                row_sims = None if prior_sims is None else prior_sims[i] if len(queries) == 1 else prior_sims[i].copy()
                hyp = self.map_matcher.decide(q.camera, d, q.pose, path_m, prior_hits[i], step=self._step,
                                              table_sims=row_sims)
                results[i].map = ChannelResult("map", self.prior_map.map_frame,
                                               self._candidates(hyp, self._prior_keyframes))
                results[i].map.hits = self._hits(results[i].map, prior_hits[i], d, self.map_matcher.table,
                                                 self._prior_keyframes)
            elif self.prior_map is not None:
                results[i].map = ChannelResult("map", self.prior_map.map_frame, [])
            if cfg.online_loop_closure:
                if q.pose is not None and not self._online_keyframes:
                    # The online database lives in the odometry's own frame.
                    self.online_frame = self.online_map.map_frame = q.pose_frame
                table = self.online_matcher.table
                mask = table.eligible(q.stamp - cfg.exclude_recent_s,
                                      None if math.isnan(path_m) else path_m - cfg.loop_min_travel_m)
                sims = table.descriptors @ d
                rivals = self._online_hits(sims, self._recent_rivals(q, path_m))
                online_hits = self._online_hits(sims, mask)
                hyp = self.online_matcher.decide(q.camera, d, q.pose, path_m, online_hits, mask, rivals,
                                                 step=self._step, table_sims=sims)
                results[i].online = ChannelResult("online", self.online_frame,
                                                  self._candidates(hyp, self._online_keyframes))
                # Geometry needs no travel guard: a verified view is the same place after any path
                # (a handheld camera back at a view after geometry_loop_exclude_recent_s).
                geometry_mask = table.eligible(q.stamp - cfg.geometry_loop_exclude_recent_s, None)
                results[i].online.hits = self._hits(results[i].online, self._online_hits(sims, geometry_mask), d,
                                                    table, self._online_keyframes)
                results[i].keyframe = self._add_online(q, d, path_m, features[i] if features is not None else None)
        return results

    def _add_online(self, q: Query, descriptor: np.ndarray, path_m: float,
                    features: LocalFeatures | None = None) -> Keyframe:
        from qaa_vpr_ros.maps import Keyframe

        if q.pose is not None:
            position, orientation = q.pose
        else:
            position, orientation = (math.nan, math.nan, math.nan), (0.0, 0.0, 0.0, 1.0)
        keyframe = Keyframe(
            id=self._next_online_id, stamp_sec=q.stamp_sec, stamp_nanosec=q.stamp_nanosec, camera=q.camera,
            frame_id=q.frame_id, position=tuple(position), orientation=tuple(orientation), source="online")
        self.online_map.add(descriptor[None], [keyframe], features=[features])
        self.online_matcher.table.append(descriptor[None], np.array([position], np.float64),
                                         np.array([orientation], np.float64), np.array([q.stamp]),
                                         np.array([path_m]))
        self._online_keyframes.append(keyframe)
        self._next_online_id += 1
        self._cap_online()
        return keyframe

    def _cap_online(self) -> None:
        """At ``online_max_keyframes``, thin the online database spatially to half
        (:mod:`qaa_vpr_ros.maps.thinning`). The online sequences restart afterwards."""
        from qaa_vpr_ros.maps.thinning import thin_rows

        cap = self.config.online_max_keyframes
        if not cap or len(self._online_keyframes) < cap:
            return
        table = self.online_matcher.table
        keep = thin_rows(table.positions, table.stamps, max(1, cap // 2), recent_s=self.config.exclude_recent_s)
        kept = [self._online_keyframes[r] for r in keep]
        thinned = KeyframeTable(self.dim)
        thinned.append(table.descriptors[keep], table.positions[keep],
                       np.array([kf.orientation for kf in kept], np.float64).reshape(-1, 4),
                       table.stamps[keep], table.path_m[keep])
        self.online_map = self.online_map.subset(keep)
        self.online_matcher = SequenceMatcher(self.config, thinned, online=True)
        self.online_thinned += len(self._online_keyframes) - len(kept)
        self._online_keyframes = kept

    def online_memory_bytes(self) -> int:
        """Bytes the online database holds: map descriptors, local features, flat index, the decision's table."""
        table = self.online_matcher.table
        return self.online_map.memory_bytes + sum(
            a.nbytes for a in (table._desc, table._pos, table._rot, table._stamp, table._path, table._posed))


def _top_rows(sims: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest of ``sims`` (1-D), largest first (ties: lower index first)."""
    k = min(k, len(sims))
    if k <= 0:
        return np.zeros(0, np.int64)
    best = np.sort(np.argpartition(-sims, k - 1)[:k])
    return best[np.argsort(-sims[best], kind="stable")]
