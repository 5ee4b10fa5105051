"""pose_graph: drifting odometry + loop closures -> corrected trajectory; a wrong closure is rejected."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qaa_vpr_ros.decision.record import CovarianceModel, LoopClosureRecord, matrix_quaternion, pose_matrix
from qaa_vpr_ros.pose_graph import PoseGraph, PoseGraphConfig, calibrate_odometry_noise


def _yaw_pose(x: float, y: float, yaw: float) -> np.ndarray:
    return pose_matrix((x, y, 0.0), (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)))


def _route(steps: int = 200, step_m: float = 5.0) -> list[np.ndarray]:
    """Ground truth: a rectangle-ish loop with four 90 degree turns (returns near the start)."""
    poses, x, y, yaw = [], 0.0, 0.0, 0.0
    side = steps // 4
    for i in range(steps):
        poses.append(_yaw_pose(x, y, yaw))
        if i % side == side - 1:
            yaw += math.pi / 2
        x, y = x + step_m * math.cos(yaw), y + step_m * math.sin(yaw)
    return poses


def _drift(truth: list[np.ndarray], seed: int = 0, heading_walk: float = 0.03, scale: float = 1.04) -> list[np.ndarray]:
    """Odometry whose heading error is a random walk (each step adds N(0, heading_walk) rad of
    yaw) and whose distances are ``scale`` times too long."""
    rng = np.random.default_rng(seed)
    out = [truth[0].copy()]
    for a, b in zip(truth, truth[1:], strict=False):
        delta = np.linalg.inv(a) @ b
        noisy = delta.copy()
        noisy[:3, 3] *= scale
        noisy = noisy @ _yaw_pose(0, 0, rng.normal(0.0, heading_walk))
        out.append(out[-1] @ noisy)
    return out


def _record(query_t: float, match_t: float, session: str, match_pose: np.ndarray | None,
            relative: np.ndarray, source: str = "sequence") -> LoopClosureRecord:
    cov = CovarianceModel(sequence=(4.0, 1.0, 1.0, 0.01, 0.01, 0.01)).covariance(source)
    mp = match_pose if match_pose is not None else np.eye(4)
    return LoopClosureRecord(
        query_stamp_sec=int(query_t), query_stamp_nanosec=round((query_t % 1) * 1e9), camera="/cam",
        match_keyframe_id=0, match_stamp_sec=int(match_t), match_stamp_nanosec=round((match_t % 1) * 1e9),
        match_session=session, match_frame="map" if session != "online" else "odom",
        match_position=tuple(mp[:3, 3]) if match_pose is not None else (math.nan,) * 3,
        match_orientation=matrix_quaternion(mp[:3, :3]),
        relative_translation=tuple(relative[:3, 3]), relative_rotation=matrix_quaternion(relative[:3, :3]),
        covariance=cov, transform_source=source, score=0.9, confidence=1.0, accepted=True)


def _ate(estimates: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(np.sqrt(np.mean([np.sum((e[:3, 3] - t[:3, 3]) ** 2) for e, t in zip(estimates, truth, strict=True)])))


def _graph_with_odometry(odom: list[np.ndarray]) -> PoseGraph:
    graph = PoseGraph(PoseGraphConfig(node_spacing_m=4.0, odom_translation_noise=0.05, odom_rotation_noise=0.01))
    for i, pose in enumerate(odom):
        graph.add_odometry(100.0 + i, pose)
    return graph


def _solved(graph: PoseGraph, n: int) -> list[np.ndarray]:
    path = dict(graph.corrected_path())
    return [path[100.0 + i] for i in range(n)]


@pytest.mark.parametrize("loss", ["gnc", "cauchy"])
def test_map_matches_remove_drift_and_a_wrong_one_does_not_bend_the_graph(loss):
    truth = _route()
    odom = _drift(truth)
    graph = _graph_with_odometry(odom)
    graph.config.loss = loss
    # Map matches every 10th pose: the matched map keyframe is 3 m behind the query (truth).
    behind = _yaw_pose(3.0, 0.0, 0.0)
    for i in range(5, len(truth), 10):
        match = truth[i] @ np.linalg.inv(behind)
        graph.add_loop_closure(_record(100.0 + i, 50.0, "summer_map", match, behind))
    wrong_query = 120
    wrong_match = truth[30]  # 90 places away: a perceptual-aliasing match
    graph.add_loop_closure(_record(100.0 + wrong_query, 50.0, "summer_map", wrong_match, np.eye(4)))
    graph.optimize()
    corrected = _solved(graph, len(truth))
    ate_odom, ate_corrected = _ate(odom, truth), _ate(corrected, truth)
    assert ate_odom > 50.0  # the drift is real
    assert ate_corrected < 0.1 * ate_odom
    assert np.linalg.norm(corrected[wrong_query][:3, 3] - truth[wrong_query][:3, 3]) < 5.0
    inliers = [e.inlier for e in graph.edges]
    assert inliers[-1] is False and all(inliers[:-1])


def test_online_loop_closure_corrects_a_drifting_loop_and_rejects_a_wrong_one():
    truth = _route()
    odom = _drift(truth, seed=3)
    graph = _graph_with_odometry(odom)
    n = len(truth)
    # Revisit: the last poses come back near the start; closures between pose i (end) and j (start).
    for i, j in ((n - 1, 0), (n - 2, 1), (n - 3, 2), (n // 2, n // 2 - 40)):  # last one is wrong
        relative = np.linalg.inv(truth[j]) @ truth[i] if i != n // 2 else np.eye(4)
        graph.add_loop_closure(_record(100.0 + i, 100.0 + j, "online", None, relative))
    graph.optimize()
    corrected = _solved(graph, n)
    end_error_odom = np.linalg.norm(odom[-1][:3, 3] - truth[-1][:3, 3])
    end_error = np.linalg.norm(corrected[-1][:3, 3] - truth[-1][:3, 3])
    assert end_error < 0.2 * end_error_odom
    assert [e.inlier for e in graph.edges] == [True, True, True, False]
    assert np.allclose(corrected[0], odom[0], atol=1e-3)  # online only: the graph stays in the odom frame


def test_map_to_odom_maps_the_latest_odometry_pose_onto_its_corrected_pose():
    truth = _route(60)
    odom = [_yaw_pose(100.0, -50.0, 1.0) @ p for p in truth]  # odom frame rotated/shifted vs map
    graph = _graph_with_odometry(odom)
    for i in range(0, 60, 6):
        graph.add_loop_closure(_record(100.0 + i, 50.0, "m", truth[i], np.eye(4)))
    graph.optimize()
    correction = graph.map_to_odom()
    assert np.allclose(correction @ odom[-1], truth[-1], atol=0.5)
    assert np.allclose(correction, np.linalg.inv(_yaw_pose(100.0, -50.0, 1.0)), atol=0.05)


def test_loop_closure_before_its_odometry_waits_until_the_odometry_arrives():
    truth = _route(40)
    graph = PoseGraph()
    for i in range(10):
        graph.add_odometry(100.0 + i, truth[i])
    assert graph.add_loop_closure(_record(125.0, 50.0, "m", truth[25], np.eye(4))) is False
    assert len(graph.pending) == 1 and not graph.edges
    for i in range(10, 40):
        graph.add_odometry(100.0 + i, truth[i])
    assert not graph.pending and len(graph.edges) == 1


def test_bad_input_is_rejected_with_the_culprit():
    graph = PoseGraph()
    graph.add_odometry(5.0, np.eye(4))
    with pytest.raises(ValueError, match="older"):
        graph.add_odometry(4.0, np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        graph.add_odometry(6.0, np.eye(3))
    with pytest.raises(ValueError, match="loss"):
        PoseGraphConfig(loss="l1")


def test_odometry_noise_calibration_measures_the_drift():
    truth = _route(400, 1.0)
    little = calibrate_odometry_noise(_drift(truth, heading_walk=0.001, scale=1.0), truth, 5.0)
    much = calibrate_odometry_noise(_drift(truth, heading_walk=0.01, scale=1.05), truth, 5.0)
    assert much[0] > 5 * little[0] and much[1] > 5 * little[1]
    assert much[0] == pytest.approx(0.05, rel=0.3)  # the scale error, all along track
