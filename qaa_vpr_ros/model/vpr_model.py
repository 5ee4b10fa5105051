"""Backbone + aggregator: images (B, 3, H, W) -> L2-normalised place descriptors (B, D)."""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any

from torch import Tensor, nn

from .aggregators import build_aggregator
from .backbone import _TIMM_OVERRIDES, PATCH_SIZE, DINOv2Backbone
from .qaa import qaa_kwargs_from_config

LOGGER = logging.getLogger(__name__)

RELEASE_IMAGE_SIZE = (322, 322)
REQUIRED_KEYS = ("backbone_arch", "backbone_config", "agg_arch", "agg_config")


class ModelConfigError(ValueError):
    """A model_config_dict is malformed or asks for something unsupported."""


def _known_kwargs(factory: Any, config: dict[str, Any], section: str, extra: tuple[str, ...] = ()) -> dict:
    """Keep the keys ``factory`` accepts; warn (naming them) about keys inference does not use."""
    accepted = set(inspect.signature(factory).parameters) | set(extra)
    unused = sorted(set(config) - accepted)
    if unused:
        LOGGER.warning("ignoring %s keys %s: not used by this implementation", section, unused)
    return {key: value for key, value in config.items() if key in accepted}


def build_aggregator_from_config(agg_arch: str, agg_config: dict[str, Any]) -> nn.Module:
    """Instantiate the head named ``agg_arch`` ("QAA", or one of the ablation/baseline heads)."""
    if agg_arch.lower().startswith("qaa"):
        agg_config = qaa_kwargs_from_config(agg_config)
    return build_aggregator(agg_arch, agg_config)


class VPRModel(nn.Module):
    """DINOv2 backbone + aggregation head, configured by the release's ``model_config_dict``.

    Attributes:
        backbone: :class:`DINOv2Backbone` (state dict under ``backbone.model.*``).
        aggregator: the head (state dict under ``aggregator.*``), with ``out_dim``.
        image_size: (H, W) the model is meant to run at (322 x 322 for the release).
    """

    def __init__(
        self, model_config_dict: dict[str, Any], image_size: tuple[int, int] = RELEASE_IMAGE_SIZE
    ) -> None:
        super().__init__()
        missing = [key for key in REQUIRED_KEYS if key not in model_config_dict]
        if missing:
            raise ModelConfigError(f"model_config_dict lacks {missing}; it needs {list(REQUIRED_KEYS)}")
        height, width = (int(v) for v in image_size)
        if height <= 0 or width <= 0 or height % PATCH_SIZE or width % PATCH_SIZE:
            raise ModelConfigError(f"image_size {height}x{width}: both sides must be positive multiples of 14")
        self.model_config_dict = copy.deepcopy(model_config_dict)
        self.image_size = (height, width)
        backbone_config = dict(model_config_dict["backbone_config"])
        backbone_config.pop("model_name", None)
        if backbone_config.get("domain_prompt"):
            raise ModelConfigError("backbone_config domain_prompt=True (domain-prompted DINOv2) is not supported")
        if backbone_config.get("num_trainable_blocks", 0) < 0:  # the authors' code: negative = all frozen
            backbone_config["num_trainable_blocks"] = 0
        try:
            self.backbone = DINOv2Backbone(
                model_config_dict["backbone_arch"],
                **_known_kwargs(DINOv2Backbone, backbone_config, "backbone_config", _TIMM_OVERRIDES),
            )
            agg_config = dict(model_config_dict["agg_config"])
            agg_config.setdefault("num_channels", self.backbone.num_channels)
            if agg_config["num_channels"] != self.backbone.num_channels:
                raise ModelConfigError(
                    f"agg_config num_channels={agg_config['num_channels']} but the backbone "
                    f"{model_config_dict['backbone_arch']!r} is {self.backbone.num_channels} wide"
                )
            self.aggregator = build_aggregator_from_config(str(model_config_dict["agg_arch"]), agg_config)
        except (TypeError, ValueError) as err:
            if isinstance(err, ModelConfigError):
                raise
            raise ModelConfigError(f"unsupported model config: {err}") from err

    @property
    def out_dim(self) -> int:
        return int(self.aggregator.out_dim)

    def forward(self, images: Tensor) -> Tensor:
        """Args: images (B, 3, H, W) ImageNet-normalised, H and W multiples of 14. Returns (B, D)."""
        features, cls_token = self.backbone(images)
        return self.aggregator(features, cls_token)


def build_model(
    model_config_dict: dict[str, Any], image_size: tuple[int, int] = RELEASE_IMAGE_SIZE
) -> VPRModel:
    """A randomly initialised :class:`VPRModel` (load weights with :func:`load_model`)."""
    return VPRModel(model_config_dict, image_size=image_size)
