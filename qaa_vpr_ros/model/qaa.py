"""Query-based Adaptive Aggregation (QAA; Xiao, Zhou, Loianno, arXiv 2507.03831).

Notation (paper): X patch tokens (N x C_o); feature queries Q_f (N_q x C_o); reference queries
Q_r (N_q x C_r); predicted features P̂ (N_q x C_f); cross-query similarity S = F̂ᵀ P̂ (C_r x C_f).
Attribute names follow the released checkpoints (``queries_score`` is the Q_f branch,
``queries_feature`` the Q_r branch, ``score`` the feature prediction) so their state dicts load
strictly; everything else is named by what it is.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SKIP_CONNECTIONS = ("none", "cross")
LOGGER = logging.getLogger(__name__)

# Keys the authors' training code accepts in agg_config that change nothing at inference, with the
# values this implementation supports (None: any value).
_TRAINING_ONLY_KEYS: dict[str, tuple | None] = {
    "dropout": None,
    "freeze": None,
    "divide_ratio": None,
    "divide": (1,),
    "self_attn": ("both",),
    "dust_bin": (True,),
}


class QueryBranch(nn.Module):
    """Learned queries refined by self-attention: Q̂ = LN(Q + MHA(Q, Q, Q)).

    Image-independent, so its output is cached at inference (see :class:`QAAAggregator`).
    """

    def __init__(self, num_queries: int, dim: int, num_heads: int, out_norm: bool = True) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim))  # Q: 1 x N_q x dim
        self.self_attn = nn.MultiheadAttention(dim, num_heads=num_heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.out_norm = out_norm

    def forward(self) -> Tensor:
        """Returns Q̂: (1, N_q, dim)."""
        q = self.queries
        q = q + self.self_attn(q, q, q, need_weights=False)[0]
        return self.norm_q(q) if self.out_norm else q


class FeaturePrediction(nn.Module):
    """Predicts P̂ from the patch tokens: P̂ = LN_{C_f}?(W · LN_{C_o}(MHA(Q̂_f, X, X) [+ Q̂_f]) + b).

    ``conv`` is the per-query linear map C_o -> C_f, stored as a kernel-1 Conv1d as released.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        num_heads: int,
        out_norm: bool = False,
        skip_connection: str = "none",
    ) -> None:
        super().__init__()
        if skip_connection not in SKIP_CONNECTIONS:
            raise ValueError(f"skip_connection={skip_connection!r}; supported: {SKIP_CONNECTIONS}")
        self.cross_attn = nn.MultiheadAttention(dim, num_heads=num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, out_dim, kernel_size=1)
        self.norm2_out = nn.LayerNorm(out_dim)
        self.out_norm = out_norm
        self.skip_connection = skip_connection

    def forward(self, tokens: Tensor, feature_queries: Tensor) -> Tensor:
        """Args: tokens X (B, N, C_o); feature_queries Q̂_f (1 or B, N_q, C_o).

        Returns: P̂ (B, N_q, C_f).
        """
        queries = feature_queries.expand(tokens.shape[0], -1, -1)
        attended = self.cross_attn(queries, tokens, tokens, need_weights=False)[0]  # A: B x N_q x C_o
        if self.skip_connection == "cross":
            attended = attended + queries
        attended = self.norm_out(attended)
        predicted = self.conv(attended.transpose(1, 2)).transpose(1, 2)  # P̂: B x N_q x C_f
        return self.norm2_out(predicted) if self.out_norm else predicted


