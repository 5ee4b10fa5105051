"""Decision logic of place matches and loop closures, without ROS (qaa_vpr_ros.decision)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from qaa_vpr_ros.decision import (
    ConfigError,
    KeyframeGate,
    KeyframeTable,
    LocalizeConfig,
    Localizer,
    PoseHistory,
    Query,
    covariance_from_confidence,
    parameter_table,
)
from qaa_vpr_ros.decision.parameters import params_yaml
from qaa_vpr_ros.decision.sequence import QueryTrack, TrackEntry, score_sequence
from qaa_vpr_ros.maps import Keyframe, PlaceMap

NAN3 = (math.nan, math.nan, math.nan)


def kf(i: int, x: float | None = None, stamp: int = 0) -> Keyframe:
    """Keyframe ``i`` at (x, 0, 0) (x defaults to 10 i m; None-like NaN when x is nan)."""
    position = NAN3 if x is not None and math.isnan(x) else (10.0 * i if x is None else x, 0.0, 0.0)
    return Keyframe(id=i, stamp_sec=stamp, stamp_nanosec=0, camera="cam", frame_id="cam", position=position)


def config(**changes) -> LocalizeConfig:
    return replace(LocalizeConfig(), **changes).validate()


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


def test_gate_asked_without_commit_does_not_advance() -> None:
    gate = KeyframeGate(config(min_period_s=1.0))
    assert gate.admit("a", 10.0, None, commit=False)  # arrived, then dropped or undecodable
    assert gate.admit("a", 10.2, None, commit=False) and gate.admit("a", 10.2, None)
    assert not gate.admit("a", 10.5, None, commit=False)


def test_pose_history_interpolates_to_the_image_stamp() -> None:
    history = PoseHistory()
    yaw = (0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4))  # 90 degrees
    history.add(2.0, ((2.0, 4.0, 0.0), yaw), "odom")
    history.add(1.0, ((1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), "odom")  # out of order: sorted in
    (position, orientation), frame = history.lookup(1.25, 0.8)
    assert position == pytest.approx((1.25, 1.0, 0.0)) and frame == "odom"
    assert orientation == pytest.approx((0.0, 0.0, math.sin(math.pi / 16), math.cos(math.pi / 16)))
    assert history.lookup(1.25, 0.5) is not None  # nearest within max age when a side is too far
    assert history.lookup(1.5, 0.4) is None
    assert history.lookup(3.0, 0.5) is None


def test_pose_history_waits_for_odometry_that_trails_the_image() -> None:
    import threading
    import time

    history = PoseHistory()
    assert not history.wait_for(1.0, 5.0)  # no odometry at all: no wait
    history.add(1.0, ((1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), "odom")
    late = threading.Timer(0.2, history.add, args=(2.0, ((2.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), "odom"))
    late.start()
    assert history.wait_for(1.5, 5.0)  # returns once the sample after the image stamp is in
    late.join()
    (position, _), _ = history.lookup(1.5, 0.8)
    assert position == pytest.approx((1.5, 0.0, 0.0))  # interpolated, not the stale 1.0 sample
    started = time.monotonic()
    assert not history.wait_for(9.0, 0.3)  # never comes: gives up after the timeout (not 5 s)
    assert time.monotonic() - started < 3.0
    time.sleep(0.3)
    started = time.monotonic()
    assert not history.wait_for(9.0, 5.0, live_s=0.2)  # odometry silent longer than live_s: no 5 s wait
    assert time.monotonic() - started < 3.0


# --- parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, value, words", [
    ("min_score", 1.5, ["min_score", "range"]),
    ("top_k", 0, ["top_k", "range"]),
    ("min_rotation_rad", -0.1, ["min_rotation_rad", "range"]),
    ("device", "tpu", ["device", "one of"]),
    ("transport", "udp", ["transport", "one of"]),
    ("sequence_keyframes", 2.5, ["sequence_keyframes", "int"]),
    ("min_confidence", -0.1, ["min_confidence", "range"]),
    ("exclude_recent_s", float("nan"), ["exclude_recent_s", "range"]),
])
def test_out_of_range_parameters_are_refused_with_a_reason(name: str, value, words: list[str]) -> None:
    bad = replace(LocalizeConfig(), **{name: value})
    with pytest.raises(ConfigError) as err:
        bad.validate()
    assert all(w in str(err.value) for w in words), str(err.value)


def test_cross_parameter_checks() -> None:
    assert "sequence_min_support" in " ".join(LocalizeConfig(sequence_min_support=5, sequence_keyframes=3).problems())
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




def test_params_yaml_holds_every_parameter_with_overrides() -> None:
    import yaml

    data = yaml.safe_load(params_yaml({"min_confidence": 0.2}, header="tuned"))["/**"]["ros__parameters"]
    assert data == {r.name: (0.2 if r.name == "min_confidence" else r.default) for r in parameter_table()}
    with pytest.raises(ConfigError, match="min_confidence"):
        params_yaml({"min_confidence": -1.0})


# --- covariance --------------------------------------------------------------------------------------


def test_covariance_shrinks_from_ten_times_base_at_min_confidence_to_base() -> None:
    base = [1.0, 2.0, 3.0, 0.1, 0.1, 0.2]
    edge = np.diag(np.asarray(covariance_from_confidence(0.05, 0.05, base)).reshape(6, 6))
    middle = np.diag(np.asarray(covariance_from_confidence(0.1, 0.05, base)).reshape(6, 6))
    sure = np.asarray(covariance_from_confidence(0.5, 0.05, base)).reshape(6, 6)
    assert np.allclose(edge, 10 * np.asarray(base)) and np.allclose(np.diag(sure), base)
    assert np.all(np.diag(sure) < middle) and np.all(middle < edge)
    assert np.count_nonzero(sure - np.diag(np.diag(sure))) == 0
    assert np.allclose(np.diag(np.asarray(covariance_from_confidence(math.nan, 0.05, base)).reshape(6, 6)),
                       10 * np.asarray(base))


# --- sequence evidence on synthetic routes -----------------------------------------------------------


# The synthetic routes are 400-700 m long: 200 m sequences (the Nordland tests use the defaults).
SHORT_ROUTE = {"sequence_length_m": 200.0}


def unit(rng: np.random.Generator, n: int, dim: int = 32) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def yaw_q(yaw: float) -> tuple[float, float, float, float]:
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


def curve(s: float) -> tuple[tuple[float, float, float], float]:
    """A route with a 90-degree turn: 300 m east, then north. Returns (position, heading)."""
    if s <= 300.0:
        return (s, 0.0, 0.0), 0.0
    return (300.0, s - 300.0, 0.0), math.pi / 2


def look_alike_queries(rng: np.random.Generator, places: np.ndarray, truth: list[int]) -> np.ndarray:
    """Per query, a noisy view of its true place that looks at least as much like a random other place:
    single frames are right only about half the time."""
    decoys = rng.integers(0, len(places), len(truth))
    noise = unit(rng, len(truth), places.shape[1])
    q = 0.55 * places[truth] + 0.6 * places[decoys] + 0.5 * noise
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def synthetic_map(places: np.ndarray, spacing_m: float, frame: str = "map", with_pose: bool = True) -> PlaceMap:
    place_map = PlaceMap.create(places.shape[1], "fp", index_type="flat", map_frame=frame)
    keyframes = []
    for i in range(len(places)):
        position, yaw = curve(spacing_m * i)
        keyframes.append(Keyframe(id=i, stamp_sec=i, stamp_nanosec=0, camera="cam", frame_id="cam",
                                  position=position if with_pose else NAN3, orientation=yaw_q(yaw)))
    place_map.add(places, keyframes)
    return place_map


def odometry_frame(position: tuple[float, float, float], yaw: float) -> tuple[tuple, tuple]:
    """The same pose seen from an odometry frame rotated by 40 degrees and shifted: only relative
    motion may matter."""
    c, s, rot = math.cos(0.7), math.sin(0.7), 0.7
    x, y, z = position
    return (c * x - s * y + 123.0, s * x + c * y - 45.0, z), yaw_q(yaw + rot)


def drive(loc: Localizer, descriptors: np.ndarray, path_s: list[float], spacing_m: float, *,
          odometry: bool = True, camera: str = "cam") -> list:
    results = []
    for t, (s, d) in enumerate(zip(path_s, descriptors, strict=True)):
        pose = odometry_frame(*curve(s)) if odometry else None
        (r,) = loc.process([Query(camera, 1000 + t, 0, camera, pose=pose)], d[None])
        results.append(r)
    return results


def precision_recall(results: list, truth_s: list[float], spacing_m: float, tolerance_m: float = 12.0):
    accepted = [(r.place.best, s) for r, s in zip(results, truth_s, strict=True) if r.place.best is not None]
    correct = sum(abs(b.keyframe.id * spacing_m - s) <= tolerance_m for b, s in accepted)
    return correct / max(len(accepted), 1), correct / len(results)


@pytest.mark.parametrize("odometry", [True, False])
def test_sequences_find_the_place_where_single_frames_fail(odometry: bool) -> None:
    rng = np.random.default_rng(3)
    spacing = 5.0
    places = unit(rng, 120)
    truth = list(range(120))
    queries = look_alike_queries(rng, places, truth)
    single = np.mean(np.argmax(queries @ places.T, axis=1) == np.arange(120))
    loc = Localizer(config(online_loop_closure=False, **SHORT_ROUTE), 32, "fp",
                    prior_map=synthetic_map(places, spacing))
    results = drive(loc, queries, [spacing * i for i in truth], spacing, odometry=odometry)
    precision, recall = precision_recall(results, [spacing * i for i in truth], spacing)
    assert single < 0.75
    assert precision == 1.0 and recall >= 0.7 and recall > single + 0.1, (single, precision, recall)


def test_variable_speed_stops_reverse_and_turns_follow_the_odometry() -> None:
    rng = np.random.default_rng(4)
    spacing = 5.0
    places = unit(rng, 140)
    # 0.5 to 9 m per query, a stop (20 queries at one place), reversing 60 m, through the turn at 300 m.
    path = list(np.arange(0.0, 150.0, 0.5)) + [150.0] * 20 + list(np.arange(150.0, 450.0, 9.0)) \
        + list(np.arange(450.0, 390.0, -3.0)) + list(np.arange(390.0, 690.0, 4.0))
    truth = [min(round(s / spacing), 139) for s in path]
    queries = look_alike_queries(rng, places, truth)
    loc = Localizer(config(online_loop_closure=False, **SHORT_ROUTE), 32, "fp",
                    prior_map=synthetic_map(places, spacing))
    results = drive(loc, queries, path, spacing)
    precision, recall = precision_recall(results, path, spacing)
    assert precision == 1.0 and recall >= 0.5, (precision, recall)  # the first ~100 m cannot have support
    after_reverse = [r.place.best for r, s in zip(results[-60:], path[-60:], strict=True)]
    assert sum(b is not None for b in after_reverse) >= 40


def test_sequence_spans_metres_whatever_the_keyframe_spacing() -> None:
    for step in (1.0, 3.0, 10.0):
        track = QueryTrack()
        for i in range(int(400 / step)):
            track.add(TrackEntry(np.zeros(4, np.float32), np.array([i * step, 0.0, 0.0]), np.eye(3), i * step),
                      keep_path_m=400.0, keep_entries=20)
        seq = track.sequence(200.0, 20)
        back = [seq[0][1].path_m - e.path_m for _, e in seq]
        assert back[0] == 0.0 and 190.0 <= back[-1] <= 210.0, (step, back)
        assert len(seq) == (20 if step < 10.0 else 21) or len(seq) >= 19
        assert np.all(np.diff(back) >= min(step, 200.0 / 19) - 1e-9)


def test_without_map_poses_the_sequence_follows_keyframe_order() -> None:
    rng = np.random.default_rng(5)
    places = unit(rng, 60)
    table = KeyframeTable.from_map(synthetic_map(places, 5.0, with_pose=False))
    track = QueryTrack()
    for i in range(10, 30):
        track.add(TrackEntry(places[i], None, None, math.nan), keep_path_m=200.0, keep_entries=20)
    scores = score_sequence(table, np.array([29, 40]), track.sequence(200.0, 20), 15.0)
    assert scores.support.tolist() == [20, 20]
    assert scores.score[0] == pytest.approx(1.0, abs=1e-3) and scores.score[1] < 0.5  # float16 map


def test_one_look_alike_in_two_cameras_at_one_instant_is_not_accepted() -> None:
    rng = np.random.default_rng(6)
    spacing = 5.0
    places = unit(rng, 100)
    loc = Localizer(config(online_loop_closure=False, **SHORT_ROUTE), 32, "fp",
                    prior_map=synthetic_map(places, spacing))
    accepted = []
    for t in range(60):
        pose = odometry_frame(*curve(spacing * t))
        d = places[80] if t == 40 else places[t]  # both cameras see place 80's twin at t = 40
        batch = [Query(cam, 1000 + t, 0, cam, pose=pose) for cam in ("front", "left")]
        for r in loc.process(batch, np.stack([d, d])):
            best = r.place.best
            accepted.append((t, None if best is None else best.keyframe.id))
    assert not [a for a in accepted if a[1] == 80]
    assert [a for a in accepted if a[0] >= 45 and a[1] == a[0]]  # the true place is found around it


# --- both databases together ---------------------------------------------------------------------


def test_a_batch_of_cameras_decides_as_its_queries_one_by_one_with_both_databases() -> None:
    """Regression: the online channel's search hits overwrote the map's for the rest of the batch,
    so a batch of several cameras failed (IndexError) or decided on another camera's hits."""
    rng = np.random.default_rng(8)
    spacing = 5.0
    places = unit(rng, 100)
    batched, single = (Localizer(config(online_loop_closure=True, **SHORT_ROUTE), 32, "fp",
                                 prior_map=synthetic_map(places, spacing)) for _ in range(2))
    cameras = ("front", "left", "right")
    for t in range(40):
        pose = odometry_frame(*curve(spacing * t))
        batch = [Query(cam, 1000 + t, 0, cam, pose=pose) for cam in cameras]
        descriptors = places[[t, (t + 30) % 100, (t + 60) % 100]]  # each camera sees another place
        together = batched.process(batch, descriptors)
        alone = [single.process([q], d[None])[0] for q, d in zip(batch, descriptors, strict=True)]
        for a, b in zip(together, alone, strict=True):
            for channel_a, channel_b in ((a.map, b.map), (a.online, b.online)):
                assert [(c.keyframe.id, c.accepted) for c in channel_a.candidates] == [
                    (c.keyframe.id, c.accepted) for c in channel_b.candidates], (t, a.query.camera)


