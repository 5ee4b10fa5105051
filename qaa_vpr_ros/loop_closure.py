"""Place-match and loop-closure decisions, free of ROS.

Two modes, usable together:

- *localization*: each query is searched in a prebuilt :class:`~qaa_vpr_ros.maps.PlaceMap`
  (poses in that map's ``map_frame``);
- *online loop closure*: each query is searched in the robot's own past keyframes (a database
  that grows as it drives, poses in the odometry frame) and then added to it.

A candidate is *accepted* when

1. its score (inner product of L2-normalised descriptors, in [-1, 1]) is >= ``min_score``;
2. in online mode, it lies outside the temporal exclusion window: its stamp is at least
   ``exclude_recent_s`` older than the query (so the robot does not "close a loop" with the
   frame it saw a second ago);
3. it is temporally consistent: among the last ``consistency_window`` queries (this one
   included), at least ``consistency_k`` had a candidate passing 1-2 that lies within
   ``consistency_radius_m`` of it (or, when either keyframe has no position, within
   ``consistency_frames`` keyframe ids). A single look-alike frame therefore never produces a
   loop closure when ``consistency_k >= 2`` (ORB-SLAM3 uses 3).

Every node parameter is a field of :class:`LocalizeConfig`; its default, description, range,
choices and whether it can change at run time live in the field's metadata, and
:func:`parameter_table` turns them into the rows the node builds ``ParameterDescriptor`` s from.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from qaa_vpr_ros.image_conversion import DEFAULT_MAX_PIXELS
from qaa_vpr_ros.keyframes import KeyframeSelector, SelectionConfig

__all__ = [
    "Candidate",
    "ChannelResult",
    "ConfigError",
    "KeyframeGate",
    "LocalizeConfig",
    "Localizer",
    "ParamSpec",
    "PlaceMatcher",
    "Pose",
    "PoseHistory",
    "Query",
    "QueryResult",
    "covariance_from_score",
    "normalize",
    "parameter_table",
]

Pose = tuple[tuple[float, float, float], tuple[float, float, float, float]]
"""(position (x, y, z) in metres, orientation (qx, qy, qz, qw)) in some frame."""


class ConfigError(ValueError):
    """A parameter value that is out of range or inconsistent with another (the message says which)."""


# ---------------------------------------------------------------------------------------------
# Parameters: one table, used by the dataclass, its validation and the node's descriptors.


def _param(default: Any, description: str, *, range: tuple[float, float] | None = None,
           choices: tuple[str, ...] = (), read_only: bool = False) -> Any:
    meta = {"description": description, "range": range, "choices": choices, "read_only": read_only}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class LocalizeConfig:
    """All parameters of ``localize_node`` (ROS parameter name = field name).

    ``read_only`` parameters take effect at start-up only; the others can be changed at run time.
    """

    # Inputs
    image_topics: list[str] = _param(
        ["/camera/image_raw"], "Image topics, one subscription per camera. A single string "
        "'a,b' is also accepted and split at commas.", read_only=True)
    transport: str = _param(
        "auto", "Image message type: raw (sensor_msgs/Image), compressed (sensor_msgs/"
        "CompressedImage) or auto (from the topic graph, else a '/compressed' suffix).",
        choices=("raw", "compressed", "auto"), read_only=True)
    reliable: bool = _param(
        False, "Subscribe to images with reliable QoS instead of sensor-data (best effort).",
        read_only=True)
    qos_depth: int = _param(5, "History depth of the image and odometry subscriptions.",
                            range=(1, 1000), read_only=True)
    odom_topic: str = _param(
        "", "Optional nav_msgs/Odometry topic: query keyframe poses and motion gating. "
        "Empty: no odometry.", read_only=True)
    odom_frame: str = _param(
        "odom", "Frame of the online keyframe database when odometry messages carry no frame_id.",
        read_only=True)
    odom_max_age_s: float = _param(
        0.5, "Largest gap between an image stamp and the nearest odometry stamp for the pose to "
        "be used.", range=(0.0, 60.0))
    max_image_pixels: int = _param(
        DEFAULT_MAX_PIXELS, "Images claiming more pixels are rejected (and counted) before any "
        "allocation.", range=(1, 1_000_000_000))
    # Model and map
    model: str = _param("", "Model: release/checkpoint folder or .pt/.pth/.ckpt file for "
                        "qaa_vpr_ros.model.load_model.", read_only=True)
    map: str = _param("", "Prebuilt map folder (build_map). Empty: online loop closure only.",
                      read_only=True)
    map_frame: str = _param("", "Frame of place matches from the prebuilt map. Empty: the "
                            "map's own map_frame.", read_only=True)
    device: str = _param("auto", "Inference device: auto (CUDA when present), cpu or cuda.",
                         choices=("auto", "cpu", "cuda"), read_only=True)
    precision: str = _param("auto", "Inference precision passed to the extractor: auto, fp32, "
                            "fp16 or bf16.", choices=("auto", "fp32", "fp16", "bf16"),
                            read_only=True)
    torch_threads: int = _param(
        0, "CPU inference threads (torch.set_num_threads); 0 keeps torch's default. On a busy "
        "CPU shared with SLAM, 1 is often faster than several spin-waiting threads.",
        range=(0, 256), read_only=True)
    # Decision
    top_k: int = _param(5, "Candidates searched and published per query.", range=(1, 100))
    min_score: float = _param(
        0.5, "Smallest similarity (inner product of unit descriptors) a candidate needs.",
        range=(-1.0, 1.0))
    online_loop_closure: bool = _param(
        True, "Search the robot's own past keyframes too (the database grows as it drives).")
    exclude_recent_s: float = _param(
        30.0, "Online mode: past keyframes younger than this (relative to the query) are never "
        "loop-closure candidates.", range=(0.0, 86400.0))
    consistency_k: int = _param(
        3, "A candidate is accepted only when at least this many of the recent queries matched "
        "places near it (1 disables the check).", range=(1, 50))
    consistency_window: int = _param(
        5, "Number of recent queries (this one included) the consistency check looks at; "
        ">= consistency_k.", range=(1, 200))
    consistency_radius_m: float = _param(
        10.0, "Two matched places are 'near' when their positions are at most this far apart.",
        range=(0.0, 100000.0))
    consistency_frames: int = _param(
        10, "... or, when a keyframe has no position, when their keyframe ids differ by at "
        "most this.", range=(0, 1_000_000))
    # Keyframe gating
    min_period_s: float = _param(
        0.0, "Per camera, frames closer than this to the previous keyframe are skipped.",
        range=(0.0, 3600.0))
    min_translation_m: float = _param(
        0.0, "With odometry: a new keyframe needs this much travel since the previous one "
        "(or min_rotation_rad of rotation). 0 disables motion gating.", range=(0.0, 10000.0))
    min_rotation_rad: float = _param(
        0.0, "With odometry: ... or this much rotation. 0 disables.", range=(0.0, math.pi))
    # Outputs
    covariance_base: list[float] = _param(
        [1.0, 1.0, 1.0, 0.1, 0.1, 0.1], "Covariance diagonal (x, y, z m^2; roll, pitch, yaw "
        "rad^2) of a perfect place match; scaled up to 10x as the score falls to min_score.")
    publish_unmatched: bool = _param(
        False, "When nothing is accepted, still publish ~/place_match (best candidate's pose or "
        "identity) with 9999 on the covariance diagonal.")
    save_map_folder: str = _param(
        "", "Folder ~/save_map writes the online database to. Empty: "
        "~/.ros/qaa_vpr_ros/online_map_<UTC time>.")
    silent_warn_s: float = _param(5.0, "Diagnostics WARN when a camera has been silent this long.",
                                  range=(0.1, 3600.0))
    diagnostics_period_s: float = _param(1.0, "Period of /diagnostics.", range=(0.05, 60.0),
                                         read_only=True)

    def problems(self) -> list[str]:
        """Every reason this configuration is invalid (empty when valid), each naming the parameter."""
        out = []
        for spec in parameter_table():
            reason = spec.check(getattr(self, spec.name))
            if reason:
                out.append(reason)
        if not out:
            if self.consistency_window < self.consistency_k:
                out.append(f"consistency_window ({self.consistency_window}) must be >= consistency_k "
                           f"({self.consistency_k}): the check cannot find k supports in fewer queries")
            if not self.image_topics:
                out.append("image_topics is empty: give at least one camera topic")
            if len(self.covariance_base) != 6:
                out.append(f"covariance_base has {len(self.covariance_base)} values; give 6 "
                           "(x, y, z, roll, pitch, yaw variances)")
            elif any(not (math.isfinite(v) and v > 0.0) for v in self.covariance_base):
                out.append(f"covariance_base {list(self.covariance_base)} must hold finite values > 0")
        return out

    def validate(self) -> LocalizeConfig:
        """Return ``self`` when valid, else raise :class:`ConfigError` with every reason."""
        out = self.problems()
        if out:
            raise ConfigError("; ".join(out))
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LocalizeConfig:
        """Build from ``{parameter: value}`` (unknown names are an error); see :meth:`normalize`."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: normalize(k, v) for k, v in values.items()})


