"""Sequence evidence: score "the current frame is keyframe m" with the recent frames too, aligned by odometry.

For a hypothesis *m* (a row of a keyframe table: the prebuilt map, or the robot's own past
keyframes) and an earlier query *j* of the same camera, the map position where *j* should have
been taken is predicted from m's pose and the odometry between *j* and the current query *t*::

    predicted_j = p_m + R_m R_t^T (o_j - o_t)        # p, R: map pose of m; o, R_t: odometry poses

and *j* is compared with the nearest table keyframe within ``sequence_radius_m`` of it. Variable
speed, stops, reverse driving and turns need nothing special: only the relative odometry between
the two queries matters. Without odometry (query without a pose) or without map poses (keyframe
without a pose) the prediction falls back to keyframe order: a query *j* time steps back (distinct
stamps of all cameras, so cameras taking turns keep the count) is row ``m - j``.

The sequence of a query is chosen by travelled distance, not by frame count: walking back along
the camera's recent queries, one query is kept every ``sequence_length_m / sequence_keyframes``
metres until ``sequence_length_m`` are covered (or ``sequence_keyframes`` queries are kept). The
same defaults therefore cover keyframes 1 m or 10 m apart at any speed.

A hypothesis's *sequence score* is the mean similarity of its aligned pairs; its *support* the
number of sequence queries that found a keyframe within the radius. Each query keeps its
similarity to every table row when the search computed it anyway (an exact search is one product
with the whole table; the newest queries only, :data:`TABLE_SIMS_BUDGET`); other pairs are
memoised per (query, keyframe), so a step costs at most one dot product per new pair.
"""
from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

# quaternion_matrices is re-exported from its home, qaa_vpr_ros.poses.
from qaa_vpr_ros.poses import quaternion_matrices

__all__ = ["TABLE_SIMS_BUDGET", "KeyframeTable", "QueryTrack", "SequenceScores", "TrackEntry", "pair_similarities",
           "quaternion_matrices"]

_uid = itertools.count()

TABLE_SIMS_BUDGET = 2_000_000
"""Similarities per camera track kept as whole-table rows (:attr:`TrackEntry.table_sims`; 8 MB of
float32): the newest entries keep theirs, older ones fall back to per-pair memoisation. A
1000-keyframe map keeps them for 2000 queries, a 100,000-keyframe one for the newest 20."""


