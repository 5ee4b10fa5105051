"""SALAD (Izquierdo & Civera, CVPR 2024): optimal-transport aggregation of DINOv2 tokens.

Defaults are the published DINOv2-B sizes: m = 64 clusters, l = 128 dims per cluster, a 256-d
global token -> 64 * 128 + 256 = 8,448 dims. Module names match the public SALAD checkpoints
(``token_features``, ``cluster_features``, ``score``, ``dust_bin``) so their weights load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .optimal_transport import optimal_transport_weights

HIDDEN_DIM = 512


class SALAD(nn.Module):
    """Tokens -> (l-dim features, m cluster scores) -> Sinkhorn with dustbin -> per-cluster sums.

    Output: L2([L2(g), intra-L2(V).flatten()]), V (l x m) flattened l-major, g the global token.
    """

    def __init__(
        self,
        num_channels: int = 768,
        num_clusters: int = 64,
        cluster_dim: int = 128,
        token_dim: int = 256,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.num_clusters = num_clusters  # m
        self.cluster_dim = cluster_dim  # l
        self.token_dim = token_dim  # g
        self.out_dim = num_clusters * cluster_dim + token_dim
        self.token_features = nn.Sequential(
            nn.Linear(num_channels, HIDDEN_DIM), nn.ReLU(), nn.Linear(HIDDEN_DIM, token_dim)
        )
        self.cluster_features = nn.Sequential(
            nn.Conv2d(num_channels, HIDDEN_DIM, 1),
            nn.Dropout(dropout),
            nn.ReLU(),
            nn.Conv2d(HIDDEN_DIM, cluster_dim, 1),
        )
        self.score = nn.Sequential(
            nn.Conv2d(num_channels, HIDDEN_DIM, 1),
            nn.Dropout(dropout),
            nn.ReLU(),
            nn.Conv2d(HIDDEN_DIM, num_clusters, 1),
        )
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    def forward(self, features: Tensor, cls_token: Tensor) -> Tensor:
        """Args: features (B, C_o, h, w); cls_token (B, C_o). Returns (B, m * l + g) L2-normalised."""
        local = self.cluster_features(features).flatten(2)  # f: B x l x N
        scores = self.score(features).flatten(2)  # S: B x m x N
        weights = optimal_transport_weights(scores, self.dust_bin)  # P: B x m x N
        clusters = local @ weights.transpose(1, 2)  # V = f P^T: B x l x m
        clusters = F.normalize(clusters, p=2, dim=1).flatten(1)
        token = F.normalize(self.token_features(cls_token), p=2, dim=-1)  # g: B x g
        return F.normalize(torch.cat((token, clusters), dim=-1), p=2, dim=-1)
