"""Per-query cost of ``Localizer.process`` (the map search and the decision), before vs after a change.

A synthetic drive: a ``--map-size`` keyframe map (``--dim``-d unit descriptors, one keyframe every
``--map-spacing`` m on a closed loop with turns) and a second drive of the same loop (queries every
``--query-spacing`` m, descriptors = the place's map descriptor plus noise, so the decision
accepts most of them), with odometry; ``--online`` also runs online loop closure (the second lap
of the query drive closes on the first). Each query is decided one by one, as the node does.

    .venv/bin/python -m scripts.bench_decision                      # this tree only
    .venv/bin/python -m scripts.bench_decision --baseline HEAD~3    # vs an earlier commit

With ``--baseline REV`` the package at REV (``git archive``) and this tree run in two worker
processes, alternating ``--rounds`` times so both see the same machine load; prints the median ms
per query of each (and the part beyond the map's faiss search timed alone), the ratio this tree /
baseline, and whether both made the same decisions (the accepted keyframe ids of every query,
their confidences and sequence scores within :data:`SAME_TOLERANCE`). Each worker checks that it imported the package
it was given (``python -m`` from the repository would import this tree's instead).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def drive(args: argparse.Namespace) -> tuple[object, list, np.ndarray]:
    """(map, queries, query descriptors) of the synthetic drive (seeded)."""
    from qaa_vpr_ros.decision import Query
    from qaa_vpr_ros.maps import Keyframe, PlaceMap

    rng = np.random.default_rng(args.seed)
    length = args.map_size * args.map_spacing
    radius = length / (2 * math.pi)

    def pose(x: float) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
        a = 2 * math.pi * (x % length) / length
        return (radius * math.sin(a), radius - radius * math.cos(a), 0.0), (0.0, 0.0, math.sin(a / 2), math.cos(a / 2))

    places = rng.standard_normal((args.map_size, args.dim)).astype(np.float32)
    places /= np.linalg.norm(places, axis=1, keepdims=True)
    place_map = PlaceMap.create(args.dim, "bench", index_type="flat", map_frame="map")
    keyframes = []
    for k in range(args.map_size):
        position, orientation = pose(k * args.map_spacing)
        keyframes.append(Keyframe(id=k, stamp_sec=k, stamp_nanosec=0, camera="cam", frame_id="cam",
                                  position=position, orientation=orientation))
    place_map.add(places, keyframes)
    queries, descriptors = [], []
    xs = np.arange(0.0, args.laps * length, args.query_spacing)[: args.queries]
    for x in xs:
        stamp_ns = 10**12 + round(x / 10.0 * 1e9)
        queries.append(Query("cam", stamp_ns // 10**9, stamp_ns % 10**9, "cam", pose(x), "odom"))
        place = places[int(round((x % length) / args.map_spacing)) % args.map_size]
        d = place + args.noise * rng.standard_normal(args.dim).astype(np.float32) / math.sqrt(args.dim)
        descriptors.append(d / np.linalg.norm(d))
    return place_map, queries, np.asarray(descriptors, np.float32)


def worker(args: argparse.Namespace) -> dict:
    """Times one pass: ms per query of ``Localizer.process`` (search + decision), and of the
    decision beyond the map's faiss search (process() minus that search timed alone)."""
    from qaa_vpr_ros.decision import LocalizeConfig, Localizer

    place_map, queries, descriptors = drive(args)
    cfg = LocalizeConfig(online_loop_closure=args.online)
    loc = Localizer(cfg, args.dim, "bench", prior_map=place_map)
    search_s, total_s, decisions, accepted = 0.0, 0.0, [], 0
    k = 4 * cfg.top_k
    for q, d in zip(queries, descriptors, strict=True):
        t0 = time.perf_counter()
        place_map.search(d[None], k)  # what process() spends on the search, timed alone
        t1 = time.perf_counter()
        (result,) = loc.process([q], d[None])
        t2 = time.perf_counter()
        search_s += t1 - t0
        total_s += t2 - t1
        for channel in (result.map, result.online):
            best = channel.best if channel is not None else None
            accepted += best is not None
            decisions.append(None if best is None else (int(best.keyframe.id), best.confidence, best.sequence_score))
    n = len(queries)
    import qaa_vpr_ros

    return {"decision_ms": 1000.0 * (total_s - search_s) / n, "search_ms": 1000.0 * search_s / n,
            "process_ms": 1000.0 * total_s / n, "queries": n, "accepted": accepted, "decisions": decisions,
            "package": str(Path(qaa_vpr_ros.__file__).parent)}


