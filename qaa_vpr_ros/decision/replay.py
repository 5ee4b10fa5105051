"""Offline replay of the node's decision (the same :class:`Localizer`) for calibration and tests.

A query run with ground-truth poses (a :class:`~qaa_vpr_ros.maps.PlaceMap` built from it) is fed
query by query, in stamp order, with its poses as the odometry. Each decision is then scored
against the ground truth: a match is correct when the matched keyframe lies within ``radius_m``
of the query's true position. Because the best hypothesis of each query does not depend on the
thresholds, one replay yields the whole precision-recall curve over ``min_confidence`` (matches
against a prebuilt map) or ``loop_min_confidence`` (loop closures against the robot's own past).

:func:`replay_geometry` adds the node's geometric verification (:class:`CandidateVerifier`, from
the maps' stored local features): each verified candidate is right when the query pose it gives
(the keyframe's pose composed with the relative transform through the camera extrinsics) lies
within a position and rotation tolerance of the query's true pose; one replay again yields the
whole curve over ``geometry_accept_min_inliers`` (the candidate with the most inliers is the one
the node would accept on geometry).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from qaa_vpr_ros.decision.decision import ChannelResult
from qaa_vpr_ros.decision.localizer import Localizer, Query
from qaa_vpr_ros.decision.parameters import LocalizeConfig

if TYPE_CHECKING:
    from qaa_vpr_ros.maps import Keyframe, PlaceMap
    from qaa_vpr_ros.verification import Verification

__all__ = ["Decision", "GeometryOutcome", "PRCurve", "map_queries", "pr_curve", "replay_geometry",
           "replay_loop_closures", "replay_map_queries", "replay_place_matches"]


@dataclass
class Decision:
    """The decision for one query, scored against the ground truth."""

    decidable: bool  # enough support and sequence score >= min_score: only the confidence is left
    accepted: bool  # with the configuration's own thresholds
    correct: bool  # the best hypothesis lies within radius_m of the true position
    confidence: float  # NaN when undecidable
    matched_id: int  # keyframe id of the best hypothesis (-1: none)


@dataclass
class PRCurve:
    """Precision and recall of accepted matches as the confidence threshold falls (descending)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    queries: int

    def threshold_for(self, target_precision: float) -> float | None:
        """The lowest threshold at which every threshold at or above it keeps precision >= the
        target (None: no threshold does)."""
        ok = np.flatnonzero(np.minimum.accumulate(self.precision) >= target_precision)
        return float(self.thresholds[ok[-1]]) if len(ok) else None

    def at(self, threshold: float) -> tuple[float, float, int]:
        """(precision, recall, accepted count) when accepting confidence >= ``threshold``."""
        n = int(np.sum(self.thresholds >= threshold))
        if n == 0:
            return 1.0, 0.0, 0
        return float(self.precision[n - 1]), float(self.recall[n - 1]), n


def pr_curve(decisions: list[Decision]) -> PRCurve:
    """The curve over the decidable decisions; recall is over all ``len(decisions)`` queries."""
    usable = [d for d in decisions if d.decidable and math.isfinite(d.confidence)]
    conf = np.array([d.confidence for d in usable], np.float64)
    correct = np.array([d.correct for d in usable], bool)
    order = np.argsort(-conf, kind="stable")
    tp = np.cumsum(correct[order])
    accepted = np.arange(1, len(order) + 1)
    return PRCurve(conf[order], tp / np.maximum(accepted, 1), tp / max(len(decisions), 1), len(decisions))


