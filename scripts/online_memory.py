"""Bytes the online keyframe database holds per keyframe (docs/NODE.md, "Online database memory").

Drives the node's decision (:class:`~qaa_vpr_ros.decision.Localizer`, default parameters, online
loop closure on) with random unit descriptors of ``--dim`` dimensions, one query per metre with
an odometry pose, and prints :meth:`Localizer.online_memory_bytes` per keyframe when the buffers
are full (their capacity doubles from 64 rows: 64, 128, 256, ...) and just after they doubled.

    .venv/bin/python -m scripts.online_memory [--dim 8192] [--keyframes 1025]
"""
from __future__ import annotations

import argparse

import numpy as np


def memory_per_keyframe(dim: int, keyframes: int, seed: int = 0) -> dict[int, float]:
    """{keyframe count: online_memory_bytes() / count} after each query, 1 .. ``keyframes``."""
    from qaa_vpr_ros.decision import LocalizeConfig, Localizer, Query

    rng = np.random.default_rng(seed)
    loc = Localizer(LocalizeConfig(online_loop_closure=True), dim, "fp")
    out = {}
    for i in range(keyframes):
        d = rng.standard_normal((1, dim)).astype(np.float32)
        d /= np.linalg.norm(d)
        loc.process([Query("cam", 1000 + i, 0, "cam", ((float(i), 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))], d)
        out[i + 1] = loc.online_memory_bytes() / (i + 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=8192, help="descriptor dimension (QAA-8192: 8192)")
    parser.add_argument("--keyframes", type=int, default=1025, help="online keyframes to add")
    args = parser.parse_args(argv)
    per = memory_per_keyframe(args.dim, args.keyframes)
    full = [n for n in per if n >= 64 and n & (n - 1) == 0]  # 64, 128, ...: every buffer exactly full
    doubled = [n + 1 for n in full if n + 1 in per]
    if not full:
        raise SystemExit("online_memory: give --keyframes 64 or more (the buffers start with 64 rows)")
    low, high = (f"{v / 1e3:.1f}" for v in (min(per[n] for n in full), max(per[n] for n in full)))
    print(f"online database, {args.dim}-d descriptors: {low if low == high else f'{low}-{high}'} kB per keyframe "
          f"with full buffers ({', '.join(map(str, full))} keyframes; {6 * args.dim / 1e3:.1f} kB of it is 6 x D: "
          "the float16 map row and the float32 decision row)")
    if doubled:
        print(f"up to {max(per[n] for n in doubled) / 1e3:.1f} kB per keyframe just after the buffers doubled "
              f"({', '.join(map(str, doubled))} keyframes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