@dataclass(frozen=True)
class ParamSpec:
    """One row of the parameter table (what ``ParameterDescriptor`` needs)."""

    name: str
    type: str  # "bool" | "int" | "float" | "str" | "str[]" | "float[]"
    default: Any
    description: str
    range: tuple[float, float] | None
    choices: tuple[str, ...]
    read_only: bool

    def check(self, value: Any) -> str | None:
        """The reason ``value`` is not acceptable for this parameter, or None."""
        kind = _kind(value)
        if kind != self.type and not (self.type == "float" and kind == "int"):
            return f"parameter '{self.name}' must be of type {self.type}, got {value!r}"
        if self.range is not None:
            lo, hi = self.range
            if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
                return f"parameter '{self.name}' = {value!r} is out of range [{lo}, {hi}]"
        if self.choices and value not in self.choices:
            return f"parameter '{self.name}' = {value!r} is not one of {list(self.choices)}"
        return None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return "str[]"
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return "float[]"
    return type(value).__name__


def parameter_table() -> list[ParamSpec]:
    """Rows (name, type, default, description, range, choices, read_only) of every parameter."""
    rows = []
    for f in fields(LocalizeConfig):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        rows.append(ParamSpec(
            name=f.name, type=_kind(default), default=default, description=f.metadata["description"],
            range=f.metadata["range"], choices=f.metadata["choices"], read_only=f.metadata["read_only"]))
    return rows


