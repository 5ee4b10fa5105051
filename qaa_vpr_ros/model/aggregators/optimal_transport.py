"""Entropic optimal transport with a dustbin, in log space (the assignment of SALAD and QAA-OT).

``m`` bins (clusters) receive the mass of ``n`` items (tokens or queries); an extra dustbin bin
with a learned score absorbs what fits no bin. Marginals: every item carries 1/(m+n); every bin
takes 1/(m+n) and the dustbin (n-m)/(m+n). The plan is returned scaled by (m+n), so each item's
column sums to 1 over the bins and the dustbin.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SINKHORN_ITERS = 3  # as SALAD, and the QAA ablation


def log_optimal_transport(scores: Tensor, dustbin: Tensor, num_iters: int = SINKHORN_ITERS) -> Tensor:
    """Sinkhorn iterations in log space over ``scores`` plus one dustbin row.

    Args:
        scores: (B, m, n) bin-to-item scores (logits), m < n.
        dustbin: scalar score of the dustbin row.
        num_iters: Sinkhorn iterations (row then column normalisation each).

    Returns:
        (B, m + 1, n) log of the transport plan times (m + n); the last row is the dustbin.
    """
    batch, num_bins, num_items = scores.shape
    if num_items <= num_bins:
        raise ValueError(
            f"optimal transport with a dustbin needs more items than bins: got {num_items} items "
            f"for {num_bins} bins (use fewer clusters or more tokens/queries)"
        )
    couplings = torch.cat((scores, dustbin.to(scores).expand(batch, 1, num_items)), dim=1)  # B x m+1 x n
    log_total = math.log(num_bins + num_items)
    log_bin_mass = scores.new_full((num_bins + 1,), -log_total)
    log_bin_mass[-1] = math.log(num_items - num_bins) - log_total
    log_item_mass = scores.new_full((num_items,), -log_total)
    log_u = scores.new_zeros(batch, num_bins + 1)
    log_v = scores.new_zeros(batch, num_items)
    for _ in range(num_iters):
        log_u = log_bin_mass - torch.logsumexp(couplings + log_v.unsqueeze(1), dim=2)
        log_v = log_item_mass - torch.logsumexp(couplings + log_u.unsqueeze(2), dim=1)
    return couplings + log_u.unsqueeze(2) + log_v.unsqueeze(1) + log_total


def optimal_transport_weights(scores: Tensor, dustbin: Tensor, num_iters: int = SINKHORN_ITERS) -> Tensor:
    """Assignment weights (B, m, n) of items to bins, dustbin row dropped (columns sum to <= 1)."""
    return log_optimal_transport(scores, dustbin, num_iters)[:, :-1].exp()
