"""Training configuration: YAML files, ``--set key=value`` overrides, typed dataclasses.

Dataset roots are relative to ``data_root`` (itself relative to the working directory), so one
``--set data_root=PATH`` moves every dataset of a config.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from qaa_vpr_ros.paths import expand_path

from .losses import LossConfig


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


@dataclass
class DatasetConfig:
    """One training dataset: ``format`` (see training.datasets), ``root``, P x K and loader options."""

    format: str
    root: str
    name: str = ""
    places_per_batch: int = 30  # P
    images_per_place: int = 4  # K
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ValidationConfig:
    """One validation split (any evaluation format) and its loader options."""

    format: str
    root: str
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW with separate learning rates; linear warm-up then optional decay."""

    lr_aggregator: float = 4e-5
    lr_backbone: float = 8e-6
    weight_decay: float = 1e-3
    warmup_steps: int = 4000
    decay: str = "none"  # none | linear | cosine | step
    decay_min_factor: float = 0.0  # linear/cosine: final lr as a fraction of the base lr
    decay_step_size: int = 10000  # step: multiply by decay_gamma every this many steps
    decay_gamma: float = 0.5
    grad_clip_norm: float | None = None


@dataclass
class AugmentConfig:
    """RandAugment on the resized uint8 image (torchvision); num_ops 0 disables it."""

    randaugment_num_ops: int = 3
    randaugment_magnitude: int = 9
    randaugment_num_magnitude_bins: int = 31


@dataclass
class TrainConfig:
    model: dict[str, Any]
    datasets: list[DatasetConfig]
    validation: list[ValidationConfig] = field(default_factory=list)
    data_root: str = "."
    train_image_size: tuple[int, int] = (224, 224)
    eval_image_size: tuple[int, int] = (322, 322)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = 10
    steps_per_epoch: int | None = None  # default: the smallest dataset's steps per pass over its places
    max_steps: int | None = None
    max_minutes: float | None = None  # stop (and checkpoint) after this much training wall time
    seed: int = 0
    num_workers: int = 4
    device: str = "auto"
    amp: str = "auto"  # auto (fp16 on cuda, off on cpu) | off | fp16 | bf16
    eval_batch_size: int = 32
    monitor: str = "R@1"  # validation metric (of the first validation split) for the best checkpoint
    validate_every_epochs: int = 1
    keep_epoch_checkpoints: bool = False
    log_every_steps: int = 10
    train_patch_embedding: bool = False  # from-scratch training: also train patch/pos embeddings, CLS
    find_unused_parameters: bool = True  # DDP: heads keep unused parameters (e.g. QAA's dust_bin)
    threads: int | None = None  # torch intra-op threads per process (None: torch default)

    def resolve_root(self, root: str) -> str:
        return str(expand_path(root, base=self.data_root))  # ~ and $VARS expanded in both


def _set_path(tree: Any, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            try:
                idx = int(part)
                node[idx]
            except (ValueError, IndexError):
                raise ConfigError(f"--set {dotted}: {part!r} is not an index of a list of {len(node)}") from None
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"--set {dotted}: {'.'.join(parts[:i])} is a value, not a section")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML; list items by index: ``datasets.0.root``)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        _set_path(out, key.strip(), yaml.safe_load(text) if text.strip() else None)
    return out


def _coerce(value: Any, annotation: str, where: str) -> Any:
    """Numbers YAML leaves as strings (PyYAML reads ``1e-5`` as text) become the field's type."""
    kinds = {part.strip() for part in annotation.split("|")}
    if value is None or isinstance(value, bool):
        return value
    try:
        if "float" in kinds and isinstance(value, (str, int)):
            return float(value)
        if "int" in kinds and isinstance(value, str):
            return int(value)
        if "int" in kinds and isinstance(value, float) and value.is_integer():
            return int(value)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a number") from None
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    types = {f.name: str(f.type) for f in fields(cls)}
    data = {k: _coerce(v, types[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**data)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Typed config from a plain dict; unknown or missing keys raise naming them."""
    raw = copy.deepcopy(raw)
    for key in ("model", "datasets"):
        if key not in raw:
            raise ConfigError(f"config lacks the {key!r} section")
    if not isinstance(raw["datasets"], list) or not raw["datasets"]:
        raise ConfigError("config 'datasets' must be a non-empty list")
    raw["datasets"] = [_build(DatasetConfig, d, f"datasets.{i}") for i, d in enumerate(raw["datasets"])]
    raw["validation"] = [_build(ValidationConfig, d, f"validation.{i}")
                         for i, d in enumerate(raw.get("validation") or [])]
    for key, cls in (("optim", OptimConfig), ("loss", LossConfig), ("augment", AugmentConfig)):
        raw[key] = _build(cls, raw.get(key) or {}, key)
    for key in ("train_image_size", "eval_image_size"):
        if key in raw:
            size = raw[key]
            if not isinstance(size, (list, tuple)) or len(size) != 2 or any(int(s) % 14 for s in size):
                raise ConfigError(f"{key}: expected [H, W], multiples of 14, got {size!r}")
            raw[key] = (int(size[0]), int(size[1]))
    config = _build(TrainConfig, raw, "config")
    for i, d in enumerate(config.datasets):
        d.name = d.name or f"{d.format}{i if len(config.datasets) > 1 else ''}"
    for i, v in enumerate(config.validation):
        v.name = v.name or f"{v.format}_val{i if len(config.validation) > 1 else ''}"
    if config.amp not in ("auto", "off", "fp16", "bf16"):
        raise ConfigError(f"amp: {config.amp!r} not one of auto, off, fp16, bf16")
    if config.optim.decay not in ("none", "linear", "cosine", "step"):
        raise ConfigError(f"optim.decay: {config.optim.decay!r} not one of none, linear, cosine, step")
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """Read a YAML config and apply overrides. Returns (typed config, the resolved plain dict)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw), raw


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain (YAML/JSON-able) dict of a typed config."""
    out = asdict(config)
    out["train_image_size"] = list(config.train_image_size)
    out["eval_image_size"] = list(config.eval_image_size)
    return out
