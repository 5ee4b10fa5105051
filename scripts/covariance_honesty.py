"""Are the covariances the node publishes honest? Per transform source (``sequence``, ``none``),
the published standard deviation per translation axis against the measured RMS error
(docs/NODE.md, "Covariance calibration").

On held-out Nordland places 1920-2399 (bundled ``models/nordland_tiny`` trained on places
0-1919 only) the summer drive is the map and the winter drive the queries, on the SLAM demo's
route (:func:`scripts.demo_slam.route`: straight runs and four turns, one place every 10 m, so the
cross-track axis has an error too). Each query is decided by the node's decision
(:func:`~qaa_vpr_ros.decision.replay.replay_map_queries`, default parameters, one query at a
time) and its records are made by the node's own code (``FramePipeline``, default
``covariance_base`` / ``covariance_sequence``, confidence widening included), then passed through
the ``~/loop_candidates`` table as a subscriber receives them. Each source is judged on a drive in
which the node publishes it and a correct match's true offset is not zero by construction:

- ``sequence``: with odometry (the ground truth, in another frame), map keyframes every 20 m and
  queries every 10 m, so half the true offsets are +-10 m along the track (as in
  ``scripts/along_track_offset.py``); the accepted matches get the along-track offset.
- ``none``: the node publishes accepted ``none`` records (identity) when the query has no
  odometry, or when the alignment cannot place it (a track neighbour of the matched keyframe
  further than ``confidence_radius_m``, 25 m, or missing: the route's ends). Without odometry the
  sequence falls back to keyframe order, which needs one query per map keyframe; on Nordland only
  queries at the keyframes' own places are then accepted in numbers (winter places between them
  give ~20 accepted records, most wrong), and there a correct match's true offset is 0 by
  construction: that drive (map and queries every 10 m, the ``make demo`` layout) is printed but
  cannot be judged. ``none`` is judged on a sparse map instead: keyframes every 30 m
  (``build_map --min-distance 30``), queries every 10 m with odometry.

Every accepted record counts, right or wrong. Error per axis = the record's ``relative_translation``
minus the true ``T_match_query`` translation, both in the matched keyframe's base frame (x along
the track, y left, z up); published sigma = sqrt of the covariance diagonal. The route is flat
(Nordland has no elevation ground truth), so z has no error by construction: it is printed but
cannot be judged. Also prints how the error scales with the decision's confidence (the
covariance is widened up to 10x as the confidence falls to ``min_confidence``).

    .venv/bin/python -m scripts.covariance_honesty [--data DIR] [--model DIR]
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scripts.nordland_route import DEFAULT_DATA, REPO, route_images

FIRST, PLACES, PLACE_M = 1920, 480, 10.0
AXES = ("x", "y", "z")
JUDGED_AXES = (0, 1)  # z: the route is flat, no error by construction
ODOM_IN_MAP = ((120.0, -40.0, 0.0), (0.0, 0.0, math.sin(0.35), math.cos(0.35)))  # odometry frame in map


@dataclass(frozen=True)
class Drive:
    """One evaluation drive: which source it judges and how it is laid out."""

    source: str  # the transform_source judged
    map_step: int  # a map keyframe every map_step places
    query_step: int  # a query every query_step places
    odometry: bool
    query_first: int = 0  # the first query's place (map keyframes start at place 0)


DRIVES = (Drive("sequence", 2, 1, True), Drive("none", 3, 1, True))
"""The judged drives, one per source."""
UNJUDGED = Drive("none", 1, 1, False)
"""Without odometry: a correct match's true offset is 0 by construction (see the module docstring)."""


def route_descriptors(data: Path, model: Path) -> dict[str, np.ndarray]:
    """{"summer", "winter"}: (PLACES, D) descriptors of places FIRST.. from ``data/<season>/``."""
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.model import load_model

    extractor = DescriptorExtractor(load_model(model), device="cpu", batch_size=64)
    return {season: extractor.extract(route_images(data, season, PLACES, FIRST), "rgb")
            for season in ("summer", "winter")}


def _place_map(descriptors: np.ndarray, places: list[int], poses: list[np.ndarray], frame: str) -> Any:
    from qaa_vpr_ros.maps import Keyframe, PlaceMap
    from qaa_vpr_ros.poses import matrix_quaternion

    place_map = PlaceMap.create(descriptors.shape[1], "fp", index_type="flat", map_frame=frame)
    keyframes = []
    for k, (place, pose) in enumerate(zip(places, poses, strict=True)):
        stamp_ns = 10**18 + place * 10**9  # 10 m/s
        keyframes.append(Keyframe(id=k, stamp_sec=stamp_ns // 10**9, stamp_nanosec=stamp_ns % 10**9, camera="cam",
                                  frame_id="cam", position=tuple(pose[:3, 3]),
                                  orientation=matrix_quaternion(pose[:3, :3])))
    place_map.add(descriptors[places], keyframes)
    return place_map


@dataclass
class Judged:
    """The accepted records of one drive with their errors."""

    drive: Drive
    queries: int
    records: list  # accepted LoopClosureRecords, as a subscriber receives them
    errors: np.ndarray  # (N, 3) translation error, matched keyframe's base frame (m)
    sigmas: np.ndarray  # (N, 3) published standard deviation (m)

    def of(self, source: str) -> Judged:
        keep = np.array([r.transform_source == source for r in self.records], bool)
        return Judged(self.drive, self.queries, [r for r, k in zip(self.records, keep, strict=True) if k],
                      self.errors[keep], self.sigmas[keep])

    @property
    def rms_error(self) -> np.ndarray:
        return np.sqrt(np.mean(self.errors ** 2, axis=0))

    @property
    def rms_sigma(self) -> np.ndarray:
        return np.sqrt(np.mean(self.sigmas ** 2, axis=0))


