"""NetVLAD (Arandjelović et al., CVPR 2016) over the patch tokens.

Descriptor size: K x C_o, i.e. 64 x 768 = 49,152 for DINOv2-B. The published layer has no
dimensionality reduction inside it (its 4,096-d results come from PCA whitening learned on a
dataset afterwards), so this head keeps the full K x C_o; reduce it downstream if needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NetVLAD(nn.Module):
    """Soft-assignment VLAD: V_k = sum_i a_k(x_i) (x_i - c_k); intra-normalised, flattened, L2.

    Args:
        num_channels: C_o, the token width.
        num_clusters: K.
        alpha: sharpness of the initial soft assignment (a_k = softmax_k(2 alpha c_k.x - alpha |c_k|^2)).
        normalize_input: L2-normalise each token first, as the paper does.
    """

    def __init__(
        self,
        num_channels: int = 768,
        num_clusters: int = 64,
        alpha: float = 10.0,
        normalize_input: bool = True,
    ) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.normalize_input = normalize_input
        self.out_dim = num_clusters * num_channels
        self.centroids = nn.Parameter(F.normalize(torch.randn(num_clusters, num_channels), dim=1))  # K x C_o
        self.assignment = nn.Conv2d(num_channels, num_clusters, kernel_size=1)
        # Start from the paper's centroid-derived assignment; the two are trained independently.
        with torch.no_grad():
            self.assignment.weight.copy_((2.0 * alpha * self.centroids)[:, :, None, None])
            self.assignment.bias.copy_(-alpha * self.centroids.pow(2).sum(dim=1))

    def forward(self, features: Tensor, cls_token: Tensor | None = None) -> Tensor:
        """Args: features (B, C_o, h, w); cls_token unused. Returns (B, K * C_o) L2-normalised."""
        if self.normalize_input:
            features = F.normalize(features, p=2, dim=1)
        weights = self.assignment(features).flatten(2).softmax(dim=1)  # a: B x K x N
        tokens = features.flatten(2)  # x: B x C_o x N
        # sum_i a_ki (x_i - c_k) = (a x^T)_k - c_k sum_i a_ki, without the B x K x C_o x N residuals.
        vlad = weights @ tokens.transpose(1, 2) - self.centroids * weights.sum(dim=2, keepdim=True)  # BxKxC_o
        vlad = F.normalize(vlad, p=2, dim=2).flatten(1)  # intra-normalisation, K-major
        return F.normalize(vlad, p=2, dim=1)
