"""How far the along-track offset of an accepted place match is from the truth (docs/NODE.md,
"The relative transform"), and the covariances calibrated from it.

On held-out Nordland places 2200-2359 (bundled ``models/nordland_tiny``, which never saw them) a
summer map with keyframes every 20 m (every other place) is queried by the winter drive every
10 m, so half the true offsets are +-10 m along the track. The node's decision
(:class:`~qaa_vpr_ros.decision.Localizer`, default parameters, odometry = the drive) decides each
query; for every accepted match within one keyframe of the truth that got an offset, the error of
``T_match_query`` as a subscriber receives it (the record through the ``~/loop_candidates``
table) is compared with the error of identity. Prints their RMS and
:meth:`~qaa_vpr_ros.decision.record.CovarianceModel.calibrate`'s along-track mean squares, on a
straight route and on a closed one (a circle).

    .venv/bin/python -m scripts.along_track_offset [--data DIR] [--model DIR]
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIRST, PLACES, PLACE_M = 2200, 160, 10.0
MAP_SPACING_M, QUERY_SPACING_M = 20.0, 10.0


def segment_descriptors(data: Path, model: Path) -> dict[str, np.ndarray]:
    """{"summer", "winter"}: (PLACES, D) descriptors of places FIRST.. from ``data/<season>/``."""
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.model import load_model

    extractor = DescriptorExtractor(load_model(model), device="cpu", batch_size=64)
    out = {}
    for season in ("summer", "winter"):
        paths = [data / season / f"images-{(p + 1) * 10:05d}.png" for p in range(FIRST, FIRST + PLACES)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise SystemExit(f"along_track_offset: {missing[0]} is missing (give --data)")
        out[season] = extractor.extract([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths], "rgb")
    return out


def route_map(descriptors: np.ndarray, spacing_m: float, frame: str = "map", *, closed: bool = False,
              t0: int = 0, speed_mps: float = 10.0) -> Any:
    """A PlaceMap with keyframes every ``spacing_m`` along the route (a straight line, or a circle
    when ``closed``), each with the descriptor of the Nordland place it is at (places are
    PLACE_M apart), stamped as driven at ``speed_mps``."""
    from qaa_vpr_ros.maps import Keyframe, PlaceMap

    length = PLACES * PLACE_M
    xs = np.arange(0.0, length, spacing_m)
    place_map = PlaceMap.create(descriptors.shape[1], "fp", index_type="flat", map_frame=frame)
    keyframes = []
    for k, x in enumerate(xs):
        if closed:
            a, r = 2 * math.pi * x / length, length / (2 * math.pi)
            position = (r * math.sin(a), r - r * math.cos(a), 0.0)
            orientation = (0.0, 0.0, math.sin(a / 2), math.cos(a / 2))
        else:
            position, orientation = (x, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)
        stamp_ns = t0 * 10**9 + round(x / speed_mps * 1e9)
        keyframes.append(Keyframe(id=k, stamp_sec=stamp_ns // 10**9, stamp_nanosec=stamp_ns % 10**9, camera="cam",
                                  frame_id="cam", position=position, orientation=orientation))
    place_map.add(descriptors[np.minimum((xs // PLACE_M).astype(int), PLACES - 1)], keyframes)
    return place_map


@dataclass
class Match:
    """One accepted place match within one keyframe of the truth."""

    query: Any  # the decision's Query (its pose: odometry = ground truth)
    best: Any  # the accepted Candidate
    record: Any  # its LoopClosureRecord as a subscriber receives it
    truth: np.ndarray  # true T_match_query (4x4)


def accepted_matches(reference: Any, query: Any) -> tuple[int, list[Match]]:
    """(accepted count, the accepted matches within one keyframe of the truth) when the node's
    decision (default parameters, online loop closure off) decides ``query``'s keyframes against
    ``reference``."""
    from qaa_vpr_ros.decision import LocalizeConfig
    from qaa_vpr_ros.decision.record import channel_records, pose_matrix, records_from_table, records_to_table
    from qaa_vpr_ros.decision.replay import map_queries, replay_map_queries

    queries, descriptors, _ = map_queries(query)
    channels = replay_map_queries(LocalizeConfig(), reference, queries, descriptors)
    unit = tuple(1.0 if i % 7 == 0 else 0.0 for i in range(36))  # the confidence widening plays no part
    accepted, out = 0, []
    for q, channel in zip(queries, channels, strict=True):
        best = channel.best
        if best is None:
            continue
        accepted += 1
        kf = best.keyframe
        truth = np.linalg.inv(pose_matrix(kf.position, kf.orientation)) @ pose_matrix(*q.pose)
        if np.linalg.norm(truth[:3, 3]) > PLACE_M + 1e-6:
            continue  # a wrong match (beyond the neighbouring keyframe): no offset to judge
        (record,) = [r for r in channel_records(q, channel, "map", lambda c: list(unit)) if r.accepted]
        (record,) = records_from_table(records_to_table([record]))  # what a subscriber gets
        out.append(Match(q, best, record, truth))
    return accepted, out


@dataclass
class OffsetFigures:
    accepted: int  # accepted matches
    with_offset: int  # of them: within one keyframe of the truth, with an along-track offset
    rms_m: dict[str, float]  # translation error RMS: "sequence" (the offset), "none" (identity)
    calibrated: Any  # CovarianceModel calibrated from those errors


def offset_figures(accepted: int, matches: list[Match]) -> OffsetFigures:
    from qaa_vpr_ros.decision.record import CovarianceModel, transform_error

    errors: dict[str, list[np.ndarray]] = {"sequence": [], "none": []}
    for m in matches:
        if m.record.transform_source == "sequence":
            errors["sequence"].append(transform_error(m.record.relative_matrix, m.truth))
            errors["none"].append(transform_error(np.eye(4), m.truth))
    rms = {k: float(np.sqrt(np.mean(np.sum(np.array(v)[:, :3] ** 2, axis=1)))) for k, v in errors.items()}
    model = CovarianceModel().calibrate({k: np.array(v) for k, v in errors.items()})
    return OffsetFigures(accepted, len(errors["sequence"]), rms, model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "nordland_heldout")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "nordland_tiny")
    args = parser.parse_args(argv)
    seasons = segment_descriptors(args.data, args.model)
    print(f"places {FIRST}-{FIRST + PLACES - 1}: summer map every {MAP_SPACING_M:g} m, winter queries every "
          f"{QUERY_SPACING_M:g} m")
    for name, closed in (("straight", False), ("closed", True)):
        reference = route_map(seasons["summer"], MAP_SPACING_M, closed=closed)
        query = route_map(seasons["winter"], QUERY_SPACING_M, closed=closed)
        f = offset_figures(*accepted_matches(reference, query))
        print(f"{name}: offset error RMS {f.rms_m['sequence']:.1f} m vs identity {f.rms_m['none']:.1f} m "
              f"({f.with_offset} of {f.accepted} accepted matches); calibrated along-track variance "
              f"{f.calibrated.sequence[0]:.1f} m^2 (sequence) / {f.calibrated.none[0]:.1f} m^2 (none), "
              f"ratio {f.calibrated.sequence[0] / f.calibrated.none[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
