"""GeM: generalised-mean pooling of the patch tokens (Radenović et al., TPAMI 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GeM(nn.Module):
    """Descriptor = L2(mean_i(max(x_i, eps)^p)^(1/p)), p learnable (3 at start); C_o dims."""

    def __init__(self, num_channels: int = 768, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps
        self.out_dim = num_channels

    def forward(self, features: Tensor, cls_token: Tensor | None = None) -> Tensor:
        """Args: features (B, C_o, h, w); cls_token unused. Returns (B, C_o) L2-normalised."""
        pooled = features.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)  # B x C_o
        return F.normalize(pooled, p=2, dim=-1)