def map_queries(place_map: PlaceMap, stamp_offset_s: float = 0.0) -> tuple[list[Query], np.ndarray, np.ndarray]:
    """A map's keyframes as queries in stamp order (their poses as odometry, stamps shifted by
    ``stamp_offset_s``), their descriptors (N, D) float32 and true positions (N, 3)."""
    keyframes = place_map.keyframes
    order = sorted(range(len(keyframes)), key=lambda i: (keyframes[i].stamp, i))
    descriptors = np.asarray(place_map.descriptors, np.float32)[order]
    queries, truth = [], []
    for i in order:
        kf = keyframes[i]
        stamp_ns = kf.stamp_ns + round(stamp_offset_s * 1e9)
        pose = (tuple(kf.position), tuple(kf.orientation)) if kf.has_pose else None
        queries.append(Query(kf.camera, stamp_ns // 10**9, stamp_ns % 10**9, kf.frame_id, pose, place_map.map_frame))
        truth.append(kf.position)
    return queries, descriptors, np.asarray(truth, np.float64).reshape(-1, 3)


def _decision(channel: ChannelResult | None, truth: np.ndarray, radius_m: float,
              truth_of: Callable[[Keyframe], np.ndarray]) -> Decision:
    if channel is None or not channel.candidates:
        return Decision(False, False, False, math.nan, -1)
    top = channel.candidates[0]
    where = truth_of(top.keyframe)
    correct = bool(np.all(np.isfinite(where)) and np.linalg.norm(where[:2] - truth[:2]) <= radius_m)
    decidable = top.reason in ("", "confidence")
    return Decision(decidable, top.accepted, correct, top.confidence if decidable else math.nan, int(top.keyframe.id))


def replay_map_queries(config: LocalizeConfig, reference: PlaceMap, queries: list[Query], descriptors: np.ndarray,
                       dim: int | None = None) -> list[ChannelResult]:
    """The decision against the prebuilt map ``reference`` for each of ``queries`` (descriptors
    (N, D), same order), one query at a time in the given order, as the node decides a camera's
    frames when each is answered before the next arrives; online loop closure off."""
    loc = Localizer(replace(config, online_loop_closure=False), dim or reference.dim, reference.model_fingerprint,
                    prior_map=reference)
    out = []
    for q, d in zip(queries, np.asarray(descriptors, np.float32), strict=True):
        (result,) = loc.process([q], d[None])
        out.append(result.map)
    return out


def replay_place_matches(config: LocalizeConfig, reference: PlaceMap, query: PlaceMap, radius_m: float,
                         dim: int | None = None) -> list[Decision]:
    """Decide every keyframe of ``query`` (a PlaceMap; its poses are odometry and ground truth)
    against the prebuilt map ``reference`` (same frame), in stamp order."""
    queries, descriptors, truth = map_queries(query)

    def truth_of(kf: Keyframe) -> np.ndarray:
        return np.asarray(kf.position, np.float64)

    channels = replay_map_queries(config, reference, queries, descriptors, dim)
    return [_decision(channel, t, radius_m, truth_of) for channel, t in zip(channels, truth, strict=True)]


def replay_loop_closures(config: LocalizeConfig, laps: list[PlaceMap], radius_m: float) -> list[list[Decision]]:
    """Drive ``laps`` (PlaceMaps with ground-truth poses, all in one frame: the odometry) one after
    the other through the online database, the stamps of each lap shifted to follow the previous
    one; one list of decisions per lap (a closure is correct when the matched past keyframe was
    taken within ``radius_m`` of the query's true position)."""
    first = laps[0]
    loc = Localizer(replace(config, online_loop_closure=True), first.dim, first.model_fingerprint)
    truth_of_id: dict[int, np.ndarray] = {}
    out, offset, last_stamp = [], 0.0, -math.inf
    for lap in laps:
        stamps = [kf.stamp for kf in lap.keyframes]
        if stamps and min(stamps) + offset <= last_stamp:
            offset = last_stamp - min(stamps) + 1.0
        queries, descriptors, truth = map_queries(lap, offset)
        decisions = []
        for q, d, t in zip(queries, descriptors, truth, strict=True):
            (result,) = loc.process([q], d[None])
            decisions.append(_decision(result.online, t, radius_m, lambda kf: truth_of_id[int(kf.id)]))
            truth_of_id[int(result.keyframe.id)] = t
            last_stamp = q.stamp
        out.append(decisions)
    return out


@dataclass
class GeometryOutcome:
    """One candidate the node verified geometrically for one query, scored against the ground truth."""

    query_index: int  # in the query map's stamp order
    keyframe_id: int
    verification: Verification
    strong: bool  # accepted on geometry at the configuration's thresholds
    correct: bool  # the pose it gives is within the tolerances of the truth
    position_error_m: float  # NaN when the transform is not metric (essential matrix)
    rotation_error_deg: float


def replay_geometry(config: LocalizeConfig, reference: PlaceMap, query: PlaceMap, radius_m: float,
                    tolerance_m: float = 0.10, tolerance_deg: float = 5.0,
                    extrinsics: np.ndarray | None = None) -> tuple[list[Decision], list[GeometryOutcome]]:
    """Decide and verify every keyframe of ``query`` against ``reference`` as the node does (the
    :class:`Localizer`, then :class:`CandidateVerifier` on the query's stored local features with
    its camera's stored intrinsics; ``geometry_accept`` itself off so the verifications stay raw).

    A verified candidate is correct when the query pose it gives, ``T_map_keyframe * E *
    T_match_query * E^-1`` (``E``: ``extrinsics``, the base -> camera transform, default the node's
    :data:`OPTICAL_IN_BASE`), is within ``tolerance_m`` and ``tolerance_deg`` of the query's true
    pose; without a metric translation (essential matrix), when its rotation is and the keyframe
    lies within ``radius_m`` (horizontal). Returns one :class:`Decision` per query with a pose, in
    stamp order, whose ``confidence`` is the inlier count of the candidate the node would accept
    on geometry at the lowest ``geometry_accept_min_inliers`` (the most inliers among those passing
    every other ``strong`` rule; NaN and not decidable when none does) and ``accepted`` whether it
    is strong at ``config``'s thresholds; and every verified candidate's :class:`GeometryOutcome`."""
    from qaa_vpr_ros.decision.parameters import parameter_table
    from qaa_vpr_ros.decision.record import OPTICAL_IN_BASE
    from qaa_vpr_ros.decision.verifier import CandidateVerifier
    from qaa_vpr_ros.poses import pose_matrix, transform_error

    e = np.asarray(OPTICAL_IN_BASE if extrinsics is None else extrinsics, np.float64)
    e_inv = np.linalg.inv(e)
    config = replace(config, online_loop_closure=False, verify_geometry=True).validate()
    verifier = CandidateVerifier(replace(config, geometry_accept=False))
    lowest = int(next(s for s in parameter_table() if s.name == "geometry_accept_min_inliers").range[0])
    node_rule = CandidateVerifier(config)  # the node's strong(): its thresholds
    any_inliers = CandidateVerifier(replace(config, geometry_accept_min_inliers=lowest))  # the ratio rule alone
    for camera, intrinsics in query.cameras.items():
        verifier.set_intrinsics(camera, intrinsics)
    loc = Localizer(config, reference.dim, reference.model_fingerprint, prior_map=reference)
    queries, descriptors, _ = map_queries(query)
    keyframes = [query.keyframes[i] for i in sorted(range(len(query.keyframes)),  # map_queries' order
                                                    key=lambda i: (query.keyframes[i].stamp, i))]
    decisions: list[Decision] = []
    outcomes: list[GeometryOutcome] = []
    for n, (q, d, kf) in enumerate(zip(queries, descriptors, keyframes, strict=True)):
        (result,) = loc.process([q], d[None])
        verifier.verify(result, query.local_features(int(kf.id)), loc)
        if not kf.has_pose:
            continue
        truth = pose_matrix(kf.position, kf.orientation)
        passing, seen = [], set()  # passing: strong at any inlier count
        for c in (result.map.candidates + result.map.hits) if result.map is not None else []:
            if c.verification is None or int(c.keyframe.id) in seen:
                continue
            seen.add(int(c.keyframe.id))
            v, match = c.verification, c.keyframe
            position_m, rotation_deg, correct = math.nan, math.nan, False
            if match.has_pose and v.accepted:
                estimate = pose_matrix(match.position, match.orientation) @ e @ v.matrix @ e_inv
                error = transform_error(estimate, truth)
                rotation_deg = math.degrees(float(np.linalg.norm(error[3:])))
                if v.metric:
                    position_m = float(np.linalg.norm(error[:3]))
                    correct = position_m <= tolerance_m and rotation_deg <= tolerance_deg
                else:
                    near = np.linalg.norm(np.subtract(match.position[:2], kf.position[:2])) <= radius_m
                    correct = bool(near) and rotation_deg <= tolerance_deg
            outcome = GeometryOutcome(n, int(match.id), v, node_rule.strong(v), correct, position_m, rotation_deg)
            outcomes.append(outcome)
            if any_inliers.strong(v):
                passing.append(outcome)
        best = max(passing, key=lambda o: o.verification.inliers, default=None)
        if best is None:
            decisions.append(Decision(False, False, False, math.nan, -1))
        else:
            decisions.append(Decision(True, best.strong, best.correct, float(best.verification.inliers),
                                      best.keyframe_id))
    return decisions, outcomes
