"""The localization state (qaa_vpr_ros.decision.localization_state): localized / lost in image-stamp
time, and initialpose only on the first relocalization, after being lost, or for a correction."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qaa_vpr_ros.decision import LocalizeConfig, Query
from qaa_vpr_ros.decision.localization_state import LocalizationState
from qaa_vpr_ros.decision.record import LoopClosureRecord
from qaa_vpr_ros.poses import pose_matrix

T0 = 1_700_000_000.0
LOST_AFTER_S = 5.0


def _state(**overrides) -> LocalizationState:
    return LocalizationState(LocalizeConfig(lost_after_s=LOST_AFTER_S, **overrides).validate())


def _pose(x: float, y: float = 0.0, yaw: float = 0.0) -> np.ndarray:
    return pose_matrix((x, y, 0.0), (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)))


def test_lost_before_the_first_match_then_localized_with_initialpose_once() -> None:
    state = _state()
    assert state.current().state == "lost" and state.current().since is None
    first = state.update(T0, False, None, "")
    assert (first.state, first.since, first.last_match, first.publish_initialpose) == ("lost", T0, None, False)
    assert "never localized" in first.message and first.changed is False
    match = state.update(T0 + 1, True, _pose(10.0), "geometry")
    assert (match.state, match.since, match.changed, match.publish_initialpose) == ("localized", T0 + 1, True, True)
    assert match.reason == "first relocalization" and match.source == "geometry"
    assert match.message.startswith(f"localized since {T0 + 1:.3f}")
    # The same place again (the robot stands still, no odometry): nothing to correct.
    again = state.update(T0 + 2, True, _pose(10.0), "geometry")
    assert (again.state, again.since, again.changed, again.publish_initialpose) == ("localized", T0 + 1, False, False)


def test_lost_after_lost_after_s_of_stamps_without_a_match_and_recovery_publishes() -> None:
    state = _state()
    state.update(T0, True, _pose(0.0), "keyframe")
    just = state.update(T0 + LOST_AFTER_S, False, None, "")  # exactly lost_after_s: still localized
    assert just.state == "localized" and not just.changed
    lost = state.update(T0 + LOST_AFTER_S + 0.5, False, None, "")
    assert (lost.state, lost.since, lost.last_match, lost.changed) == ("lost", T0 + LOST_AFTER_S, T0, True)
    assert lost.message == f"lost since {T0 + LOST_AFTER_S:.3f}: no accepted map match since {T0:.3f}"
    assert state.current() == lost.__class__("lost", T0 + LOST_AFTER_S, T0, "keyframe")
    # Back at the very pose published before: after being lost, published again all the same.
    back = state.update(T0 + 20, True, _pose(0.0), "keyframe")
    assert (back.state, back.since, back.changed, back.publish_initialpose) == ("localized", T0 + 20, True, True)
    assert back.reason == "relocalized after being lost"


def test_a_match_after_a_silence_longer_than_lost_after_s_counts_as_after_lost() -> None:
    state = _state()
    state.update(T0, True, _pose(0.0), "geometry")
    update = state.update(T0 + 60, True, _pose(0.1), "geometry")  # no query in between (camera silent)
    assert update.publish_initialpose and update.reason == "relocalized after being lost"
    assert update.state == "localized" and update.since == T0 + 60


def test_lost_is_measured_in_image_stamps_not_calls() -> None:
    state = _state()
    state.update(T0, True, _pose(0.0), "geometry")
    for i in range(100):  # many unmatched queries within lost_after_s of stamps
        assert state.update(T0 + 0.04 * i, False, None, "").state == "localized"


def test_small_corrections_do_not_publish_a_big_one_does_with_odometry() -> None:
    state = _state(initialpose_min_correction_m=0.5, initialpose_min_correction_rad=0.2)
    # The map frame is the odometry frame moved by (100, 50) and turned by 0.3 rad.
    map_from_odom = _pose(100.0, 50.0, 0.3)
    assert state.update(T0, True, map_from_odom @ _pose(0.0), "geometry", _pose(0.0), "odom").publish_initialpose
    for i in range(1, 20):  # driving 1 m per frame, the map poses agree with the odometry within 0.3 m
        odom = _pose(float(i), 0.0, 0.01 * i)
        noisy = map_from_odom @ odom @ _pose(0.3 * (-1) ** i, 0.2, 0.1 * (-1) ** i)
        update = state.update(T0 + i, True, noisy, "geometry", odom, "odom")
        assert not update.publish_initialpose, (i, update.reason)
    # Odometry drifted: the map says the robot is 2 m from where the odometry puts it.
    odom = _pose(20.0, 0.0, 0.2)
    corrected = map_from_odom @ odom @ _pose(2.0)
    big = state.update(T0 + 20, True, corrected, "geometry", odom, "odom")
    assert big.publish_initialpose and big.reason.startswith("correction of 2.000 m")
    # The correction is now the reference: the next frame agreeing with it (and the odometry) is quiet.
    corrected_from_odom = corrected @ np.linalg.inv(odom)
    odom = _pose(21.0, 0.0, 0.2)
    quiet = state.update(T0 + 21, True, corrected_from_odom @ odom @ _pose(0.45), "geometry", odom, "odom")
    assert not quiet.publish_initialpose, quiet.reason
    # A rotation alone beyond initialpose_min_correction_rad publishes too.
    odom = _pose(22.0, 0.0, 0.2)
    turned = state.update(T0 + 22, True, corrected_from_odom @ odom @ _pose(0.0, 0.0, 0.25), "geometry",
                          odom, "odom")
    assert turned.publish_initialpose and turned.reason == "correction of 0.000 m, 0.250 rad"


def test_without_odometry_each_pose_is_compared_with_the_last_published_one() -> None:
    state = _state(initialpose_min_correction_m=0.5)
    assert state.update(T0, True, _pose(0.0), "geometry").publish_initialpose
    assert not state.update(T0 + 1, True, _pose(0.4), "geometry").publish_initialpose
    assert not state.update(T0 + 2, True, _pose(0.45), "geometry").publish_initialpose  # 0.45 from the published
    assert state.update(T0 + 3, True, _pose(0.6), "geometry").publish_initialpose
    assert not state.update(T0 + 4, True, _pose(1.0), "geometry").publish_initialpose  # 0.4 from 0.6
    # Odometry in another frame than at the last publication predicts nothing: compared directly.
    assert not state.update(T0 + 5, True, _pose(1.0), "geometry", _pose(50.0), "odom_b").publish_initialpose


def test_reset_starts_afresh_and_the_next_match_publishes() -> None:
    state = _state()
    state.update(T0, True, _pose(3.0), "geometry")
    state.reset()
    assert state.current().state == "lost" and state.current().last_match is None
    update = state.update(T0 + 1, True, _pose(3.0), "geometry")
    assert update.publish_initialpose and update.reason == "first relocalization"


def test_online_matches_never_localize_nor_publish() -> None:
    state = _state()
    update = state.update(T0, True, _pose(1.0), "online")
    assert (update.state, update.publish_initialpose, update.last_match) == ("lost", False, None)
    query = Query(camera="/cam", stamp_sec=int(T0) + 1, stamp_nanosec=0, pose=((1.0, 0.0, 0.0), (0, 0, 0, 1)))
    online = LoopClosureRecord(int(T0) + 1, 0, "/cam", 3, int(T0) - 100, 0, "online", "odom", accepted=True,
                               match_position=(1.0, 0.0, 0.0))
    assert state.observe(query, [online]).state == "lost"


def test_observe_takes_the_accepted_map_record_and_its_robot_pose() -> None:
    state = _state()
    query = Query(camera="/cam", stamp_sec=int(T0), stamp_nanosec=500_000_000)
    rejected = LoopClosureRecord(int(T0), 500_000_000, "/cam", 1, 1, 0, "map-1", "map", match_position=(9.0, 9.0, 0.0),
                                 rank=0)
    assert state.observe(query, [rejected]).state == "lost"
    no_pose = LoopClosureRecord(int(T0), 500_000_000, "/cam", 2, 1, 0, "map-1", "map", accepted=True)
    update = state.observe(query, [no_pose])  # a keyframe without a pose: localized, nothing to publish
    assert (update.state, update.publish_initialpose) == ("localized", False)
    accepted = LoopClosureRecord(int(T0) + 1, 0, "/cam", 2, 1, 0, "map-1", "map", accepted=True,
                                 match_position=(10.0, 0.0, 0.0), relative_translation=(1.0, 0.0, 0.0),
                                 transform_source="geometry")
    update = state.observe(Query(camera="/cam", stamp_sec=int(T0) + 1, stamp_nanosec=0), [rejected, accepted])
    assert update.publish_initialpose and update.source == "geometry" and update.last_match == T0 + 1
    # The published pose is match pose * T_match_query (11 m): 11.3 is within 0.5 m of it.
    near = LoopClosureRecord(int(T0) + 2, 0, "/cam", 2, 1, 0, "map-1", "map", accepted=True,
                             match_position=(10.0, 0.0, 0.0), relative_translation=(1.3, 0.0, 0.0))
    assert not state.observe(Query(camera="/cam", stamp_sec=int(T0) + 2, stamp_nanosec=0), [near]).publish_initialpose


def test_parameters_have_ranges() -> None:
    for name, bad in (("lost_after_s", -1.0), ("initialpose_min_correction_m", -0.1),
                      ("initialpose_min_correction_rad", 4.0)):
        problems = LocalizeConfig(**{name: bad}).problems()
        assert any(name in p for p in problems), (name, problems)
    assert LocalizeConfig().lost_after_s == pytest.approx(5.0)


def test_the_pipeline_resets_it_with_its_session_and_follows_parameter_changes() -> None:
    from qaa_vpr_ros.extrinsics import ExtrinsicsSource
    from qaa_vpr_ros.pipeline import FramePipeline

    config = LocalizeConfig().validate()
    pipeline = FramePipeline(config, ExtrinsicsSource(config.base_frame, {}))
    pipeline.localization.update(T0, True, _pose(0.0), "geometry")
    assert pipeline.localization.current().state == "localized"
    pipeline.reset()  # ~/reset, and what a jump back of the stamps calls
    assert pipeline.localization.current() == LocalizationState(config).current()
    pipeline.set_config(LocalizeConfig(lost_after_s=1.0).validate())
    pipeline.localization.update(T0 + 10, True, _pose(0.0), "geometry")
    assert pipeline.localization.update(T0 + 11.5, False, None, "").state == "lost"