def normalize(name: str, value: Any) -> Any:
    """Tidy a parameter value as ROS delivers it: ``image_topics`` entries split at commas and
    stripped; float lists as floats; integral values given for float parameters as floats."""
    if name == "image_topics":
        if isinstance(value, str):
            value = [value]
        return [t.strip() for item in value for t in str(item).split(",") if t.strip()]
    if name == "covariance_base" and isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        kinds = {f.name: f.type for f in fields(LocalizeConfig)}
        if kinds.get(name) in ("float", float):
            return float(value)
    return value


# ---------------------------------------------------------------------------------------------
# Queries, candidates and decisions.


@dataclass
class Query:
    """One camera frame to localize. ``pose`` is the odometry pose at its stamp, in ``pose_frame``."""

    camera: str
    stamp_sec: int
    stamp_nanosec: int
    frame_id: str = ""
    pose: Pose | None = None
    pose_frame: str = "odom"

    @property
    def stamp(self) -> float:
        """Seconds (float)."""
        return self.stamp_sec + 1e-9 * self.stamp_nanosec


@dataclass
class Candidate:
    """A database keyframe returned for a query, in rank order (0 = best score)."""

    keyframe: Any  # qaa_vpr_ros.maps.Keyframe
    score: float
    rank: int
    accepted: bool = False
    reason: str = ""  # why not accepted: "score" | "recent" | "inconsistent"