def test_online_loop_closure_needs_a_revisit_not_continuous_travel(tmp_path) -> None:
    rng = np.random.default_rng(7)
    spacing = 5.0
    places = unit(rng, 80)
    loc = Localizer(config(exclude_recent_s=5.0, **SHORT_ROUTE), 32, "fp", online_frame="odom")
    # Lap 1: out and around without revisits, a 60-step stop in the middle (same image, same pose).
    path = [spacing * i for i in range(40)] + [200.0] * 60 + [spacing * i for i in range(40, 80)]
    lap1 = drive(loc, places[[min(int(s / spacing), 79) for s in path]], path, spacing)
    assert not [r for r in lap1 if r.online.best is not None]
    assert lap1[0].online.map_frame == "odom"
    # Lap 2: the same places again (noisy views), the odometry 3 m off: loop closures onto lap 1.
    noisy = places + 0.6 * unit(rng, 80)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    lap2 = []
    for i in range(80):
        position, yaw = odometry_frame(*curve(spacing * i))
        q = Query("cam", 5000 + i, 0, "cam", pose=((position[0] + 3.0, position[1], 0.0), yaw))
        lap2.extend(loc.process([q], noisy[i:i + 1]))
    closures = [(i, r.online.best.keyframe) for i, r in enumerate(lap2) if r.online.best is not None]
    assert len(closures) >= 40
    for i, kf in closures:
        assert abs(kf.position[0] - odometry_frame(*curve(spacing * i))[0][0]) <= 12.0 and kf.stamp_sec < 5000

    assert loc.save_online(tmp_path / "online") == len(path) + 80
    assert PlaceMap.load(tmp_path / "online", expected_fingerprint="fp").map_frame == "odom"
    loc.reset()
    assert len(loc.online_map) == 0
    with pytest.raises(ValueError, match="empty"):
        loc.save_online(tmp_path / "empty")


