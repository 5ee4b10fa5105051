"""Choosing a decision threshold from a replay, conservatively (``eval_map --target-precision``).

For a target precision P, the threshold written for ``min_confidence`` (or ``loop_min_confidence``)
is chosen as follows; every figure is over the replayed decisions (:mod:`qaa_vpr_ros.decision.replay`).

1. **In range, not below the default.** Candidates lie inside the parameter's range (the parameter
   table) and, unless ``allow_below_default``, not below its shipped default: a threshold below the
   range cannot be loaded by the node, and the lowest thresholds that looked right on one route
   lost precision on another (0.906 at 0.0 where the default 0.05 kept 0.990).
2. **A lower confidence bound, not the point estimate.** With ``n`` matches accepted at a threshold
   (confidence >= it), ``k`` of them correct, the one-sided Clopper-Pearson bound at ``level``
   (default 95 %) is the lowest precision still consistent with k of n: ``beta.ppf(1 - level, k,
   n - k + 1)``. It is exact (never optimistic) and needs no large-sample approximation, which
   matters at the top of the curve where n is small. With no wrong match it is ``(1 - level) ** (1/n)``:
   precision 0.99 at 95 % needs about 300 correct accepted matches.
3. **A margin learnt by splitting the route.** The decisions (stamp order) are split into ``folds``
   contiguous stretches of route (decisions along a route share their sequences, so a random split
   would put near-copies on both sides). For each stretch, the threshold chosen on the others (the
   lowest at which their point precision is >= P) is applied to it; if its precision there is
   below P, the threshold is raised until it is not. The largest such rise over the stretches is
   how far a threshold chosen on one stretch of route falls short on another (as the lowest
   in-range threshold did between two routes). The margin is that rise plus :data:`FLOAT16_MARGIN`.
   (A margin in precision, added to P, would exceed 1 as soon as one stretch holds a single wrong
   match at P = 0.99; in confidence units it costs recall instead.)
4. The written threshold is the lowest candidate ``t`` whose bound is >= P at ``t`` and still at
   ``t + margin`` (clamped to the range), plus the margin. When no candidate certifies P, the
   written threshold is the one with the highest bound among those whose point precision is >= P
   (``certified`` False: more calibration data is needed to promise P); when none reaches P even
   as a point estimate, the top of the range (nothing is accepted; ``reachable`` False).
5. **Integer parameters** (``geometry_accept_min_inliers``, whose "confidence" is a verification's
   inlier count): the margin is the fold shift alone (no :data:`FLOAT16_MARGIN`: inliers are
   counted, not computed from float16 descriptors) and the written threshold is rounded up to a
   whole number, so a candidate is accepted exactly when its inliers reach it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qaa_vpr_ros.decision.parameters import parameter_table

__all__ = ["FLOAT16_MARGIN", "ThresholdChoice", "choose_threshold", "fold_shift", "precision_lower_bound"]

FLOAT16_MARGIN = 0.005
"""Part of every margin: descriptors the node computes from images differ from a map's float16 ones
by ~1e-3, so a threshold right at the edge of the calibration data could flip."""


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold written for one parameter and what it gives on the calibration data."""

    parameter: str  # "min_confidence" | "loop_min_confidence" | "geometry_accept_min_inliers"
    threshold: float  # the value written (inside the parameter's range)
    target: float  # the target precision P
    level: float  # confidence level of the bound
    certified: bool  # the bound reaches P at the threshold
    reachable: bool  # some threshold reaches P at least as a point estimate
    precision: float  # point estimate at the threshold (NaN: nothing accepted)
    lower_bound: float  # Clopper-Pearson lower bound of precision at the threshold (0: nothing accepted)
    recall: float
    accepted: int
    correct: int
    margin: float  # added to the base threshold (fold shift + FLOAT16_MARGIN)
    floor: float  # lowest threshold considered (the default, or the range's low end with the flag)

    def describe(self) -> str:
        """``precision 0.998 (95% lower bound 0.991) at recall 0.921`` and, when P is not promised, why."""
        pct = f"{100 * self.level:g}%"
        text = (f"precision {self.precision:.3f} ({pct} lower bound {self.lower_bound:.3f}) at recall "
                f"{self.recall:.3f}" if self.accepted else "nothing accepted (recall 0.000)")
        if not self.reachable:
            return (f"{text}: precision >= {self.target:g} unreachable on this data, "
                    f"{self.parameter} set to the top of its range")
        if not self.certified:
            needed = math.ceil(math.log(1.0 - self.level) / math.log(self.target)) if self.target < 1 else math.inf
            return (f"{text}: precision >= {self.target:g} NOT certified ({pct} lower bound below it; "
                    f"about {needed} correct accepted matches without a wrong one would be needed)")
        return text


