"""``localize_node``'s start: its parameters (declared with descriptors, validated), its pipeline
(extrinsics, verifier), and what it cannot start without: the model, the map, the device.

Every check names the parameter at fault and the fix (:class:`StartupError`, which the node turns
into one ERROR line, ERROR in ``/diagnostics`` and exit code 1). Cheap checks (paths, permissions,
the model's and the map's headers) run before torch is imported, so a typo fails in a second.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import rclpy.time
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from qaa_vpr_ros.decision import ConfigError, LocalizeConfig, Localizer, ParamSpec
from qaa_vpr_ros.decision.parameters import parse_extrinsics
from qaa_vpr_ros.decision.verifier import CandidateVerifier
from qaa_vpr_ros.extrinsics import ExtrinsicsSource, TransformBuffer
from qaa_vpr_ros.local_features import parse_intrinsics
from qaa_vpr_ros.paths import PathError, expand_path
from qaa_vpr_ros.pipeline import FramePipeline
from qaa_vpr_ros.ros.messages import descriptor_of

if TYPE_CHECKING:
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.maps import PlaceMap

__all__ = ["Loaded", "StartupError", "build_pipeline", "declare_parameters", "load"]


class StartupError(RuntimeError):
    """A fatal start-up problem (model, map, device); the message names the culprit and the fix."""


@dataclass
class Loaded:
    """What :func:`load` made: the extractor, the localizer, the prior map and its session name."""

    extractor: DescriptorExtractor
    localizer: Localizer
    prior_map: PlaceMap | None
    map_session: str


def declare_parameters(node: Node, specs: Iterable[ParamSpec]) -> LocalizeConfig:
    """Declare the parameter table (descriptors with types, ranges, read-only) and validate the
    values given. Raises :class:`ConfigError` naming the parameter."""
    values = {}
    for spec in specs:
        try:
            # An empty list says nothing of its type: declare it as a string array (uninitialised).
            default = Parameter.Type.STRING_ARRAY if spec.type == "str[]" and not spec.default else spec.default
            node.declare_parameter(spec.name, default, descriptor_of(spec))
        except Exception as err:  # rclpy's InvalidParameter*Exception: name the parameter
            raise ConfigError(f"parameter '{spec.name}': {err}") from err
        try:
            values[spec.name] = node.get_parameter(spec.name).value
        except ParameterUninitializedException:  # an empty list in a params file carries no type: the default
            values[spec.name] = spec.default
    return LocalizeConfig.from_dict(values).validate()


def build_pipeline(node: Node, cfg: LocalizeConfig, tf_buffer: TransformBuffer | None) -> FramePipeline:
    """The node's pipeline before loading: extrinsics (``tf_buffer``, else a ``tf2_ros.Buffer``
    fed by a ``TransformListener`` when tf2_ros is importable, else ``camera_extrinsics`` only)
    and, with ``verify_geometry``, the verifier with the intrinsics parameters."""
    if tf_buffer is None:
        try:
            from tf2_ros import Buffer, TransformListener
        except ImportError:  # pip-installed rclpy: no TF; camera_extrinsics (or identity) is used
            pass
        else:
            tf_buffer = Buffer()
            node._tf_listener = TransformListener(tf_buffer, node)  # kept alive with the node
    verifier = None
    if cfg.verify_geometry:
        verifier = CandidateVerifier(cfg)
        for camera, intrinsics in parse_intrinsics(cfg.camera_intrinsics).items():
            verifier.set_intrinsics(camera, intrinsics)
    extrinsics = ExtrinsicsSource(cfg.base_frame, parse_extrinsics(cfg.camera_extrinsics), tf_buffer,
                                  latest=rclpy.time.Time())
    return FramePipeline(cfg, extrinsics, verifier)


def check_path(name: str, path: str, expected: str) -> None:
    """Fail fast, before torch loads, when parameter ``name``'s path is missing or unreadable."""
    try:
        target = expand_path(path)
    except PathError as err:  # $VAR not set
        raise StartupError(f"{name} {path!r}: {err}: set the variable or {name}:= to {expected}") from err
    if not target.exists():
        raise StartupError(f"{name} {path!r} does not exist: set {name}:= to {expected}")
    if not os.access(target, os.R_OK | (os.X_OK if target.is_dir() else 0)):
        raise StartupError(f"{name} {path!r} is not readable by this user: fix its permissions "
                           f"(chmod -R a+rX) or set {name}:= to {expected}")


