"""The loop-closure record: one row of ``~/loop_candidates``, the one thing a SLAM back end reads.

A record says *"the keyframe seen at ``query_stamp`` by ``camera`` is at ``relative_*`` from
keyframe ``match_keyframe_id`` of session ``match_session``, with this covariance"*. Real back
ends take exactly that (RTAB-Map ``add_link``: two node ids + transform + information; Kimera's
``PoseGraph`` edge: two keys + pose + covariance), or a part of it (LIO-SAM: the two stamps;
Nav2 ``initialpose``: the query pose in the match's frame = match pose * relative transform).

Conventions (ROS REP 103/105):

- ``relative_translation`` / ``relative_rotation`` are ``T_match_query``: the query keyframe's
  base pose expressed in the matched keyframe's base frame (metres; quaternion x, y, z, w).
- ``covariance`` is the 6x6 covariance of that transform, row-major, in ROS order
  (x, y, z, rotation about x, y, z), expressed in the matched keyframe's base frame, like
  ``geometry_msgs/PoseWithCovariance``.
- ``match_position`` / ``match_orientation`` are the matched keyframe's pose in ``match_frame``
  (the map's frame for a prebuilt map, the odometry frame for online matches); NaN when unknown.
  ``query_position`` / ``query_orientation`` are the query's odometry pose in ``query_frame``.

:data:`RECORD_DTYPE` is the flat table row (a numpy structured dtype; strings as fixed-width
UTF-8 bytes) the node publishes as a ``sensor_msgs/PointCloud2`` with one point per record;
:meth:`LoopClosureRecord.to_row`, :func:`records_to_table` and :func:`records_from_table`
convert both ways without loss (strings are cut to their field width, which the constructor
checks). The covariance a record carries is decided by :mod:`qaa_vpr_ros.decision.covariance`;
its pose math is :mod:`qaa_vpr_ros.poses`.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING

import numpy as np

# Re-exported: these lived here before the covariance model, the parameter parsers and the pose math
# got their own modules.
from qaa_vpr_ros.decision.covariance import GEOMETRY_ROTATION_VARIANCE, TRANSFORM_SOURCES, CovarianceModel
from qaa_vpr_ros.decision.parameters import parse_extrinsics
from qaa_vpr_ros.poses import conjugated_covariance, matrix_quaternion, pose_matrix, transform_error

if TYPE_CHECKING:
    from qaa_vpr_ros.decision.decision import Candidate, ChannelResult
    from qaa_vpr_ros.decision.localizer import Query

__all__ = [
    "NAME_BYTES",
    "OPTICAL_IN_BASE",
    "RECORD_DTYPE",
    "TRANSFORM_SOURCES",
    "CovarianceModel",
    "GEOMETRY_ROTATION_VARIANCE",
    "channel_records",
    "covariance_in_match_frame",
    "parse_extrinsics",
    "LoopClosureRecord",
    "matrix_quaternion",
    "point_fields",
    "pose_matrix",
    "records_from_table",
    "records_to_table",
    "transform_error",
    "with_geometry",
    "with_geometry_rotation",
]

NAME_BYTES = 64
"""Width of the string fields (camera, session, frames) in the table row, UTF-8 bytes."""

_NAN3 = (math.nan, math.nan, math.nan)
_IDENTITY_Q = (0.0, 0.0, 0.0, 1.0)


def _identity_covariance() -> tuple[float, ...]:
    return tuple(1.0 if i % 7 == 0 else 0.0 for i in range(36))


@dataclass(frozen=True)
class LoopClosureRecord:
    """One loop-closure candidate (accepted or not) between a query keyframe and a matched keyframe.

    Field by field:

    - ``query_stamp_sec``, ``query_stamp_nanosec``: stamp of the query image (header stamp).
    - ``camera``: the query's camera (its image topic).
    - ``query_keyframe_id``: the query's id in the online keyframe database (-1 when online loop
      closure is off and the query was not added).
    - ``match_keyframe_id``: id of the matched keyframe in its session.
    - ``match_stamp_sec``, ``match_stamp_nanosec``: stamp of the matched keyframe's image.
    - ``match_session``: ``"online"`` for the robot's own past keyframes, else the prebuilt map's
      id (its manifest's ``map_id``; a format-1 map: its folder name, ``map:online`` for a folder
      called ``online``; see :func:`qaa_vpr_ros.maps.map_session`).
    - ``match_frame``: frame of ``match_position``/``match_orientation`` (the map's frame, or the
      odometry frame for online matches).
    - ``match_camera``: the matched keyframe's camera (its image topic when it was recorded).
    - ``match_position``, ``match_orientation``: matched keyframe's base pose in ``match_frame``.
    - ``query_frame``, ``query_position``, ``query_orientation``: the query's odometry pose at
      its stamp (NaN position when no odometry was available).
    - ``relative_translation``, ``relative_rotation``: ``T_match_query`` (see module docstring).
    - ``covariance``: 36 floats, row-major 6x6 covariance of ``T_match_query`` (x, y, z, roll,
      pitch, yaw; m^2, rad^2).
    - ``transform_source``: one of :data:`TRANSFORM_SOURCES`.
    - ``score``: descriptor similarity (inner product of unit descriptors, [-1, 1]).
    - ``confidence``: the decision's confidence margin: the match's sequence score minus the best
      sequence score of places elsewhere (see :mod:`qaa_vpr_ros.decision.decision`); larger is
      surer, NaN when the decision did not compute one.
    - ``sequence_score``: mean similarity along the odometry-aligned sequence of recent queries.
    - ``sequence_support``: how many queries of the sequence found a keyframe near where this
      match predicts them (1 = itself only).
    - ``inliers``: RANSAC inliers of geometric verification; -1 when geometry did not run.
    - ``rank``: rank of the candidate among the query's search hits (0 = best score).
    - ``accepted``: whether the decision accepted it as a loop closure / place match.
    """

    query_stamp_sec: int
    query_stamp_nanosec: int
    camera: str
    match_keyframe_id: int
    match_stamp_sec: int
    match_stamp_nanosec: int
    match_session: str
    match_frame: str
    query_keyframe_id: int = -1
    match_camera: str = ""
    match_position: tuple[float, float, float] = _NAN3
    match_orientation: tuple[float, float, float, float] = _IDENTITY_Q
    query_frame: str = ""
    query_position: tuple[float, float, float] = _NAN3
    query_orientation: tuple[float, float, float, float] = _IDENTITY_Q
    relative_translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    relative_rotation: tuple[float, float, float, float] = _IDENTITY_Q
    covariance: tuple[float, ...] = field(default_factory=_identity_covariance)
    transform_source: str = "none"
    score: float = math.nan
    confidence: float = 0.0
    sequence_score: float = math.nan
    sequence_support: int = 1
    inliers: int = -1
    rank: int = 0
    accepted: bool = False

    def __post_init__(self) -> None:
        # Built for every candidate of every query (the node's hot path): the checks below use
        # C-level iteration (map, itemgetter) rather than Python loops; same checks, same errors.
        for name, length in _VECTOR_FIELDS.items():
            _set(self, name, _floats(name, getattr(self, name), length))
        cov = self.covariance
        if not all(map(math.isfinite, cov)):
            raise ValueError(f"LoopClosureRecord.covariance holds non-finite values: {cov}")
        upper, lower = _UPPER(cov), _LOWER(cov)
        if upper != lower:  # exactly symmetric (the usual case) needs no tolerance
            tolerance = 1e-9 * max(1.0, max(map(abs, cov)))
            if any(abs(a - b) > tolerance for a, b in zip(upper, lower, strict=True)):
                raise ValueError("LoopClosureRecord.covariance is not symmetric")
        if min(cov[::7]) <= 0.0:
            raise ValueError(f"LoopClosureRecord.covariance diagonal must be > 0, got {list(cov[::7])}")
        if self.transform_source not in TRANSFORM_SOURCES:
            raise ValueError(f"LoopClosureRecord.transform_source {self.transform_source!r} is not one of "
                             f"{list(TRANSFORM_SOURCES)}")
        if not abs(math.hypot(*self.relative_rotation) - 1.0) <= 1e-3:
            raise ValueError(f"LoopClosureRecord.relative_rotation {self.relative_rotation} is not a unit quaternion")
        for name in _STRING_FIELDS:
            value = getattr(self, name)
            # A str of at most NAME_BYTES characters may still encode to more bytes (UTF-8).
            if not isinstance(value, str) or (len(value) > NAME_BYTES // 4 and len(value.encode("utf-8")) > NAME_BYTES):
                raise ValueError(f"LoopClosureRecord.{name} must be a string of at most {NAME_BYTES} "
                                 f"UTF-8 bytes, got {value!r}")

    # --- derived values -----------------------------------------------------------------------
    @property
    def query_stamp(self) -> float:
        """Query stamp in seconds."""
        return self.query_stamp_sec + 1e-9 * self.query_stamp_nanosec

    @property
    def match_stamp(self) -> float:
        """Matched keyframe's stamp in seconds."""
        return self.match_stamp_sec + 1e-9 * self.match_stamp_nanosec

    @property
    def is_online(self) -> bool:
        """True for a loop closure within the robot's own session."""
        return self.match_session == "online"

    @property
    def covariance_matrix(self) -> np.ndarray:
        """(6, 6) float64 covariance of ``T_match_query`` (ROS order x, y, z, roll, pitch, yaw)."""
        return np.asarray(self.covariance, dtype=np.float64).reshape(6, 6)

    @property
    def relative_matrix(self) -> np.ndarray:
        """(4, 4) homogeneous ``T_match_query``."""
        return pose_matrix(self.relative_translation, self.relative_rotation)

    def query_pose_in_match_frame(self) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
        """``T_frame_match * T_match_query``: where the query is in ``match_frame`` (the pose a
        Nav2 ``initialpose`` or cuVGL-style relocalization consumer wants). NaN when the matched
        keyframe has no pose."""
        matrix = pose_matrix(self.match_position, self.match_orientation) @ self.relative_matrix
        return tuple(float(v) for v in matrix[:3, 3]), matrix_quaternion(matrix[:3, :3])

    # --- the flat table row -------------------------------------------------------------------
    def to_row(self) -> np.void:
        """This record as one row of :data:`RECORD_DTYPE`."""
        return records_to_table([self])[0]

    @classmethod
    def from_row(cls, row: np.void) -> LoopClosureRecord:
        """Inverse of :meth:`to_row`."""
        values = {}
        for f in fields(cls):
            if f.name in _VECTOR_FIELDS:
                values[f.name] = tuple(float(v) for v in row[f.name])
            elif f.name in _STRING_FIELDS:
                values[f.name] = bytes(row[f.name]).rstrip(b"\0").decode("utf-8")
            elif f.name == "transform_source":
                index = int(row[f.name])
                if index >= len(TRANSFORM_SOURCES):
                    raise ValueError(f"transform_source index {index} is unknown; known: {list(TRANSFORM_SOURCES)}")
                values[f.name] = TRANSFORM_SOURCES[index]
            elif f.name == "accepted":
                values[f.name] = bool(row[f.name])
            elif f.name in _INT_FIELDS:
                values[f.name] = int(row[f.name])
            else:
                values[f.name] = float(row[f.name])
        return cls(**values)

    def as_dict(self) -> dict:
        """Plain ``{field: value}`` (JSON-friendly)."""
        return asdict(self)