class KeyframeTable:
    """Descriptors and poses of one database's keyframes, in row order, with a spatial lookup.

    The prebuilt map is filled once; the online database grows with :meth:`append`. ``path_m``
    holds, per row, the odometry path length at which the keyframe was taken (online database;
    NaN for a prebuilt map).
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._n = 0
        self._desc = np.zeros((0, dim), np.float32)
        self._pos = np.zeros((0, 3), np.float64)
        self._rot = np.zeros((0, 3, 3), np.float64)
        self._stamp = np.zeros(0, np.float64)
        self._path = np.zeros(0, np.float64)
        self._posed = np.zeros(0, bool)
        # One KD-tree per kind of lookup (all rows / a mask), each reused while it stays valid.
        self._trees: dict[bool, tuple[cKDTree, np.ndarray, int]] = {}  # (tree, its rows, table size then)

    @classmethod
    def from_map(cls, place_map) -> KeyframeTable:
        """A table of a :class:`~qaa_vpr_ros.maps.PlaceMap` (descriptors held once, as float32)."""
        table = cls(place_map.dim)
        keyframes = place_map.keyframes
        if keyframes:
            table.append(np.asarray(place_map.descriptors, np.float32),
                         np.array([kf.position for kf in keyframes], np.float64),
                         np.array([kf.orientation for kf in keyframes], np.float64),
                         np.array([kf.stamp for kf in keyframes], np.float64))
        return table

    def __len__(self) -> int:
        return self._n

    def append(self, descriptors: np.ndarray, positions: np.ndarray, orientations: np.ndarray,
               stamps: np.ndarray, path_m: np.ndarray | None = None) -> None:
        """Add rows: (N, D) descriptors, (N, 3) positions (NaN: no pose), (N, 4) quaternions, (N,) stamps."""
        n = len(descriptors)
        need = self._n + n
        if need > len(self._desc):
            cap = max(need, 2 * len(self._desc), 64)
            self._desc = _grow(self._desc, cap)
            self._pos = _grow(self._pos, cap)
            self._rot = _grow(self._rot, cap)
            self._stamp = _grow(self._stamp, cap)
            self._path = _grow(self._path, cap)
            self._posed = _grow(self._posed, cap)
        rows = slice(self._n, need)
        self._desc[rows] = descriptors
        self._pos[rows] = np.asarray(positions, np.float64).reshape(n, 3)
        self._rot[rows] = quaternion_matrices(orientations)
        self._stamp[rows] = stamps
        self._path[rows] = np.nan if path_m is None else path_m
        self._posed[rows] = np.all(np.isfinite(self._pos[rows]), axis=1)
        self._n = need

    @property
    def descriptors(self) -> np.ndarray:
        return self._desc[: self._n]

    @property
    def positions(self) -> np.ndarray:
        return self._pos[: self._n]

    @property
    def rotations(self) -> np.ndarray:
        return self._rot[: self._n]

    @property
    def stamps(self) -> np.ndarray:
        return self._stamp[: self._n]

    @property
    def path_m(self) -> np.ndarray:
        return self._path[: self._n]

    @property
    def has_pose(self) -> np.ndarray:
        return self._posed[: self._n]

    def eligible(self, before_stamp: float | None, before_path_m: float | None) -> np.ndarray:
        """Boolean mask of rows taken at or before ``before_stamp`` and ``before_path_m`` (None: no limit)."""
        mask = np.ones(self._n, bool)
        if before_stamp is not None:
            mask &= self.stamps <= before_stamp
        if before_path_m is not None:
            path = self.path_m
            mask &= np.isfinite(path) & (path <= before_path_m)
        return mask

    def lookup(self, points: np.ndarray, radius_m: float, mask: np.ndarray | None = None) -> np.ndarray:
        """Row of the nearest keyframe (with a pose, inside ``mask``) within ``radius_m`` of each
        of the (..., 3) points, -1 where there is none or the point is not finite. Exact: a cached
        KD-tree answers for the rows it holds, the rows usable since it was built are checked one
        by a small tree of their own (a growing online database), and the nearer of the two wins."""
        shape = points.shape[:-1]
        flat = points.reshape(-1, 3)
        out = np.full(len(flat), -1, np.int64)
        usable = self.has_pose if mask is None else (self.has_pose & mask)
        finite = np.all(np.isfinite(flat), axis=1)
        if not usable.any() or not finite.any():
            return out.reshape(shape)
        tree, rows, extra = self._tree_for(usable, mask is not None)
        query = flat[finite]
        dist, idx = tree.query(query, k=1, distance_upper_bound=radius_m)
        found = np.where(np.isfinite(dist), rows[np.minimum(idx, len(rows) - 1)], -1)
        if len(extra):
            # A throw-away tree of the few rows: ~10x cheaper than all query-row distances.
            extra_dist, extra_idx = cKDTree(self.positions[extra]).query(query, k=1, distance_upper_bound=radius_m)
            closer = np.isfinite(extra_dist) & (extra_dist < dist)
            found = np.where(closer, extra[np.minimum(extra_idx, len(extra) - 1)], found)
        out[finite] = found
        return out.reshape(shape)

    def _tree_for(self, usable: np.ndarray, masked: bool) -> tuple[cKDTree, np.ndarray, np.ndarray]:
        """``(tree, its rows, usable rows it lacks)``. The tree is rebuilt when it holds a row no
        longer usable or lacks more than max(64, 10 %) of them, so most steps reuse it."""
        cached = self._trees.get(masked)
        if cached is not None:
            tree, rows, built_at = cached
            if not masked and built_at == self._n:  # all rows with a pose, none added since: as built
                return tree, rows, np.zeros(0, np.int64)
            if rows[-1] < self._n and usable[rows].all():
                inside = np.zeros(self._n, bool)
                inside[rows] = True
                extra = np.flatnonzero(usable & ~inside)
                if len(extra) <= max(64, len(rows) // 10):
                    return tree, rows, extra
        rows = np.flatnonzero(usable)
        tree = cKDTree(self.positions[rows])
        self._trees[masked] = (tree, rows, self._n)
        return tree, rows, np.zeros(0, np.int64)


def _grow(array: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *array.shape[1:]), array.dtype)
    out[: len(array)] = array
    return out


@dataclass
class TrackEntry:
    """One past query of a camera: its descriptor, odometry pose (or none) and cached similarities."""

    descriptor: np.ndarray  # (D,) float32
    position: np.ndarray | None  # (3,) odometry position, or None
    rotation: np.ndarray | None  # (3, 3) odometry orientation, or None
    path_m: float  # odometry path length at this query (NaN without odometry)
    step: int = 0  # time step (distinct stamps processed so far, all cameras): the order without odometry
    uid: int = field(default_factory=lambda: next(_uid))
    sims: dict[int, float] = field(default_factory=dict)  # table row -> similarity
    # (N,) float32 similarity to table rows 0..N-1 (the table's size when the query was searched),
    # or None: from the search's own product with the whole table, so looking a pair up is free.
    table_sims: np.ndarray | None = None


@dataclass
class SequenceScores:
    """Sequence evidence of H hypotheses for one query."""

    rows: np.ndarray  # (H,) hypothesis rows
    score: np.ndarray  # (H,) mean similarity over the aligned pairs (-inf: no support)
    support: np.ndarray  # (H,) number of sequence queries with a keyframe within the radius
    length: int  # queries in the sequence (the current one included)
    sims: np.ndarray | None = None  # (H, length) similarity of each aligned pair (NaN: none)


class QueryTrack:
    """The recent queries of one camera, newest last."""

    def __init__(self, max_entries: int = 4000) -> None:
        self.entries: deque[TrackEntry] = deque(maxlen=max_entries)

    def add(self, entry: TrackEntry, keep_path_m: float, keep_entries: int) -> None:
        """Append ``entry``; forget entries further back than ``keep_path_m`` of travel (when the
        track has odometry) beyond the newest ``keep_entries``."""
        self.entries.append(entry)
        if entry.table_sims is not None:
            # Only the newest entries keep whole-table rows (TABLE_SIMS_BUDGET).
            keep = TABLE_SIMS_BUDGET // max(len(entry.table_sims), 1)
            for older in itertools.islice(reversed(self.entries), keep, None):
                if older.table_sims is None:
                    break
                older.table_sims = None
        if entry.position is not None and math.isfinite(entry.path_m):
            while (len(self.entries) > keep_entries and math.isfinite(self.entries[0].path_m)
                   and entry.path_m - self.entries[0].path_m > keep_path_m):
                self.entries.popleft()
        else:
            while len(self.entries) > keep_entries:
                self.entries.popleft()

    def sequence(self, length_m: float, keyframes: int) -> list[tuple[int, TrackEntry]]:
        """``(steps back, entry)`` of the current query's sequence, current (0) first.

        With odometry on the current query: one entry every ``length_m / keyframes`` metres of
        path, back to ``length_m``; entries without odometry end it. Without: the last ``keyframes``.
        """
        entries = self.entries
        if not entries:
            return []
        current = entries[-1]
        out = [(0, current)]
        if current.position is None or not math.isfinite(current.path_m):
            for back in range(1, min(keyframes, len(entries))):
                e = entries[-1 - back]
                out.append((max(current.step - e.step, back), e))
            return out
        # The entries nearest the target distances step, 2 step, ... back along the path.
        path = np.fromiter((e.path_m if e.position is not None else np.nan for e in entries), np.float64,
                           len(entries))[::-1]  # newest first
        back_m = current.path_m - path[1:]
        stop = np.flatnonzero(~np.isfinite(back_m) | (back_m > length_m * 1.05 + 1e-9))
        back_m = back_m[: stop[0]] if len(stop) else back_m
        if len(back_m) == 0:
            return out
        step = length_m / max(keyframes - 1, 1)
        targets = step * np.arange(1, keyframes)
        targets = targets[targets <= back_m[-1] + step / 2]
        # back_m is non-decreasing: the nearest entry to each target is at its insertion point or before.
        at = np.clip(np.searchsorted(back_m, targets), 1, len(back_m) - 1) if len(back_m) > 1 else np.zeros(
            len(targets), np.int64)
        if len(back_m) > 1:
            at = np.where(np.abs(back_m[at - 1] - targets) <= np.abs(back_m[at] - targets), at - 1, at)
        good = (np.abs(back_m[at] - targets) <= step / 2) & (back_m[at] > 0)
        chosen = np.unique(at[good])
        out.extend((max(current.step - entries[-2 - int(i)].step, int(i) + 1), entries[-2 - int(i)])
                   for i in chosen)
        return out


def predict_rows(table: KeyframeTable, hypotheses: np.ndarray, sequence: Sequence[tuple[int, TrackEntry]],
                 radius_m: float, mask: np.ndarray | None = None, poses: tuple[np.ndarray, np.ndarray] | None = None,
                 ) -> np.ndarray:
    """(H, L) table rows where each sequence query should have been taken under each hypothesis
    (-1: no keyframe within the radius, or outside ``mask``). ``poses``: (H, 3) positions and
    (H, 3, 3) rotations of the hypotheses (default: their rows' poses; a hypothesis carried
    forward by odometry sits between keyframes)."""
    h, n = len(hypotheses), len(table)
    rows = np.full((h, len(sequence)), -1, np.int64)
    if h == 0 or not sequence:
        return rows
    current = sequence[0][1]
    hyp_pos, hyp_rot = poses if poses is not None else (table.positions[hypotheses], table.rotations[hypotheses])
    hyp_pose = np.all(np.isfinite(hyp_pos), axis=1)
    with_odom = [i for i, (_, e) in enumerate(sequence) if e.position is not None]
    if current.position is not None and with_odom and hyp_pose.any():
        offsets = np.array([sequence[i][1].position for i in with_odom]) - current.position  # (L', 3)
        local = offsets @ current.rotation  # R_t^T (o_j - o_t), row vectors
        posed = hypotheses[hyp_pose]
        predicted = hyp_pos[hyp_pose][:, None, :] + np.einsum("hab,lb->hla", hyp_rot[hyp_pose], local)
        rows[np.ix_(np.flatnonzero(hyp_pose), with_odom)] = table.lookup(predicted, radius_m, mask)
        # The current query is hypothesis m itself, whatever the lookup found.
        rows[hyp_pose, 0] = posed
    fallback = ~hyp_pose if current.position is not None else np.ones(h, bool)
    if fallback.any():
        backs = np.array([b for b, _ in sequence], np.int64)
        by_order = hypotheses[fallback][:, None] - backs[None, :]
        by_order[(by_order < 0) | (by_order >= n)] = -1
        if mask is not None:
            by_order[(by_order >= 0) & ~mask[np.maximum(by_order, 0)]] = -1
        rows[fallback] = by_order
    return rows


_STACKED_MAX = 1 << 18
"""pair_similarities stacks the entries' whole-table rows (a copy) up to this many floats (1 MB)."""


