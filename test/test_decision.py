"""Decision logic of place matches and loop closures, without ROS (qaa_vpr_ros.decision)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from qaa_vpr_ros.decision import (
    ConfigError,
    KeyframeGate,
    LocalizeConfig,
    Localizer,
    PlaceMatcher,
    PoseHistory,
    Query,
    covariance_from_score,
    parameter_table,
)
from qaa_vpr_ros.maps import Keyframe, PlaceMap

NAN3 = (math.nan, math.nan, math.nan)


def kf(i: int, x: float | None = None, stamp: int = 0) -> Keyframe:
    """Keyframe ``i`` at (x, 0, 0) (x defaults to 10 i m; None-like NaN when x is nan)."""
    position = NAN3 if x is not None and math.isnan(x) else (10.0 * i if x is None else x, 0.0, 0.0)
    return Keyframe(id=i, stamp_sec=stamp, stamp_nanosec=0, camera="cam", frame_id="cam", position=position)


def config(**changes) -> LocalizeConfig:
    base = LocalizeConfig(min_score=0.5, consistency_k=1, consistency_window=5, consistency_radius_m=25.0,
                          consistency_frames=2, exclude_recent_s=30.0)
    return replace(base, **changes).validate()


# --- acceptance -----------------------------------------------------------------------------------


def test_candidates_at_or_above_min_score_are_accepted_in_rank_order() -> None:
    matcher = PlaceMatcher(config(min_score=0.5), exclude_recent=False)
    cands = matcher.decide(100.0, [0.9, 0.5, 0.49], [kf(1), kf(2), kf(3)])
    assert [c.rank for c in cands] == [0, 1, 2]
    assert [c.accepted for c in cands] == [True, True, False]
    assert cands[2].reason == "score"


def test_map_matching_ignores_the_exclusion_window_online_matching_applies_it() -> None:
    recent, old = kf(1, stamp=95), kf(2, stamp=60)
    online = PlaceMatcher(config(exclude_recent_s=30.0), exclude_recent=True)
    cands = online.decide(100.0, [0.9, 0.8], [recent, old])
    assert [(c.accepted, c.reason) for c in cands] == [(False, "recent"), (True, "")]
    prior = PlaceMatcher(config(exclude_recent_s=30.0), exclude_recent=False)
    assert all(c.accepted for c in prior.decide(100.0, [0.9, 0.8], [recent, old]))


def test_consistency_needs_k_recent_queries_matching_nearby_places() -> None:
    matcher = PlaceMatcher(config(consistency_k=3), exclude_recent=False)
    accepted = [matcher.decide(float(t), [0.9], [kf(i)])[0].accepted for t, i in enumerate([10, 11, 12, 13])]
    assert accepted == [False, False, True, True]


def test_consistency_rejects_a_single_look_alike() -> None:
    matcher = PlaceMatcher(config(consistency_k=3), exclude_recent=False)
    for t, i in enumerate([10, 11, 12]):
        matcher.decide(float(t), [0.9], [kf(i)])
    (look_alike,) = matcher.decide(3.0, [0.99], [kf(500)])  # 4.9 km away, however high its score
    assert not look_alike.accepted and look_alike.reason == "inconsistent"
    (back_on_track,) = matcher.decide(4.0, [0.9], [kf(13)])
    assert back_on_track.accepted


def test_consistency_uses_frame_distance_when_keyframes_have_no_position() -> None:
    matcher = PlaceMatcher(config(consistency_k=2, consistency_frames=2), exclude_recent=False)
    matcher.decide(0.0, [0.9], [kf(100, x=math.nan)])
    assert matcher.decide(1.0, [0.9], [kf(102, x=math.nan)])[0].accepted  # 2 ids apart
    assert not matcher.decide(2.0, [0.9], [kf(110, x=math.nan)])[0].accepted  # 8 ids from 102


def test_consistency_window_forgets_old_support() -> None:
    matcher = PlaceMatcher(config(consistency_k=2, consistency_window=2), exclude_recent=False)
    matcher.decide(0.0, [0.9], [kf(10)])
    matcher.decide(1.0, [0.1], [kf(300)])  # a query with nothing passing
    assert not matcher.decide(2.0, [0.9], [kf(10)])[0].accepted  # query 0 fell out of the window


def test_rejected_by_score_or_recency_gives_no_support() -> None:
    matcher = PlaceMatcher(config(consistency_k=2, exclude_recent_s=30.0), exclude_recent=True)
    matcher.decide(100.0, [0.3], [kf(10, stamp=0)])  # below min_score
    matcher.decide(101.0, [0.9], [kf(10, stamp=100)])  # too recent
    assert not matcher.decide(102.0, [0.9], [kf(10, stamp=0)])[0].accepted


# --- keyframe gating and odometry -----------------------------------------------------------------


def test_gate_min_period_is_per_camera() -> None:
    gate = KeyframeGate(config(min_period_s=0.5))
    assert gate.admit("a", 10.0, None) and gate.admit("b", 10.1, None)
    assert not gate.admit("a", 10.3, None)
    assert gate.admit("a", 10.5, None)


def test_gate_restarts_when_time_jumps_backwards() -> None:
    gate = KeyframeGate(config(min_period_s=1.0))
    assert gate.admit("a", 100.0, None)
    assert gate.admit("a", 5.0, None)  # a replayed bag: not gated until t = 101
    assert not gate.admit("a", 5.5, None) and gate.admit("a", 6.0, None)


def test_gate_needs_translation_or_rotation_when_odometry_is_known() -> None:
    gate = KeyframeGate(config(min_translation_m=1.0, min_rotation_rad=0.5))
    still = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))
    assert gate.admit("a", 0.0, still)
    assert not gate.admit("a", 1.0, ((0.5, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
    assert gate.admit("a", 2.0, ((1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
    turned = (0.0, 0.0, math.sin(0.3), math.cos(0.3))  # 0.6 rad yaw
    assert gate.admit("a", 3.0, ((1.0, 0.0, 0.0), turned))
    assert gate.admit("a", 4.0, None)  # no odometry: only time gates


def test_pose_history_returns_the_nearest_pose_within_max_age() -> None:
    history = PoseHistory()
    history.add(1.0, ((1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), "odom")
    history.add(2.0, ((2.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), "odom")
    pose, frame = history.lookup(1.8, 0.5)
    assert pose[0][0] == 2.0 and frame == "odom"
    assert history.lookup(3.0, 0.5) is None


# --- parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, value, words", [
    ("min_score", 1.5, ["min_score", "range"]),
    ("top_k", 0, ["top_k", "range"]),
    ("min_rotation_rad", -0.1, ["min_rotation_rad", "range"]),
    ("device", "tpu", ["device", "one of"]),
    ("transport", "udp", ["transport", "one of"]),
    ("consistency_k", 2.5, ["consistency_k", "int"]),
    ("exclude_recent_s", float("nan"), ["exclude_recent_s", "range"]),
])
def test_out_of_range_parameters_are_refused_with_a_reason(name: str, value, words: list[str]) -> None:
    bad = replace(LocalizeConfig(), **{name: value})
    with pytest.raises(ConfigError) as err:
        bad.validate()
    assert all(w in str(err.value) for w in words), str(err.value)


def test_cross_parameter_checks() -> None:
    assert "consistency_window" in " ".join(LocalizeConfig(consistency_k=5, consistency_window=3).problems())
    assert "covariance_base" in " ".join(LocalizeConfig(covariance_base=[1.0, 2.0]).problems())
    assert "covariance_base" in " ".join(LocalizeConfig(covariance_base=[1.0, 1, 1, 1, 1, 0.0]).problems())
    assert "image_topics" in " ".join(LocalizeConfig(image_topics=[]).problems())
    with pytest.raises(ConfigError, match="unknown parameter"):
        LocalizeConfig.from_dict({"min_scroe": 0.3})


def test_from_dict_normalizes_ros_values() -> None:
    cfg = LocalizeConfig.from_dict({"image_topics": ["/a, /b", "/c"], "min_score": 1, "covariance_base": [1] * 6})
    assert cfg.image_topics == ["/a", "/b", "/c"]
    assert isinstance(cfg.min_score, float) and cfg.covariance_base == [1.0] * 6
    assert cfg.problems() == []


def test_parameter_table_describes_every_parameter() -> None:
    rows = parameter_table()
    assert [r.name for r in rows] == list(LocalizeConfig.__dataclass_fields__)
    for row in rows:
        assert len(row.description) > 15, row.name
        if row.type in ("int", "float"):
            assert row.range is not None and row.range[0] <= row.default <= row.range[1], row.name
        assert row.check(row.default) is None


def test_covariance_grows_from_base_at_score_one_to_ten_times_at_min_score() -> None:
    base = [1.0, 2.0, 3.0, 0.1, 0.1, 0.2]
    perfect = np.asarray(covariance_from_score(1.0, 0.5, base)).reshape(6, 6)
    edge = np.asarray(covariance_from_score(0.5, 0.5, base)).reshape(6, 6)
    middle = np.asarray(covariance_from_score(0.75, 0.5, base)).reshape(6, 6)
    assert np.allclose(np.diag(perfect), base) and np.allclose(np.diag(edge), 10 * np.asarray(base))
    assert np.all(np.diag(perfect) < np.diag(middle)) and np.all(np.diag(middle) < np.diag(edge))
    assert np.count_nonzero(perfect - np.diag(np.diag(perfect))) == 0


# --- both databases together ---------------------------------------------------------------------


def unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_localizer_matches_the_map_and_closes_loops_online(tmp_path) -> None:
    rng = np.random.default_rng(0)
    places = unit(rng, 8)
    prior = PlaceMap.create(16, "fp", map_frame="map")
    prior.add(places, [kf(i, stamp=1000 + i) for i in range(8)])
    cfg = config(min_score=0.9, consistency_k=2, exclude_recent_s=5.0, top_k=3)
    loc = Localizer(cfg, 16, "fp", prior_map=prior, online_frame="odom")

    def step(t: int, place: int):
        q = Query("cam", t, 0, "cam", pose=((10.0 * place, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
        (res,) = loc.process([q], places[place:place + 1])
        return res

    first = [step(t, p) for t, p in enumerate([0, 1, 2, 3])]  # drive out
    assert [r.map.candidates[0].keyframe.id for r in first] == [0, 1, 2, 3]
    assert [r.map.best is not None for r in first] == [False, True, True, True]
    assert all(r.online.best is None for r in first)  # nothing old enough in the online database
    assert len(loc.online_map) == 4 and first[2].keyframe.stamp_sec == 2
    back = [step(t, p) for t, p in [(20, 0), (21, 1)]]  # come back to the start
    assert back[0].online.best is None  # one query is not consistent yet
    assert back[1].online.best.keyframe.stamp_sec == 1 and back[1].online.map_frame == "odom"
    assert back[1].place is back[1].map  # place matches come from the prebuilt map

    assert loc.save_online(tmp_path / "online") == 6
    assert len(PlaceMap.load(tmp_path / "online", expected_fingerprint="fp")) == 6
    loc.reset()
    assert len(loc.online_map) == 0 and len(loc.prior_map) == 8
    with pytest.raises(ValueError, match="empty"):
        loc.save_online(tmp_path / "empty")


def test_localizer_batch_is_decided_in_stamp_order_and_checks_shapes() -> None:
    rng = np.random.default_rng(1)
    loc = Localizer(config(min_score=0.9, exclude_recent_s=0.0), 16, "fp")
    desc = unit(rng, 2)
    results = loc.process([Query("b", 5, 0), Query("a", 4, 0)], desc)
    assert [r.keyframe.stamp_sec for r in results] == [5, 4]
    assert [kf.stamp_sec for kf in loc.online_map.keyframes] == [4, 5]
    assert results[1].place is results[1].online and results[1].online.candidates == []
    assert not results[0].keyframe.has_pose  # no odometry: NaN position, still saved and reloaded
    with pytest.raises(ValueError, match="shape"):
        loc.process([Query("a", 6, 0)], desc)
