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
from dataclasses import dataclass

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


@dataclass(frozen=True)
class HeadRow:
    """One head on the same DINOv2-B tokens: size, cost per image, descriptor size, latency per call."""

    name: str
    params: int
    gflops: float
    dim: int
    ms: float

    @property
    def descriptor_bytes(self) -> int:
        return 4 * self.dim  # float32


def measure_heads(batch: int = 1, repeats: int = 20) -> list[HeadRow]:
    """Every registered head plus "QAA uncached" (query cache dropped before each call), in one run."""
    torch.manual_seed(0)
    heads: dict[str, nn.Module] = {name: build_aggregator(name, {"num_channels": WIDTH}).eval() for name in AGGREGATORS}
    features = torch.randn(batch, WIDTH, *GRID)
    cls_token = torch.randn(batch, WIDTH)
    one_features, one_cls = features[:1], cls_token[:1]

    sizes = {}
    with torch.no_grad():  # not inference_mode: torch's FLOP counter cannot hook modules there
        for name, head in heads.items():
            head(one_features, one_cls)  # fills QAA-family query caches
            flops = count_flops(lambda head=head: head(one_features, one_cls))
            sizes[name] = (sum(p.numel() for p in head.parameters()), flops.gflops, head.out_dim)
        qaa = heads["QAA"]

        def qaa_uncached() -> torch.Tensor:
            qaa.clear_query_cache()
            return qaa(features, cls_token)

        qaa.clear_query_cache()
        sizes["QAA uncached"] = (sizes["QAA"][0], count_flops(lambda: qaa(one_features, one_cls)).gflops,
                                 sizes["QAA"][2])
        calls: dict[str, Callable[[], object]] = {
            name: (lambda head=head: head(features, cls_token)) for name, head in heads.items()
        }
        calls["QAA uncached"] = qaa_uncached
        latency = _latency_ms(calls, repeats)
    return [HeadRow(name, *sizes[name], latency[name]) for name in calls]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1, as a robot runs)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per head (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = {row.name: row for row in measure_heads(args.batch, args.repeats)}
    qaa, uncached = rows["QAA"], rows["QAA uncached"]
    print(f"heads on DINOv2-B tokens at 322x322 ({GRID[0]}x{GRID[1]}x{WIDTH} + CLS), batch {args.batch}, "
          f"CPU, {torch.get_num_threads()} threads, median of {args.repeats} rounds")
    print(f"{'head':13s} {'params':>11s} {'GFLOPs/img':>10s} {'dim':>7s} {'ms/call':>9s} {'vs QAA':>7s}")
    for row in rows.values():
        if row.name == "QAA uncached":
            continue
        print(f"{row.name:13s} {row.params:11,d} {row.gflops:10.3f} {row.dim:7d} {row.ms:9.2f} "
              f"{row.ms / qaa.ms:6.2f}x")
    print(f"QAA cached vs uncached: {qaa.ms:.2f} ms vs {uncached.ms:.2f} ms per call "
          f"(uncached {uncached.ms / qaa.ms:.2f}x); GFLOPs/img {qaa.gflops:.3f} vs {uncached.gflops:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
