"""eval_map --target-precision chooses thresholds the node can load and that hold on new data (issue 20).

A calibration set whose best threshold lies below ``min_confidence``'s range [0, 2] (a summer map
and a winter query once chose -0.0389 and died writing the file): two tiny saved maps give eval_map
something to load, and the decision replay is replaced by fixed decisions with known confidences,
so that every figure eval_map prints can be recomputed here by counting.
"""
from __future__ import annotations

import errno
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import beta

from qaa_vpr_ros.decision.replay import Decision
from qaa_vpr_ros.map_tools.evaluate import main as eval_map
from qaa_vpr_ros.maps import Keyframe, PlaceMap

DEFAULT_MIN_CONFIDENCE, DEFAULT_LOOP_MIN_CONFIDENCE = 0.05, 0.1  # parameters.py


def decisions(rng: np.random.Generator, correct: int, wrong_at: list[float] = (),
              low: float = -0.08, high: float = 0.4) -> list[Decision]:
    """``correct`` correct decisions with confidences spread over [low, high], plus wrong ones at
    the given confidences, shuffled along the route (in stamp order)."""
    out = [Decision(True, False, True, float(c), i) for i, c in enumerate(np.linspace(low, high, correct))]
    out += [Decision(True, False, False, float(c), -1) for c in wrong_at]
    return [out[i] for i in rng.permutation(len(out))]