def _set(record: LoopClosureRecord, name: str, value: object) -> None:
    object.__setattr__(record, name, value)


def _floats(name: str, values: Sequence[float], length: int) -> tuple[float, ...]:
    try:
        out = tuple(map(float, values))
    except (TypeError, ValueError) as err:
        raise ValueError(f"LoopClosureRecord.{name} must be {length} numbers, got {values!r}") from err
    if len(out) != length:
        raise ValueError(f"LoopClosureRecord.{name} must be {length} numbers, got {len(out)}")
    return out


_STRING_FIELDS = ("camera", "match_session", "match_frame", "match_camera", "query_frame")
# The covariance's strictly upper and lower triangles, element (i, j) of one facing (j, i) of the other.
_UPPER = operator.itemgetter(*(6 * i + j for i in range(6) for j in range(i + 1, 6)))
_LOWER = operator.itemgetter(*(6 * j + i for i in range(6) for j in range(i + 1, 6)))
_VECTOR_FIELDS = {"match_position": 3, "match_orientation": 4, "query_position": 3, "query_orientation": 4,
                  "relative_translation": 3, "relative_rotation": 4, "covariance": 36}
_INT_FIELDS = {"query_stamp_sec": "<i4", "query_stamp_nanosec": "<u4", "match_keyframe_id": "<i4",
               "match_stamp_sec": "<i4", "match_stamp_nanosec": "<u4", "query_keyframe_id": "<i4",
               "sequence_support": "<i4", "inliers": "<i4", "rank": "<u4", "accepted": "u1"}


