"""A small pose-graph back end on GTSAM: odometry + our loop-closure records -> corrected poses.

Pure Python (no ROS); :mod:`qaa_vpr_ros.pose_graph_node` is its ROS edge. For robots without a
SLAM back end, and for measuring what our loop closures do to a trajectory.

The graph (rebuilt and solved in batch on each :meth:`PoseGraph.optimize`, warm-started from the
previous solution):

- one ``Pose3`` node per odometry keyframe (every ``node_spacing_m`` of travel or
  ``node_rotation_rad`` of turn) and per stamp a loop closure refers to;
- ``BetweenFactorPose3`` between consecutive nodes from the odometry, with a noise that grows
  with the distance travelled (``odom_translation_noise`` x distance, ``odom_rotation_noise`` x
  sqrt(distance); :func:`calibrate_odometry_noise` measures both against ground truth);
- an online loop closure (``match_session == "online"``) is a ``BetweenFactorPose3`` between the
  matched node and the query node (``T_match_query``); a match against a prebuilt map is a
  ``PriorFactorPose3`` on the query node at ``match pose * T_match_query`` in the map frame;
- loop closures are the only factors that can be wrong, so they are the ones with a robust loss:
  graduated non-convexity with a truncated quadratic (``loss="gnc"``, GTSAM's
  ``GncLMOptimizer``; the odometry is declared a known inlier), or an M-estimator (``"cauchy"``,
  ``"huber"``) with Levenberg-Marquardt. One bad edge therefore cannot bend the graph; after
  solving, each loop-closure edge is marked inlier or outlier (:attr:`Edge.inlier`).

Output frame: ``map`` poses. Without any map match the first node stays at its odometry pose
(map = odom until a loop closure corrects it); with map matches the prebuilt map's frame, with
``map -> odom`` = corrected pose * odometry pose^-1 at the latest node (:meth:`PoseGraph.map_to_odom`).
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import gtsam
import numpy as np

from qaa_vpr_ros.decision.record import LoopClosureRecord
from qaa_vpr_ros.poses import pose_matrix, rotation_angle, rotation_vector

__all__ = ["Edge", "PoseGraph", "PoseGraphConfig", "calibrate_odometry_noise"]

LOSSES = ("gnc", "cauchy", "huber")
# ROS covariance order (x, y, z, roll, pitch, yaw) -> GTSAM Pose3 tangent order (rx, ry, rz, x, y, z)
_ROS_TO_GTSAM = np.array([3, 4, 5, 0, 1, 2])


@dataclass
class PoseGraphConfig:
    """Parameters of :class:`PoseGraph` (the node exposes each as a ROS parameter)."""

    node_spacing_m: float = 5.0  # a new odometry node after this much travel ...
    node_rotation_rad: float = 0.3  # ... or this much rotation
    odom_translation_noise: float = 0.05  # translation sigma per metre travelled (fraction)
    odom_rotation_noise: float = 0.01  # rotation sigma, rad per sqrt(metre travelled)
    odom_min_sigma: tuple[float, float] = (0.01, 0.001)  # floor (m, rad) of every odometry edge
    loss: str = "gnc"  # robust loss on loop closures: gnc (truncated quadratic), cauchy, huber
    inlier_probability: float = 0.99  # chi-square probability of the inlier threshold
    stamp_tolerance_s: float = 0.5  # a loop closure's stamp must be this close to odometry
    max_iterations: int = 100

    def __post_init__(self) -> None:
        problems = []
        for name in ("node_spacing_m", "odom_translation_noise", "odom_rotation_noise", "stamp_tolerance_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} = {value!r} must be > 0")
        if not (math.isfinite(self.node_rotation_rad) and self.node_rotation_rad > 0):
            problems.append(f"node_rotation_rad = {self.node_rotation_rad!r} must be > 0")
        if self.loss not in LOSSES:
            problems.append(f"loss = {self.loss!r} is not one of {list(LOSSES)}")
        if not 0.5 <= self.inlier_probability < 1.0:
            problems.append(f"inlier_probability = {self.inlier_probability!r} must be in [0.5, 1)")
        if len(self.odom_min_sigma) != 2 or any(not (v > 0) for v in self.odom_min_sigma):
            problems.append(f"odom_min_sigma = {self.odom_min_sigma!r} must be two values > 0 (m, rad)")
        if problems:
            raise ValueError("PoseGraphConfig: " + "; ".join(problems))


@dataclass
class Edge:
    """A loop closure in the graph and what the solution made of it."""

    record: LoopClosureRecord
    query_stamp: float
    match_stamp: float | None  # None for a map match (a prior on the query node)
    inlier: bool = True
    chi2: float = math.nan  # squared whitened residual at the solution (unweighted)


@dataclass
class _Node:
    stamp: float
    odom: np.ndarray  # 4x4 odometry pose
    estimate: np.ndarray | None = None  # 4x4 corrected pose (map frame), None until solved


@dataclass
class _Solution:
    map_anchored: bool = False
    estimates: dict[float, np.ndarray] = field(default_factory=dict)


def _pose3(matrix: np.ndarray) -> gtsam.Pose3:
    return gtsam.Pose3(np.asarray(matrix, dtype=np.float64))


def _gtsam_covariance(ros_covariance: np.ndarray, relative: np.ndarray) -> np.ndarray:
    """A record's covariance (ROS order, left perturbation in the match frame) as GTSAM's right
    perturbation of ``relative`` in (rotation, translation) order."""
    cov = np.asarray(ros_covariance, dtype=np.float64)[np.ix_(_ROS_TO_GTSAM, _ROS_TO_GTSAM)]
    adjoint = _pose3(relative).inverse().AdjointMap()
    cov = adjoint @ cov @ adjoint.T
    return 0.5 * (cov + cov.T)


class PoseGraph:
    """Odometry + loop-closure records -> corrected trajectory. Not thread-safe."""

    def __init__(self, config: PoseGraphConfig | None = None) -> None:
        self.config = config or PoseGraphConfig()
        self._odom_stamps: list[float] = []
        self._odom_poses: list[np.ndarray] = []
        self._nodes: dict[float, _Node] = {}
        self._last_node_stamp: float | None = None
        self.edges: list[Edge] = []
        self.pending: list[LoopClosureRecord] = []
        self._solution = _Solution()
        self._map_frame_anchor: np.ndarray | None = None  # T_map_odom used for initial guesses

    # --- inputs -------------------------------------------------------------------------------
    def add_odometry(self, stamp: float, pose: np.ndarray) -> None:
        """One odometry pose (4x4, odometry frame) at ``stamp`` (s). Stamps must increase."""
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError(f"odometry pose at {stamp} must be a finite 4x4 matrix, got shape {pose.shape}")
        if self._odom_stamps and stamp <= self._odom_stamps[-1]:
            if stamp == self._odom_stamps[-1]:
                return
            raise ValueError(f"odometry stamp {stamp} is older than the previous one {self._odom_stamps[-1]}: "
                             "reset the graph when time jumps back (a replayed bag)")
        self._odom_stamps.append(stamp)
        self._odom_poses.append(pose)
        last = self._nodes.get(self._last_node_stamp) if self._last_node_stamp is not None else None
        if last is None or self._far_enough(last.odom, pose):
            self._nodes[stamp] = _Node(stamp, pose)
            self._last_node_stamp = stamp
        if self.pending:
            waiting, self.pending = self.pending, []
            for record in waiting:
                self.add_loop_closure(record)

    def _far_enough(self, a: np.ndarray, b: np.ndarray) -> bool:
        delta = np.linalg.inv(a) @ b
        angle = rotation_angle(delta[:3, :3])
        return (np.linalg.norm(delta[:3, 3]) >= self.config.node_spacing_m
                or angle >= self.config.node_rotation_rad)

    def _node_at(self, stamp: float) -> float | None:
        """The node stamp for an odometry-covered ``stamp`` (created from the nearest odometry pose)."""
        if not self._odom_stamps:
            return None
        i = bisect.bisect_left(self._odom_stamps, stamp)
        best = min((j for j in (i - 1, i) if 0 <= j < len(self._odom_stamps)),
                   key=lambda j: abs(self._odom_stamps[j] - stamp))
        if abs(self._odom_stamps[best] - stamp) > self.config.stamp_tolerance_s:
            return None
        node_stamp = self._odom_stamps[best]
        if node_stamp not in self._nodes:
            self._nodes[node_stamp] = _Node(node_stamp, self._odom_poses[best])
        return node_stamp

    def add_loop_closure(self, record: LoopClosureRecord) -> bool:
        """Add an accepted record as an edge. False when odometry does not cover its stamps yet
        (kept pending and retried as odometry arrives) or when it was not accepted."""
        if not record.accepted:
            return False
        if self._odom_stamps and record.query_stamp > self._odom_stamps[-1] + self.config.stamp_tolerance_s:
            self.pending.append(record)
            return False
        query = self._node_at(record.query_stamp)
        if query is None:
            if not self._odom_stamps or record.query_stamp > self._odom_stamps[0]:
                self.pending.append(record)
            return False
        if record.is_online:
            match = self._node_at(record.match_stamp)
            if match is None or match == query:
                return False
            self.edges.append(Edge(record, query, match))
        else:
            if not all(math.isfinite(v) for v in record.match_position):
                raise ValueError(f"map match of keyframe {record.match_keyframe_id} in session "
                                 f"{record.match_session!r} has no pose: the map was built without poses")
            self.edges.append(Edge(record, query, None))
        return True

    # --- solving ------------------------------------------------------------------------------
    def _odom_noise(self, delta: np.ndarray) -> gtsam.noiseModel.Base:
        cfg = self.config
        dist = float(np.linalg.norm(delta[:3, 3]))
        t = max(cfg.odom_translation_noise * dist, cfg.odom_min_sigma[0])
        r = max(cfg.odom_rotation_noise * math.sqrt(dist), cfg.odom_min_sigma[1])
        return gtsam.noiseModel.Diagonal.Sigmas(np.array([r, r, r, t, t, t]))

    def _loop_noise(self, edge: Edge, robust: bool) -> gtsam.noiseModel.Base:
        cov = _gtsam_covariance(edge.record.covariance_matrix, edge.record.relative_matrix)
        gaussian = gtsam.noiseModel.Gaussian.Covariance(cov)
        if not robust or self.config.loss == "gnc":
            return gaussian
        threshold = math.sqrt(self._chi2_threshold())
        estimator = (gtsam.noiseModel.mEstimator.Cauchy.Create(threshold) if self.config.loss == "cauchy"
                     else gtsam.noiseModel.mEstimator.Huber.Create(threshold))
        return gtsam.noiseModel.Robust.Create(estimator, gaussian)

    def _chi2_threshold(self) -> float:
        from scipy.stats import chi2

        return float(chi2.ppf(self.config.inlier_probability, 6))

    def _map_prior(self, edge: Edge) -> np.ndarray:
        r = edge.record
        return pose_matrix(r.match_position, r.match_orientation) @ r.relative_matrix

    def _initial_anchor(self, stamps: list[float]) -> np.ndarray:
        """T_map_odom for the initial guess: the candidate (one per map match) that most other map
        matches agree with within 3 sigma of position. Only an initial guess; the solver decides."""
        candidates = []
        for edge in self.edges:
            if edge.match_stamp is None:
                candidates.append((edge, self._map_prior(edge) @ np.linalg.inv(self._nodes[edge.query_stamp].odom)))
        if not candidates:
            return np.eye(4)
        best, best_votes = np.eye(4), -1
        for _, anchor in candidates:
            votes = 0
            for edge, _ in candidates:
                predicted = anchor @ self._nodes[edge.query_stamp].odom
                sigma = math.sqrt(max(np.diag(edge.record.covariance_matrix)[:3].max(), 1e-6))
                votes += np.linalg.norm(predicted[:3, 3] - self._map_prior(edge)[:3, 3]) <= 3.0 * sigma + 1.0
            if votes > best_votes:
                best, best_votes = anchor, votes
        return best

    def optimize(self) -> None:
        """Solve the graph (batch) and mark each loop-closure edge inlier or outlier."""
        stamps = sorted(self._nodes)
        if not stamps:
            return
        index = {s: i for i, s in enumerate(stamps)}
        has_map = any(e.match_stamp is None for e in self.edges)
        initial = gtsam.Values()
        if has_map and not self._solution.map_anchored:
            anchor = self._initial_anchor(stamps)
            previous = {}
        else:
            anchor = np.eye(4)
            previous = self._solution.estimates
        last_known: tuple[np.ndarray, np.ndarray] | None = None  # (odom, estimate) of the previous node
        for s in stamps:
            node = self._nodes[s]
            if s in previous:
                guess = previous[s]
            elif last_known is not None:
                guess = last_known[1] @ np.linalg.inv(last_known[0]) @ node.odom
            else:
                guess = anchor @ node.odom
            last_known = (node.odom, guess)
            initial.insert(index[s], _pose3(guess))

        graph = gtsam.NonlinearFactorGraph()
        first = self._nodes[stamps[0]]
        if has_map:  # the map matches place the graph; a weak prior keeps it solvable without them
            prior_sigmas = np.array([10.0] * 3 + [1e4] * 3)
            prior_pose = initial.atPose3(0)
        else:  # odometry frame = map frame until a map match arrives
            prior_sigmas = np.array([1e-6] * 3 + [1e-4] * 3)
            prior_pose = _pose3(first.odom)
        graph.add(gtsam.PriorFactorPose3(0, prior_pose, gtsam.noiseModel.Diagonal.Sigmas(prior_sigmas)))
        known = [0]
        for a, b in zip(stamps, stamps[1:], strict=False):
            delta = np.linalg.inv(self._nodes[a].odom) @ self._nodes[b].odom
            known.append(graph.size())
            graph.add(gtsam.BetweenFactorPose3(index[a], index[b], _pose3(delta), self._odom_noise(delta)))
        loop_factors = []
        for edge in self.edges:
            loop_factors.append(graph.size())
            noise = self._loop_noise(edge, robust=True)
            if edge.match_stamp is None:
                graph.add(gtsam.PriorFactorPose3(index[edge.query_stamp], _pose3(self._map_prior(edge)), noise))
            else:
                graph.add(gtsam.BetweenFactorPose3(index[edge.match_stamp], index[edge.query_stamp],
                                                   _pose3(edge.record.relative_matrix), noise))

        if self.config.loss == "gnc" and self.edges:
            params = gtsam.GncLMParams(gtsam.LevenbergMarquardtParams())
            params.setLossType(gtsam.GncLossType.TLS)
            params.setKnownInliers(known)
            optimizer = gtsam.GncLMOptimizer(graph, initial, params)
            optimizer.setInlierCostThresholdsAtProbability(self.config.inlier_probability)
            result = optimizer.optimize()
            weights = np.asarray(optimizer.getWeights())
        else:
            params = gtsam.LevenbergMarquardtParams()
            params.setMaxIterations(self.config.max_iterations)
            result = gtsam.LevenbergMarquardtOptimizer(graph, initial, params).optimize()
            weights = None

        threshold = self._chi2_threshold()
        for edge, factor_index in zip(self.edges, loop_factors, strict=True):
            plain = self._loop_noise(edge, robust=False)
            if edge.match_stamp is None:
                factor = gtsam.PriorFactorPose3(index[edge.query_stamp], _pose3(self._map_prior(edge)), plain)
            else:
                factor = gtsam.BetweenFactorPose3(index[edge.match_stamp], index[edge.query_stamp],
                                                  _pose3(edge.record.relative_matrix), plain)
            edge.chi2 = 2.0 * factor.error(result)
            edge.inlier = bool(weights[factor_index] > 0.5) if weights is not None else edge.chi2 <= threshold
        estimates = {s: result.atPose3(index[s]).matrix() for s in stamps}
        for s in stamps:
            self._nodes[s].estimate = estimates[s]
        anchored = has_map and any(e.inlier and e.match_stamp is None for e in self.edges)
        self._solution = _Solution(map_anchored=anchored or self._solution.map_anchored, estimates=estimates)

    # --- outputs ------------------------------------------------------------------------------
    @property
    def node_count(self) -> int:
        return len(self._nodes)

    def corrected_path(self) -> list[tuple[float, np.ndarray]]:
        """``(stamp, 4x4 pose in the map frame)`` of every solved node, in stamp order; nodes added
        since the last :meth:`optimize` follow their odometry from the last solved one."""
        out = []
        last: tuple[np.ndarray, np.ndarray] | None = None
        for s in sorted(self._nodes):
            node = self._nodes[s]
            if node.estimate is not None:
                pose = node.estimate
            elif last is not None:
                pose = last[1] @ np.linalg.inv(last[0]) @ node.odom
            else:
                pose = node.odom
            last = (node.odom, pose)
            out.append((s, pose))
        return out

    def correct(self, stamp: float, odom_pose: np.ndarray) -> np.ndarray:
        """Corrected (map-frame) pose of an odometry pose at ``stamp``: the correction of the
        latest node at or before it applied to ``odom_pose``."""
        path = self.corrected_path()
        if not path:
            return np.asarray(odom_pose, dtype=np.float64)
        i = max(bisect.bisect_right([s for s, _ in path], stamp) - 1, 0)
        s, pose = path[i]
        return pose @ np.linalg.inv(self._nodes[s].odom) @ np.asarray(odom_pose, dtype=np.float64)

    def map_to_odom(self) -> np.ndarray:
        """``T_map_odom`` at the latest node (identity before any odometry)."""
        path = self.corrected_path()
        if not path:
            return np.eye(4)
        s, pose = path[-1]
        return pose @ np.linalg.inv(self._nodes[s].odom)


def calibrate_odometry_noise(odom: Sequence[np.ndarray], truth: Sequence[np.ndarray],
                             spacing_m: float) -> tuple[float, float]:
    """``(odom_translation_noise, odom_rotation_noise)`` measured against ground truth: over
    increments of ``spacing_m`` of true travel, the RMS error per metre (translation) and per
    sqrt(metre) (rotation) of the worst axis. The graph uses one sigma for all three axes, and a
    ground robot's odometry errs mostly along one (scale: along track; heading: yaw), so the worst
    axis, not the mean, is the honest sigma. ``odom``/``truth``: 4x4 poses at the same stamps."""
    if len(odom) != len(truth) or len(odom) < 3:
        raise ValueError(f"need >= 3 pairs of odometry and ground-truth poses, got {len(odom)} and {len(truth)}")
    trans, rots, start = [], [], 0
    travelled = 0.0
    for i in range(1, len(truth)):
        travelled += float(np.linalg.norm(truth[i][:3, 3] - truth[i - 1][:3, 3]))
        if travelled < spacing_m:
            continue
        d_odom = np.linalg.inv(odom[start]) @ odom[i]
        d_true = np.linalg.inv(truth[start]) @ truth[i]
        err = np.linalg.inv(d_true) @ d_odom
        trans.append(err[:3, 3] / travelled)
        rots.append(rotation_vector(err[:3, :3]) / math.sqrt(travelled))
        start, travelled = i, 0.0
    if len(trans) < 2:
        raise ValueError(f"the trajectory is shorter than two spacings of {spacing_m} m")
    return (float(np.sqrt(np.mean(np.square(trans), axis=0)).max()),
            float(np.sqrt(np.mean(np.square(rots), axis=0)).max()))
