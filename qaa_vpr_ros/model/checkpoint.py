"""Reading and writing model checkpoints without unpickling anything.

Formats:
- Release layout (Hugging Face ``PyTorchModelHubMixin``): a folder with ``config.json``
  ``{"model_config_dict": {...}}`` and ``model.safetensors``.
- Project layout: the same two files; ``config.json`` also holds a ``qaa_vpr_ros`` block
  (format version, image size, preprocessing, anything training adds).
- ``.pt/.pth/.ckpt/.bin`` files (e.g. Lightning checkpoints with ``state_dict`` and
  ``hyper_parameters``), read with ``torch.load(weights_only=True)``.

Pretrained DINOv2 weights for training load into a backbone with :func:`load_dinov2_weights`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..atomic import atomic_folder
from ..paths import expand_path
from .backbone import DINOv2Backbone, convert_dinov2_state_dict
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .vpr_model import RELEASE_IMAGE_SIZE, REQUIRED_KEYS, ModelConfigError, VPRModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PROJECT_KEY = "qaa_vpr_ros"
FORMAT_VERSION = 1
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
MAX_IMAGE_SIDE = 1022  # px (73 patches); larger inputs would need GBs of attention per image


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe or does not match the model."""


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors from a ``.safetensors`` file or a ``.pt/.pth/.ckpt/.bin`` file (``weights_only``)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    return _state_dict_of(_torch_load(path), path)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: refused or unreadable. Only plain tensors/containers load (weights_only=True); "
            f"convert the file to safetensors. Cause: {err}"
        ) from err


def _state_dict_of(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return dict(obj)


def strict_load(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists every culprit key."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state))
        if state[key].shape != expected[key].shape
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{source} does not match the model config; " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def load_dinov2_weights(backbone: DINOv2Backbone, path: str | Path) -> None:
    """Load pretrained DINOv2 weights (official or timm layout; .safetensors or .pth) into ``backbone``.

    Raises: ValueError naming missing, unexpected or mis-shaped keys.
    """
    state = convert_dinov2_state_dict(read_state_dict(expand_path(path)))
    strict_load(backbone, state, source=str(path))


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE}; expected config.json + model.safetensors (release layout)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config


def _model_config(config: dict[str, Any], source: Path) -> dict[str, Any]:
    model_config = config.get("model_config_dict", config)
    if not isinstance(model_config, dict) or any(key not in model_config for key in REQUIRED_KEYS):
        raise CheckpointError(f"{source}: no model_config_dict with {list(REQUIRED_KEYS)}")
    return model_config


def load_model(path: str | Path, device: str | torch.device = "cpu") -> VPRModel:
    """Load a model in eval mode from a release/project folder or a ``.pt/.pth/.ckpt`` file.

    Never touches the network and never unpickles. Raises :class:`CheckpointError` naming
    missing/unexpected/mis-shaped keys and :class:`ModelConfigError` for unsupported configs.
    ``~`` and environment variables in ``path`` are expanded.
    """
    path = expand_path(path)
    if path.is_dir():
        config = _read_config(path)
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            bins = [p for p in (path / "pytorch_model.bin", path / "model.pt") if p.is_file()]
            if not bins:
                raise CheckpointError(f"{path}: no {WEIGHTS_FILE}")
            weights = bins[0]
        state = read_state_dict(weights)
        model_config = _model_config(config, path / CONFIG_FILE)
    elif path.suffix == ".safetensors":
        config = _read_config(path.parent)
        state = read_state_dict(path)
        model_config = _model_config(config, path.parent / CONFIG_FILE)
    elif path.suffix in TORCH_SUFFIXES:
        obj = _torch_load(path)
        state = _state_dict_of(obj, path)
        if (path.parent / CONFIG_FILE).is_file():
            config = _read_config(path.parent)
        elif isinstance(obj, dict) and isinstance(obj.get("hyper_parameters"), dict):
            config = obj["hyper_parameters"]
        else:
            raise CheckpointError(f"{path}: no config.json beside it and no hyper_parameters inside")
        model_config = _model_config(config, path)
    else:
        raise CheckpointError(f"{path}: not a checkpoint folder or a .safetensors/.pt/.pth/.ckpt file")

    project = config.get(PROJECT_KEY, {}) if isinstance(config.get(PROJECT_KEY), dict) else {}
    image_size = project.get("image_size", RELEASE_IMAGE_SIZE)
    if not (isinstance(image_size, (list, tuple)) and len(image_size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_IMAGE_SIDE for v in image_size)):
        raise CheckpointError(f"{path}: config.json describes image_size {image_size!r}; expected two positive "
                              f"integers <= {MAX_IMAGE_SIDE} (every image is resized to it before inference)")
    image_size = tuple(image_size)
    try:
        # Sized on the meta device first (nothing allocated): a config.json that describes a model
        # larger than its weights is refused before it can ask for gigabytes.
        with torch.device("meta"):
            probe = VPRModel(model_config, image_size=image_size)  # type: ignore[arg-type]
        need = sum(t.numel() for t in probe.state_dict().values())  # what strict_load compares
        have = sum(t.numel() for t in state.values())
        if need > have:
            raise CheckpointError(f"{path}: config.json describes a model of {need} values but the weights hold "
                                  f"{have}; config.json and the weights do not belong together")
        model = VPRModel(model_config, image_size=image_size)  # type: ignore[arg-type]
    except ModelConfigError as err:
        raise ModelConfigError(f"{path}: {err}") from err
    strict_load(model, state, source=str(path))
    return model.to(device).eval()


def is_checkpoint_folder(folder: str | Path, extra_files: tuple[str, ...] = ()) -> bool:
    """True for a folder ``save_checkpoint`` may replace: a config.json and weights, nothing else
    (besides ``extra_files``). Any other folder is never deleted by a save."""
    folder = Path(folder)
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return False
    return CONFIG_FILE in names and names <= {CONFIG_FILE, WEIGHTS_FILE, *extra_files}


def save_checkpoint(model: VPRModel, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` in the project layout (release-compatible), atomically. Returns the folder."""
    project = {
        "format_version": FORMAT_VERSION,
        "image_size": list(model.image_size),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        **(extra or {}),
    }
    config = {"model_config_dict": model.model_config_dict, PROJECT_KEY: project}
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    folder = expand_path(folder)
    with atomic_folder(folder, replaces=is_checkpoint_folder) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    return folder