def _record_dtype() -> np.dtype:
    items = []
    for f in fields(LoopClosureRecord):
        if f.name in _STRING_FIELDS:
            items.append((f.name, f"S{NAME_BYTES}"))
        elif f.name in _VECTOR_FIELDS:
            items.append((f.name, "<f8", (_VECTOR_FIELDS[f.name],)))
        elif f.name == "transform_source":
            items.append((f.name, "u1"))
        elif f.name in _INT_FIELDS:
            items.append((f.name, _INT_FIELDS[f.name]))
        else:
            items.append((f.name, "<f4"))
    return np.dtype(items)


RECORD_DTYPE = _record_dtype()
"""One table row per record, fields in :class:`LoopClosureRecord` order. Strings are
``S64`` (UTF-8, NUL-padded), vectors float64 sub-arrays, ``transform_source`` a uint8 index into
:data:`TRANSFORM_SOURCES`, ``score``/``confidence`` float32."""


def records_to_table(records: Iterable[LoopClosureRecord]) -> np.ndarray:
    """Records -> structured array of :data:`RECORD_DTYPE` (one row each, same order)."""
    names = [f.name for f in fields(LoopClosureRecord)]
    source = names.index("transform_source")
    strings = [names.index(n) for n in _STRING_FIELDS]
    rows = []
    for r in records:
        row = [getattr(r, n) for n in names]
        for i in strings:
            row[i] = row[i].encode("utf-8")
        row[source] = TRANSFORM_SOURCES.index(row[source])
        rows.append(tuple(row))
    return np.array(rows, dtype=RECORD_DTYPE)


