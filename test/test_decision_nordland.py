"""The default decision parameters on real held-out data (Nordland places the bundled model never saw).

Descriptors come from ``models/nordland_tiny`` (trained on places 0-1919); the segment is places
2200-2359. The summer images make the map, the winter images the queries (or the second lap).
Keyframe spacing and speed vary: each map keyframe / query at position x (metres along the
route) shows the Nordland place at x (places are ~10 m apart), so a 2 m map holds five
keyframes per place and a 20 m/s drive queries every other place.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qaa_vpr_ros.decision import LocalizeConfig
from qaa_vpr_ros.decision.replay import pr_curve, replay_loop_closures, replay_place_matches
from scripts.along_track_offset import (
    FIRST,
    PLACE_M,
    PLACES,
    accepted_matches,
    offset_figures,
    route_map,
    segment_descriptors,
)

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "nordland_tiny"
SOURCES = [REPO / "data" / "nordland_heldout", REPO.parent / "shared" / "data" / "nordland64x32"]
TOLERANCE_M = 2 * PLACE_M + 1e-6  # +-2 frames


@pytest.fixture(scope="module")
def seasons() -> dict[str, np.ndarray]:
    """{"summer", "winter"}: (PLACES, D) descriptors of the segment."""
    last = f"winter/images-{(FIRST + PLACES) * 10:05d}.png"
    root = next((r for r in SOURCES if (r / last).is_file()), None)
    if root is None or not (MODEL / "model.safetensors").is_file():
        pytest.skip(f"held-out Nordland images ({' or '.join(map(str, SOURCES))}) or {MODEL} absent")
    return segment_descriptors(root, MODEL)


@pytest.mark.parametrize("map_spacing_m, query_spacing_m",
                         [(10.0, 10.0), (2.0, 3.0), (1.0, 10.0), (10.0, 1.0), (5.0, 20.0)])
def test_defaults_give_precise_place_matches_at_any_spacing(seasons, map_spacing_m, query_spacing_m) -> None:
    cfg = LocalizeConfig()
    reference = route_map(seasons["summer"], map_spacing_m)
    query = route_map(seasons["winter"], query_spacing_m)
    decisions = replay_place_matches(cfg, reference, query, TOLERANCE_M)
    accepted = [d for d in decisions if d.accepted]
    correct = sum(d.correct for d in accepted)
    precision, recall = correct / max(len(accepted), 1), correct / len(decisions)
    single_frame = np.mean([abs(int(np.argmax(reference.descriptors @ d)) * map_spacing_m - x) <= TOLERANCE_M
                            for d, x in zip(query.descriptors, np.arange(0, PLACES * PLACE_M, query_spacing_m),
                                            strict=True)])
    assert precision >= 0.99 and recall >= 0.5, (precision, recall, len(accepted))
    assert recall > single_frame + 0.2  # sequences are what makes it work: one frame alone is far worse


def test_the_confidence_ranks_right_above_wrong(seasons) -> None:
    decisions = replay_place_matches(LocalizeConfig(), route_map(seasons["summer"], 10.0),
                                     route_map(seasons["winter"], 10.0), TOLERANCE_M)
    curve = pr_curve(decisions)
    threshold = curve.threshold_for(1.0)
    assert threshold is not None and curve.at(threshold)[1] >= 0.5
    assert threshold <= LocalizeConfig().min_confidence + 0.02  # the default is not a lucky guess far from it
    wrong = [d.confidence for d in decisions if d.decidable and not d.correct]
    right = [d.confidence for d in decisions if d.decidable and d.correct]
    default = LocalizeConfig().min_confidence
    assert max(wrong, default=-1.0) < default < np.median(right), (max(wrong, default=-1.0), np.median(right))


def test_no_loop_closure_on_a_route_that_never_comes_back(seasons) -> None:
    for season in ("summer", "winter"):
        for spacing in (1.0, 10.0):
            (lap,) = replay_loop_closures(LocalizeConfig(), [route_map(seasons[season], spacing, "odom")], TOLERANCE_M)
            assert not [d for d in lap if d.accepted], (season, spacing)


@pytest.mark.parametrize("first_m, second_m, closed_at_least", [(10.0, 10.0, 0.5), (2.0, 3.0, 0.35), (10.0, 1.0, 0.35)])
def test_a_route_driven_twice_closes_the_loop_on_the_second_lap_only(seasons, first_m, second_m,
                                                                     closed_at_least) -> None:
    laps = [route_map(seasons["summer"], first_m, "odom", closed=True),
            route_map(seasons["winter"], second_m, "odom", closed=True, t0=10_000)]
    first, second = replay_loop_closures(LocalizeConfig(), laps, TOLERANCE_M)
    assert not [d for d in first if d.accepted]
    accepted = [d for d in second if d.accepted]
    assert all(d.correct for d in accepted), [d for d in accepted if not d.correct]
    assert len(accepted) / len(second) >= closed_at_least, len(accepted) / len(second)


@pytest.mark.parametrize("closed", [False, True])
def test_the_sequence_alignment_places_the_query_between_keyframes(seasons, closed) -> None:
    # Map keyframes every 20 m (every other place), queries every 10 m (every place): half the
    # queries lie halfway between two keyframes, so the true offset is 0 or +-10 m along the track.
    # scripts/along_track_offset.py prints the figures docs/NODE.md quotes from this measurement.
    from qaa_vpr_ros.decision.record import pose_matrix

    reference = route_map(seasons["summer"], 20.0, closed=closed)
    query = route_map(seasons["winter"], 10.0, closed=closed)
    accepted, matches = accepted_matches(reference, query)
    for m in matches:
        if m.best.offset is None:
            assert m.record.transform_source == "none"
            continue
        assert m.record.transform_source == "sequence"
        assert np.allclose(m.record.relative_matrix, m.best.offset, atol=1e-6)
        # The query in the map frame (what initialpose publishes) is the keyframe moved by the offset.
        kf = m.best.keyframe
        position, _ = m.record.query_pose_in_match_frame()
        assert np.allclose(position, (pose_matrix(kf.position, kf.orientation) @ m.best.offset)[:3, 3])
    figures = offset_figures(accepted, matches)
    # 20 m: beyond the defaults' 10 m
    assert accepted >= 25 and figures.with_offset >= 0.6 * accepted, (accepted, figures.with_offset)
    rms = figures.rms_m
    # Identity is 10 m off for every other query (about 7 m RMS); the alignment must do clearly better.
    assert rms["none"] > 5.0 and rms["sequence"] < 0.7 * rms["none"], rms
    model = figures.calibrated
    assert model.sequence[0] < 0.5 * model.none[0], (model.sequence, model.none)  # along track (x)


def _reference_score_sequence(table, hypotheses, sequence, radius_m, mask=None, poses=None):
    """score_sequence as first written (one similarity lookup per hypothesis and query): the
    specification the vectorised version must reproduce exactly."""
    from qaa_vpr_ros.decision.sequence import SequenceScores, predict_rows

    hypotheses = np.asarray(hypotheses, np.int64)
    rows = predict_rows(table, hypotheses, sequence, radius_m, mask, poses)
    sims = np.full(rows.shape, np.nan, np.float64)
    for col, (_, entry) in enumerate(sequence):
        column = rows[:, col]
        whole = entry.table_sims  # the query's product with the whole table, when its search made one
        known = {int(r): float(whole[r]) for r in column if whole is not None and 0 <= r < len(whole)}
        missing = sorted({int(r) for r in column if r >= 0 and int(r) not in entry.sims and int(r) not in known})
        if missing:
            entry.sims.update(zip(missing, (table.descriptors[missing] @ entry.descriptor).tolist(), strict=True))
        sims[:, col] = [known.get(int(r), entry.sims.get(int(r))) if r >= 0 else np.nan for r in column]
    support = np.sum(~np.isnan(sims), axis=1)
    with np.errstate(invalid="ignore"):
        score = np.where(support > 0, np.nansum(sims, axis=1) / np.maximum(support, 1), -np.inf)
    return SequenceScores(hypotheses, score, support, len(sequence), sims)


def test_the_faster_decision_decides_exactly_as_the_reference(seasons, monkeypatch) -> None:
    from qaa_vpr_ros.decision import decision

    def replays() -> list:
        cfg = LocalizeConfig()
        out = replay_place_matches(cfg, route_map(seasons["summer"], 2.0), route_map(seasons["winter"], 3.0),
                                   TOLERANCE_M)
        laps = [route_map(seasons["summer"], 10.0, "odom", closed=True),
                route_map(seasons["winter"], 7.0, "odom", closed=True, t0=10_000)]
        return out + [d for lap in replay_loop_closures(cfg, laps, TOLERANCE_M) for d in lap]

    fast = replays()
    monkeypatch.setattr(decision, "score_sequence", _reference_score_sequence)
    reference = replays()
    assert sum(d.accepted for d in reference) >= 50  # enough accepted matches to compare
    assert [(d.accepted, d.matched_id) for d in fast] == [(d.accepted, d.matched_id) for d in reference]
    assert np.array_equal([d.confidence for d in fast], [d.confidence for d in reference], equal_nan=True)
