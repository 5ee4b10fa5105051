"""The accept decision for one database: hypotheses, sequence evidence, confidence, covariance.

For each query of a camera, :class:`SequenceMatcher`

1. gathers *hypotheses* "this frame is keyframe m": the query's ``top_k`` search hits plus the
   previous query's best hypotheses carried forward by the odometry between the two queries
   (so a place whose single frame ranks poorly now stays in the running);
2. scores each with the sequence evidence of :mod:`qaa_vpr_ros.decision.sequence` (mean
   similarity of the camera's recent queries at the map places the hypothesis predicts);
3. computes the *confidence* of each hypothesis: its sequence score minus the best sequence score
   of the hypotheses outside its neighbourhood (further than ``confidence_radius_m``, or, without
   positions, more than ``confidence_frames`` rows away). A place that only looks like the query
   has look-alikes elsewhere that score about as well: its margin is small. The others are scored
   on the same evidence: over the sequence queries the hypothesis itself found a keyframe for.
   A hypothesis whose sequence runs off the database (its start, a gap, the robot's own recent
   past) is scored on fewer queries, so its mean varies more; comparing it with full-length
   means of the others would inflate its margin;
4. accepts the best hypothesis when its support (sequence queries with a keyframe within
   ``sequence_radius_m``) is >= ``sequence_min_support``, its sequence score >= ``min_score``
   (a floor) and its confidence >= ``min_confidence``.

Each camera keeps its own sequence: two cameras seeing one look-alike at the same instant do not
add up, and a camera's sequence only grows with time steps it was processed at.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qaa_vpr_ros.decision.parameters import LocalizeConfig
from qaa_vpr_ros.decision.sequence import (
    KeyframeTable,
    QueryTrack,
    TrackEntry,
    pair_similarities,
    score_sequence,
)
from qaa_vpr_ros.poses import Pose, quaternion_matrices

if TYPE_CHECKING:
    from qaa_vpr_ros.maps.place_map import Keyframe

OFFSET_STEPS = np.linspace(-1.0, 1.0, 9)
"""Shifts tried by :meth:`SequenceMatcher.along_track_offset`, in keyframe spacings (quarters)."""

__all__ = ["OFFSET_STEPS", "Candidate", "ChannelResult", "Hypotheses", "SequenceMatcher"]


@dataclass
class Candidate:
    """A database keyframe hypothesised for a query, best sequence score first (rank 0)."""

    keyframe: Keyframe
    score: float  # single-frame similarity of the query and this keyframe
    rank: int
    accepted: bool = False
    reason: str = ""  # why not accepted: "support" | "score" | "confidence" | "not best"
    sequence_score: float = math.nan  # mean similarity along the odometry-aligned sequence
    support: int = 0  # sequence queries with a keyframe within sequence_radius_m
    confidence: float = math.nan  # sequence_score minus the best sequence score elsewhere
    # (4, 4) T_match_query from the sequence alignment's along-track offset (accepted best with
    # odometry only; None: not estimated, the record keeps the identity)
    offset: np.ndarray | None = None
    # The geometric verification of this candidate (qaa_vpr_ros.verification.Verification), when it ran.
    verification: Any = None


@dataclass
class ChannelResult:
    """The decision for one query against one database (``source`` "map" or "online")."""

    source: str
    map_frame: str
    candidates: list[Candidate]
    # The query's best search hits by descriptor similarity that are not candidates already (the
    # decision spreads its candidates over places; geometric verification looks at the nearest
    # keyframes themselves). One that geometry accepts joins ``candidates``.
    hits: list[Candidate] = field(default_factory=list)

    @property
    def best(self) -> Candidate | None:
        """The accepted candidate, or None."""
        return next((c for c in self.candidates if c.accepted), None)


@dataclass
class Hypotheses:
    """The decision's numbers for one query, best sequence score first (rows of the table)."""

    rows: np.ndarray  # (H,)
    frame_score: np.ndarray  # (H,) single-frame similarity
    sequence_score: np.ndarray  # (H,)
    support: np.ndarray  # (H,)
    confidence: np.ndarray  # (H,)
    accepted: bool  # rows[0] accepted
    reason: str  # why rows[0] was not accepted ("" when accepted)
    offset: np.ndarray | None = None  # (4, 4) T_match_query of rows[0] (see SequenceMatcher.along_track_offset)