def records_from_table(table: np.ndarray) -> list[LoopClosureRecord]:
    """Structured array (or raw bytes of one) of :data:`RECORD_DTYPE` -> records."""
    if isinstance(table, (bytes, bytearray, memoryview)):
        raw = bytes(table)
        if len(raw) % RECORD_DTYPE.itemsize:
            raise ValueError(f"loop-candidate table of {len(raw)} bytes is not a whole number of "
                             f"{RECORD_DTYPE.itemsize}-byte rows: publisher and subscriber disagree on "
                             "RECORD_DTYPE (different qaa_vpr_ros versions?)")
        table = np.frombuffer(raw, dtype=RECORD_DTYPE)
    if table.dtype != RECORD_DTYPE:
        raise ValueError(f"table dtype {table.dtype} is not RECORD_DTYPE")
    return [LoopClosureRecord.from_row(row) for row in table]


# sensor_msgs/PointField datatype codes (no ROS import here).
_POINTFIELD_CODES = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 8, "S1": 2}


def point_fields() -> list[tuple[str, int, int, int]]:
    """``(name, offset, PointField datatype, count)`` of every :data:`RECORD_DTYPE` field, for the
    ``sensor_msgs/PointCloud2`` that carries the table (strings as ``count`` UINT8 bytes)."""
    out = []
    for name in RECORD_DTYPE.names:
        dtype, offset = RECORD_DTYPE.fields[name][:2]
        if dtype.kind == "S":
            out.append((name, offset, 2, dtype.itemsize))
        elif dtype.subdtype is not None:
            base, shape = dtype.subdtype
            out.append((name, offset, _POINTFIELD_CODES[base.str[1:]], int(np.prod(shape))))
        else:
            out.append((name, offset, _POINTFIELD_CODES[dtype.str[1:]], 1))
    return out


