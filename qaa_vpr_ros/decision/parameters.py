"""The node's parameter table: every parameter of ``localize_node`` is a field of :class:`LocalizeConfig`.

Its default, description, range, choices and whether it can change at run time live in the field's
metadata; :func:`parameter_table` turns them into the rows the node builds ``ParameterDescriptor`` s
from, and ``config/localize.yaml`` lists the same defaults. :func:`parse_extrinsics` reads
``camera_extrinsics`` (the grammar of :mod:`qaa_vpr_ros.parameter_grammar`).
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import numpy as np

from qaa_vpr_ros.image_conversion import DEFAULT_MAX_PIXELS
from qaa_vpr_ros.parameter_grammar import parse_topic_numbers
from qaa_vpr_ros.paths import PathError, path_argument
from qaa_vpr_ros.poses import pose_matrix

__all__ = ["ConfigError", "LocalizeConfig", "ParamSpec", "normalize", "parameter_table", "params_yaml",
           "parse_extrinsics"]


class ConfigError(ValueError):
    """A parameter value that is out of range or inconsistent with another (the message says which)."""


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
    depth_topics: list[str] = _param(
        [], "Depth image topics (sensor_msgs/Image 16UC1 millimetres or 32FC1 metres, registered to the colour "
        "image), one per image topic in the same order; '' for a camera without depth. Empty: no depth. "
        "A single string 'a,b' is also accepted.", read_only=True)
    depth_max_age_s: float = _param(
        0.05, "A depth image is paired with the colour image of the nearest stamp within this (seconds); the "
        "node waits that long for a depth image stamped after the colour one.", range=(0.0, 5.0))
    odom_max_age_s: float = _param(
        0.5, "Largest gap between an image stamp and the odometry samples the pose is interpolated "
        "from (or the nearest one, at the ends of the history).", range=(0.0, 60.0))
    max_image_pixels: int = _param(
        DEFAULT_MAX_PIXELS, "Images claiming more pixels are rejected (and counted) before any "
        "allocation.", range=(1, 1_000_000_000), read_only=True)
    # Model and map
    model: str = _param("", "Model: release/checkpoint folder or .pt/.pth/.ckpt file for "
                        "qaa_vpr_ros.model.load_model.", read_only=True)
    map: str = _param("", "Prebuilt map folder (build_map). Empty: online loop closure only.",
                      read_only=True)
    map_trusted: bool = _param(
        False, "Read the map's index.faiss as saved (faiss's binary parser; only for maps you built). "
        "false: the index is rebuilt from descriptors.npy, which is parsed safely.", read_only=True)
    map_frame: str = _param("", "Frame of place matches from the prebuilt map. Empty: the "
                            "map's own map_frame.", read_only=True)
    device: str = _param("auto", "Inference device: auto (CUDA when present), cpu or cuda.",
                         choices=("auto", "cpu", "cuda"), read_only=True)
    precision: str = _param("auto", "Inference precision passed to the extractor: auto, fp32, "
                            "fp16 or bf16.", choices=("auto", "fp32", "fp16", "bf16"),
                            read_only=True)
    backend: str = _param("torch", "Inference backend: torch, or onnxruntime running the 'onnx' file "
                          "(TensorRT, CUDA or CPU execution provider, whichever is installed).",
                          choices=("torch", "onnxruntime"), read_only=True)
    onnx: str = _param("", "With backend onnxruntime: the .onnx file export_onnx wrote for 'model' (same "
                       "fingerprint, so maps built with either backend load).", read_only=True)
    torch_threads: int = _param(
        0, "CPU inference threads (torch.set_num_threads); 0 keeps torch's default. On a busy "
        "CPU shared with SLAM, 1 is often faster than several spin-waiting threads.",
        range=(0, 256), read_only=True)
    # Decision (docs/NODE.md "How a match is decided")
    top_k: int = _param(10, "Hypotheses taken from each query's search (besides the previous query's "
                        "best ones carried forward by odometry); the best top_k are published.",
                        range=(1, 100))
    min_score: float = _param(
        0.0, "Floor on the sequence score (mean similarity of unit descriptors along the aligned "
        "sequence) of an accepted match; the confidence decides.", range=(-1.0, 1.0))
    min_confidence: float = _param(
        0.05, "A match is accepted when its sequence score exceeds the best sequence score elsewhere "
        "(beyond confidence_radius_m) by at least this much.", range=(0.0, 2.0))
    confidence_radius_m: float = _param(
        25.0, "Hypotheses within this distance of each other are one place for the confidence.",
        range=(0.0, 100000.0))
    confidence_frames: int = _param(
        5, "... or, when a keyframe has no position, within this many keyframe rows.", range=(0, 1_000_000))
    sequence_length_m: float = _param(
        200.0, "Odometry path length the sequence evidence looks back over.", range=(0.0, 100000.0))
    sequence_keyframes: int = _param(
        20, "Queries in a sequence at most (spread evenly over sequence_length_m; without odometry: "
        "the last ones).", range=(1, 1000))
    sequence_radius_m: float = _param(
        15.0, "An earlier query is compared with the nearest map keyframe within this distance of "
        "the position the hypothesis and the odometry predict for it.", range=(0.0, 100000.0))
    sequence_min_support: int = _param(
        10, "A hypothesis is decidable when at least this many queries of its sequence found a map "
        "keyframe within sequence_radius_m (<= sequence_keyframes).", range=(1, 1000))
    online_loop_closure: bool = _param(
        True, "Search the robot's own past keyframes too (the database grows as it drives).")
    online_max_keyframes: int = _param(
        10000, "Cap of the online database: on reaching it, it is thinned spatially to half "
        "(docs/NODE.md, 'Online database memory'). 0: no cap.", range=(0, 10_000_000))
    exclude_recent_s: float = _param(
        30.0, "Online mode: past keyframes younger than this (relative to the query) are never "
        "loop-closure candidates.", range=(0.0, 86400.0))
    loop_min_confidence: float = _param(
        0.1, "Online mode: min_confidence for loop closures against the robot's own past (stricter: "
        "a SLAM back end trusts them, and images of one drive resemble each other more).",
        range=(0.0, 2.0))
    loop_min_travel_m: float = _param(
        100.0, "Online mode, with odometry: a past keyframe is a loop-closure candidate only when the "
        "robot has travelled this far (odometry path length) since it.", range=(0.0, 1e9))
    # Keyframe gating
    min_period_s: float = _param(
        0.0, "Per camera, frames closer than this to the previous keyframe are skipped.",
        range=(0.0, 3600.0))
    min_translation_m: float = _param(
        0.0, "With odometry: a new keyframe needs this much travel since the previous one "
        "(or min_rotation_rad of rotation). 0 disables motion gating.", range=(0.0, 10000.0))
    min_rotation_rad: float = _param(
        0.0, "With odometry: ... or this much rotation. 0 disables.", range=(0.0, math.pi))
    min_view_overlap: float = _param(
        0.10, "With motion gating and local features (verify_geometry, intrinsics): a frame the travel and "
        "rotation rules skip is still a keyframe when less than this share of its features match the "
        "camera's last keyframe's (a handheld camera turning on the spot). 0 disables; build_map's "
        "--min-view-overlap is the same rule.", range=(0.0, 1.0))
    # Outputs
    covariance_base: list[float] = _param(
        [640.0, 110.0, 1.0, 0.1, 0.1, 0.1], "Covariance diagonal (x, y, z m^2; roll, pitch, yaw "
        "rad^2) of a confident place match with an identity transform (transform_source 'none'); "
        "scaled up to 10x as the confidence falls to min_confidence. Measured on held-out Nordland "
        "(scripts/covariance_honesty.py, docs/NODE.md).")
    covariance_sequence: list[float] = _param(
        [65.0, 3.0, 1.0, 0.1, 0.1, 0.1], "The same for a match whose relative transform carries the "
        "sequence alignment's along-track offset (transform_source 'sequence'); measured like "
        "covariance_base (docs/NODE.md).")
    publish_unmatched: bool = _param(
        False, "When nothing is accepted, still publish ~/place_match (best candidate's pose or "
        "identity) with 9999 on the covariance diagonal.")
    lio_sam_topic: str = _param(
        "", "LIO-SAM adapter: each accepted online loop closure is also published on this topic as "
        "std_msgs/Float64MultiArray [t_current, t_previous] (LIO-SAM's lio_loop/loop_closure_detection). "
        "Empty: off.", read_only=True)
    initialpose_topic: str = _param(
        "", "Relocalization adapter: the robot's pose in the map frame by an accepted map match, as "
        "geometry_msgs/PoseWithCovarianceStamped (e.g. Nav2's /initialpose), on the first relocalization, "
        "the first after being lost, and for a correction above initialpose_min_correction_m/_rad. "
        "Empty: off.", read_only=True)
    lost_after_s: float = _param(
        5.0, "~/localization_status turns lost when no map match was accepted for this long (image-stamp "
        "seconds, so bag replays and sim time behave).", range=(0.0, 86400.0))
    initialpose_min_correction_m: float = _param(
        0.5, "After the first relocalization (or the first after being lost), initialpose is published "
        "again only when an accepted map pose differs from the last published one, moved by the odometry "
        "since, by more than this (metres) ...", range=(0.0, 1e6))
    initialpose_min_correction_rad: float = _param(
        0.2, "... or by more than this rotation (radians).", range=(0.0, math.pi))
    base_frame: str = _param(
        "base_link", "Robot base frame: camera extrinsics (base -> image frame_id) come from TF when "
        "tf2_ros is importable, else from camera_extrinsics.", read_only=True)
    camera_extrinsics: str = _param(
        "", "Base -> camera transforms without TF, ';'-separated entries 'TOPIC x y z qx qy qz qw' "
        "(m, unit quaternion); matches across cameras are corrected by them. Unlisted cameras: identity.",
        read_only=True)
    verify_geometry: bool = _param(
        True, "Verify each query's top candidates, map and online, geometrically from local features (SIFT; "
        "PnP on depth where a keyframe or the query has depth, else the essential matrix): a failed check "
        "un-accepts a match, a passed one gives its record the relative pose and a covariance from the "
        "evidence. Needs intrinsics: camera_info next to each image topic, or camera_intrinsics; without "
        "them (or features) the match stays as decided, counted in /diagnostics.", read_only=True)
    camera_intrinsics: str = _param(
        "", "Intrinsics when no camera_info topic: ';'-separated entries "
        "'TOPIC fx fy cx cy [k1 k2 p1 p2 k3]' (pixels).", read_only=True)
    verify_candidates: int = _param(
        3, "Candidates per database (best sequence score first), and as many nearest keyframes by descriptor, "
        "verified for each query, after the accepted one and until one settles the query (docs/NODE.md).",
        range=(0, 100))
    local_features_max: int = _param(
        700, "Local features (SIFT, strongest first) extracted per query and kept per online keyframe.",
        range=(50, 10000), read_only=True)
    geometry_accept: bool = _param(
        True, "Accept a candidate at once when geometry verifies it strongly (below), without waiting for "
        "sequence support, also in a map with no rival place beyond confidence_radius_m.")
    geometry_accept_min_inliers: int = _param(
        40, "geometry_accept: PnP (or essential-matrix) inliers needed.", range=(6, 100000))
    geometry_accept_min_inlier_ratio: float = _param(
        0.3, "geometry_accept: share of the usable matches that are inliers.", range=(0.0, 1.0))
    geometry_loop_exclude_recent_s: float = _param(
        10.0, "Online loop closures accepted on geometry: past keyframes younger than this are never "
        "candidates; no loop_min_travel_m guard (a camera back at a view without travelling far).",
        range=(0.0, 86400.0))
    geometry_accept_essential: bool = _param(
        False, "geometry_accept also without depth (essential matrix: rotation only, no metric position).")
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
        for name in PATH_PARAMETERS:
            if not isinstance(getattr(self, name), str):
                continue  # the type check above named it
            try:
                path_argument(getattr(self, name))
            except PathError as err:
                out.append(f"parameter '{name}': {err}")
        if not out:
            if self.sequence_min_support > self.sequence_keyframes:
                out.append(f"sequence_min_support ({self.sequence_min_support}) must be <= sequence_keyframes "
                           f"({self.sequence_keyframes}): no sequence could ever give that much support")
            if not self.image_topics:
                out.append("image_topics is empty: give at least one camera topic")
            if self.depth_topics and len(self.depth_topics) != len(self.image_topics):
                out.append(f"depth_topics has {len(self.depth_topics)} entries for {len(self.image_topics)} "
                           "image_topics: give one per image topic, in the same order ('' for a camera without depth)")
            clash = sorted(set(self.depth_topics) & set(self.image_topics))
            if clash:
                out.append(f"depth_topics {clash} are also image_topics: a depth image is never a camera")
            try:
                parse_extrinsics(self.camera_extrinsics)
            except ValueError as err:
                out.append(f"parameter 'camera_extrinsics': {err}")
            try:
                from qaa_vpr_ros.local_features import parse_intrinsics

                parse_intrinsics(self.camera_intrinsics)
            except ValueError as err:
                out.append(f"parameter 'camera_intrinsics': {err}")
            for name in ("covariance_base", "covariance_sequence"):
                values = getattr(self, name)
                if len(values) != 6:
                    out.append(f"{name} has {len(values)} values; give 6 (x, y, z, roll, pitch, yaw variances)")
                elif any(not (math.isfinite(v) and v > 0.0) for v in values):
                    out.append(f"{name} {list(values)} must hold finite values > 0")
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


# Parameters holding file system paths: ~ and $VARS are expanded (qaa_vpr_ros.paths.expand_path).
PATH_PARAMETERS = ("model", "map", "onnx", "save_map_folder")


def normalize(name: str, value: Any) -> Any:
    """Tidy a parameter value as ROS delivers it: ``image_topics`` entries split at commas and
    stripped; float lists as floats; integral values given for float parameters as floats; paths
    (``PATH_PARAMETERS``) with ``~`` and environment variables expanded (an unset variable is left
    for :meth:`LocalizeConfig.problems` to name)."""
    if name in PATH_PARAMETERS and isinstance(value, str):
        try:
            return path_argument(value)
        except PathError:
            return value
    if name == "image_topics" and isinstance(value, (str, list, tuple)):
        if isinstance(value, str):
            value = [value]
        return [t.strip() for item in value for t in str(item).split(",") if t.strip()]
    if name == "depth_topics" and isinstance(value, (str, list, tuple)):
        # Blanks are kept between entries ('' = a camera without depth), so the order stays the cameras'.
        items = [t.strip() for item in ([value] if isinstance(value, str) else value) for t in str(item).split(",")]
        return items if any(items) else []
    if name in ("covariance_base", "covariance_sequence") and isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]  # anything else stays as given: check() names the parameter
    if isinstance(value, int) and not isinstance(value, bool):
        kinds = {f.name: f.type for f in fields(LocalizeConfig)}
        if kinds.get(name) in ("float", float):
            return float(value)
    return value


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return repr(value)


def params_yaml(values: dict[str, Any] | None = None, header: str = "") -> str:
    """A ROS 2 parameter file (``/**: ros__parameters:``) of every parameter, each with its
    description as a comment: the defaults, with ``values`` overriding some (unknown names are an
    error). ``config/localize.yaml`` is this with no overrides; ``eval_map --write-params`` writes
    it with the tuned values."""
    import textwrap

    values = dict(values or {})
    config = LocalizeConfig.from_dict(values).validate()
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += ["/**:", "  ros__parameters:"]
    for spec in parameter_table():
        notes = []
        if spec.choices:
            notes.append("one of " + "|".join(spec.choices))
        if spec.range is not None:
            notes.append(f"range [{spec.range[0]}, {spec.range[1]}]")
        if spec.read_only:
            notes.append("start-up only")
        text = spec.description + (f" ({'; '.join(notes)})" if notes else "")
        lines += textwrap.wrap(text, width=106, break_on_hyphens=False, initial_indent="    # ",
                               subsequent_indent="    # ")
        lines.append(f"    {spec.name}: {_yaml_value(getattr(config, spec.name))}")
    return "\n".join(lines) + "\n"


def parse_extrinsics(text: str) -> dict[str, np.ndarray]:
    """The ``camera_extrinsics`` parameter, ``;``-separated ``"TOPIC x y z qx qy qz qw"`` entries,
    -> {topic: T_base_camera (4x4)}."""
    return parse_topic_numbers(text, "camera_extrinsics",
                               "'TOPIC x y z qx qy qz qw' (base -> camera, metres and a unit quaternion)", 7,
                               convert=_extrinsic)


def _extrinsic(values: tuple[float, ...]) -> np.ndarray:
    if not all(math.isfinite(v) for v in values) or not math.isclose(
            math.sqrt(sum(v * v for v in values[3:])), 1.0, abs_tol=1e-3):
        raise ValueError("values must be finite and the quaternion unit")
    return pose_matrix(values[:3], values[3:])
