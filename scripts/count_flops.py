"""Parameters and GFLOPs of the default QAA aggregator, against the paper's 5,072,833 / 2.29 G.

Run: ``.venv/bin/python -m scripts.count_flops [--image-size 322 322]``. Exits 1 when the
default config misses the paper's parameter count, or (at 322 x 322) its 2.29 GFLOPs by > 2 %.

Convention (the authors'): ``torch.utils.flop_counter`` as wrapped by Lightning's
``measure_flops``, batch 1, queries cached, 2 FLOPs per multiply-accumulate of matmuls, convs and
attention; element-wise ops, softmax and LayerNorm count 0. Their ``utils/measure_flop.py`` runs
the full model and the backbone on a 1 x 3 x 322 x 322 input and reports the difference.
"""

from __future__ import annotations

import argparse
import sys

import torch

from qaa_vpr_ros.model.aggregators.flops import count_flops
from qaa_vpr_ros.model.backbone import PATCH_SIZE
from qaa_vpr_ros.model.qaa import QAAAggregator

PAPER_PARAMS = 5_072_833
PAPER_GFLOPS = 2.29
TOLERANCE = 0.02
PAPER_IMAGE_SIZE = (322, 322)


def analytic_macs(num_tokens: int, num_queries: int, width: int, clusters: int, cluster_dim: int) -> dict:
    """Multiply-accumulates of the QAA head per image, from the shapes alone (N, N_q, C_o, C_f, C_r)."""
    n, q, c, f, r = num_tokens, num_queries, width, clusters, cluster_dim
    cached = {
        "cross-attn Q proj (N_q C_o^2)": q * c * c,
        "cross-attn K,V proj (2 N C_o^2)": 2 * n * c * c,
        "cross-attn Q K^T (N_q N C_o)": q * n * c,
        "cross-attn A V (N_q N C_o)": q * n * c,
        "cross-attn out proj (N_q C_o^2)": q * c * c,
        "conv C_o -> C_f (N_q C_o C_f)": q * c * f,
        "similarity F^T P (C_r N_q C_f)": r * q * f,
    }
    query_branches = {
        "Q_f self-attn (4 N_q C_o^2 + 2 N_q^2 C_o)": 4 * q * c * c + 2 * q * q * c,
        "Q_r self-attn (4 N_q C_r^2 + 2 N_q^2 C_r)": 4 * q * r * r + 2 * q * q * r,
    }
    return {"cached": cached, "query_branches": query_branches}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", nargs=2, type=int, default=PAPER_IMAGE_SIZE, metavar=("H", "W"))
    args = parser.parse_args(argv)
    height, width = args.image_size
    if height % PATCH_SIZE or width % PATCH_SIZE:
        parser.error(f"--image-size {height} {width}: both must be multiples of {PATCH_SIZE}")

    torch.manual_seed(0)
    head = QAAAggregator().eval()  # released default: C_o 768, N_q 256, C_f 64, C_r 128, 16/16 heads
    params = sum(p.numel() for p in head.parameters())
    grid = (height // PATCH_SIZE, width // PATCH_SIZE)
    features = torch.randn(1, head.queries_score.queries.shape[-1], *grid)  # DINOv2-B tokens, batch 1

    with torch.no_grad():
        head.clear_query_cache()
        uncached = count_flops(lambda: head(features))  # first call computes and caches Q̂_f, F̂
        cached = count_flops(lambda: head(features))

    num_queries, channels = head.queries_score.queries.shape[1:]
    macs = analytic_macs(grid[0] * grid[1], num_queries, channels, head.num_clusters, head.cluster_dim)
    print(f"QAA aggregator, default config, {height}x{width} input -> {grid[0]}x{grid[1]} = "
          f"{grid[0] * grid[1]} DINOv2-B patch tokens, batch 1")
    verdict = "match" if params == PAPER_PARAMS else "MISMATCH"
    print(f"parameters: {params:,} (paper {PAPER_PARAMS:,}: {verdict})")
    print("convention: torch.utils.flop_counter (as Lightning measure_flops, the authors' tool); "
          "2 FLOPs per multiply-accumulate; element-wise/softmax/LayerNorm = 0")
    print(f"GFLOPs, cached queries (inference): {cached.gflops:.4f}   ratio to paper {PAPER_GFLOPS}: "
          f"{cached.gflops / PAPER_GFLOPS:.4f}")
    print(f"GFLOPs, uncached (query self-attention run too): {uncached.gflops:.4f}")
    print("counted by op (GFLOPs, cached):")
    for op, flops in sorted(cached.by_op.items(), key=lambda item: -item[1]):
        print(f"  {op:58s} {flops / 1e9:8.4f}")
    print("analytic multiply-accumulates from the shapes (x2 = FLOPs):")
    total_macs = 0
    for name, value in macs["cached"].items():
        total_macs += value
        print(f"  {name:44s} {value / 1e6:9.1f} M MAC")
    print(f"  {'total, cached':44s} {total_macs / 1e6:9.1f} M MAC = {2 * total_macs / 1e9:.4f} GFLOPs")
    for name, value in macs["query_branches"].items():
        print(f"  {'+ ' + name:44s} {value / 1e6:9.1f} M MAC (uncached only)")
    print(f"the authors compute S by broadcast multiply + sum, which the counter sees as 0: "
          f"{(cached.total - cached.by_op.get('aten.bmm', 0)) / 1e9:.4f} GFLOPs without S")

    ok = params == PAPER_PARAMS
    if (height, width) == PAPER_IMAGE_SIZE:
        within = abs(cached.gflops / PAPER_GFLOPS - 1.0) <= TOLERANCE
        print(f"within {TOLERANCE:.0%} of {PAPER_GFLOPS} GFLOPs: {'yes' if within else 'NO'}")
        ok = ok and within
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
