"""eval_map: how well a map localizes a query run with ground-truth poses.

Queries come from a bag (its images are run through the model; poses from its pose topic) or from
a second map built with the same model. A retrieved keyframe is correct when it lies within
``--radius`` metres (horizontal) of the query. Reports Recall@K and, for accepting the top match
when its score is above a threshold, the precision-recall curve and the recall at 100 % precision:
the table users read to pick ``min_score`` for their robot.

It also replays the node's own decision (:mod:`qaa_vpr_ros.decision`: sequences aligned by the
query poses, confidence, thresholds) on the queries, in stamp order, and prints the
precision-recall curve of *accepted* place matches over ``min_confidence`` and of online loop
closures (the map's run driven first, the queries second, as one route driven twice) over
``loop_min_confidence``, for a few sequence lengths. ``--target-precision P --write-params FILE``
picks the thresholds (and sequence length) with the most recall whose 95 % lower confidence bound
of precision is >= P, raised by a margin learnt from stretches of the route and never below the
node's defaults (:mod:`qaa_vpr_ros.decision.calibration`), and writes a ROS 2 parameter file for
``localize.launch.py params_file:=FILE`` with the expected precision and its bound in its header.

Where the map and the queries have local features (and the queries camera intrinsics: camera_info
beside the image topic; ``--depth-topics`` for metric PnP), the node's geometric verification is
replayed too (:func:`qaa_vpr_ros.decision.replay.replay_geometry`): a verified candidate is right
when the query pose it gives is within ``--pose-tolerance`` of the truth; the report gives the
strong candidates right and wrong at the node's ``geometry_accept_*`` defaults, and
``--target-precision`` also picks ``geometry_accept_min_inliers`` the same conservative way.

Example::

    eval_map campus_map --query-bags run2/ --pose-topic /odom --model model/ --radius 10 -o eval/
    eval_map campus_map --query-map run2_map --target-precision 0.99 --write-params tuned.yaml
    eval_map room_map --query-bags run2/ --pose-topic /odom --model model/ --radius 1 \
        --depth-topics /camera/depth/image_raw --write-params tuned.yaml
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from qaa_vpr_ros.atomic import atomic_write_text, save_figure
from qaa_vpr_ros.bags import BagError
from qaa_vpr_ros.map_tools.ray_build import RayMissingError
from qaa_vpr_ros.maps import MapError, PlaceMap
from qaa_vpr_ros.paths import path_argument

if TYPE_CHECKING:  # the decision is imported when a replay runs (it pulls in scipy)
    from qaa_vpr_ros.decision.calibration import ThresholdChoice
    from qaa_vpr_ros.decision.replay import Decision, GeometryOutcome, PRCurve

__all__ = ["Calibration", "EvalResult", "GeometryCalibration", "calibrate", "calibrate_geometry",
           "evaluate_queries", "main"]


@dataclass
class EvalResult:
    """Recall@K and the top-1 precision-recall curve (thresholds descending)."""

    num_queries: int  # queries with a pose
    num_with_positive: int  # ... that have a map keyframe within the radius
    radius_m: float
    recall_at_k: dict[int, float]
    thresholds: np.ndarray  # (T,) score thresholds, descending
    precision: np.ndarray  # (T,)
    recall: np.ndarray  # (T,)
    recall_at_100_precision: float
    threshold_at_100_precision: float | None  # lowest threshold with precision 1 (None: none)

    def summary(self) -> dict[str, Any]:
        return {
            "num_queries": self.num_queries,
            "num_with_positive": self.num_with_positive,
            "radius_m": self.radius_m,
            "recall_at_k": {str(k): v for k, v in self.recall_at_k.items()},
            "recall_at_100_precision": self.recall_at_100_precision,
            "threshold_at_100_precision": self.threshold_at_100_precision,
        }


def evaluate_queries(
    reference: PlaceMap,
    query_descriptors: np.ndarray,
    query_positions: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    radius_m: float = 25.0,
) -> EvalResult:
    """Evaluate (M, D) query descriptors with (M, 3) ground-truth positions in the map frame.

    Queries with a non-finite position are ignored; map keyframes without a pose never count as
    correct. Recall@K and recall are over the queries that have a map keyframe within the radius.
    """
    if radius_m <= 0:
        raise ValueError(f"radius must be > 0, got {radius_m}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"K values must be >= 1, got {ks}")
    positions = np.asarray(query_positions, np.float64).reshape(-1, 3)
    valid = np.all(np.isfinite(positions[:, :2]), axis=1)
    queries = np.asarray(query_descriptors, np.float32)[valid]
    q_xy = positions[valid, :2]
    ref_xy = np.array([kf.position[:2] for kf in reference.keyframes], np.float64).reshape(-1, 2)
    ref_row_of_id = {int(i): r for r, i in enumerate(reference.ids)}

    has_positive = np.zeros(len(queries), bool)
    finite_refs = np.all(np.isfinite(ref_xy), axis=1)
    if len(queries) and finite_refs.any():
        # Nearest map keyframe of each query (exact, in float64 after centring to keep precision).
        centre = ref_xy[finite_refs].mean(axis=0)
        index = faiss.IndexFlatL2(2)
        index.add((ref_xy[finite_refs] - centre).astype(np.float32))
        nearest, _ = index.search((q_xy - centre).astype(np.float32), 1)
        has_positive = nearest[:, 0] <= radius_m**2

    k_max = min(ks[-1], max(1, len(reference)))
    result = reference.search(queries, k_max) if len(queries) else None
    correct = np.zeros((len(queries), k_max), bool)
    top1_score = np.full(len(queries), -np.inf)
    if result is not None:
        rows = np.vectorize(lambda i: ref_row_of_id.get(int(i), -1), otypes=[np.int64])(result.ids)
        retrieved_xy = np.where((rows >= 0)[..., None], ref_xy[np.maximum(rows, 0)], np.nan)
        distance = np.linalg.norm(retrieved_xy - q_xy[:, None, :], axis=2)
        correct = np.nan_to_num(distance, nan=np.inf) <= radius_m
        top1_score = result.scores[:, 0].astype(np.float64)

    denominator = max(1, int(has_positive.sum()))
    recall_at_k = {
        k: float(np.any(correct[has_positive, : min(k, k_max)], axis=1).sum() / denominator) for k in ks
    }
    # Precision-recall of "accept the top-1 match when score >= threshold".
    order = np.argsort(-top1_score, kind="stable")
    top1_correct = correct[order, 0] if len(queries) else np.zeros(0, bool)
    scores_sorted = top1_score[order]
    tp = np.cumsum(top1_correct)
    accepted = np.arange(1, len(order) + 1)
    # One point per distinct score: the last position of each run of equal scores.
    last = np.r_[scores_sorted[1:] != scores_sorted[:-1], True] if len(order) else np.zeros(0, bool)
    thresholds = scores_sorted[last]
    precision = (tp / accepted)[last]
    recall = (tp / denominator)[last]
    perfect = np.flatnonzero(precision >= 1.0)
    # Precision 1 holds on a prefix only; the last such threshold gives the highest recall.
    prefix = perfect[perfect == np.arange(len(perfect))] if len(perfect) else perfect
    r100 = float(recall[prefix[-1]]) if len(prefix) else 0.0
    t100 = float(thresholds[prefix[-1]]) if len(prefix) else None
    return EvalResult(
        num_queries=int(len(queries)), num_with_positive=int(has_positive.sum()), radius_m=float(radius_m),
        recall_at_k=recall_at_k, thresholds=thresholds, precision=precision, recall=recall,
        recall_at_100_precision=r100, threshold_at_100_precision=t100,
    )


@dataclass
class Calibration:
    """The decision replayed with one sequence length: curves and the thresholds chosen for the
    target (:func:`qaa_vpr_ros.decision.calibration.choose_threshold`)."""

    sequence_length_m: float
    matches: PRCurve  # of accepted place matches (min_confidence)
    loops: PRCurve  # of loop closures in the second lap (loop_min_confidence)
    match_choice: ThresholdChoice  # for min_confidence
    loop_choice: ThresholdChoice  # for loop_min_confidence

    @property
    def min_confidence(self) -> float:
        return self.match_choice.threshold

    @property
    def loop_min_confidence(self) -> float:
        return self.loop_choice.threshold

    def promised(self) -> dict[str, Any]:
        """Precision (with its lower bound), recall and accepted count at the chosen thresholds."""
        out: dict[str, Any] = {"sequence_length_m": self.sequence_length_m}
        for name, curve, c in (("matches", self.matches, self.match_choice),
                               ("loop_closures", self.loops, self.loop_choice)):
            out[name] = {"threshold": c.threshold, "precision": c.precision, "lower_bound": c.lower_bound,
                         "recall": c.recall, "accepted": c.accepted, "queries": curve.queries,
                         "certified": c.certified, "reachable": c.reachable, "margin": c.margin}
        return out


def calibrate(reference: PlaceMap, query: PlaceMap, radius_m: float, target_precision: float = 0.99,
              config: Any = None, lengths: Sequence[float] = (100.0, 200.0, 400.0), *, level: float = 0.95,
              folds: int = 2, allow_below_default: bool = False) -> list[Calibration]:
    """Replay the node's decision (``config``, default: the node's defaults) for each sequence
    length; thresholds for ``target_precision`` chosen conservatively (bound at ``level``, margin
    from ``folds`` stretches of the route, not below the defaults unless ``allow_below_default``;
    see :mod:`qaa_vpr_ros.decision.calibration`)."""
    from dataclasses import replace

    from qaa_vpr_ros.decision import LocalizeConfig
    from qaa_vpr_ros.decision.calibration import choose_threshold
    from qaa_vpr_ros.decision.replay import pr_curve, replay_loop_closures, replay_place_matches

    config = config or LocalizeConfig()
    options = {"level": level, "folds": folds, "allow_below_default": allow_below_default}
    out = []
    for length in lengths:
        cfg = replace(config, sequence_length_m=float(length)).validate()
        decisions = replay_place_matches(cfg, reference, query, radius_m)
        matches = pr_curve(decisions)
        first, second = replay_loop_closures(cfg, [reference, query], radius_m)
        loops = pr_curve(first + second)
        loops.recall = loops.recall * (len(first) + len(second)) / max(len(second), 1)
        loops.queries = len(second)
        out.append(Calibration(
            float(length), matches, loops,
            choose_threshold(decisions, target_precision, "min_confidence", **options),
            choose_threshold(first + second, target_precision, "loop_min_confidence",
                             recall_queries=len(second), **options)))
    return out


@dataclass
class GeometryCalibration:
    """The node's geometric verification replayed on the queries, and ``geometry_accept_min_inliers``
    chosen for the target (:func:`qaa_vpr_ros.decision.calibration.choose_threshold`)."""

    decisions: list[Decision]  # per query with a pose: the candidate it would accept on geometry
    outcomes: list[GeometryOutcome]  # every verified candidate
    choice: ThresholdChoice  # for geometry_accept_min_inliers
    tolerance_m: float
    tolerance_deg: float
    recall_queries: int
    config: Any  # the LocalizeConfig replayed (its geometry_accept_* thresholds are "the defaults")

    def report(self) -> list[str]:
        """The geometry lines of eval_map's report: strong candidates right/wrong and what the node
        would accept on geometry at the replayed configuration's thresholds (the node does where the
        sequence decision accepted nothing)."""
        cfg = self.config
        strong = [o for o in self.outcomes if o.strong]
        right = [o for o in strong if o.correct]
        accepted = [d for d in self.decisions if d.accepted]
        correct = sum(d.correct for d in accepted)
        metric = [o for o in right if math.isfinite(o.position_error_m)]
        error = (f"; right ones' median error {100 * np.median([o.position_error_m for o in metric]):.1f} cm "
                 f"{np.median([o.rotation_error_deg for o in metric]):.2f} deg" if metric else "")
        precision = f"precision {correct / len(accepted):.3f}, " if accepted else ""
        return [
            f"geometry (the node's verification of up to {cfg.verify_candidates} candidates and "
            f"{cfg.verify_candidates} search hits per query; right: the query pose it gives within "
            f"{self.tolerance_m:g} m and {self.tolerance_deg:g} deg):",
            f"  {len(self.outcomes)} candidates verified over {len(self.decisions)} queries; strong at the node's "
            f"defaults (geometry_accept_min_inliers {cfg.geometry_accept_min_inliers}, min_inlier_ratio "
            f"{cfg.geometry_accept_min_inlier_ratio:g}): {len(right)} right, {len(strong) - len(right)} wrong{error}",
            f"  accepted on geometry at the defaults: {len(accepted)} queries, {correct} right ({precision}recall "
            f"{correct / max(self.recall_queries, 1):.3f})",
        ]


def calibrate_geometry(reference: PlaceMap, query: PlaceMap, radius_m: float, target_precision: float = 0.99,
                       config: Any = None, *, tolerance_m: float = 0.10, tolerance_deg: float = 5.0,
                       level: float = 0.95, folds: int = 2, allow_below_default: bool = False,
                       recall_queries: int | None = None) -> GeometryCalibration | str:
    """Replay the node's geometric verification (``config``, default the node's defaults) and choose
    ``geometry_accept_min_inliers`` for ``target_precision`` as :func:`calibrate` chooses the other
    thresholds (the inlier ratio stays at its value in ``config``). Returns why not instead when the
    maps cannot be verified (no local features, no query intrinsics)."""
    from qaa_vpr_ros.decision import LocalizeConfig
    from qaa_vpr_ros.decision.calibration import choose_threshold
    from qaa_vpr_ros.decision.replay import replay_geometry

    if not reference.has_local_features:
        return "the map has no local features (build it without --no-local-features)"
    if not query.has_local_features:
        return "the queries have no local features"
    if not query.cameras:
        return "the queries have no camera intrinsics (a camera_info topic beside the image topic)"
    config = config or LocalizeConfig()
    decisions, outcomes = replay_geometry(config, reference, query, radius_m, tolerance_m, tolerance_deg)
    queries = len(decisions) if recall_queries is None else recall_queries
    choice = choose_threshold(decisions, target_precision, "geometry_accept_min_inliers", level=level, folds=folds,
                              allow_below_default=allow_below_default, recall_queries=queries)
    return GeometryCalibration(decisions, outcomes, choice, tolerance_m, tolerance_deg, queries, config)


def format_calibration(results: list[Calibration], target_precision: float) -> str:
    pct = f"{100 * results[0].match_choice.level:g}%" if results else "95%"
    lines = [f"decision replay (the node's code; thresholds for precision >= {target_precision:g} at the "
             f"{pct} lower bound, plus a margin from route folds):",
             "  sequence_length_m  min_confidence  precision  bound  recall  |  loop_min_confidence  precision  "
             "bound  recall"]
    for c in results:
        def cell(ch: Any) -> str:
            mark = "" if ch.certified else ("?" if ch.reachable else "!")
            return f"{ch.threshold:13.4f}{mark or ' '}  {ch.precision:9.3f}  {ch.lower_bound:5.3f}  {ch.recall:6.3f}"
        lines.append(f"  {c.sequence_length_m:17g}  {cell(c.match_choice)}  |  {cell(c.loop_choice)}")
    lines.append("  (? target not certified by the bound on this much data; ! unreachable: top of the range)")
    best = results[[c.sequence_length_m for c in results].index(200.0)] if any(
        c.sequence_length_m == 200.0 for c in results) else results[0]
    lines.append(f"  accepted place matches as min_confidence falls (sequence_length_m {best.sequence_length_m:g}):")
    lines.append("    min_confidence  precision  recall")
    curve = best.matches
    if len(curve.thresholds):
        picks = np.unique(np.linspace(0, len(curve.thresholds) - 1, min(10, len(curve.thresholds))).astype(int))
        lines += [f"    {curve.thresholds[i]:14.4f}  {curve.precision[i]:9.3f}  {curve.recall[i]:6.3f}" for i in picks]
    return "\n".join(lines)


def choose(results: list[Calibration]) -> Calibration:
    """The sequence length with the most place-match recall at the target, certified ones first
    (ties: shorter)."""
    def key(c: Calibration) -> tuple:
        m = c.match_choice
        return (m.certified, m.reachable, m.recall if m.reachable else -1.0, -c.sequence_length_m)

    return max(results, key=key)


def describe_choice(chosen: Calibration, geometry: ThresholdChoice | None = None) -> list[str]:
    """One line per tuned threshold: its value and the expected precision with its bound."""
    lines = [f"{label} {c.parameter} {c.threshold:.4f} (margin {c.margin:.4f}): {c.describe()}"
             for label, c in (("place matches:", chosen.match_choice), ("loop closures:", chosen.loop_choice))]
    if geometry is not None:
        lines.append(f"accepted on geometry: {geometry.parameter} {int(geometry.threshold)} (margin "
                     f"{geometry.margin:g}): {geometry.describe()}")
    return lines


def write_params(path: Path, chosen: Calibration, target_precision: float, source: str,
                 geometry: ThresholdChoice | None = None) -> dict[str, Any]:
    """Write the tuned parameters as a ROS 2 params file (atomically); returns them. The header
    holds the expected precision, its lower bound and recall on ``source``. ``geometry``: the
    choice of ``geometry_accept_min_inliers`` (None: not calibrated, the node's default stays)."""
    from qaa_vpr_ros.atomic import atomic_write_text
    from qaa_vpr_ros.decision.parameters import params_yaml

    values: dict[str, Any] = {"sequence_length_m": chosen.sequence_length_m,
                              "min_confidence": float(chosen.min_confidence),
                              "loop_min_confidence": float(chosen.loop_min_confidence)}
    if geometry is not None:
        values["geometry_accept_min_inliers"] = int(geometry.threshold)
    header = "\n".join(
        [f"localize_node parameters tuned by eval_map for precision >= {target_precision:g} on {source}",
         f"expected (on {source}, sequence_length_m {chosen.sequence_length_m:g}):"]
        + [f"  {line}" for line in describe_choice(chosen, geometry)]
        + ["use: ros2 launch qaa_vpr_ros localize.launch.py params_file:=THIS_FILE map:=... model:=..."])
    full = params_yaml(values, header=header)
    # Only the tuned values (the rest keep the node's defaults; launch arguments still apply).
    keep = [line for line in full.splitlines() if line.startswith("#") or line.startswith(("/**", "  ros__"))
            or line.strip().split(":")[0] in values]
    atomic_write_text(path, "\n".join(keep) + "\n")
    return values


def write_report(result: EvalResult, folder: Path, title: str) -> None:
    """summary.json, recall_at_k.csv, pr_curve.csv and pr_curve.png in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    # Each file is rendered in memory and swapped in atomically: a crash or full disk keeps the old one.
    atomic_write_text(folder / "summary.json", json.dumps(result.summary(), indent=2) + "\n")
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["k", "recall"])
    writer.writerows([k, f"{v:.6f}"] for k, v in result.recall_at_k.items())
    atomic_write_text(folder / "recall_at_k.csv", text.getvalue())
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["threshold", "precision", "recall"])
    writer.writerows(
        [f"{t:.6f}", f"{p:.6f}", f"{r:.6f}"]
        for t, p, r in zip(result.thresholds, result.precision, result.recall, strict=True)
    )
    atomic_write_text(folder / "pr_curve.csv", text.getvalue())
    fig, (ax_pr, ax_t) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    ax_pr.plot(result.recall, result.precision, "-o", markersize=2)
    ax_pr.set_xlabel("recall")
    ax_pr.set_ylabel("precision")
    ax_pr.set_xlim(0, 1.02)
    ax_pr.set_ylim(0, 1.02)
    ax_pr.grid(True, alpha=0.3)
    ax_pr.set_title(f"{title}\nR@100%P = {result.recall_at_100_precision:.3f}, radius {result.radius_m:g} m")
    ax_t.plot(result.thresholds, result.precision, label="precision")
    ax_t.plot(result.thresholds, result.recall, label="recall")
    if result.threshold_at_100_precision is not None:
        ax_t.axvline(result.threshold_at_100_precision, color="k", linestyle="--", linewidth=0.8,
                     label=f"min_score {result.threshold_at_100_precision:.3f} (precision 1)")
    ax_t.set_xlabel("score threshold (cosine similarity of the top match)")
    ax_t.set_ylim(0, 1.02)
    ax_t.grid(True, alpha=0.3)
    ax_t.legend(fontsize=8)
    ax_t.set_title("Recall@K: " + ", ".join(f"R@{k}={v:.3f}" for k, v in result.recall_at_k.items()))
    save_figure(fig, folder / "pr_curve.png")


def format_result(result: EvalResult, rows: int = 10) -> str:
    lines = [
        f"{result.num_queries} queries with a pose, {result.num_with_positive} with a map keyframe "
        f"within {result.radius_m:g} m",
        "  " + "  ".join(f"R@{k}={v:.3f}" for k, v in result.recall_at_k.items()),
        f"  recall at 100% precision: {result.recall_at_100_precision:.3f}"
        + (f" (threshold {result.threshold_at_100_precision:.4f})"
           if result.threshold_at_100_precision is not None else ""),
        "  threshold  precision  recall",
    ]
    if len(result.thresholds):
        picks = np.unique(np.linspace(0, len(result.thresholds) - 1, min(rows, len(result.thresholds))).astype(int))
        for i in picks:
            lines.append(f"  {result.thresholds[i]:9.4f}  {result.precision[i]:9.3f}  {result.recall[i]:6.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eval_map", description=__doc__.split("\n\n")[0])
    parser.add_argument("map", type=path_argument, help="reference map folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--query-bags", nargs="+", type=path_argument,
                        help="query bag(s) with a ground-truth pose topic")
    source.add_argument("--query-map", type=path_argument,
                        help="query map built with the same model (its poses are the ground truth)")
    parser.add_argument("--model", type=path_argument, help="model for --query-bags (must be the map's model)")
    parser.add_argument("--image-topics", nargs="+", default=[], help="query camera topics (default: all)")
    parser.add_argument("--depth-topics", nargs="+", default=[],
                        help="query depth topics, paired with --image-topics in order (as build_map's): metric "
                             "geometric verification of the queries")
    parser.add_argument("--pose-tolerance", nargs=2, type=float, default=[0.10, 5.0], metavar=("M", "DEG"),
                        help="a geometrically verified candidate is right when the query pose it gives is within "
                             "M metres and DEG degrees of the truth (default 0.10 5)")
    parser.add_argument("--pose-topic", help="ground-truth pose topic of the query bags")
    parser.add_argument("--min-interval", type=float, default=0.0, help="query sampling: seconds between queries")
    parser.add_argument("--min-distance", type=float, default=0.0, help="query sampling: metres between queries")
    parser.add_argument("--radius", type=float, default=25.0, help="a match within this many metres is correct")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10], help="K values for Recall@K")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("-o", "--output", type=path_argument,
                        help="folder for summary.json, recall_at_k.csv, pr_curve.csv/png")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--target-precision", type=float, default=0.99,
                        help="precision the decision thresholds are chosen for (default 0.99)")
    parser.add_argument("--write-params", type=path_argument,
                        help="write the tuned decision parameters to this ROS 2 params file")
    parser.add_argument("--confidence-level", type=float, default=0.95,
                        help="the thresholds must reach --target-precision at this one-sided Clopper-Pearson "
                             "lower bound of precision (default 0.95)")
    parser.add_argument("--folds", type=int, default=2,
                        help="contiguous stretches of the query route the threshold margin is learnt from "
                             "(default 2; 1: no fold margin)")
    parser.add_argument("--allow-below-default", action="store_true",
                        help="let the thresholds go below the node's defaults (still inside their ranges)")
    parser.add_argument("--no-decision", action="store_true", help="skip the decision replay (retrieval only)")
    from qaa_vpr_ros.map_tools.build import add_ray_arguments

    add_ray_arguments(parser)  # --ray: the query bags' descriptors computed on a Ray cluster
    args = parser.parse_args(argv)
    if not 0.0 < args.target_precision <= 1.0:
        parser.error(f"--target-precision must be in (0, 1], got {args.target_precision}")
    if not 0.0 < args.confidence_level < 1.0:
        parser.error(f"--confidence-level must be in (0, 1), got {args.confidence_level}")
    if args.folds < 1:
        parser.error(f"--folds must be >= 1, got {args.folds}")
    if args.write_params and args.no_decision:
        parser.error("--write-params needs the decision replay (drop --no-decision)")
    if args.query_bags and not (args.model and args.pose_topic):
        parser.error("--query-bags needs --model and --pose-topic")
    if args.ray and not args.query_bags:
        parser.error("--ray computes the descriptors of --query-bags; a --query-map needs none")
    if args.depth_topics and not args.query_bags:
        parser.error("--depth-topics is read from --query-bags; a --query-map has its depth already")
    if not all(v > 0 for v in args.pose_tolerance):
        parser.error(f"--pose-tolerance M DEG must be > 0, got {args.pose_tolerance}")
    try:
        with tempfile.TemporaryDirectory(prefix="eval_map-") as tmp:
            if args.query_bags:
                reference, query = _query_from_bags(args, Path(tmp))
            else:
                reference = PlaceMap.load(args.map)
                query = PlaceMap.load(args.query_map, reference.model_fingerprint)
            _check_frames(reference, query)
            positions = np.array([kf.position for kf in query.keyframes], np.float64).reshape(-1, 3)
            result = evaluate_queries(
                reference, np.asarray(query.descriptors, np.float32), positions, args.k, args.radius
            )
            calibration = None if args.no_decision else calibrate(
                reference, query, args.radius, args.target_precision, level=args.confidence_level,
                folds=args.folds, allow_below_default=args.allow_below_default)
            geometry = None if args.no_decision else calibrate_geometry(
                reference, query, args.radius, args.target_precision, tolerance_m=args.pose_tolerance[0],
                tolerance_deg=args.pose_tolerance[1], level=args.confidence_level, folds=args.folds,
                allow_below_default=args.allow_below_default, recall_queries=result.num_with_positive)
    except RayMissingError as err:
        print(f"eval_map: error: {err}", file=sys.stderr)
        return 2
    except (MapError, BagError, ValueError, OSError, RuntimeError) as err:
        print(f"eval_map: error: {err}", file=sys.stderr)
        return 1
    print(format_result(result))
    if calibration is not None:
        print(format_calibration(calibration, args.target_precision))
        chosen = choose(calibration)
        if isinstance(geometry, GeometryCalibration):
            print("\n".join(geometry.report()))
        else:
            print(f"geometry: not evaluated: {geometry}")
        geometry_choice = geometry.choice if isinstance(geometry, GeometryCalibration) else None
        print(f"  chosen: sequence_length_m {chosen.sequence_length_m:g}")
        for line in describe_choice(chosen, geometry_choice):
            print(f"    {line}")
        for c in (chosen.match_choice, chosen.loop_choice, geometry_choice):
            if c is not None and not c.certified:
                print(f"eval_map: warning: {c.parameter}: {c.describe()}", file=sys.stderr)
        if args.write_params:
            try:
                values = write_params(Path(args.write_params), chosen, args.target_precision,
                                      Path(args.query_map or args.query_bags[0]).name, geometry_choice)
            except (OSError, ValueError) as err:  # ValueError: ConfigError of a value the node would refuse
                print(f"eval_map: error: cannot write {args.write_params}: {err}", file=sys.stderr)
                return 1
            print(f"  wrote {args.write_params}: {values}")
    if args.output:
        write_report(result, Path(args.output), f"{Path(args.map).name} vs "
                     f"{', '.join(Path(b).name for b in args.query_bags) if args.query_bags else args.query_map}")
        print(f"  report: {args.output}/summary.json, pr_curve.csv, pr_curve.png")
    return 0


def _query_from_bags(args: argparse.Namespace, tmp: Path) -> tuple[PlaceMap, PlaceMap]:
    from qaa_vpr_ros.decision import LocalizeConfig
    from qaa_vpr_ros.keyframes import SelectionConfig
    from qaa_vpr_ros.local_features import FeatureConfig
    from qaa_vpr_ros.map_tools.build import (
        BuildOptions,
        ExtractorSpec,
        build_map,
        build_map_planned,
        ray_device,
        ray_pool,
    )

    spec = ExtractorSpec(str(args.model), args.device, args.batch_size)
    options = BuildOptions(  # local features as the node extracts them from its queries
        image_topics=tuple(args.image_topics), pose_topic=args.pose_topic,
        selection=SelectionConfig(args.min_interval, args.min_distance, 0.0),
        local_features=FeatureConfig(max_features=LocalizeConfig().local_features_max),
        depth_topics=tuple(args.depth_topics),
    )
    if args.ray:  # the same query map, its bags' work spread over the cluster
        with ray_pool(args) as pool:
            result = build_map_planned(args.query_bags, tmp / "query", spec, options, pool,
                                       progress=not args.no_progress, device=ray_device(args, pool),
                                       torch_threads=args.ray_cpus_per_task)
        reference = PlaceMap.load(args.map, result.map.model_fingerprint)
        return reference, result.map
    extractor = spec.load()
    reference = PlaceMap.load(args.map, extractor.fingerprint)
    result = build_map(args.query_bags, tmp / "query", extractor, options, progress=not args.no_progress)
    return reference, result.map


def _check_frames(reference: PlaceMap, query: PlaceMap) -> None:
    if reference.map_frame != query.map_frame:
        raise MapError(
            f"the query poses are in frame {query.map_frame!r}, the map in {reference.map_frame!r}; "
            "ground truth must be in the map's frame"
        )
    zones = {kf.utm_zone for kf in reference.keyframes + query.keyframes if kf.utm_zone}
    if len(zones) > 1:
        raise MapError(f"map and queries are in different UTM zones {sorted(zones)}")


def result_dict(result: EvalResult) -> dict[str, Any]:  # for scripts
    data = asdict(result)
    for key in ("thresholds", "precision", "recall"):
        data[key] = np.asarray(data[key]).tolist()
    return data


if __name__ == "__main__":
    sys.exit(main())
