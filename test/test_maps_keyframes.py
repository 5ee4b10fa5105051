"""Pose interpolation, keyframe selection and WGS84 -> UTM."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qaa_vpr_ros.keyframes import (
    KeyframeSelector,
    PoseSkip,
    PoseTrack,
    SelectionConfig,
    latlon_to_utm,
    quaternion_angle,
    slerp,
    utm_zone,
    yaw_of,
)

S = 1_000_000_000


def yaw_quat(yaw: float) -> tuple[float, float, float, float]:
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


def test_slerp_takes_the_short_way_and_keeps_unit_length():
    q0, q1 = np.array(yaw_quat(0.0)), np.array(yaw_quat(math.pi / 2))
    mid = slerp(q0, q1, 0.5)
    assert yaw_of(mid) == pytest.approx(math.pi / 4)
    assert np.linalg.norm(mid) == pytest.approx(1.0)
    assert yaw_of(slerp(q0, -q1, 0.5)) == pytest.approx(math.pi / 4)  # -q is the same rotation
    assert yaw_of(slerp(q0, q1, 0.25)) == pytest.approx(math.pi / 8)


def test_track_interpolates_linearly_and_with_slerp():
    track = PoseTrack.from_samples(
        [2 * S, 0, 1 * S], [(2.0, 4.0, 0.0), (0.0, 0.0, 0.0), (1.0, 2.0, 0.0)],
        [yaw_quat(1.0), yaw_quat(0.0), yaw_quat(0.5)],
    )
    position, orientation = track.interpolate(int(1.5 * S))
    assert position == pytest.approx((1.5, 3.0, 0.0))
    assert yaw_of(orientation) == pytest.approx(0.75)
    assert track.interpolate(S)[0] == pytest.approx((1.0, 2.0, 0.0))  # exact sample


def test_images_outside_the_range_or_in_gaps_get_no_pose():
    track = PoseTrack.from_samples([0, S, 5 * S, 6 * S], np.zeros((4, 3)), [yaw_quat(0)] * 4, max_gap_s=2.0)
    assert track.interpolate(-1) is PoseSkip.OUTSIDE
    assert track.interpolate(6 * S + 1) is PoseSkip.OUTSIDE
    assert track.interpolate(3 * S) is PoseSkip.GAP
    assert not isinstance(track.interpolate(int(5.5 * S)), PoseSkip)


def test_repeated_stamps_are_dropped_and_quaternions_normalised():
    track = PoseTrack.from_samples([0, 0, S], [(0, 0, 0), (9, 9, 9), (1, 0, 0)],
                                   [(0, 0, 0, 2.0), (0, 0, 0, 1.0), (0, 0, 0, 0)])
    assert len(track) == 2
    np.testing.assert_allclose(track.orientations, [[0, 0, 0, 1], [0, 0, 0, 1]])


def run_selector(config: SelectionConfig, samples):
    selector = KeyframeSelector(config)
    chosen = []
    for camera, stamp, position, orientation in samples:
        if selector.wants(camera, stamp, position, orientation):
            selector.accept(camera, stamp, position, orientation)
            chosen.append((camera, stamp))
    return chosen


def test_selection_by_time_distance_and_rotation():
    straight = [("/c", i * S // 10, (0.5 * i, 0.0, 0.0), yaw_quat(0.0)) for i in range(10)]
    assert len(run_selector(SelectionConfig(), straight)) == 10
    assert [s for _, s in run_selector(SelectionConfig(min_interval_s=0.25), straight)] == [0, 3 * S // 10,
                                                                                               6 * S // 10,
                                                                                               9 * S // 10]
    assert len(run_selector(SelectionConfig(min_distance_m=1.0), straight)) == 5
    turning = [("/c", i * S, (0.0, 0.0, 0.0), yaw_quat(0.1 * i)) for i in range(10)]
    assert len(run_selector(SelectionConfig(min_distance_m=1.0), turning)) == 1  # standing still
    assert len(run_selector(SelectionConfig(min_distance_m=1.0, min_rotation_rad=0.29), turning)) == 4


def test_selection_is_per_camera_and_without_pose_uses_time_only():
    samples = [(cam, i * S, None, None) for i in range(4) for cam in ("/a", "/b")]
    chosen = run_selector(SelectionConfig(min_interval_s=2.0, min_distance_m=5.0), samples)
    assert chosen == [("/a", 0), ("/b", 0), ("/a", 2 * S), ("/b", 2 * S)]


def test_selection_config_rejects_negative_values():
    with pytest.raises(ValueError, match="min_distance_m"):
        SelectionConfig(min_distance_m=-1.0)


def test_quaternion_angle():
    assert quaternion_angle(yaw_quat(0.2), yaw_quat(-0.3)) == pytest.approx(0.5)


def test_utm_matches_reference_values():
    easting, northing, zone = latlon_to_utm(51.2, 7.5)  # the `utm` package's documented example
    assert zone == "32U"
    assert easting == pytest.approx(395201.310, abs=0.01) and northing == pytest.approx(5673135.241, abs=0.01)
    easting, northing, zone = latlon_to_utm(45.0, 9.0)  # on the central meridian: k0 x meridian arc
    assert easting == pytest.approx(500000.0, abs=1e-6) and northing == pytest.approx(4982950.40, abs=0.01)
    assert zone == "32T"
    _, northing, zone = latlon_to_utm(-33.9, 18.4)
    assert zone == "34H" and 6.0e6 < northing < 1.0e7  # southern false northing


def test_utm_zone_exceptions_and_forced_zone():
    assert utm_zone(60.0, 5.0) == "32V"  # south-west Norway
    assert utm_zone(78.0, 15.0) == "33X"  # Svalbard
    assert utm_zone(65.0, 13.0) == "33W"
    east_in_32, _, zone = latlon_to_utm(65.0, 13.0, zone="32W")
    assert zone == "32W" and east_in_32 > latlon_to_utm(65.0, 13.0)[0]
    with pytest.raises(ValueError, match="UPS"):
        utm_zone(85.0, 0.0)


# --- the view rule ---------------------------------------------------------------------------------
def sift_like(seed: int, n: int = 200):
    from qaa_vpr_ros.local_features import LocalFeatures

    rng = np.random.default_rng(seed)
    return LocalFeatures(rng.uniform(0, 640, (n, 2)).astype(np.float32), rng.integers(0, 256, (n, 128), np.uint8))


class CountingView:
    """A view-rule input that counts how often its features were computed."""

    def __init__(self, features) -> None:
        self.features, self.calls = features, 0

    def __call__(self):
        self.calls += 1
        return self.features


def test_the_view_rule_takes_a_changed_view_and_extracts_only_where_the_pose_rules_skip():
    from qaa_vpr_ros.keyframes import Selected, SelectionConfig

    selector = KeyframeSelector(SelectionConfig(min_interval_s=0.5, min_distance_m=1.0, min_view_overlap=0.1))
    same, other = sift_like(1), sift_like(2)
    first = CountingView(same)
    assert selector.decide("/cam", 0, (0, 0, 0), None, first) is Selected.FIRST
    selector.accept("/cam", 0, (0, 0, 0), None, first)
    too_soon = CountingView(other)
    assert selector.decide("/cam", 100_000_000, (0, 0, 0), None, too_soon) is None  # the interval rule
    moved = CountingView(other)
    assert selector.decide("/cam", 10**9, (2, 0, 0), None, moved) is Selected.MOTION
    assert first.calls == too_soon.calls == moved.calls == 0  # no features computed for either
    still = CountingView(same)
    assert selector.decide("/cam", 10**9, (0, 0, 0), None, still) is None  # same view, no motion
    changed = CountingView(other)
    assert selector.decide("/cam", 10**9, (0, 0, 0), None, changed) is Selected.VIEW
    assert selector.decide("/cam", 10**9, (0, 0, 0), None, CountingView(other)) is Selected.VIEW
    assert first.calls == 1 and still.calls == changed.calls == 1  # the reference computed once
    selector.accept("/cam", 10**9, (0, 0, 0), None, changed)
    assert selector.decide("/cam", 2 * 10**9, (0, 0, 0), None, CountingView(other)) is None
    # Off (0) or without features for the image or its last keyframe: the pose rules alone.
    selector.accept("/cam", 3 * 10**9, (0, 0, 0), None, None)
    assert selector.decide("/cam", 4 * 10**9, (0, 0, 0), None, CountingView(same)) is None
    off = KeyframeSelector(SelectionConfig(min_distance_m=1.0))
    off.accept("/cam", 0, (0, 0, 0), None, CountingView(same))
    assert off.decide("/cam", 10**9, (0, 0, 0), None, CountingView(other)) is None


def test_view_overlap_is_the_share_of_the_images_features_matched_by_the_ratio_test():
    from qaa_vpr_ros.keyframes import view_overlap
    from qaa_vpr_ros.local_features import LocalFeatures

    a, b = sift_like(3), sift_like(4)
    half = LocalFeatures(np.r_[a.keypoints[:100], b.keypoints[:100]], np.r_[a.descriptors[:100], b.descriptors[:100]])
    assert view_overlap(a, a) == 1.0 and view_overlap(b, a) < 0.05
    assert view_overlap(half, a) == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="min_view_overlap"):
        from qaa_vpr_ros.keyframes import SelectionConfig

        SelectionConfig(min_view_overlap=1.5)