@dataclass
class ChannelResult:
    """The decision for one query against one database (``source`` "map" or "online")."""

    source: str
    map_frame: str
    candidates: list[Candidate]

    @property
    def best(self) -> Candidate | None:
        """The best-scoring accepted candidate, or None."""
        return next((c for c in self.candidates if c.accepted), None)


@dataclass
class QueryResult:
    """Everything decided for one query."""

    query: Query
    map: ChannelResult | None = None  # against the prebuilt map
    online: ChannelResult | None = None  # against the robot's own past keyframes
    keyframe: Any = None  # the query's keyframe as added to the online database

    @property
    def place(self) -> ChannelResult | None:
        """What ``~/place_match`` reports: the prebuilt map when loaded, else the online database."""
        return self.map if self.map is not None else self.online


def _position(keyframe: Any) -> np.ndarray | None:
    pos = getattr(keyframe, "position", None)
    if pos is None:
        return None
    arr = np.asarray(pos, dtype=np.float64)
    return arr if arr.shape == (3,) and np.all(np.isfinite(arr)) else None


def _stamp(keyframe: Any) -> float:
    return float(keyframe.stamp_sec) + 1e-9 * float(keyframe.stamp_nanosec)


class PlaceMatcher:
    """Accept/reject the candidates of successive queries against one database.

    Keeps the short history the temporal-consistency check needs; not thread-safe.
    """

    def __init__(self, config: LocalizeConfig, exclude_recent: bool) -> None:
        self.config = config
        self.exclude_recent = exclude_recent
        # One entry per past query: the keyframes that passed score (and exclusion).
        self._history: deque[list[Any]] = deque(maxlen=max(config.consistency_window - 1, 0))

    def set_config(self, config: LocalizeConfig) -> None:
        """Apply new parameters, keeping as much history as the new window allows."""
        self.config = config
        self._history = deque(self._history, maxlen=max(config.consistency_window - 1, 0))

    def reset(self) -> None:
        self._history.clear()

    def _near(self, a: Any, b: Any) -> bool:
        pa, pb = _position(a), _position(b)
        if pa is not None and pb is not None:
            return float(np.linalg.norm(pa - pb)) <= self.config.consistency_radius_m
        return abs(int(a.id) - int(b.id)) <= self.config.consistency_frames

    def decide(self, query_stamp: float, scores: Sequence[float],
               keyframes: Sequence[Any]) -> list[Candidate]:
        """Candidates of one query in rank order, each marked accepted or with a reason.

        Args:
            query_stamp: the query image's stamp, seconds.
            scores: descending similarity scores of the search hits (padding already removed).
            keyframes: the hits' keyframe records (``.id``, ``.stamp_sec``, ``.stamp_nanosec``,
                ``.position``), same order.
        """
        cfg = self.config
        if len(scores) != len(keyframes):
            raise ValueError(f"{len(scores)} scores for {len(keyframes)} keyframes")
        candidates = [Candidate(kf, float(s), rank)
                      for rank, (s, kf) in enumerate(zip(scores, keyframes, strict=True))]
        passing = []
        for c in candidates:
            if c.score < cfg.min_score:
                c.reason = "score"
            elif self.exclude_recent and _stamp(c.keyframe) > query_stamp - cfg.exclude_recent_s:
                c.reason = "recent"
            else:
                passing.append(c)
        for c in passing:
            support = 1 + sum(any(self._near(c.keyframe, kf) for kf in past) for past in self._history)
            c.accepted = support >= cfg.consistency_k
            if not c.accepted:
                c.reason = "inconsistent"
        if self._history.maxlen:
            self._history.append([c.keyframe for c in passing])
        return candidates


