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

from torch import Tensor

from ..qaa import QAAAggregator
from .optimal_transport import optimal_transport_weights


class QAASoftmax(QAAAggregator):
    """QAA-Softmax: W[q, :] = softmax over the C_f clusters of P̂[q, :]."""

    def assignment_weights(self, predicted: Tensor) -> Tensor:
        return predicted.softmax(dim=2)


class QAAOptimalTransport(QAAAggregator):
    """QAA-OT: W = Sinkhorn(P̂ᵀ with a dustbin row), dustbin dropped; needs N_q > C_f."""

    def assignment_weights(self, predicted: Tensor) -> Tensor:
        return optimal_transport_weights(predicted.transpose(1, 2), self.dust_bin).transpose(1, 2)