def judge(seasons: dict[str, np.ndarray], drive: Drive, config: Any = None) -> Judged:
    """The accepted records of ``drive`` made by the node's code (``config``: default parameters
    when None) and their errors against the route's ground truth."""
    from qaa_vpr_ros.decision import LocalizeConfig
    from qaa_vpr_ros.decision.localizer import QueryResult
    from qaa_vpr_ros.decision.record import pose_matrix, records_from_table, records_to_table
    from qaa_vpr_ros.decision.replay import map_queries, replay_map_queries
    from qaa_vpr_ros.extrinsics import ExtrinsicsSource
    from qaa_vpr_ros.pipeline import FramePipeline
    from scripts.demo_slam import route

    config = config or LocalizeConfig()
    truth = route(PLACES)
    odom_in_map = pose_matrix(*ODOM_IN_MAP)
    map_places = list(range(0, PLACES, drive.map_step))
    query_places = list(range(drive.query_first, PLACES, drive.query_step))
    reference = _place_map(seasons["summer"], map_places, [truth[p] for p in map_places], "map")
    # The winter drive's odometry: its ground truth expressed in another frame.
    drive_map = _place_map(seasons["winter"], query_places,
                           [np.linalg.inv(odom_in_map) @ truth[p] for p in query_places], "odom")
    queries, descriptors, _ = map_queries(drive_map)
    if not drive.odometry:
        queries = [type(q)(q.camera, q.stamp_sec, q.stamp_nanosec, q.frame_id, None, q.pose_frame) for q in queries]
    channels = replay_map_queries(config, reference, queries, descriptors)
    pipeline = FramePipeline(config, ExtrinsicsSource(config.base_frame, {}))  # the node's record making
    records, errors, sigmas = [], [], []
    for q, place, channel in zip(queries, query_places, channels, strict=True):
        warnings: list[str] = []
        made = [r for r in pipeline._records(QueryResult(q, map=channel), channel, warnings) if r.accepted]
        for (record,) in ([made] if made else []):
            (record,) = records_from_table(records_to_table([record]))  # what a subscriber gets
            kf = pose_matrix(record.match_position, record.match_orientation)
            true_relative = np.linalg.inv(kf) @ truth[place]
            records.append(record)
            errors.append(np.asarray(record.relative_translation) - true_relative[:3, 3])
            sigmas.append(np.sqrt(np.diag(record.covariance_matrix)[:3]))
    return Judged(drive, len(queries), records, np.array(errors).reshape(-1, 3), np.array(sigmas).reshape(-1, 3))


def ratios(judged: Judged) -> np.ndarray:
    """Published RMS sigma / measured RMS error per translation axis (NaN where no error)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(judged.rms_error > 0, judged.rms_sigma / judged.rms_error, np.nan)


def confidence_table(judged: Judged, bins: int = 3) -> list[tuple[float, float, int, float, float]]:
    """(lowest, highest confidence, records, RMS along-track error, RMS along-track sigma) of
    ``bins`` equal-count confidence bins, lowest confidence first."""
    confidence = np.array([r.confidence for r in judged.records])
    order = np.argsort(confidence, kind="stable")
    out = []
    for part in np.array_split(order, bins):
        if len(part):
            out.append((float(confidence[part].min()), float(confidence[part].max()), len(part),
                        float(np.sqrt(np.mean(judged.errors[part, 0] ** 2))),
                        float(np.sqrt(np.mean(judged.sigmas[part, 0] ** 2)))))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "nordland_tiny")
    args = parser.parse_args(argv)
    seasons = route_descriptors(args.data, args.model)
    print(f"places {FIRST}-{FIRST + PLACES - 1}: summer map, winter queries, the SLAM demo's route (four turns)")
    for drive in (*DRIVES, UNJUDGED):
        judged = judge(seasons, drive)
        own = judged.of(drive.source)
        layout = (f"map every {drive.map_step * PLACE_M:g} m, queries every {drive.query_step * PLACE_M:g} m, "
                  f"{'with' if drive.odometry else 'without'} odometry")
        print(f"\n{drive.source} ({layout}): {len(own.records)} accepted '{drive.source}' records of "
              f"{len(judged.records)} accepted, {judged.queries} queries")
        if drive is UNJUDGED:
            print(f"  not judged: RMS error {own.rms_error[0]:.2f} m (x), {own.rms_error[1]:.2f} m (y): every query "
                  f"sits at a keyframe's place; RMS published sigma {own.rms_sigma[0]:.2f} m (x)")
            continue
        for axis, name in enumerate(AXES):
            ratio = ratios(own)[axis]
            verdict = (f"ratio {ratio:.2f}" if axis in JUDGED_AXES
                       else "not judged (flat route: no error by construction)")
            print(f"  {name}: RMS error {own.rms_error[axis]:.2f} m, RMS published sigma {own.rms_sigma[axis]:.2f} m, "
                  f"{verdict}")
        for low, high, n, error, sigma in confidence_table(own):
            print(f"  confidence {low:.3f}-{high:.3f} ({n} records): x RMS error {error:.2f} m, "
                  f"RMS sigma {sigma:.2f} m")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