def covariance_from_score(score: float, min_score: float, base_diagonal: Sequence[float]) -> list[float]:
    """Row-major 6x6 covariance: ``base_diagonal`` at score 1, growing to 10x at ``min_score``.

    confidence = (score - min_score) / (1 - min_score) clipped to [0, 1];
    variance = base / (0.1 + 0.9 * confidence).
    """
    span = max(1.0 - min_score, 1e-9)
    confidence = min(max((score - min_score) / span, 0.0), 1.0)
    factor = 1.0 / (0.1 + 0.9 * confidence)
    cov = [0.0] * 36
    for i, v in enumerate(base_diagonal):
        cov[7 * i] = float(v) * factor
    return cov


# ---------------------------------------------------------------------------------------------
# Keyframe gating and odometry lookup.


class KeyframeGate:
    """Per camera: is this frame a new keyframe? (time since the last one, travel, rotation)

    A thread-safe front of :class:`qaa_vpr_ros.keyframes.KeyframeSelector` (the map builder's
    selection, so both keep the same frames) configured by ``min_period_s``,
    ``min_translation_m`` and ``min_rotation_rad``. :meth:`admit` commits the frame as the
    camera's latest keyframe when it passes.
    """

    def __init__(self, config: LocalizeConfig) -> None:
        self.config = config
        self._selector = KeyframeSelector()
        self._last_ns: dict[str, int] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._selector = KeyframeSelector(self._selector.config)
            self._last_ns.clear()

    def admit(self, camera: str, stamp: float, pose: Pose | None) -> bool:
        """``stamp`` in seconds; ``pose`` the odometry pose at it, or None (time gating only)."""
        cfg = self.config
        position, orientation = pose if pose is not None else (None, None)
        stamp_ns = round(stamp * 1e9)
        with self._lock:
            self._selector.config = SelectionConfig(cfg.min_period_s, cfg.min_translation_m, cfg.min_rotation_rad)
            # Time went backwards (a bag replayed again, a simulator reset): start afresh rather
            # than gating every frame until the old stamp is reached.
            jumped = stamp_ns < self._last_ns.get(camera, stamp_ns)
            if not jumped and not self._selector.wants(camera, stamp_ns, position, orientation):
                return False
            self._selector.accept(camera, stamp_ns, position, orientation)
            self._last_ns[camera] = stamp_ns
            return True


class PoseHistory:
    """Recent odometry poses; :meth:`lookup` returns the one nearest a stamp. Thread-safe."""

    def __init__(self, maxlen: int = 2000) -> None:
        self._items: deque[tuple[float, Pose, str]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, stamp: float, pose: Pose, frame_id: str) -> None:
        with self._lock:
            self._items.append((stamp, pose, frame_id))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def lookup(self, stamp: float, max_age_s: float) -> tuple[Pose, str] | None:
        """``(pose, frame_id)`` of the odometry message nearest ``stamp`` within ``max_age_s``."""
        with self._lock:
            if not self._items:
                return None
            best = min(self._items, key=lambda item: abs(item[0] - stamp))
        if abs(best[0] - stamp) > max_age_s:
            return None
        return best[1], best[2]


# ---------------------------------------------------------------------------------------------
# The two databases together.