@pytest.fixture
def maps(tmp_path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    folders = []
    for name in ("summer", "winter"):
        place_map = PlaceMap.create(8, "fp", index_type="flat", map_frame="map")
        d = rng.standard_normal((4, 8)).astype(np.float32)
        place_map.add(d / np.linalg.norm(d, axis=1, keepdims=True), [
            Keyframe(id=i, stamp_sec=100 + i, stamp_nanosec=0, camera="cam", frame_id="cam",
                     position=(10.0 * i, 0.0, 0.0)) for i in range(4)])
        place_map.save(tmp_path / name)
        folders.append(tmp_path / name)
    return folders[0], folders[1]


def replay(monkeypatch, matches: list[Decision], loops: list[Decision]) -> None:
    """The replay of every sequence length gives these decisions (loops: the second lap)."""
    import qaa_vpr_ros.decision.replay as replay_module

    monkeypatch.setattr(replay_module, "replay_place_matches", lambda *a, **k: list(matches))
    first = [Decision(False, False, False, float("nan"), -1)] * len(loops)
    monkeypatch.setattr(replay_module, "replay_loop_closures", lambda *a, **k: [list(first), list(loops)])


def run(maps, tuned: Path, *extra: str) -> int:
    summer, winter = maps
    return eval_map([str(summer), "--query-map", str(winter), "--radius", "5", "--target-precision", "0.99",
                     "--write-params", str(tuned), *extra])


def written(tuned: Path) -> dict:
    return yaml.safe_load(tuned.read_text())["/**"]["ros__parameters"]


def at(decided: list[Decision], threshold: float) -> tuple[int, int]:
    """(accepted, correct) when accepting confidence >= threshold."""
    accepted = [d for d in decided if d.confidence >= threshold]
    return len(accepted), sum(d.correct for d in accepted)


# Every threshold from -0.08 up keeps precision >= 0.99 (two wrong matches among 600 correct, both
# below 0): the point-estimate search picks the lowest, -0.08, below the range.
BELOW_RANGE = {"correct": 600, "wrong_at": [-0.07, -0.075]}


def test_without_the_flag_the_thresholds_stay_at_or_above_the_shipped_defaults(maps, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    replay(monkeypatch, decisions(rng, **BELOW_RANGE), decisions(rng, **BELOW_RANGE))
    assert run(maps, tmp_path / "tuned.yaml") == 0
    params = written(tmp_path / "tuned.yaml")
    assert DEFAULT_MIN_CONFIDENCE <= params["min_confidence"] <= 2.0
    assert DEFAULT_LOOP_MIN_CONFIDENCE <= params["loop_min_confidence"] <= 2.0


def test_with_the_flag_thresholds_go_below_the_defaults_but_stay_in_range(maps, tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    matches = decisions(rng, **BELOW_RANGE)
    replay(monkeypatch, matches, decisions(rng, **BELOW_RANGE))
    assert run(maps, tmp_path / "tuned.yaml", "--allow-below-default") == 0
    params = written(tmp_path / "tuned.yaml")
    assert 0.0 <= params["min_confidence"] < DEFAULT_MIN_CONFIDENCE
    assert 0.0 <= params["loop_min_confidence"] < DEFAULT_LOOP_MIN_CONFIDENCE
    # Nothing below 0 is counted: the promised recall is what accepting >= the written value gives.
    _, correct = at(matches, params["min_confidence"])
    promised = re.search(r"place matches: .* at recall ([0-9.]+)", (tmp_path / "tuned.yaml").read_text())
    assert float(promised.group(1)) == pytest.approx(correct / len(matches), abs=5e-4)
    assert correct < sum(d.correct for d in matches)  # the below-range ones are not


def test_the_expected_precision_is_printed_with_its_lower_bound(maps, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(3)
    matches = decisions(rng, **BELOW_RANGE)
    replay(monkeypatch, matches, decisions(rng, **BELOW_RANGE))
    assert run(maps, tmp_path / "tuned.yaml") == 0
    out = capsys.readouterr().out
    threshold = written(tmp_path / "tuned.yaml")["min_confidence"]
    accepted, correct = at(matches, threshold)
    bound = beta.ppf(0.05, correct, accepted - correct + 1)  # one-sided 95 % Clopper-Pearson
    expected = (f"precision {correct / accepted:.3f} (95% lower bound {bound:.3f}) at recall "
                f"{correct / len(matches):.3f}")
    printed = [line for line in out.splitlines() if "place matches: min_confidence" in line]
    assert printed and expected in printed[0], (expected, printed)
    assert bound >= 0.99  # 500-odd correct and no wrong one above the default: the target is certified
    assert expected in (tmp_path / "tuned.yaml").read_text()  # and in the file's header


def test_a_failed_write_is_one_line_and_keeps_the_existing_file(maps, tmp_path, monkeypatch, capsys):
    import qaa_vpr_ros.atomic as atomic

    rng = np.random.default_rng(4)
    replay(monkeypatch, decisions(rng, **BELOW_RANGE), decisions(rng, **BELOW_RANGE))
    tuned = tmp_path / "out" / "tuned.yaml"
    tuned.parent.mkdir()
    tuned.write_text("# tuned last week\n")

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", disk_full)
    assert run(maps, tuned) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("eval_map: error:")]
    assert len(errors) == 1 and str(tuned) in errors[0] and "No space left" in errors[0], err
    assert "Traceback" not in err
    assert tuned.read_text() == "# tuned last week\n"
    assert sorted(p.name for p in tuned.parent.iterdir()) == ["tuned.yaml"]  # no temp file left


def test_a_stretch_of_route_that_needs_more_raises_the_threshold_by_the_fold_margin(maps, tmp_path, monkeypatch):
    """Wrong matches between 0.05 and 0.09 in the second half of the route only: the threshold the
    first half chooses (the default 0.05, precision 1 there) loses precision on the second half,
    which needs it raised; that rise (plus 0.005 for float16 descriptors) is the margin added."""
    rng = np.random.default_rng(5)
    clean = decisions(rng, 600)
    messy = decisions(rng, 600, wrong_at=list(np.linspace(0.05, 0.09, 12)))
    replay(monkeypatch, clean + messy, decisions(rng, **BELOW_RANGE))
    assert run(maps, tmp_path / "folds.yaml") == 0
    assert run(maps, tmp_path / "no_folds.yaml", "--folds", "1") == 0

    def precision(t: float) -> float:
        accepted, correct = at(messy, t)
        return correct / accepted if accepted else 1.0

    rise = min(t for t in sorted({0.05} | {d.confidence for d in messy if d.confidence > 0.05})
               if precision(t) >= 0.99) - DEFAULT_MIN_CONFIDENCE
    assert rise > 0.01
    header = (tmp_path / "folds.yaml").read_text()
    margin = float(re.search(r"min_confidence [0-9.]+ \(margin ([0-9.]+)\)", header).group(1))
    assert margin == pytest.approx(rise + 0.005, abs=1e-4)
    assert "(margin 0.0050)" in (tmp_path / "no_folds.yaml").read_text()
    assert written(tmp_path / "folds.yaml")["min_confidence"] > written(tmp_path / "no_folds.yaml")["min_confidence"]


# --- geometry_accept_min_inliers: an integer threshold (issue 23) ------------------------------------

DEFAULT_MIN_INLIERS = 40  # parameters.py geometry_accept_min_inliers


def inlier_decisions(rng: np.random.Generator, correct: int, wrong_at: list[int]) -> list[Decision]:
    """``correct`` right candidates with inlier counts spread over [30, 400] and wrong ones with the
    given counts (the inliers are the "confidence"), shuffled along the route."""
    out = [Decision(True, False, True, float(n), i) for i, n in enumerate(np.linspace(30, 400, correct).round())]
    out += [Decision(True, False, False, float(n), -1) for n in wrong_at]
    return [out[i] for i in rng.permutation(len(out))]


def lowest_certified(decided: list[Decision], floor: int, target: float = 0.99) -> int:
    """The lowest whole inlier count >= floor whose accepted candidates' 95 % Clopper-Pearson lower
    bound of precision reaches the target (counted here, the slow way)."""
    for t in range(floor, 401):
        accepted, correct = at(decided, t)
        if accepted and correct and beta.ppf(0.05, correct, accepted - correct + 1) >= target:
            return t
    raise AssertionError("no threshold certifies the target")


@pytest.mark.parametrize("allow_below_default", [False, True])
def test_the_inlier_threshold_is_a_whole_number_the_lowest_that_certifies_the_target(allow_below_default):
    """Without a fold margin the written count is exactly the lowest certifying one: no float16
    margin (which would turn 52 into 52.005, i.e. accept from 53 inliers on) and a whole number the
    node's integer parameter takes."""
    from qaa_vpr_ros.decision.calibration import choose_threshold

    # Wrong candidates with 35-60 inliers among 900 right ones: the target needs more than 40.
    decided = inlier_decisions(np.random.default_rng(6), 900, wrong_at=[35, 38, 44, 47, 52, 58, 60])
    choice = choose_threshold(decided, 0.99, "geometry_accept_min_inliers", folds=1,
                              allow_below_default=allow_below_default)
    floor = 6 if allow_below_default else DEFAULT_MIN_INLIERS  # the parameter's range starts at 6
    assert choice.certified and choice.margin == 0.0
    assert choice.threshold == int(choice.threshold) == lowest_certified(decided, floor)
    assert (choice.accepted, choice.correct) == at(decided, choice.threshold)


def test_the_inlier_threshold_with_a_fold_margin_stays_whole_and_not_below_the_default():
    from qaa_vpr_ros.decision.calibration import choose_threshold

    rng = np.random.default_rng(7)
    clean = inlier_decisions(rng, 500, wrong_at=[])
    messy = inlier_decisions(rng, 500, wrong_at=[41, 45, 50, 55, 62, 70])  # the second half needs more
    choice = choose_threshold(clean + messy, 0.99, "geometry_accept_min_inliers")
    assert choice.margin > 0 and choice.margin == int(choice.margin)
    assert choice.threshold == int(choice.threshold) >= DEFAULT_MIN_INLIERS
    assert (choice.accepted, choice.correct) == at(clean + messy, choice.threshold)
