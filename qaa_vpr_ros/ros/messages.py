"""Every conversion between ROS messages and the package's pure-Python types, in one place.

Inputs: images to :class:`~qaa_vpr_ros.pipeline.Frame`, odometry to a pose. Outputs: the place
match, candidates, the loop-closure record table (``PointCloud2``, one point per
:class:`~qaa_vpr_ros.decision.record.LoopClosureRecord`), the adapters' messages, RViz markers,
and the parameter descriptors of the parameter table.
"""
from __future__ import annotations

import array
import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseArray, PoseStamped, PoseWithCovarianceStamped, TransformStamped
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Float64MultiArray, Header
from visualization_msgs.msg import Marker

from qaa_vpr_ros.decision import Candidate, ChannelResult, ParamSpec, Query
from qaa_vpr_ros.decision.localization_state import StateUpdate
from qaa_vpr_ros.decision.record import (
    RECORD_DTYPE,
    LoopClosureRecord,
    covariance_in_match_frame,
    point_fields,
    records_from_table,
    records_to_table,
)
from qaa_vpr_ros.pipeline import Frame, PlaceMatch
from qaa_vpr_ros.poses import Pose as PoseTuple
from qaa_vpr_ros.poses import matrix_quaternion, pose_matrix

if TYPE_CHECKING:  # faiss: imported with the map, when loading
    from qaa_vpr_ros.maps import Keyframe

__all__ = [
    "LOOP_CANDIDATE_DTYPE", "candidate_markers", "candidates_msg", "descriptor_of", "frame_of",
    "initialpose_msg",
    "keyframe_marker", "lio_sam_msg", "localization_status_msg", "loop_closure_msg", "loop_line_marker",
    "odometry_of", "path_msg",
    "place_match_msg", "pose_msg", "records_cloud", "records_from_cloud", "stamp_of", "time_msg",
    "transform_matrix", "transform_msg",
]

LOOP_CANDIDATE_DTYPE = RECORD_DTYPE
"""``~/loop_candidates``: one PointCloud2 point per LoopClosureRecord (qaa_vpr_ros.decision.record)."""

_ROS_TYPES = {"bool": ParameterType.PARAMETER_BOOL, "int": ParameterType.PARAMETER_INTEGER,
              "float": ParameterType.PARAMETER_DOUBLE, "str": ParameterType.PARAMETER_STRING,
              "str[]": ParameterType.PARAMETER_STRING_ARRAY,
              "float[]": ParameterType.PARAMETER_DOUBLE_ARRAY}


def descriptor_of(spec: ParamSpec) -> ParameterDescriptor:
    """The ``ParameterDescriptor`` (type, description, range, read-only) of one table row."""
    text = spec.description + (f" One of: {', '.join(spec.choices)}." if spec.choices else "")
    desc = ParameterDescriptor(name=spec.name, type=_ROS_TYPES[spec.type], description=text,
                               read_only=spec.read_only)
    if spec.range is not None and spec.type == "int":
        desc.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=0)]
    elif spec.range is not None and spec.type == "float":
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                        to_value=float(spec.range[1]), step=0.0)]
    if spec.choices:
        desc.additional_constraints = f"one of {list(spec.choices)}"
    return desc


# --- inputs ------------------------------------------------------------------------------------
def frame_of(camera: str, msg: Image | CompressedImage) -> Frame:
    """An image message (``Image`` or ``CompressedImage``) of camera topic ``camera`` as a Frame."""
    return Frame(camera, msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id, msg)


def odometry_of(msg: Odometry) -> tuple[float, PoseTuple, str]:
    """(stamp in seconds, (position, orientation), frame_id) of an odometry message."""
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    return (msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec, ((p.x, p.y, p.z), (q.x, q.y, q.z, q.w)),
            msg.header.frame_id)