# ---------------------------------------------------------------------------------------------
# From the decision to records.


def channel_records(query: Query, channel: ChannelResult, session: str,
                    covariance: Callable[[Candidate], Sequence[float]], query_keyframe_id: int = -1,
                    extrinsics: Callable[[str], np.ndarray] | None = None) -> list[LoopClosureRecord]:
    """One record per candidate of ``channel`` (a ``ChannelResult``) for ``query`` (a ``Query``).

    ``session``: the map's id, or "online" for the robot's own keyframes. ``covariance(candidate)``
    gives the 36 covariance values of an identity-transform match for that candidate (the node's
    confidence-scaled ``covariance_base``). ``extrinsics(camera)`` gives ``T_base_camera`` (4x4)
    of a camera topic: the relative transform between the two base frames is
    ``T_base_cam(match) * T_base_cam(query)^-1`` (same view, different cameras), identity for one
    camera. A candidate with an ``offset`` (4x4 ``T_match_query`` of the sequence alignment's
    along-track offset, in the base frames) gets ``offset * T_base_cam(match) * T_base_cam(query)^-1``
    and source "sequence" (``covariance(candidate)`` then gives that source's covariance); any
    other, source "none": neither geometry nor an along-track offset was applied.
    """
    q_position, q_orientation = query.pose if query.pose is not None else (_NAN3, _IDENTITY_Q)
    e_query_inv = np.linalg.inv(extrinsics(query.camera)) if extrinsics is not None else np.eye(4)
    by_camera: dict[str, tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]] = {}  # one per camera
    out = []
    for c in channel.candidates:
        kf = c.keyframe
        camera = str(kf.camera)
        if camera not in by_camera:
            between = (extrinsics(camera) if extrinsics is not None else np.eye(4)) @ e_query_inv
            by_camera[camera] = (between, tuple(between[:3, 3]), matrix_quaternion(between[:3, :3]))
        relative, translation, rotation = by_camera[camera]
        offset = c.offset
        if offset is not None:
            relative = np.asarray(offset, dtype=np.float64) @ relative
            translation, rotation = tuple(relative[:3, 3]), matrix_quaternion(relative[:3, :3])
        out.append(LoopClosureRecord(
            query_stamp_sec=int(query.stamp_sec), query_stamp_nanosec=int(query.stamp_nanosec), camera=query.camera,
            match_keyframe_id=int(kf.id), match_stamp_sec=int(kf.stamp_sec), match_stamp_nanosec=int(kf.stamp_nanosec),
            match_session=session, match_frame=channel.map_frame, query_keyframe_id=int(query_keyframe_id),
            match_camera=str(kf.camera), match_position=tuple(kf.position), match_orientation=tuple(kf.orientation),
            query_frame=query.pose_frame, query_position=tuple(q_position),
            query_orientation=tuple(q_orientation), relative_translation=translation,
            relative_rotation=rotation, covariance=tuple(covariance(c)),
            transform_source="none" if offset is None else "sequence", score=float(c.score),
            confidence=float(c.confidence), sequence_score=float(c.sequence_score),
            sequence_support=int(c.support), inliers=-1, rank=int(c.rank),
            accepted=bool(c.accepted)))
    return out


