"""BoQ, Bag-of-Queries (Ali-bey et al., CVPR 2024) on DINOv2 tokens.

Defaults are the published DINOv2 sizes: tokens projected to 384 channels, 2 layers of 64
learned queries, 6 heads, and a 128 -> 32 linear over the query axis -> 384 * 32 = 12,288 dims.
Module names match the public BoQ checkpoints (``proj_c``, ``norm_input``, ``boqs``, ``fc``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BoQBlock(nn.Module):
    """Refines the tokens (one Transformer encoder layer) and probes them with learned queries."""

    def __init__(self, dim: int, num_queries: int, num_heads: int) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True
        )
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim))  # Q: 1 x N_q x D
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Args: tokens (B, N, D). Returns (refined tokens (B, N, D), query outputs (B, N_q, D))."""
        tokens = self.encoder(tokens)
        queries = self.norm_q(self.queries + self.self_attn(self.queries, self.queries, self.queries)[0])
        queries = queries.expand(tokens.shape[0], -1, -1)
        out = self.cross_attn(queries, tokens, tokens, need_weights=False)[0]
        return tokens, self.norm_out(out)


class BoQ(nn.Module):
    """3x3 projection + LN, ``num_layers`` BoQ blocks, linear over the concatenated query outputs.

    Output: L2(fc(O^T).flatten()), O = [O^1; ...; O^L] (L*N_q x D), so D * row_dim dims, D-major.
    """

    def __init__(
        self,
        num_channels: int = 768,
        proj_channels: int = 384,
        num_queries: int = 64,
        num_layers: int = 2,
        row_dim: int = 32,
        num_heads: int | None = None,
    ) -> None:
        super().__init__()
        num_heads = num_heads or max(1, proj_channels // 64)  # BoQ uses 64-d heads
        if proj_channels % num_heads:
            raise ValueError(f"BoQ proj_channels={proj_channels} is not divisible by num_heads={num_heads}")
        self.out_dim = proj_channels * row_dim
        self.proj_c = nn.Conv2d(num_channels, proj_channels, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(proj_channels)
        self.boqs = nn.ModuleList(BoQBlock(proj_channels, num_queries, num_heads) for _ in range(num_layers))
        self.fc = nn.Linear(num_layers * num_queries, row_dim)

    def forward(self, features: Tensor, cls_token: Tensor | None = None) -> Tensor:
        """Args: features (B, C_o, h, w); cls_token unused. Returns (B, D * row_dim) L2-normalised."""
        tokens = self.norm_input(self.proj_c(features).flatten(2).transpose(1, 2))  # B x N x D
        outputs = []
        for block in self.boqs:
            tokens, out = block(tokens)
            outputs.append(out)
        rows = self.fc(torch.cat(outputs, dim=1).transpose(1, 2))  # B x D x row_dim
        return F.normalize(rows.flatten(1), p=2, dim=-1)
