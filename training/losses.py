"""Multi-Similarity loss with its miner, computed per dataset and summed (no negatives across datasets)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorch_metric_learning import losses, miners
from torch import Tensor, nn


@dataclass
class LossConfig:
    """Paper values: alpha 1, beta 50, base 0; miner epsilon 0.1."""

    alpha: float = 1.0
    beta: float = 50.0
    base: float = 0.0
    miner_epsilon: float = 0.1
    use_miner: bool = True


class PerDatasetMultiSimilarity(nn.Module):
    """Sum over datasets of MS(mine(descriptors_d), labels_d).

    ``forward(descriptors (B, D), labels (B,), dataset_ids (B,))`` returns the summed loss and a
    dict of per-dataset statistics: ``loss/<d>``, ``mined_pos/<d>``, ``mined_neg/<d>`` (pairs the
    miner kept) and ``mined_pairs`` (all datasets).
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()
        self.loss = losses.MultiSimilarityLoss(alpha=self.config.alpha, beta=self.config.beta, base=self.config.base)
        self.miner = miners.MultiSimilarityMiner(epsilon=self.config.miner_epsilon) if self.config.use_miner else None

    def forward(self, descriptors: Tensor, labels: Tensor, dataset_ids: Tensor) -> tuple[Tensor, dict[str, float]]:
        descriptors = descriptors.float()
        total = descriptors.new_zeros(())
        stats: dict[str, float] = {"mined_pairs": 0.0}
        for d in torch.unique(dataset_ids).tolist():
            mask = dataset_ids == d
            emb, lab = descriptors[mask], labels[mask]
            if self.miner is not None:
                pairs = self.miner(emb, lab)
                loss_d = self.loss(emb, lab, pairs)
                n_pos, n_neg = int(pairs[0].numel()), int(pairs[2].numel())
            else:
                loss_d = self.loss(emb, lab)
                n_pos = n_neg = 0
            total = total + loss_d
            stats[f"loss/{d}"] = float(loss_d.detach())
            stats[f"mined_pos/{d}"] = float(n_pos)
            stats[f"mined_neg/{d}"] = float(n_neg)
            stats["mined_pairs"] += n_pos + n_neg
        return total, stats