def pair_similarities(descriptors: np.ndarray, entries: Sequence[TrackEntry], rows: np.ndarray) -> np.ndarray:
    """Similarity of ``entries[c]`` with table row ``rows[..., c]`` for every element of the
    (..., L) int array ``rows`` (NaN where it is -1), float64. A pair is read from the entry's
    ``table_sims`` when it covers the row; otherwise each distinct (entry, row) pair is computed
    once and memoised in the entry's ``sims``, new pairs per entry as one product of the table rows
    (sorted) with its descriptor."""
    out = np.full(rows.shape, np.nan, np.float64)
    found = rows >= 0
    if not found.any():
        return out
    columns = np.broadcast_to(np.arange(rows.shape[-1], dtype=np.int64), rows.shape)
    lengths = np.array([0 if e.table_sims is None else len(e.table_sims) for e in entries], np.int64)
    rest = found
    if lengths.any():
        looked_up = found & (rows < lengths)
        if len(entries) * int(lengths.max()) <= _STACKED_MAX:  # one gather from the stacked rows
            stacked = np.empty((len(entries), int(lengths.max())), np.float32)
            for c, entry in enumerate(entries):
                if lengths[c]:
                    stacked[c, : lengths[c]] = entry.table_sims
            out[looked_up] = stacked[columns[looked_up], rows[looked_up]]
        else:  # a large table: no copy of its rows, one gather per entry
            for c, entry in enumerate(entries):
                if lengths[c]:
                    hit = looked_up[..., c]
                    out[..., c][hit] = entry.table_sims[rows[..., c][hit]]
        rest = found & ~looked_up
    if not rest.any():
        return out
    n = len(descriptors)
    distinct, inverse = np.unique(columns[rest] * n + rows[rest], return_inverse=True)
    cols, table_rows = np.divmod(distinct, n)
    caches = [e.sims for e in entries]
    values = np.array([caches[c].get(r, math.nan) for c, r in zip(cols.tolist(), table_rows.tolist(), strict=True)],
                      np.float64)
    at = np.flatnonzero(np.isnan(values))  # not memoised yet (a similarity itself is never NaN)
    if len(at):
        # Sorted by (entry, row): each entry's new rows are one contiguous run.
        for run in np.split(at, np.flatnonzero(np.diff(cols[at])) + 1):
            c, new_rows = int(cols[run[0]]), table_rows[run]
            computed = (descriptors[new_rows] @ entries[c].descriptor).tolist()
            caches[c].update(zip(new_rows.tolist(), computed, strict=True))
            values[run] = computed
    out[rest] = values[inverse.reshape(-1)]
    return out


def score_sequence(table: KeyframeTable, hypotheses: np.ndarray, sequence: Sequence[tuple[int, TrackEntry]],
                   radius_m: float, mask: np.ndarray | None = None,
                   poses: tuple[np.ndarray, np.ndarray] | None = None) -> SequenceScores:
    """Sequence score and support of each hypothesis row (see the module docstring and :func:`predict_rows`)."""
    hypotheses = np.asarray(hypotheses, np.int64)
    rows = predict_rows(table, hypotheses, sequence, radius_m, mask, poses)
    sims = pair_similarities(table.descriptors, [e for _, e in sequence], rows)
    support = np.sum(~np.isnan(sims), axis=1)
    with np.errstate(invalid="ignore"):
        score = np.where(support > 0, np.nansum(sims, axis=1) / np.maximum(support, 1), -np.inf)
    return SequenceScores(hypotheses, score, support, len(sequence), sims)
