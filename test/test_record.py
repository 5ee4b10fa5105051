"""The loop-closure record: validation, lossless table round trip, pose algebra, covariance calibration."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qaa_vpr_ros.decision.record import (
    RECORD_DTYPE,
    CovarianceModel,
    LoopClosureRecord,
    matrix_quaternion,
    pose_matrix,
    records_from_table,
    records_to_table,
    transform_error,
)


def _yaw_q(yaw: float) -> tuple[float, float, float, float]:
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


def _record(**overrides) -> LoopClosureRecord:
    values = dict(
        query_stamp_sec=1700000123, query_stamp_nanosec=456_000_000, camera="/cam_front",
        match_keyframe_id=42, match_stamp_sec=1600000000, match_stamp_nanosec=5, match_session="summer_map",
        match_frame="map", query_keyframe_id=7, match_camera="/cam_rear",
        match_position=(653412.25, 7301234.75, 12.5), match_orientation=_yaw_q(0.3),
        query_frame="odom", query_position=(1.0, 2.0, 0.0), query_orientation=_yaw_q(-0.1),
        relative_translation=(3.5, -0.25, 0.0), relative_rotation=_yaw_q(0.05),
        covariance=CovarianceModel().covariance("sequence", 0.8), transform_source="sequence",
        score=0.8125, confidence=0.75, sequence_score=0.625, sequence_support=4, inliers=-1, rank=1, accepted=True)
    values.update(overrides)
    return LoopClosureRecord(**values)


def _covariance(nan_at: int = -1, skew_at: tuple[int, int] = (0, 0), skew: float = 0.0) -> tuple[float, ...]:
    """A valid 6x6 covariance with off-diagonal terms, optionally one NaN or one asymmetric pair."""
    cov = np.diag([0.5, 0.5, 0.5, 0.1, 0.1, 0.1])
    cov[0, 1] = cov[1, 0] = cov[2, 5] = cov[5, 2] = 0.01
    cov[skew_at] += skew
    flat = cov.ravel()
    if nan_at >= 0:
        flat[nan_at] = math.nan
    return tuple(float(v) for v in flat)


def test_valid_edge_cases_are_accepted():
    # Asymmetric within the tolerance (1e-9 relative: float rounding of a rotated covariance),
    # 16 four-byte characters (64 UTF-8 bytes, the limit) and an exactly symmetric covariance.
    assert _record(covariance=_covariance(skew_at=(1, 4), skew=1e-12)).covariance[10] == pytest.approx(1e-12)
    assert _record(camera="\U0001f697" * 16).camera == "\U0001f697" * 16
    assert _record(covariance=_covariance()).covariance[1] == 0.01


def test_table_round_trip_is_lossless():
    records = [_record(), _record(match_session="online", match_frame="odom", transform_source="geometry",
                                  inliers=87, accepted=False, camera="/ü/unicode")]
    table = records_to_table(records)
    assert table.dtype == RECORD_DTYPE and len(table) == 2
    assert records_from_table(table) == records
    assert records_from_table(table.tobytes()) == records  # as a subscriber gets PointCloud2.data
    assert LoopClosureRecord.from_row(records[0].to_row()) == records[0]


def test_truncated_table_bytes_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="whole number"):
        records_from_table(records_to_table([_record()]).tobytes()[:-3])


@pytest.mark.parametrize("bad, culprit", [
    ({"covariance": (1.0,) * 35}, "covariance"),
    ({"covariance": tuple(0.0 for _ in range(36))}, "diagonal"),
    ({"transform_source": "magic"}, "transform_source"),
    ({"relative_rotation": (0.0, 0.0, 0.0, 2.0)}, "relative_rotation"),
    ({"camera": "x" * 65}, "camera"),
    ({"match_frame": "\u00e9" * 33}, "match_frame"),  # 33 characters, 66 UTF-8 bytes
    ({"match_camera": 7}, "match_camera"),
    ({"match_position": (1.0, 2.0)}, "match_position"),
    ({"query_orientation": (0.0, 0.0, "w", 1.0)}, "query_orientation"),
    ({"covariance": _covariance(nan_at=8)}, "non-finite"),
    ({"covariance": _covariance(skew_at=(1, 4), skew=1e-6)}, "not symmetric"),
])
def test_bad_fields_raise_naming_the_field(bad, culprit):
    with pytest.raises(ValueError, match=culprit):
        _record(**bad)


def test_query_pose_in_match_frame_composes_match_pose_and_relative_transform():
    # Matched keyframe at (10, 0) facing +y; the query is 2 m ahead of it and turned 90 deg more.
    r = _record(match_position=(10.0, 0.0, 0.0), match_orientation=_yaw_q(math.pi / 2),
                relative_translation=(2.0, 0.0, 0.0), relative_rotation=_yaw_q(math.pi / 2))
    position, orientation = r.query_pose_in_match_frame()
    assert position == pytest.approx((10.0, 2.0, 0.0), abs=1e-9)
    assert orientation == pytest.approx(_yaw_q(math.pi), abs=1e-9) or \
        orientation == pytest.approx(tuple(-v for v in _yaw_q(math.pi)), abs=1e-9)


def test_quaternion_matrix_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        back = matrix_quaternion(pose_matrix((0, 0, 0), q)[:3, :3])
        assert min(np.abs(np.asarray(back) - q).max(), np.abs(np.asarray(back) + q).max()) < 1e-9


def test_calibration_recovers_the_spread_of_the_errors():
    rng = np.random.default_rng(1)
    sigmas = np.array([8.0, 1.5, 0.6, 0.02, 0.02, 0.1])
    errors = rng.normal(size=(4000, 6)) * sigmas
    model = CovarianceModel().calibrate({"none": errors})
    assert np.asarray(model.none) == pytest.approx(sigmas ** 2, rel=0.08)
    assert model.sequence == CovarianceModel().sequence  # no data: unchanged
    cov = np.asarray(model.covariance("none", confidence=1.0)).reshape(6, 6)
    assert np.diag(cov) == pytest.approx(sigmas ** 2, rel=0.08)
    assert np.all(np.diag(np.asarray(model.covariance("none", confidence=0.0)).reshape(6, 6)) > 9.9 * np.diag(cov))


def test_transform_error_of_a_known_offset():
    truth = pose_matrix((1.0, 2.0, 0.0), _yaw_q(0.4))
    estimate = truth @ pose_matrix((0.5, -0.2, 0.0), _yaw_q(0.03))
    assert transform_error(estimate, truth) == pytest.approx([0.5, -0.2, 0.0, 0.0, 0.0, 0.03], abs=1e-9)


@pytest.mark.parametrize("bad, message", [
    ({"none": (1.0, 2.0)}, "CovarianceModel.none must be 6 numbers, got 2"),
    ({"floor": ("a",) * 6}, "CovarianceModel.floor must be 6 numbers"),
    ({"geometry": (1.0, 1.0, 1.0, 1.0, 1.0, 0.0)}, "CovarianceModel.geometry must hold 6 finite variances > 0"),
])
def test_a_bad_covariance_model_is_named_as_such(bad, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        CovarianceModel(**bad)


def test_the_covariance_model_has_its_own_module_and_stays_importable_from_the_record():
    from qaa_vpr_ros.decision import covariance, record

    for name in ("CovarianceModel", "GEOMETRY_ROTATION_VARIANCE", "TRANSFORM_SOURCES"):
        assert getattr(record, name) is getattr(covariance, name), name
    assert CovarianceModel.__module__ == "qaa_vpr_ros.decision.covariance"
    assert LoopClosureRecord.__module__ == "qaa_vpr_ros.decision.record"