SAME_TOLERANCE = 1e-6
"""Confidences and sequence scores of two runs may differ by float32 rounding (a dot product
summed in another order: ~1e-8), not by more."""


def same_decisions(a: list, b: list) -> bool:
    """Whether two runs accepted the same keyframes with the same confidences and scores."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None):
            return False
        if x is not None and (x[0] != y[0] or not np.allclose(x[1:], y[1:], rtol=0.0, atol=SAME_TOLERANCE,
                                                               equal_nan=True)):
            return False
    return True


def run_worker(python_path: str, argv: list[str]) -> dict:
    """One worker process importing ``qaa_vpr_ros`` from ``python_path`` only. It runs this file by
    path from inside ``python_path``: ``python -m`` would put the working directory first on
    ``sys.path``, and from the repository that is this tree's package whatever PYTHONPATH says."""
    env = {**os.environ, "PYTHONPATH": python_path}  # default thread pools, as in the node
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", *argv], cwd=python_path,
                         env=env, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    package = Path(result["package"]).resolve()
    if not package.is_relative_to(Path(python_path).resolve()):
        raise RuntimeError(f"the worker for {python_path} imported qaa_vpr_ros from {package}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--map-size", type=int, default=1000)
    parser.add_argument("--map-spacing", type=float, default=5.0)
    parser.add_argument("--query-spacing", type=float, default=7.0)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--laps", type=float, default=2.0, help="query drive length in loops (online: >1 closes)")
    parser.add_argument("--noise", type=float, default=1.0, help="query descriptor noise (norm relative to 1)")
    parser.add_argument("--online", action="store_true", help="online loop closure on too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds with --baseline")
    parser.add_argument("--baseline", help="git revision to compare against (its qaa_vpr_ros package)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--baseline", args.baseline)]
    passed = [a for i, a in enumerate(passed) if not (a == "--rounds" or (i and passed[i - 1] == "--rounds"))]
    if not args.baseline:
        r = run_worker(str(REPO), passed)
        print(f"decision {r['decision_ms']:.2f} ms/query beyond a {r['search_ms']:.2f} ms search "
              f"({r['queries']} queries, {r['accepted']} accepted, dim {args.dim}, map {args.map_size}, "
              f"online {args.online})")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.baseline, "qaa_vpr_ros"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        runs: dict[str, list[dict]] = {"baseline": [], "this tree": []}
        for _ in range(args.rounds):
            runs["baseline"].append(run_worker(tmp, passed))
            runs["this tree"].append(run_worker(str(REPO), passed))
    med = {name: statistics.median(r["process_ms"] for r in rs) for name, rs in runs.items()}
    beyond = {name: statistics.median(r["decision_ms"] for r in rs) for name, rs in runs.items()}
    search = statistics.median(r["search_ms"] for rs in runs.values() for r in rs)
    reference = runs["baseline"][0]["decisions"]
    same = all(same_decisions(reference, r["decisions"]) for rs in runs.values() for r in rs)
    print(f"dim {args.dim}, map {args.map_size} keyframes, {runs['baseline'][0]['queries']} queries, "
          f"online loop closure {'on' if args.online else 'off'}; the map's faiss search alone {search:.2f} ms/query")
    for name, value in med.items():
        print(f"  {name:10s} {value:7.2f} ms/query Localizer.process, {beyond[name]:.2f} beyond that search "
              f"(median of {args.rounds})")
    print(f"  ratio this tree / baseline (Localizer.process): {med['this tree'] / med['baseline']:.3f}")
    print(f"  same decisions: {'yes' if same else 'NO'} (accepted keyframe ids equal, confidences and "
          f"sequence scores within {SAME_TOLERANCE:g})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
