"""Aggregation heads on DINOv2-B token shapes at 322 x 322: size, FLOPs, dims, CPU latency vs QAA.

Run: ``.venv/bin/python -m scripts.bench_heads [--batch 1] [--repeats 20] [--threads N]``.

Inputs are random (B, 768, 23, 23) patch tokens + (B, 768) CLS tokens (what DINOv2-B gives at
322 x 322); weights are random, which does not change the cost. GFLOPs are per image, counted as
in ``scripts.count_flops`` (2 per multiply-accumulate; QAA-family heads with cached queries).
Latency: eval mode, ``torch.no_grad``, median over interleaved rounds, reported as a ratio
to QAA's in the same run; "QAA uncached" drops the query cache before every call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from qaa_vpr_ros.model.aggregators import AGGREGATORS, build_aggregator
from qaa_vpr_ros.model.aggregators.flops import count_flops

WIDTH, GRID = 768, (23, 23)  # DINOv2-B at 322 x 322


def _latency_ms(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time per call, measuring the candidates round-robin so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(warmup):
        for call in calls.values():
            call()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1, as a robot runs)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per head (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    heads: dict[str, nn.Module] = {name: build_aggregator(name, {"num_channels": WIDTH}).eval() for name in AGGREGATORS}
    features = torch.randn(args.batch, WIDTH, *GRID)
    cls_token = torch.randn(args.batch, WIDTH)
    one_features, one_cls = features[:1], cls_token[:1]

    rows = {}
    with torch.no_grad():  # not inference_mode: torch's FLOP counter cannot hook modules there
        for name, head in heads.items():
            head(one_features, one_cls)  # fills QAA-family query caches
            flops = count_flops(lambda head=head: head(one_features, one_cls))
            rows[name] = (sum(p.numel() for p in head.parameters()), flops.gflops, head.out_dim)
        qaa = heads["QAA"]

        def qaa_uncached() -> torch.Tensor:
            qaa.clear_query_cache()
            return qaa(features, cls_token)

        qaa.clear_query_cache()
        uncached_gflops = count_flops(lambda: qaa(one_features, one_cls)).gflops
        calls: dict[str, Callable[[], object]] = {
            name: (lambda head=head: head(features, cls_token)) for name, head in heads.items()
        }
        calls["QAA uncached"] = qaa_uncached
        latency = _latency_ms(calls, args.repeats)

    print(f"heads on DINOv2-B tokens at 322x322 ({GRID[0]}x{GRID[1]}x{WIDTH} + CLS), batch {args.batch}, "
          f"CPU, {torch.get_num_threads()} threads, median of {args.repeats} rounds")
    print(f"{'head':13s} {'params':>11s} {'GFLOPs/img':>10s} {'dim':>7s} {'ms/call':>9s} {'vs QAA':>7s}")
    for name, (params, gflops, dim) in rows.items():
        print(f"{name:13s} {params:11,d} {gflops:10.3f} {dim:7d} {latency[name]:9.2f} "
              f"{latency[name] / latency['QAA']:6.2f}x")
    print(f"QAA cached vs uncached: {latency['QAA']:.2f} ms vs {latency['QAA uncached']:.2f} ms per call "
          f"(uncached {latency['QAA uncached'] / latency['QAA']:.2f}x); GFLOPs/img {rows['QAA'][1]:.3f} vs "
          f"{uncached_gflops:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
