"""DINOv2 ViT backbone built with timm, numerically equal to the official DINOv2 forward pass.

The state-dict layout under ``model.`` is the official DINOv2 one (``cls_token``, ``pos_embed``,
``mask_token``, ``patch_embed.proj.*``, ``blocks.{i}.*``, ``norm.*``), which is what the QAA
release stores under ``backbone.model.*``; timm uses the same names apart from ``mask_token``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

PATCH_SIZE = 14

# Official DINOv2 hub names -> timm architectures (same weights layout).
DINOV2_ARCHS: dict[str, str] = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
}

# timm constructor arguments a config may override (tiny test models, other ViTs).
_TIMM_OVERRIDES = ("embed_dim", "depth", "num_heads", "img_size", "mlp_ratio", "init_values")

# DINOv2 interpolates position embeddings with this offset (a historical fix, kept for parity).
_INTERPOLATE_OFFSET = 0.1


class BackboneConfigError(ValueError):
    """A backbone architecture or option is not supported."""


class DINOv2Backbone(nn.Module):
    """DINOv2 ViT that returns patch tokens as a feature map plus the CLS token.

    Args:
        arch: ``dinov2_vit{s,b,l}14`` or any timm ViT name (e.g. ``vit_small_patch14_dinov2``).
        num_trainable_blocks: the last N blocks train; earlier blocks are frozen and run
            without autograd.
        norm_layer: apply the final LayerNorm to the tokens (the released QAA models do).
        return_token: kept for release-config compatibility; the CLS token is always returned
            and aggregators use it only when they are configured to.
        **timm_overrides: ``embed_dim``, ``depth``, ``num_heads``, ``img_size``, ``mlp_ratio``,
            ``init_values`` for small test configurations.
    """

    def __init__(
        self,
        arch: str = "dinov2_vitb14",
        num_trainable_blocks: int = 2,
        norm_layer: bool = True,
        return_token: bool = False,
        **timm_overrides: object,
    ) -> None:
        super().__init__()
        unknown = sorted(set(timm_overrides) - set(_TIMM_OVERRIDES))
        if unknown:
            raise BackboneConfigError(
                f"unsupported backbone_config keys {unknown}; supported: num_trainable_blocks, "
                f"norm_layer, return_token, {', '.join(_TIMM_OVERRIDES)}"
            )
        timm_name = DINOV2_ARCHS.get(arch, arch)
        try:
            self.model = timm.create_model(timm_name, pretrained=False, num_classes=0, **timm_overrides)
        except RuntimeError as err:  # timm: "Unknown model"
            raise BackboneConfigError(
                f"unknown backbone_arch {arch!r}: use one of {sorted(DINOV2_ARCHS)} or a timm ViT name"
            ) from err
        patch = self.model.patch_embed.patch_size
        if tuple(patch) != (PATCH_SIZE, PATCH_SIZE):
            raise BackboneConfigError(f"backbone_arch {arch!r} has patch size {patch}, expected 14")
        if getattr(self.model, "num_prefix_tokens", 1) != 1:
            raise BackboneConfigError(f"backbone_arch {arch!r} has register tokens, which are not supported")
        self.num_channels: int = self.model.embed_dim
        depth = len(self.model.blocks)
        if not 0 <= num_trainable_blocks <= depth:
            raise BackboneConfigError(f"num_trainable_blocks={num_trainable_blocks} not in [0, {depth}]")
        self.num_trainable_blocks = num_trainable_blocks
        self.norm_layer = bool(norm_layer)
        self.return_token = bool(return_token)
        # Unused at inference; kept so official DINOv2 / release state dicts load strictly.
        self.model.mask_token = nn.Parameter(torch.zeros(1, self.num_channels))
        self._freeze()

    def _freeze(self) -> None:
        first_trainable = len(self.model.blocks) - self.num_trainable_blocks
        for name, param in self.model.named_parameters():
            match = re.match(r"blocks\.(\d+)\.", name)
            trainable = (match is not None and int(match.group(1)) >= first_trainable) or name.startswith(
                "norm."
            )
            param.requires_grad_(trainable)

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> Tensor:
        """Position embeddings for a ``grid_h x grid_w`` patch grid, as DINOv2 computes them.

        Returns: (1, 1 + grid_h * grid_w, C).
        """
        pos_embed = self.model.pos_embed
        num_patches = pos_embed.shape[1] - 1
        if num_patches == grid_h * grid_w and grid_h == grid_w:
            return pos_embed.to(dtype)
        side = int(math.sqrt(num_patches))
        if side * side != num_patches:
            raise BackboneConfigError(f"pos_embed holds {num_patches} patches, not a square grid")
        dim = pos_embed.shape[-1]
        patch_pos = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
        scale = ((grid_h + _INTERPOLATE_OFFSET) / side, (grid_w + _INTERPOLATE_OFFSET) / side)
        patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", antialias=False)
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(f"position embedding interpolated to {tuple(patch_pos.shape[-2:])}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat((pos_embed[:, :1].float(), patch_pos), dim=1).to(dtype)

    def _tokens(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 1 + h*w, C) tokens with CLS and position embeddings."""
        batch, _, height, width = images.shape
        patches = self.model.patch_embed.proj(images).flatten(2).transpose(1, 2)
        cls = self.model.cls_token.expand(batch, -1, -1).to(patches.dtype)
        tokens = torch.cat((cls, patches), dim=1)
        pos = self.interpolate_pos_encoding(height // PATCH_SIZE, width // PATCH_SIZE, tokens.dtype)
        return tokens + pos

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Args: images (B, 3, H, W), ImageNet-normalised, H and W multiples of 14.

        Returns: features (B, C, H/14, W/14) and the CLS token (B, C).
        """
        batch, _, height, width = images.shape
        if height % PATCH_SIZE or width % PATCH_SIZE:
            raise ValueError(f"image size {height}x{width} is not a multiple of {PATCH_SIZE}")
        blocks = self.model.blocks
        first_trainable = len(blocks) - self.num_trainable_blocks
        if first_trainable > 0:
            with torch.no_grad():  # frozen part: no activations kept for backward
                x = self._tokens(images)
                for block in blocks[:first_trainable]:
                    x = block(x)
        else:
            x = self._tokens(images)
        for block in blocks[first_trainable:]:
            x = block(x)
        if self.norm_layer:
            x = self.model.norm(x)
        grid_h, grid_w = height // PATCH_SIZE, width // PATCH_SIZE
        features = x[:, 1:].reshape(batch, grid_h, grid_w, self.num_channels).permute(0, 3, 1, 2)
        return features, x[:, 0]


def convert_dinov2_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official DINOv2 (hub / ``block_chunks``) or timm state dict -> this backbone's ``model.*`` keys.

    Strips ``module.``, ``backbone.model.`` and ``model.`` prefixes, flattens chunked blocks
    (``blocks.{chunk}.{i}.`` -> ``blocks.{i}.``), drops the classifier ``head.*`` and adds a zero
    ``mask_token`` when the source (timm) has none.
    """
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "backbone.model.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith("head."):
            continue
        key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)
        converted[key] = value
    if "mask_token" not in converted and "cls_token" in converted:
        converted["mask_token"] = torch.zeros(1, converted["cls_token"].shape[-1])
    return {"model." + key: value for key, value in converted.items()}