def check_model_files(model: str) -> None:
    """Fail fast, before torch loads, on an unreadable config.json or safetensors header."""
    from safetensors import safe_open

    path = expand_path(model)
    if path.is_dir():
        files = [path / "config.json", path / "model.safetensors"]
    elif path.suffix == ".safetensors":
        files = [path.parent / "config.json", path]
    else:
        return  # .pt/.pth/.ckpt: only torch reads them
    for file in files:
        if not file.is_file():
            continue  # load_model names what is missing
        try:
            if file.suffix == ".json":
                json.loads(file.read_text())
            else:
                with safe_open(str(file), framework="numpy") as weights:
                    weights.keys()
        except Exception as err:  # OSError, JSONDecodeError, SafetensorError
            raise StartupError(f"model {model!r} cannot be read: {file}: {err}: set model:= to an intact model "
                               "folder (copy it again) or a .pt/.pth/.ckpt file") from err


def check_inputs(cfg: LocalizeConfig) -> None:
    """The parameters' files, before anything heavy is imported."""
    if not cfg.model:
        raise StartupError("parameter 'model' is empty: set model:=<model folder or .pt/.pth/.ckpt file> "
                           "(launch argument or params file)")
    check_path("model", cfg.model, "a model folder (config.json + model.safetensors) or a .pt/.pth/.ckpt file")
    check_model_files(cfg.model)
    if cfg.map:
        check_path("map", cfg.map, "a map folder made by build_map, or map:='' for online loop closure only")
        from qaa_vpr_ros.maps import MapError, read_manifest  # no torch: a broken map fails fast

        try:
            read_manifest(cfg.map)
        except (MapError, OSError) as err:
            raise StartupError(f"map {cfg.map!r} cannot be read: {err}: rebuild it with build_map (or restore "
                               "it), or set map:='' for online loop closure only") from err
    if cfg.backend == "onnxruntime":
        if not cfg.onnx:
            raise StartupError("backend 'onnxruntime' needs parameter 'onnx': set onnx:=<file from "
                               "export_onnx --model MODEL --out FILE>, or backend:=torch")
        check_path("onnx", cfg.onnx, "the .onnx file export_onnx wrote for this model")


def load(cfg: LocalizeConfig, cameras: int, progress: Callable[[str], None] = lambda message: None) -> Loaded:
    """Load the model, the extractor (batches of at least ``cameras``) and the map. Raises
    :class:`StartupError` (fatal). ``progress`` hears what is being loaded."""
    check_inputs(cfg)
    import torch  # alone first (torchvision and timm take seconds more): an unusable device fails fast

    if cfg.backend == "torch" and cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise StartupError(f"device {cfg.device!r} requested but CUDA is not available here: set device:=cpu, "
                           "or device:=auto to take CUDA only when present")
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.maps import PlaceMap, map_session
    from qaa_vpr_ros.model import load_model

    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    try:
        model = load_model(cfg.model, device="cpu")
    except Exception as err:  # CheckpointError, OSError, config errors: all mean "this model won't do"
        raise StartupError(f"model {cfg.model!r} failed to load ({err}): set model:= to a release/checkpoint "
                           "folder or a .pt/.pth/.ckpt file that load_model accepts") from err
    try:
        extractor = DescriptorExtractor(model, device=cfg.device, batch_size=max(16, cameras),
                                        precision=cfg.precision, backend=cfg.backend,
                                        onnx_path=cfg.onnx if cfg.backend == "onnxruntime" else None)
    except ValueError as err:  # wrong ONNX file, missing execution provider, unsupported precision
        raise StartupError(f"backend {cfg.backend!r} cannot run model {cfg.model!r}: {err}") from err
    prior_map, session = None, "map"
    if cfg.map:
        progress(f"loading map {cfg.map}")
        try:
            prior_map = PlaceMap.load(cfg.map, expected_fingerprint=extractor.fingerprint, trusted=cfg.map_trusted)
        except Exception as err:  # MapError (names the fix), OSError
            raise StartupError(f"map {cfg.map!r} failed to load with model {cfg.model!r}: {err}") from err
        if cfg.map_frame:
            prior_map.map_frame = cfg.map_frame
        session = map_session(prior_map.map_id, cfg.map)  # a format-1 map: its folder name
    localizer = Localizer(cfg, extractor.dim, extractor.fingerprint, prior_map, online_frame=cfg.odom_frame)
    return Loaded(extractor, localizer, prior_map, session)
