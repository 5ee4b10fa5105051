"""An independent, literal reference of the released QAA forward pass, used only by tests.

Written from the paper and the release's formulation with plain tensor ops on a state dict:
DINOv2's own token preparation (position embeddings interpolated with DINOv2's 0.1 offset),
pre-norm ViT blocks with LayerScale, and the aggregator with the broadcast-and-sum similarity.
It shares no code with qaa_vpr_ros.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _ln(x: Tensor, sd: dict, prefix: str, eps: float = 1e-5) -> Tensor:
    """LayerNorm; DINOv2's use eps 1e-6, the aggregator's nn.LayerNorm default 1e-5."""
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps=eps)


def _mha(q: Tensor, k: Tensor, v: Tensor, sd: dict, prefix: str, heads: int) -> Tensor:
    """nn.MultiheadAttention(batch_first=True) written out."""
    dim = q.shape[-1]
    w, b = sd[prefix + ".in_proj_weight"], sd[prefix + ".in_proj_bias"]
    q = q @ w[:dim].T + b[:dim]
    k = k @ w[dim : 2 * dim].T + b[dim : 2 * dim]
    v = v @ w[2 * dim :].T + b[2 * dim :]

    def split(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], t.shape[1], heads, dim // heads).transpose(1, 2)

    attn = (split(q) @ split(k).transpose(-1, -2)) / math.sqrt(dim // heads)
    out = (attn.softmax(-1) @ split(v)).transpose(1, 2).reshape(q.shape[0], q.shape[1], dim)
    return out @ sd[prefix + ".out_proj.weight"].T + sd[prefix + ".out_proj.bias"]


def dinov2_forward(images: Tensor, sd: dict, heads: int, norm_layer: bool = True) -> tuple[Tensor, Tensor]:
    """Official DINOv2 ``prepare_tokens_with_masks`` + blocks (+ norm); returns (features, cls)."""
    p = "backbone.model."
    B, _, w, h = images.shape  # DINOv2 names dim 2 "w"
    x = F.conv2d(images, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat((sd[p + "cls_token"].expand(B, -1, -1), x), dim=1)
    pos = sd[p + "pos_embed"]
    N = pos.shape[1] - 1
    npatch = x.shape[1] - 1
    if not (npatch == N and w == h):
        dim = x.shape[-1]
        w0, h0 = w // 14, h // 14
        M = int(math.sqrt(N))
        patch_pos = F.interpolate(
            pos[:, 1:].reshape(1, M, M, dim).permute(0, 3, 1, 2),
            scale_factor=(float(w0 + 0.1) / M, float(h0 + 0.1) / M),
            mode="bicubic",
            antialias=False,
        )
        pos = torch.cat((pos[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)
    x = x + pos
    depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(p + "blocks."))
    for i in range(depth):
        b = f"{p}blocks.{i}."
        y = _ln(x, sd, b + "norm1", 1e-6)
        qkv = y @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]
        C = x.shape[-1]
        qkv = qkv.reshape(B, -1, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (C // heads) ** -0.5, qkv[1], qkv[2]
        y = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(B, -1, C)
        y = y @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        x = x + sd[b + "ls1.gamma"] * y
        y = _ln(x, sd, b + "norm2", 1e-6)
        y = F.gelu(y @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        y = y @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        x = x + sd[b + "ls2.gamma"] * y
    if norm_layer:
        x = _ln(x, sd, p + "norm", 1e-6)
    C = x.shape[-1]
    features = x[:, 1:].reshape(B, w // 14, h // 14, C).permute(0, 3, 1, 2)
    return features, x[:, 0]


def qaa_forward(features: Tensor, sd: dict, heads_f: int, heads_r: int) -> Tensor:
    """Released QAA aggregation (self_attn_out_norm, no out_norm, no skip, no token)."""
    a = "aggregator."
    B = features.shape[0]

    def branch(prefix: str, heads: int) -> Tensor:
        q = sd[prefix + ".queries"]
        return _ln(q + _mha(q, q, q, sd, prefix + ".self_attn", heads), sd, prefix + ".norm_q")

    f = branch(a + "queries_feature", heads_r).permute(0, 2, 1).repeat(B, 1, 1)  # B x C_r x N_q
    q = branch(a + "queries_score", heads_f).repeat(B, 1, 1)  # B x N_q x C_o
    x = features.flatten(2).permute(0, 2, 1)
    out = _ln(_mha(q, x, x, sd, a + "score.cross_attn", heads_f), sd, a + "score.norm_out")
    p = F.conv1d(out.permute(0, 2, 1), sd[a + "score.conv.weight"], sd[a + "score.conv.bias"])  # B x C_f x N_q
    cluster_dim, clusters = f.shape[1], p.shape[1]
    p = p.unsqueeze(1).repeat(1, cluster_dim, 1, 1)
    f = f.unsqueeze(2).repeat(1, 1, clusters, 1)
    vlad = F.normalize((f * p).sum(dim=-1), p=2, dim=1).flatten(1)
    return F.normalize(vlad, p=2, dim=-1)