class Localizer:
    """Searches a prebuilt map and/or the online keyframe database and decides, query by query.

    Not thread-safe: the node calls it from its one inference thread (and services under a lock).
    """

    def __init__(self, config: LocalizeConfig, dim: int, fingerprint: str,
                 prior_map: Any = None, online_frame: str = "odom") -> None:
        self.config = config.validate()
        self.dim = dim
        self.fingerprint = fingerprint
        self.prior_map = prior_map
        self.online_frame = online_frame
        self.online_map = self._new_online_map()
        self.map_matcher = PlaceMatcher(config, exclude_recent=False)
        self.online_matcher = PlaceMatcher(config, exclude_recent=True)

    def _new_online_map(self) -> Any:
        from qaa_vpr_ros.maps import PlaceMap

        return PlaceMap.create(self.dim, self.fingerprint, index_type="flat", map_frame=self.online_frame)

    def set_config(self, config: LocalizeConfig) -> None:
        self.config = config.validate()
        self.map_matcher.set_config(config)
        self.online_matcher.set_config(config)

    def reset(self) -> None:
        """Forget the online database and the consistency histories (the prebuilt map stays)."""
        self.online_map = self._new_online_map()
        self.map_matcher.reset()
        self.online_matcher.reset()

    def save_online(self, folder: str | Path) -> int:
        """Write the online database as a map folder; returns its keyframe count."""
        if len(self.online_map) == 0:
            raise ValueError("the online keyframe database is empty: drive a little (and check "
                             "that images arrive) before saving")
        self.online_map.save(folder)
        return len(self.online_map)

    def _search(self, place_map: Any, descriptors: np.ndarray) -> tuple[np.ndarray, list[list[Any]]]:
        k = min(self.config.top_k, len(place_map))
        result = place_map.search(descriptors, k)
        return np.asarray(result.scores), [list(kfs) for kfs in result.keyframes]

    @staticmethod
    def _hits(scores: np.ndarray, keyframes: list[list[Any]], row: int) -> tuple[list[float], list[Any]]:
        """Row ``row`` of a search result without its padding (missing keyframes)."""
        kfs = [kf for kf in keyframes[row] if kf is not None]
        return [float(s) for s in scores[row, : len(kfs)]], kfs

    def process(self, queries: Sequence[Query], descriptors: np.ndarray) -> list[QueryResult]:
        """Decide for a batch of queries (descriptors (N, D) float32, same order), then add them
        to the online database when online loop closure is on. Queries are decided in stamp order."""
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if descriptors.shape != (len(queries), self.dim):
            raise ValueError(f"descriptors have shape {descriptors.shape}, "
                             f"expected ({len(queries)}, {self.dim})")
        results = [QueryResult(q) for q in queries]
        if not queries:
            return results
        order = sorted(range(len(queries)), key=lambda i: queries[i].stamp)
        if self.prior_map is not None and len(self.prior_map) > 0:
            scores, kfs = self._search(self.prior_map, descriptors)
            frame = self.prior_map.map_frame
            for i in order:
                s, k = self._hits(scores, kfs, i)
                results[i].map = ChannelResult("map", frame, self.map_matcher.decide(queries[i].stamp, s, k))
        elif self.prior_map is not None:
            for i in order:
                results[i].map = ChannelResult("map", self.prior_map.map_frame, [])
        if self.config.online_loop_closure:
            if len(self.online_map) > 0:
                scores, kfs = self._search(self.online_map, descriptors)
            for i in order:
                if len(self.online_map) > 0:
                    s, k = self._hits(scores, kfs, i)
                    cands = self.online_matcher.decide(queries[i].stamp, s, k)
                else:
                    cands = self.online_matcher.decide(queries[i].stamp, [], [])
                results[i].online = ChannelResult("online", self.online_frame, cands)
            self._add_online([queries[i] for i in order], descriptors[order], [results[i] for i in order])
        return results

    def _add_online(self, queries: list[Query], descriptors: np.ndarray, results: list[QueryResult]) -> None:
        from qaa_vpr_ros.maps import Keyframe

        start = len(self.online_map)
        keyframes = []
        for n, q in enumerate(queries):
            if q.pose is not None:
                position, orientation = q.pose
            else:
                position, orientation = (math.nan, math.nan, math.nan), (0.0, 0.0, 0.0, 1.0)
            keyframes.append(Keyframe(
                id=start + n, stamp_sec=q.stamp_sec, stamp_nanosec=q.stamp_nanosec, camera=q.camera,
                frame_id=q.frame_id, position=tuple(position), orientation=tuple(orientation),
                source="online"))
        self.online_map.add(descriptors, keyframes)
        for r, kf in zip(results, keyframes, strict=True):
            r.keyframe = kf