@pytest.mark.parametrize("exclude_recent_s, closes", [(5.0, True), (200.0, False)])
def test_online_loop_closure_ignores_the_robots_own_recent_past(exclude_recent_s: float, closes: bool) -> None:
    """The own-past guard: keyframes newer than ``exclude_recent_s`` are never loop-closure targets,
    even when the robot has travelled far beyond ``loop_min_travel_m`` since (a fast lap)."""
    rng = np.random.default_rng(11)
    spacing = 5.0
    places = unit(rng, 60)
    loc = Localizer(config(exclude_recent_s=exclude_recent_s, loop_min_travel_m=100.0, **SHORT_ROUTE), 32, "fp",
                    online_frame="odom")
    lap1 = drive(loc, places, [spacing * i for i in range(60)], spacing)  # stamps 1000..1059
    noisy = places + 0.6 * unit(rng, 60)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    lap2 = []  # the same route again at once (stamps 1060..1119, 300 m and more travelled since)
    for i in range(60):
        q = Query("cam", 1060 + i, 0, "cam", pose=odometry_frame(*curve(spacing * i)))
        lap2.extend(loc.process([q], noisy[i:i + 1]))
    assert not [r for r in lap1 if r.online.best is not None]
    for r in lap1 + lap2:  # no candidate at all, accepted or not, from the last exclude_recent_s
        assert all(c.keyframe.stamp_sec <= r.query.stamp_sec - exclude_recent_s for c in r.online.candidates)
    closures = [r.online.best.keyframe for r in lap2 if r.online.best is not None]
    if closes:
        assert len(closures) >= 20 and all(kf.stamp_sec < 1060 for kf in closures)
    else:  # every lap-1 keyframe is younger than 200 s at lap 2: nothing to even consider
        assert closures == [] and not any(r.online.candidates for r in lap2)