def transform_matrix(msg: Any) -> np.ndarray:
    """4x4 of a ``geometry_msgs/Pose``."""
    p, q = msg.position, msg.orientation
    return pose_matrix((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


# --- basic outputs -----------------------------------------------------------------------------
def time_msg(sec: int, nanosec: int) -> Time:
    return Time(sec=int(sec), nanosec=int(nanosec))


def stamp_of(seconds: float) -> Time:
    """A float stamp (seconds) as a ``builtin_interfaces/Time``."""
    sec = int(seconds // 1)
    return Time(sec=sec, nanosec=min(round((seconds - sec) * 1e9), 999_999_999))


def pose_msg(position: Any, orientation: Any) -> Pose:
    """A geometry_msgs/Pose; an unknown (NaN) position becomes the identity pose."""
    pose = Pose()
    if position is not None and all(math.isfinite(v) for v in position):
        pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
        qx, qy, qz, qw = (float(v) for v in orientation)
        pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = qx, qy, qz, qw
    else:
        pose.orientation.w = 1.0
    return pose


def _query_header(q: Query, frame: str) -> Header:
    return Header(stamp=time_msg(q.stamp_sec, q.stamp_nanosec), frame_id=frame)


def place_match_msg(q: Query, match: PlaceMatch) -> PoseWithCovarianceStamped:
    """``~/place_match``: the matched keyframe's pose, stamped with the query's stamp."""
    msg = PoseWithCovarianceStamped(header=_query_header(q, match.frame_id))
    msg.pose.pose = pose_msg(match.position, match.orientation)
    msg.pose.covariance = match.covariance
    return msg


def candidates_msg(q: Query, channel: ChannelResult) -> PoseArray:
    """``~/place_candidates``: the candidates' keyframe poses, best first."""
    return PoseArray(header=_query_header(q, channel.map_frame),
                     poses=[pose_msg(c.keyframe.position, c.keyframe.orientation) for c in channel.candidates])


def loop_closure_msg(q: Query, channel: ChannelResult, best: Candidate) -> PathMsg:
    """``~/loop_closure``: [query pose (odometry frame), matched keyframe pose (database frame)]."""
    kf = best.keyframe
    path = PathMsg(header=_query_header(q, channel.map_frame))
    query_pose = PoseStamped(header=_query_header(q, q.pose_frame))
    query_pose.pose = pose_msg(*(q.pose if q.pose is not None else (None, None)))
    match_pose = PoseStamped(header=Header(stamp=time_msg(kf.stamp_sec, kf.stamp_nanosec),
                                           frame_id=channel.map_frame))
    match_pose.pose = pose_msg(kf.position, kf.orientation)
    path.poses = [query_pose, match_pose]
    return path


def lio_sam_msg(record: LoopClosureRecord) -> Float64MultiArray:
    """LIO-SAM's loop-closure stamp pair [query stamp, match stamp]."""
    return Float64MultiArray(data=[record.query_stamp, record.match_stamp])


def initialpose_msg(record: LoopClosureRecord) -> PoseWithCovarianceStamped:
    """Nav2 ``initialpose``: the robot's pose in the map frame by an accepted map match."""
    msg = PoseWithCovarianceStamped(header=Header(
        stamp=time_msg(record.query_stamp_sec, record.query_stamp_nanosec), frame_id=record.match_frame))
    msg.pose.pose = pose_msg(*record.query_pose_in_match_frame())
    msg.pose.covariance = list(covariance_in_match_frame(record))
    return msg


def localization_status_msg(name: str, update: StateUpdate) -> DiagnosticStatus:
    """``~/localization_status``: level OK when localized, WARN when lost; ``name`` ``<node>:
    localization``; the message says since when; key-values ``state``, ``since_sec``,
    ``since_nanosec`` (the image stamp the state began; empty before any query),
    ``last_match_stamp`` (s; empty: never) and ``source`` (of the last accepted map match)."""
    since = stamp_of(update.since) if update.since is not None else None
    values = {"state": update.state, "since_sec": since.sec if since else "",
              "since_nanosec": since.nanosec if since else "",
              "last_match_stamp": f"{update.last_match:.9f}" if update.last_match is not None else "",
              "source": update.source}
    return DiagnosticStatus(
        level=DiagnosticStatus.OK if update.state == "localized" else DiagnosticStatus.WARN,
        name=f"{name}: localization", message=update.message, hardware_id=name,
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def path_msg(stamp: Time, frame: str, poses: Sequence[tuple[float, np.ndarray]]) -> PathMsg:
    """A ``nav_msgs/Path`` of (stamp in seconds, 4x4 pose) in ``frame``."""
    msg = PathMsg(header=Header(stamp=stamp, frame_id=frame))
    for seconds, pose in poses:
        ps = PoseStamped(header=Header(stamp=stamp_of(seconds), frame_id=frame))
        ps.pose.position.x, ps.pose.position.y, ps.pose.position.z = (float(v) for v in pose[:3, 3])
        ps.pose.orientation.x, ps.pose.orientation.y, ps.pose.orientation.z, ps.pose.orientation.w = (
            matrix_quaternion(pose[:3, :3]))
        msg.poses.append(ps)
    return msg


def transform_msg(stamp: Time, parent: str, child: str, matrix: np.ndarray) -> TransformStamped:
    """A ``TransformStamped`` of ``child`` in ``parent`` from a 4x4."""
    tf = TransformStamped(header=Header(stamp=stamp, frame_id=parent), child_frame_id=child)
    tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = (
        float(v) for v in matrix[:3, 3])
    tf.transform.rotation.x, tf.transform.rotation.y, tf.transform.rotation.z, tf.transform.rotation.w = (
        matrix_quaternion(matrix[:3, :3]))
    return tf


# --- the record table --------------------------------------------------------------------------
@functools.cache
def _cloud_fields() -> tuple[PointField, ...]:
    """The PointCloud2 fields of the record table, built once (publishing only reads them)."""
    return tuple(PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in point_fields())


def records_cloud(header: Header, records: list[LoopClosureRecord]) -> PointCloud2:
    """The record table as a ``PointCloud2`` (one point per record, fields of RECORD_DTYPE)."""
    table = records_to_table(records)
    return PointCloud2(header=header, height=1, width=len(records), fields=list(_cloud_fields()), is_bigendian=False,
                       point_step=RECORD_DTYPE.itemsize, row_step=RECORD_DTYPE.itemsize * len(records),
                       data=array.array("B", table.tobytes()), is_dense=True)  # bytes: checked byte by byte


def records_from_cloud(msg: PointCloud2) -> list[LoopClosureRecord]:
    """Inverse of :func:`records_cloud`; raises ValueError naming the mismatch for a foreign table."""
    if msg.point_step != RECORD_DTYPE.itemsize:
        raise ValueError(f"loop-candidate table has point_step {msg.point_step}, this version expects "
                         f"{RECORD_DTYPE.itemsize}: publisher and subscriber run different qaa_vpr_ros versions")
    return records_from_table(bytes(msg.data))


# --- markers -----------------------------------------------------------------------------------
def _score_color(score: float, min_score: float, accepted: bool) -> ColorRGBA:
    t = min(max((score - min_score) / max(1.0 - min_score, 1e-6), 0.0), 1.0)
    return ColorRGBA(r=1.0 - t, g=t, b=0.0, a=1.0 if accepted else 0.5)


def candidate_markers(header: Header, channel: ChannelResult, min_score: float) -> list[Marker]:
    """One sphere per candidate with a pose (bigger when accepted, red to green by score), 2 s."""
    out = []
    for c in channel.candidates:
        if not c.keyframe.has_pose:
            continue
        m = Marker(header=header, ns=f"{channel.source}_candidates", id=c.rank, type=Marker.SPHERE,
                   action=Marker.ADD, pose=pose_msg(c.keyframe.position, c.keyframe.orientation))
        m.scale.x = m.scale.y = m.scale.z = 1.0 if c.accepted else 0.5
        m.color = _score_color(c.score, min_score, c.accepted)
        m.lifetime.sec = 2
        out.append(m)
    return out


def loop_line_marker(path: PathMsg, marker_id: int) -> Marker:
    """A line from the query's pose to the matched keyframe's (a ``~/loop_closure`` path)."""
    line = Marker(header=path.header, ns="loop_closures", id=marker_id, type=Marker.LINE_LIST,
                  action=Marker.ADD, points=[path.poses[0].pose.position, path.poses[1].pose.position])
    line.scale.x = 0.2
    line.color = ColorRGBA(r=0.1, g=0.4, b=1.0, a=1.0)
    line.pose.orientation.w = 1.0
    return line


def keyframe_marker(keyframes: Sequence[Keyframe], frame: str, ns: str, color: tuple[float, float, float]) -> Marker:
    """All keyframes with a pose as one POINTS marker."""
    m = Marker(header=Header(frame_id=frame), ns=ns, id=0, type=Marker.POINTS, action=Marker.ADD)
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = 0.3
    m.color = ColorRGBA(r=color[0], g=color[1], b=color[2], a=1.0)
    m.points = [Point(x=float(k.position[0]), y=float(k.position[1]), z=float(k.position[2]))
                for k in keyframes if k.has_pose]
    return m
