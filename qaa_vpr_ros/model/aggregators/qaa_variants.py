"""The paper's ablation of QAA: score-based aggregation in place of the cross-query similarity.

Same query branches and feature prediction as :class:`QAAAggregator` (same parameters and state
dict, including ``dust_bin``), but P̂ (N_q x C_f) is turned into assignment weights W first:

- QAA-Softmax: each query's scores are softmax-normalised over the C_f clusters.
- QAA-OT: log-space Sinkhorn with a dustbin (SALAD's), the C_f clusters as bins and the N_q
  queries as items; ``dust_bin`` is the dustbin score.

Then S[r, f] = sum_q F̂[q, r] W[q, f], each column L2-normalised along C_r, flattened C_r-major,
global L2, exactly as for QAA. This follows the authors' code (``score_norm`` = "softmax" / "ot",
normalising P̂ of shape B x C_f x N_q along dim 1, i.e. over the clusters for every query).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..qaa import QAAAggregator
from .optimal_transport import optimal_transport_weights


class _ScoreAggregatedQAA(QAAAggregator):
    """QAA with W = normalise(P̂) aggregated against F̂; subclasses define the normalisation."""

    def assignment_weights(self, predicted: Tensor) -> Tensor:
        """Args: P̂ (B, N_q, C_f). Returns W (B, N_q, C_f)."""
        raise NotImplementedError

    def forward(self, features: Tensor, cls_token: Tensor | None = None) -> Tensor:
        """Args: features (B, C_o, h, w); cls_token (B, C_o) when token_dim > 0. Returns (B, out_dim)."""
        feature_queries, reference = self.query_branches()  # Q̂_f: 1 x N_q x C_o, F̂: 1 x N_q x C_r
        predicted = self.score(features.flatten(2).transpose(1, 2), feature_queries)  # P̂: B x N_q x C_f
        descriptor = self.cross_query_similarity(reference, self.assignment_weights(predicted))
        if self.token_dim:
            if cls_token is None:
                raise ValueError("this head has token_dim > 0 and needs the CLS token")
            token = F.normalize(self.token_features(cls_token), p=2, dim=-1)
            descriptor = torch.cat((token, descriptor), dim=-1)
        return F.normalize(descriptor, p=2, dim=-1)


class QAASoftmax(_ScoreAggregatedQAA):
    """QAA-Softmax: W[q, :] = softmax over the C_f clusters of P̂[q, :]."""

    def assignment_weights(self, predicted: Tensor) -> Tensor:
        return predicted.softmax(dim=2)


class QAAOptimalTransport(_ScoreAggregatedQAA):
    """QAA-OT: W = Sinkhorn(P̂ᵀ with a dustbin row), dustbin dropped; needs N_q > C_f."""

    def assignment_weights(self, predicted: Tensor) -> Tensor:
        return optimal_transport_weights(predicted.transpose(1, 2), self.dust_bin).transpose(1, 2)