def covariance_in_match_frame(record: LoopClosureRecord) -> tuple[float, ...]:
    """The record's covariance rotated from the matched keyframe's base frame into ``match_frame``
    (what a ``PoseWithCovarianceStamped`` of :meth:`LoopClosureRecord.query_pose_in_match_frame`
    in ``match_frame`` carries, e.g. for Nav2's ``initialpose``)."""
    rotation = pose_matrix((0.0, 0.0, 0.0), record.match_orientation)[:3, :3]
    r6 = np.zeros((6, 6))
    r6[:3, :3] = r6[3:, 3:] = rotation
    cov = r6 @ record.covariance_matrix @ r6.T
    return tuple(float(v) for v in (0.5 * (cov + cov.T)).ravel())


def with_geometry(record: LoopClosureRecord, transform_cam: np.ndarray, covariance_cam: np.ndarray, inliers: int,
                  t_base_cam_match: np.ndarray, t_base_cam_query: np.ndarray) -> LoopClosureRecord:
    """``record`` with the metric relative pose of geometric verification with depth (source
    ``geometry``): ``transform_cam`` is ``T_match_query`` (4x4) between the two camera optical
    frames and ``covariance_cam`` its 6x6 covariance there (translation, then rotation applied on
    the left); the base-frame transform is ``T_base_cam(match) * T_cam * T_base_cam(query)^-1`` and
    the covariance is carried into the matched keyframe's base frame
    (:func:`~qaa_vpr_ros.poses.conjugated_covariance`)."""
    left, right = np.asarray(t_base_cam_match, np.float64), np.linalg.inv(np.asarray(t_base_cam_query, np.float64))
    relative = left @ np.asarray(transform_cam, np.float64) @ right
    cov = conjugated_covariance(left, transform_cam, right, covariance_cam)
    return replace(record, relative_translation=tuple(relative[:3, 3]),
                   relative_rotation=matrix_quaternion(relative[:3, :3]), covariance=_covariance_tuple(cov),
                   transform_source="geometry", inliers=int(inliers))


def with_geometry_rotation(record: LoopClosureRecord, rotation_cam: np.ndarray,
                           rotation_covariance_cam: np.ndarray, inliers: int, t_base_cam_match: np.ndarray,
                           t_base_cam_query: np.ndarray) -> LoopClosureRecord:
    """``record`` with the relative rotation of geometric verification without depth (source
    ``geometry_rotation``): ``rotation_cam`` is ``R_match_query`` between the camera optical frames,
    ``rotation_covariance_cam`` its 3x3 covariance there. The translation is **kept** (the sequence
    alignment's along-track offset, or identity) with its covariance: a single camera does not see
    the scale. The base-frame rotation is ``R_base_cam(match) * R_cam * R_base_cam(query)^-1``."""
    left = np.asarray(t_base_cam_match, np.float64)[:3, :3]
    right = np.asarray(t_base_cam_query, np.float64)[:3, :3].T
    rotation = left @ np.asarray(rotation_cam, np.float64) @ right
    cov = np.zeros((6, 6))
    cov[:3, :3] = record.covariance_matrix[:3, :3]
    cov[3:, 3:] = left @ np.asarray(rotation_covariance_cam, np.float64) @ left.T
    return replace(record, relative_rotation=matrix_quaternion(rotation), covariance=_covariance_tuple(cov),
                   transform_source="geometry_rotation", inliers=int(inliers))


def _covariance_tuple(cov: np.ndarray) -> tuple[float, ...]:
    """Exactly symmetric, strictly positive diagonal (a record's invariant)."""
    cov = 0.5 * (cov + cov.T)
    diag = np.diag(cov).copy()
    np.fill_diagonal(cov, np.maximum(diag, 1e-12))
    return tuple(float(v) for v in cov.ravel())


OPTICAL_IN_BASE = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
"""``T_base_camera`` of a forward-looking camera at the base origin whose frame is an optical
frame (REP 103: z forward, x right, y down): the default for geometric verification without
extrinsics."""
