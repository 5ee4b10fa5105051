"""Pose math, in one place: quaternions, rotation matrices, 4x4 poses, interpolation, pose errors.

Conventions (ROS REP 103): positions in metres; quaternions ``(qx, qy, qz, qw)`` as in
``geometry_msgs/Quaternion``; a 4x4 pose ``T_a_b`` maps points of frame b into frame a; angles in
radians. numpy and the standard library only: the map builder, the decision, the records, the
pose graph and the demos all call these, so each formula exists once.

Single poses use plain floats on purpose (about 10x cheaper than numpy for one quaternion, and
the node interpolates one pose per image); :func:`quaternion_matrices` is the batched form.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "Pose",
    "conjugated_covariance",
    "interpolate_pose",
    "matrix_quaternion",
    "pose_matrix",
    "quaternion_angle",
    "quaternion_matrices",
    "rotation_angle",
    "rotation_vector",
    "slerp",
    "transform_error",
    "yaw_of",
]

Pose = tuple[tuple[float, float, float], tuple[float, float, float, float]]
"""(position (x, y, z) in metres, orientation (qx, qy, qz, qw)) in some frame."""


# --- quaternions <-> rotation matrices --------------------------------------------------------


def pose_matrix(position: Sequence[float], orientation: Sequence[float]) -> np.ndarray:
    """(4, 4) homogeneous matrix of a position and a quaternion (x, y, z, w; normalised first)."""
    x, y, z, w = (float(v) for v in orientation)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if not n > 0.0:
        raise ValueError(f"quaternion {tuple(orientation)} has zero norm")
    x, y, z, w = x / n, y / n, z / n, w / n
    m = np.eye(4)
    m[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                 [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                 [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    m[:3, 3] = [float(v) for v in position]
    return m


def quaternion_matrices(quaternions: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions (qx, qy, qz, qw) -> (N, 3, 3) rotation matrices (normalised first; a
    NaN or ~0 quaternion gives the identity)."""
    q = np.asarray(quaternions, np.float64).reshape(-1, 4)
    if len(q) == 1:  # one pose per query: plain floats are ~10x cheaper than the array ops below
        x, y, z, w = (float(v) for v in q[0])
        if math.sqrt(x * x + y * y + z * z + w * w) > 1e-12:  # NaN or ~0: identity, as below
            return pose_matrix((0.0, 0.0, 0.0), (x, y, z, w))[None, :3, :3]
        return np.eye(3)[None]
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 1e-12, q / np.maximum(norm, 1e-12), np.array([0.0, 0.0, 0.0, 1.0]))
    x, y, z, w = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=1)


def matrix_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """Unit quaternion (x, y, z, w, w >= 0) of a 3x3 rotation matrix."""
    r = np.asarray(rotation, dtype=np.float64)
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = ((r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s)
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = (0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s)
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = ((r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = ((r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s, (r[1, 0] - r[0, 1]) / s)
    q = np.asarray(q)
    q = q / np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return tuple(float(v) for v in q)


# --- angles -----------------------------------------------------------------------------------


def quaternion_angle(q0: Sequence[float], q1: Sequence[float]) -> float:
    """Rotation angle (rad, in [0, pi]) between two unit quaternions."""
    dot = abs(float(np.dot(np.asarray(q0, np.float64), np.asarray(q1, np.float64))))
    return 2.0 * math.acos(min(1.0, dot))


def yaw_of(q: Sequence[float]) -> float:
    """Yaw (rad, about +z, counter-clockwise from +x) of a quaternion (x, y, z, w)."""
    x, y, z, w = q
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def rotation_angle(rotation: np.ndarray) -> float:
    """Angle (rad, in [0, pi]) of a 3x3 rotation matrix."""
    return math.acos(min(max((np.trace(rotation) - 1.0) / 2.0, -1.0), 1.0))


def rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """(3,) rotation vector (axis * angle, rad) of a 3x3 rotation matrix; zero for the identity."""
    r = rotation
    angle = rotation_angle(r)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    norm = np.linalg.norm(axis)
    return axis / norm * angle if norm > 1e-12 else np.zeros(3)


def transform_error(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(6,) error of a 4x4 ``estimate`` against 4x4 ``truth``: ``truth^-1 * estimate`` as
    (x, y, z, roll, pitch, yaw) (rotation as a rotation vector, small-angle roll/pitch/yaw)."""
    delta = np.linalg.inv(truth) @ estimate
    return np.concatenate([delta[:3, 3], rotation_vector(delta[:3, :3])])


def conjugated_covariance(left: np.ndarray, transform: np.ndarray, right: np.ndarray,
                          covariance: np.ndarray) -> np.ndarray:
    """6x6 covariance of ``left @ transform @ right`` (4x4 each) from the 6x6 ``covariance`` of
    ``transform``, both as (translation added, then a small rotation applied on the left), in the
    frame the pose is expressed in (first order, exact for the rotation block):

    translation error ``R_L (dt + dtheta x (R t_right))``, rotation error ``R_L dtheta``.
    A relative pose between two cameras becomes one between their bases this way
    (``left`` = T_base_cam of one, ``right`` = T_cam_base of the other)."""
    r_left = np.asarray(left, np.float64)[:3, :3]
    lever = np.asarray(transform, np.float64)[:3, :3] @ np.asarray(right, np.float64)[:3, 3]
    cross = np.array([[0.0, -lever[2], lever[1]], [lever[2], 0.0, -lever[0]], [-lever[1], lever[0], 0.0]])
    jac = np.zeros((6, 6))
    jac[:3, :3] = jac[3:, 3:] = r_left
    jac[:3, 3:] = -r_left @ cross
    out = jac @ np.asarray(covariance, np.float64) @ jac.T
    return 0.5 * (out + out.T)


# --- interpolation ----------------------------------------------------------------------------


def slerp(q0: Sequence[float], q1: Sequence[float], t: float) -> tuple[float, float, float, float]:
    """Spherical linear interpolation at fraction ``t`` in [0, 1] between unit quaternions
    (x, y, z, w), the short way round; unit length out."""
    dot = sum(x * y for x, y in zip(q0, q1, strict=True))
    if dot < 0.0:  # q and -q are the same rotation; take the short way round
        q1, dot = tuple(-v for v in q1), -dot
    if dot > 0.9995:  # nearly parallel: normalised lerp avoids dividing by sin(~0)
        q = [x + t * (y - x) for x, y in zip(q0, q1, strict=True)]
    else:
        theta = math.acos(min(dot, 1.0))
        wa, wb = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
        q = [wa * x + wb * y for x, y in zip(q0, q1, strict=True)]
    norm = math.sqrt(sum(v * v for v in q)) or 1.0
    return tuple(float(v / norm) for v in q)


def interpolate_pose(a: Pose, b: Pose, t: float) -> Pose:
    """Pose at fraction ``t`` in [0, 1] from ``a`` to ``b``: linear in position, slerp in orientation.

    The one pose interpolation: the map builder's pose track and the node's odometry history
    both call it, so a map keyframe and a live query at the same stamp get the same pose."""
    (pa, qa), (pb, qb) = a, b
    position = tuple(float(x + t * (y - x)) for x, y in zip(pa, pb, strict=True))
    return position, slerp(qa, qb, t)