def test_online_database_takes_the_odometry_frame() -> None:
    loc = Localizer(config(), 32, "fp", online_frame="odom")
    (r,) = loc.process([Query("cam", 1, 0, pose=((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), pose_frame="world")],
                       unit(np.random.default_rng(8), 1))
    assert r.online.map_frame == "world" and loc.online_map.map_frame == "world"


def test_localizer_batch_is_decided_in_stamp_order_and_checks_shapes() -> None:
    rng = np.random.default_rng(1)
    loc = Localizer(config(exclude_recent_s=0.0), 32, "fp")
    desc = unit(rng, 2)
    results = loc.process([Query("b", 5, 0), Query("a", 4, 0)], desc)
    assert [r.keyframe.stamp_sec for r in results] == [5, 4]
    assert [kf.stamp_sec for kf in loc.online_map.keyframes] == [4, 5]
    assert results[1].place is results[1].online and results[1].online.candidates == []
    assert not results[0].keyframe.has_pose  # no odometry: NaN position, still saved and reloaded
    with pytest.raises(ValueError, match="shape"):
        loc.process([Query("a", 6, 0)], desc)


def test_keyframe_lookup_is_exact_while_the_table_grows() -> None:
    rng = np.random.default_rng(9)
    table = KeyframeTable(4)
    positions = rng.uniform(0.0, 100.0, (400, 3))
    positions[::7] = np.nan  # keyframes without a pose are never found
    for start in range(0, 400, 10):
        rows = slice(start, start + 10)
        table.append(np.zeros((10, 4), np.float32), positions[rows], np.tile([0.0, 0.0, 0.0, 1.0], (10, 1)),
                     np.arange(start, start + 10, dtype=float), np.arange(start, start + 10, dtype=float))
        points = rng.uniform(-10.0, 110.0, (40, 3))
        for mask in (None, table.eligible(start - 30.0, None)):
            usable = table.has_pose if mask is None else table.has_pose & mask
            candidates = np.where(usable[:, None], table.positions, np.inf)
            dist = np.linalg.norm(points[:, None, :] - candidates[None], axis=2)
            nearest = np.argmin(dist, axis=1)
            expected = np.where(dist[np.arange(40), nearest] <= 8.0, nearest, -1)
            assert np.array_equal(table.lookup(points, 8.0, mask), expected)


def test_whole_table_similarities_give_the_memoised_values_and_only_the_newest_keep_them(monkeypatch) -> None:
    from qaa_vpr_ros.decision import sequence

    rng = np.random.default_rng(4)
    descriptors = unit(rng, 50)
    entries = [TrackEntry(d, None, None, math.nan) for d in unit(rng, 3)]
    rows = rng.integers(-1, 50, (7, 3))
    memoised = sequence.pair_similarities(descriptors, entries, rows)
    # The same entries with their product with the first 40 rows (the table grew since, online):
    # rows 40-49 still come from a product of their own.
    whole = [TrackEntry(e.descriptor, None, None, math.nan, table_sims=descriptors[:40] @ e.descriptor)
             for e in entries]
    assert np.allclose(sequence.pair_similarities(descriptors, whole, rows), memoised, atol=1e-6, equal_nan=True)
    monkeypatch.setattr(sequence, "_STACKED_MAX", 0)  # a large table: read entry by entry, no stacked copy
    assert np.allclose(sequence.pair_similarities(descriptors, whole, rows), memoised, atol=1e-6, equal_nan=True)
    monkeypatch.undo()
    assert not whole[0].sims or max(whole[0].sims) >= 40  # nothing below row 40 was recomputed
    assert np.isnan(memoised[rows < 0]).all() and not np.isnan(memoised[rows >= 0]).any()

    monkeypatch.setattr(sequence, "TABLE_SIMS_BUDGET", 120)  # 3 rows of 40
    track = QueryTrack()
    for e in whole + [TrackEntry(e.descriptor, None, None, math.nan, table_sims=np.zeros(40, np.float32))
                      for e in entries]:
        track.add(e, keep_path_m=0.0, keep_entries=20)
    assert [e.table_sims is not None for e in track.entries] == [False, False, False, True, True, True]


def test_one_quaternion_gives_the_same_matrix_as_many() -> None:
    from qaa_vpr_ros.decision.sequence import quaternion_matrices

    q = np.random.default_rng(6).standard_normal((5, 4)) * 3.0
    q[4] = 0.0  # no rotation: the identity
    many = quaternion_matrices(q)
    assert np.allclose(many[4], np.eye(3))
    for i in range(5):
        assert np.allclose(quaternion_matrices(q[i]), many[i : i + 1], atol=1e-12)


def test_an_exact_map_is_searched_as_faiss_would() -> None:
    rng = np.random.default_rng(5)
    places = unit(rng, 200)
    place_map = synthetic_map(places, 5.0)
    loc = Localizer(config(online_loop_closure=False), 32, "fp", prior_map=place_map)
    queries = unit(rng, 6)
    hits, sims = loc._prior_search(queries)
    assert np.array_equal(hits, place_map.search(queries, hits.shape[1]).ids)  # ids are rows here
    stored = places.astype(np.float16).astype(np.float32)  # a map keeps float16 descriptors
    assert np.allclose(sims, queries @ stored.T, atol=1e-6)


def test_a_sequence_that_runs_off_the_database_is_compared_on_its_own_queries() -> None:
    """Hypothesis A found keyframes for the 10 newest sequence queries only (the rest of its
    sequence fell before the start of the database) and they look like the query: mean 0.5.
    Hypothesis B, far away, has all 20: as like on those 10, unlike on the rest (mean 0.3). Over
    the same 10 queries the two are equal, so A's margin is 0, not 0.2."""
    rows = np.array([10, 90])
    cfg = config(sequence_min_support=10)
    table = KeyframeTable(4)
    table.append(np.zeros((100, 4), np.float32), np.array([[10.0 * i, 0.0, 0.0] for i in range(100)]),
                 np.tile([0.0, 0.0, 0.0, 1.0], (100, 1)), np.arange(100.0))
    from qaa_vpr_ros.decision.decision import SequenceMatcher

    matcher = SequenceMatcher(cfg, table)
    a = np.r_[np.full(10, 0.5), np.full(10, np.nan)]
    b = np.r_[np.full(10, 0.5), np.full(10, 0.1)]
    sims = np.stack([a, b])
    conf = matcher._confidence(rows, np.array([0.5, 0.3]), sims)
    assert conf[0] == pytest.approx(0.0) and conf[1] == pytest.approx(0.3 - 0.5)
    # With full support on both, each is compared with the other's own mean (the plain margin).
    full = np.stack([np.full(20, 0.5), b])
    assert matcher._confidence(rows, np.array([0.5, 0.3]), full) == pytest.approx([0.2, -0.2])
    # A rival (online: the robot's own recent past) counts the same way, on A's queries.
    rival = np.r_[np.full(10, 0.45), np.full(10, 0.0)][None]
    assert matcher._confidence(rows, np.array([0.5, 0.3]), full, rival)[0] == pytest.approx(0.2)
    assert matcher._confidence(rows[:1], np.array([0.5]), a[None], rival)[0] == pytest.approx(0.05)


def test_a_batch_keeps_each_query_s_own_similarity_row() -> None:
    """Each track entry of a batch holds its own row, not a view that keeps the batch's whole
    (cameras x keyframes) product alive for as long as the entry lives."""
    rng = np.random.default_rng(7)
    places = unit(rng, 100)
    loc = Localizer(config(online_loop_closure=False), 32, "fp", prior_map=synthetic_map(places, 5.0))
    queries = [Query(f"cam{c}", 1000, c, f"cam{c}", pose=odometry_frame(*curve(5.0 * c))) for c in range(3)]
    loc.process(queries, places[:3])
    entries = [track.entries[-1] for track in loc.map_matcher._tracks.values()]
    assert len(entries) == 3
    for entry in entries:
        assert entry.table_sims is not None and entry.table_sims.shape == (100,) and entry.table_sims.base is None