class QAAAggregator(nn.Module):
    """QAA head: patch tokens -> L2-normalised descriptor of C_r * C_f (+ token_dim) dims.

    Args use the released config names: ``num_channels`` = C_o, ``num_queries`` = N_q,
    ``num_clusters`` = C_f, ``cluster_dim`` = C_r, ``token_dim`` > 0 adds a SALAD-style CLS branch.
    """

    def __init__(
        self,
        num_channels: int = 768,
        num_clusters: int = 64,
        cluster_dim: int = 128,
        token_dim: int = 0,
        num_queries: int = 256,
        feature_nheads: int = 16,
        score_nheads: int = 16,
        self_attn_out_norm: bool = True,
        out_norm: bool = False,
        score_norm: str = "none",
        attn_arch: str = "conv",
        skip_connection: str = "none",
    ) -> None:
        super().__init__()
        if score_norm != "none":
            raise ValueError(f"score_norm={score_norm!r} is not supported (only 'none', as released)")
        if attn_arch != "conv":
            raise ValueError(f"attn_arch={attn_arch!r} is not supported (only 'conv', as released)")
        self.num_clusters = num_clusters  # C_f
        self.cluster_dim = cluster_dim  # C_r
        self.token_dim = token_dim
        self.out_dim = cluster_dim * num_clusters + token_dim
        if token_dim:
            self.token_features = nn.Sequential(
                nn.Linear(num_channels, 512), nn.ReLU(), nn.Linear(512, token_dim)
            )
        # Q_r branch -> F̂ (N_q x C_r) and Q_f branch -> Q̂_f (N_q x C_o).
        self.queries_feature = QueryBranch(num_queries, cluster_dim, feature_nheads, self_attn_out_norm)
        self.queries_score = QueryBranch(num_queries, num_channels, score_nheads, self_attn_out_norm)
        self.score = FeaturePrediction(num_channels, num_clusters, score_nheads, out_norm, skip_connection)
        # Unused by QAA; the OT ablation's dustbin. Kept so released state dicts load strictly.
        self.dust_bin = nn.Parameter(torch.tensor(1.0))
        self._cache_key: tuple | None = None
        self._cache: tuple[Tensor, Tensor] | None = None

    # -- image-independent query branches (cached at inference) ---------------------------
    def _query_branch_key(self) -> tuple:
        params = list(self.queries_feature.parameters()) + list(self.queries_score.parameters())
        # _version changes on every in-place update (optimizer step, load_state_dict's copy_);
        # data_ptr and device change when tensors are replaced or moved.
        return (
            tuple((p._version, p.data_ptr()) for p in params),
            str(params[0].device),
            torch.is_autocast_enabled(params[0].device.type),
        )

    def query_branches(self) -> tuple[Tensor, Tensor]:
        """Returns (Q̂_f (1, N_q, C_o), F̂ (1, N_q, C_r)), cached when no gradient is needed."""
        if self.training or torch.is_grad_enabled():
            return self.queries_score(), self.queries_feature()
        key = self._query_branch_key()
        if self._cache is None or key != self._cache_key:
            self._cache = (self.queries_score(), self.queries_feature())
            self._cache_key = key
        return self._cache

    def clear_query_cache(self) -> None:
        self._cache, self._cache_key = None, None

    def feature_queries(self) -> Tensor:
        """Q̂_f: (1, N_q, C_o)."""
        return self.query_branches()[0]

    def reference_queries(self) -> Tensor:
        """F̂: (1, N_q, C_r)."""
        return self.query_branches()[1]

    def predict_features(self, features: Tensor) -> Tensor:
        """Args: features (B, C_o, h, w). Returns P̂ (B, N_q, C_f)."""
        tokens = features.flatten(2).transpose(1, 2)  # X: B x N x C_o
        return self.score(tokens, self.feature_queries())

    @staticmethod
    def cross_query_similarity(reference: Tensor, predicted: Tensor) -> Tensor:
        """S = F̂ᵀ P̂ with each C_f column L2-normalised along C_r, flattened C_r-major.

        Args: reference F̂ (1 or B, N_q, C_r); predicted P̂ (B, N_q, C_f). Returns (B, C_r * C_f).
        """
        similarity = torch.einsum("bqr,bqf->brf", reference.expand(predicted.shape[0], -1, -1), predicted)
        return F.normalize(similarity, p=2, dim=1).flatten(1)

    def assignment_weights(self, predicted: Tensor) -> Tensor:
        """P̂ (B, N_q, C_f) -> the weights aggregated against F̂: P̂ itself for QAA.

        The score-based ablations (QAA-Softmax, QAA-OT) override this.
        """
        return predicted

    def forward(self, features: Tensor, cls_token: Tensor | None = None) -> Tensor:
        """Args: features (B, C_o, h, w); cls_token (B, C_o), used when token_dim > 0.

        Returns: (B, out_dim) L2-normalised descriptors.
        """
        feature_queries, reference = self.query_branches()
        tokens = features.flatten(2).transpose(1, 2)
        predicted = self.score(tokens, feature_queries)
        descriptor = self.cross_query_similarity(reference, self.assignment_weights(predicted))
        if self.token_dim:
            if cls_token is None:
                raise ValueError("this QAA head has token_dim > 0 and needs the CLS token")
            token = F.normalize(self.token_features(cls_token), p=2, dim=-1)
            descriptor = torch.cat((token, descriptor), dim=-1)
        return F.normalize(descriptor, p=2, dim=-1)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self.clear_query_cache()
        super()._load_from_state_dict(*args, **kwargs)


def qaa_kwargs_from_config(agg_config: dict[str, Any]) -> dict[str, Any]:
    """A release/training ``agg_config`` -> constructor kwargs for the QAA family.

    Training-only keys of the authors' code are checked and dropped; other unknown keys are
    logged (named) and dropped; values that would change the forward pass and are not
    implemented raise ValueError naming the key.
    """
    config = dict(agg_config)
    for key, supported in _TRAINING_ONLY_KEYS.items():
        if key in config:
            value = config.pop(key)
            if supported is not None and value not in supported:
                raise ValueError(f"agg_config {key}={value!r} is not supported; supported: {list(supported)}")
    accepted = set(inspect.signature(QAAAggregator).parameters)
    unused = sorted(set(config) - accepted)
    if unused:
        LOGGER.warning("ignoring agg_config keys %s: not used by this implementation", unused)
    return {key: value for key, value in config.items() if key in accepted}