def precision_lower_bound(correct: int | np.ndarray, accepted: int | np.ndarray, level: float = 0.95) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound of precision (``correct`` of ``accepted``) at ``level``;
    0 where nothing is accepted."""
    from scipy.stats import beta

    k = np.asarray(correct, np.float64)
    n = np.asarray(accepted, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = beta.ppf(1.0 - level, np.maximum(k, 1e-300), np.maximum(n - k + 1.0, 1e-300))
    return np.where((k > 0) & (n > 0), np.nan_to_num(bound, nan=0.0), 0.0)


def _usable(decisions: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and correctness of the decidable decisions, in the given order."""
    usable = [d for d in decisions if d.decidable and math.isfinite(d.confidence)]
    return (np.array([d.confidence for d in usable], np.float64).reshape(-1),
            np.array([d.correct for d in usable], bool).reshape(-1))


def _counts(conf: np.ndarray, correct: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(accepted, correct) counts when accepting confidence >= each threshold."""
    order = np.sort(conf)
    n = len(conf) - np.searchsorted(order, thresholds, side="left")
    right = np.sort(conf[correct])
    k = len(right) - np.searchsorted(right, thresholds, side="left")
    return n.astype(np.int64), k.astype(np.int64)


def _lowest_reaching(conf: np.ndarray, correct: np.ndarray, target: float, floor: float) -> float | None:
    """The lowest threshold >= floor whose accepted matches have point precision >= target (None: none)."""
    candidates = np.unique(np.r_[floor, conf[conf >= floor]])
    n, k = _counts(conf, correct, candidates)
    reach = np.flatnonzero((n > 0) & (k >= target * n))
    return float(candidates[reach[0]]) if len(reach) else None


def fold_shift(decisions: Sequence, target: float, floor: float, folds: int = 2) -> float:
    """How far (confidence units, >= 0) the threshold chosen on all stretches of the route but one
    must rise for the remaining stretch to keep point precision >= ``target`` at it; the largest over
    the ``folds`` contiguous stretches of ``decisions`` (in their order)."""
    if folds < 2 or len(decisions) < folds:
        return 0.0
    shift = 0.0
    parts = np.array_split(np.arange(len(decisions)), folds)
    for i, part in enumerate(parts):
        chosen = _lowest_reaching(*_usable([decisions[j] for p, other in enumerate(parts) if p != i
                                            for j in other]), target, floor)
        if chosen is None:
            continue  # those stretches reach the target nowhere: nothing to carry over
        conf, correct = _usable([decisions[j] for j in part])
        above = conf[conf > chosen]
        candidates = np.r_[chosen, np.unique(above), np.nextafter(above.max(), np.inf) if len(above) else chosen]
        n, k = _counts(conf, correct, candidates)
        holds = np.flatnonzero((n == 0) | (k >= target * n))  # ascending; the last one always holds
        shift = max(shift, float(candidates[holds[0]]) - chosen)
    return shift


def choose_threshold(decisions: Sequence, target: float, parameter: str, *, level: float = 0.95,
                     folds: int = 2, allow_below_default: bool = False,
                     recall_queries: int | None = None) -> ThresholdChoice:
    """The threshold for ``parameter`` from replayed ``decisions`` (in stamp order), chosen as the
    module docstring says; recall is over ``recall_queries`` (default: every decision)."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    spec = {s.name: s for s in parameter_table()}[parameter]
    lo, hi = (float(v) for v in spec.range)
    floor = lo if allow_below_default else max(lo, float(spec.default))
    queries = max(len(decisions) if recall_queries is None else recall_queries, 1)
    conf, correct = _usable(decisions)
    integer = spec.type == "int"
    margin = min(fold_shift(decisions, target, floor, folds) + (0.0 if integer else FLOAT16_MARGIN), hi - floor)

    base = np.unique(np.r_[floor, conf[(conf >= floor) & (conf <= hi)]])  # ascending
    # Written rounded up (a threshold only ever rises by it): to a whole number for an integer
    # parameter, else to 4 decimals.
    scale = 1.0 if integer else 1e4
    written = np.minimum(np.ceil(np.round((base + margin) * scale, 6)) / scale, hi)
    n_base, k_base = _counts(conf, correct, base)
    n, k = _counts(conf, correct, written)
    bound = precision_lower_bound(k, n, level)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    certified = (precision_lower_bound(k_base, n_base, level) >= target) & (bound >= target)
    reachable = (n > 0) & (precision >= target)
    if certified.any():
        i = int(np.flatnonzero(certified)[0])
    elif reachable.any():
        i = int(np.flatnonzero(reachable)[np.argmax(bound[reachable])])  # first of the highest
    else:
        n_hi, k_hi = _counts(conf, correct, np.array([hi]))
        return ThresholdChoice(parameter, hi, target, level, False, False,
                               float(k_hi[0] / n_hi[0]) if n_hi[0] else math.nan,
                               float(precision_lower_bound(k_hi, n_hi, level)[0]), float(k_hi[0] / queries),
                               int(n_hi[0]), int(k_hi[0]), margin, floor)
    return ThresholdChoice(parameter, float(written[i]), target, level, bool(certified[i]), True,
                           float(precision[i]), float(bound[i]), float(k[i] / queries), int(n[i]), int(k[i]),
                           margin, floor)