class SequenceMatcher:
    """Decides query by query against one :class:`KeyframeTable`; keeps one track per camera.

    Not thread-safe (the node calls it from its inference thread).
    """

    def __init__(self, config: LocalizeConfig, table: KeyframeTable, online: bool = False) -> None:
        self.config = config
        self.table = table
        self.online = online  # loop closures against the robot's own past: loop_min_confidence
        self._tracks: dict[str, QueryTrack] = {}
        self._previous: dict[str, tuple[TrackEntry, np.ndarray, np.ndarray, np.ndarray]] = {}

    def set_config(self, config: LocalizeConfig) -> None:
        self.config = config

    def reset(self) -> None:
        self._tracks.clear()
        self._previous.clear()

    def decide(self, camera: str, descriptor: np.ndarray, pose: Pose | None, path_m: float,
               search_rows: Sequence[int], mask: np.ndarray | None = None,
               rival_rows: Sequence[int] = (), step: int = 0, table_sims: np.ndarray | None = None) -> Hypotheses:
        """Decide one query (descriptor (D,) float32, odometry ``pose`` or None, odometry path
        length ``path_m``) given its search hits (table rows, best first). ``mask``: the table
        rows that may be matched at all (online database: old enough), None for all.
        ``step``: the query's time step (see :class:`TrackEntry`). ``table_sims``: the query's
        similarity to every table row when the search computed it (exact search), else None.
        ``rival_rows``: rows outside ``mask`` that can never be matched but whose sequence score
        still counts as "elsewhere" for the confidence (online: the robot's own recent past, so
        that a scene that repeats itself while driving, a train stopped at a station, is no loop)."""
        cfg = self.config
        position = rotation = None
        if pose is not None and all(math.isfinite(v) for v in pose[0]):
            position = np.asarray(pose[0], np.float64)
            rotation = quaternion_matrices(np.asarray(pose[1], np.float64))[0]
        entry = TrackEntry(np.asarray(descriptor, np.float32), position, rotation,
                           path_m if position is not None else math.nan, step=step, table_sims=table_sims)
        track = self._tracks.setdefault(camera, QueryTrack())
        track.add(entry, keep_path_m=2.0 * cfg.sequence_length_m, keep_entries=cfg.sequence_keyframes)
        sequence = track.sequence(cfg.sequence_length_m, cfg.sequence_keyframes)

        table = self.table
        hyp: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # row -> (position, rotation) of the hypothesis
        previous = self._previous.get(camera)
        carried = self._carry_forward(previous, entry, mask) if previous is not None else {}
        for r in self._spread(search_rows, mask):
            hyp[r] = carried.pop(r, (table.positions[r], table.rotations[r]))
        hyp.update(carried)
        rows = np.fromiter(hyp.keys(), np.int64, len(hyp))
        positions = np.array([p for p, _ in hyp.values()], np.float64).reshape(-1, 3)
        rotations = np.array([r for _, r in hyp.values()], np.float64).reshape(-1, 3, 3)
        scores = score_sequence(table, rows, sequence, cfg.sequence_radius_m, mask, (positions, rotations))
        # Decidable hypotheses (enough support) first, each group by sequence score.
        order = np.lexsort((-scores.score, scores.support < cfg.sequence_min_support))
        rows, seq_score, support = rows[order], scores.score[order], scores.support[order]
        pair_sims = scores.sims[order]
        keep = order[: max(cfg.top_k, 1)]
        self._previous[camera] = (entry, rows[: len(keep)], positions[keep], rotations[keep])
        valid = support >= cfg.sequence_min_support
        rival_sims = np.zeros((0, len(sequence)))
        if len(rival_rows) and len(rows):  # rivals only lower the confidence of some hypothesis
            rivals = score_sequence(table, np.asarray(list(dict.fromkeys(int(r) for r in rival_rows)), np.int64),
                                    sequence, cfg.sequence_radius_m)
            rival_sims = rivals.sims[rivals.support >= cfg.sequence_min_support]
        confidence = self._confidence(rows, np.where(valid, seq_score, -np.inf), pair_sims, rival_sims)
        frame = pair_similarities(self.table.descriptors, [entry], rows[:, None])[:, 0]

        reason = ""
        if len(rows) == 0:
            reason = "support"
        elif not valid[0]:
            reason = "support"
        elif seq_score[0] < cfg.min_score:
            reason = "score"
        elif not confidence[0] >= (cfg.loop_min_confidence if self.online else cfg.min_confidence):
            reason = "confidence"
        offset = None
        if not reason and len(rows) and position is not None:
            offset = self.along_track_offset(int(rows[0]), sequence, mask)
        return Hypotheses(rows, frame, seq_score, support, confidence, accepted=not reason and len(rows) > 0,
                          reason=reason, offset=offset)

    def along_track_offset(self, row: int, sequence: Sequence[tuple[int, TrackEntry]],
                           mask: np.ndarray | None = None) -> np.ndarray | None:
        """``T_match_query`` (4, 4) of a match with keyframe ``row``: where along the keyframes'
        track the query lies, between keyframes. Needs odometry on the current query.

        The match's pose is shifted along the track by ``u`` of the way towards the neighbouring
        keyframe (row ``row + 1`` for u > 0, ``row - 1`` for u < 0; u in :data:`OFFSET_STEPS`) and
        the sequence re-aligned by odometry from each shifted pose. Each sequence query's predicted
        position falls between two consecutive keyframes (the nearest and its track neighbour on
        that side); its similarity is interpolated linearly between theirs, so the score varies
        smoothly with ``u`` even when keyframes are further apart than queries. The query lies at
        the shift of highest mean similarity (the middle of the best shifts when several tie).
        Rotation: identity. None (identity, source "none") when a neighbour is missing, has no
        pose, lies outside ``mask``, is further than ``confidence_radius_m`` or at the same place
        (another camera).
        """
        table, cfg = self.table, self.config
        current = sequence[0][1] if sequence else None
        if current is None or current.position is None or not 0 < row < len(table) - 1:
            return None
        rows = np.arange(row - 1, row + 2)
        if not table.has_pose[rows].all() or (mask is not None and not mask[rows].all()):
            return None
        pos = table.positions[rows]
        steps = np.linalg.norm(pos[[0, 2]] - pos[1], axis=1)
        if not np.all((steps > 1e-6) & (steps <= cfg.confidence_radius_m)):
            return None
        u = OFFSET_STEPS
        targets = pos[1] + np.abs(u)[:, None] * np.where(u[:, None] > 0, pos[2] - pos[1], pos[0] - pos[1])
        entries = [e for _, e in sequence if e.position is not None]
        local = (np.array([e.position for e in entries]) - current.position) @ current.rotation  # (L, 3)
        predicted = targets[:, None, :] + local @ table.rotations[row].T  # (K, L, 3)
        near = table.lookup(predicted, cfg.sequence_radius_m, mask)  # (K, L)
        # The track neighbour of each nearest keyframe on the predicted point's side, and how far
        # along the segment towards it the point lies (0: at the nearest keyframe).
        n = len(table)
        safe = np.maximum(near, 0)
        best_w = np.zeros(near.shape)
        other = safe.copy()
        for side in (-1, 1):
            nb = np.clip(safe + side, 0, n - 1)
            seg = table.positions[nb] - table.positions[safe]
            length2 = np.sum(seg * seg, axis=-1)
            ok = (near >= 0) & (nb != safe) & table.has_pose[nb] & (length2 > 1e-12)
            ok &= length2 <= cfg.confidence_radius_m ** 2
            if mask is not None:
                ok &= mask[nb]
            with np.errstate(invalid="ignore", divide="ignore"):
                w = np.sum((predicted - table.positions[safe]) * seg, axis=-1) / length2
            w = np.where(ok, np.clip(np.nan_to_num(w), 0.0, 1.0), 0.0)
            better = w > best_w
            best_w = np.where(better, w, best_w)
            other = np.where(better, nb, other)
        found = near >= 0
        ends = pair_similarities(table.descriptors, entries, np.where(found, np.stack([safe, other]), -1))
        sims = np.where(found, (1.0 - best_w) * ends[0] + best_w * ends[1], np.nan)
        support = np.sum(np.isfinite(sims), axis=1)
        if not support.any():
            return None
        with np.errstate(invalid="ignore"):
            scores = np.where(support > 0, np.nansum(sims, axis=1) / np.maximum(support, 1), -np.inf)
        best = np.flatnonzero(scores >= np.max(scores) - 1e-9)
        target = targets[best].mean(axis=0)
        out = np.eye(4)
        out[:3, 3] = table.rotations[row].T @ (target - pos[1])  # in the matched keyframe's base frame
        return out

    def _spread(self, search_rows: Sequence[int], mask: np.ndarray | None) -> list[int]:
        """Up to ``top_k`` search hits, best first, each outside the others' neighbourhoods
        (``confidence_radius_m`` / ``confidence_frames``): near-duplicate neighbours of one
        place would otherwise crowd out the places the confidence compares against."""
        table, cfg = self.table, self.config
        rows = np.asarray(search_rows, np.int64)
        rows = rows[rows >= 0]
        if mask is not None:
            rows = rows[mask[rows]]
        if len(rows) == 0:
            return []
        pos = table.positions[rows]
        posed = table.has_pose[rows]
        clash = np.abs(rows[:, None] - rows[None, :]) <= cfg.confidence_frames
        both = posed[:, None] & posed[None, :]
        if both.any():
            dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=2)
            clash = np.where(both, dist <= cfg.confidence_radius_m, clash)
        kept: list[int] = []
        free = np.ones(len(rows), bool)
        for i in range(len(rows)):
            if free[i]:
                kept.append(int(rows[i]))
                if len(kept) >= cfg.top_k:
                    break
                free &= ~clash[i]
        return kept

    def _carry_forward(self, previous: tuple[TrackEntry, np.ndarray, np.ndarray, np.ndarray], entry: TrackEntry,
                       mask: np.ndarray | None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The previous query's best hypotheses moved by the odometry between the two queries:
        ``{row: (position, rotation)}`` with the continuous pose (it may lie between keyframes;
        ``row`` is the nearest keyframe). Without poses: the next row."""
        before, rows, positions, rotations = previous
        steps = max(entry.step - before.step, 1)  # without odometry: rows advance with time steps
        table = self.table
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        posed = np.all(np.isfinite(positions), axis=1)
        if before.position is not None and entry.position is not None and posed.any():
            local = (entry.position - before.position) @ before.rotation  # R_prev^T (o_t - o_prev)
            turn = before.rotation.T @ entry.rotation
            moved = positions[posed] + rotations[posed] @ local
            turned = rotations[posed] @ turn
            found = table.lookup(moved, self.config.sequence_radius_m, mask)
            for r, p, rot in zip(found, moved, turned, strict=True):
                if r >= 0 and int(r) not in out:
                    out[int(r)] = (p, rot)
            unposed = rows[~posed]
        else:
            unposed = rows
        for r in unposed:
            nxt = int(r) + steps
            if nxt < len(table) and (mask is None or mask[nxt]) and nxt not in out:
                out[nxt] = (table.positions[nxt], table.rotations[nxt])
        return out

    def _confidence(self, rows: np.ndarray, seq_score: np.ndarray, sims: np.ndarray,
                    rival_sims: np.ndarray | None = None) -> np.ndarray:
        """Per hypothesis *i*: its score minus the best score of the hypotheses outside its
        neighbourhood and of the rivals, each scored over the sequence queries *i* found a pair for
        (``sims``: (H, L) pair similarities, NaN: none; ``rival_sims``: (R, L) of the supported
        rivals). Another hypothesis counts when it has at least ``min(sequence_min_support, |i's
        pairs|)`` pairs there, so with full support this is each one's own sequence score.
        -inf scores are unsupported; a hypothesis with nothing elsewhere gets NaN: undecidable."""
        h = len(rows)
        if h == 0:
            return np.zeros(0)
        cfg = self.config
        pos = self.table.positions[rows]
        posed = np.all(np.isfinite(pos), axis=1)
        far = np.abs(rows[:, None] - rows[None, :]) > cfg.confidence_frames
        both = posed[:, None] & posed[None, :]
        if both.any():
            dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=2)
            far = np.where(both, dist > cfg.confidence_radius_m, far)
        others = _restricted_best(sims, np.where(far & np.isfinite(seq_score)[None, :], 0.0, -np.inf),
                                  cfg.sequence_min_support)
        if rival_sims is not None and len(rival_sims):
            others = np.maximum(others, _restricted_best(sims, np.zeros((h, len(rival_sims))), cfg.sequence_min_support,
                                                         rival_sims))
        with np.errstate(invalid="ignore"):
            conf = seq_score - others
        conf[~np.isfinite(others) | ~np.isfinite(seq_score)] = np.nan
        return conf


def _restricted_best(sims: np.ndarray, allowed: np.ndarray, min_support: int,
                     other_sims: np.ndarray | None = None) -> np.ndarray:
    """(H,) for each hypothesis *i*: the best mean similarity of another sequence (rows of
    ``other_sims``, default ``sims`` itself) over the columns where ``sims[i]`` has a pair, among
    those with ``allowed[i, j]`` == 0 (-inf: not allowed) and at least ``min(min_support, |i's
    pairs|)`` pairs there; -inf when none."""
    other = sims if other_sims is None else other_sims
    mine = ~np.isnan(sims)  # (H, L)
    theirs = ~np.isnan(other)  # (O, L)
    count = mine.astype(np.float64) @ theirs.T.astype(np.float64)  # (H, O): j's pairs among i's columns
    total = mine.astype(np.float64) @ np.nan_to_num(other, nan=0.0).T  # (H, O)
    need = np.minimum(mine.sum(axis=1), min_support)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where((count >= need) & (count > 0), total / np.maximum(count, 1.0), -np.inf) + allowed
    return mean.max(axis=1) if mean.shape[1] else np.full(len(sims), -np.inf)

