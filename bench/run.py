"""``make bench``: every benchmark in one run -> ``bench/report.md`` and ``bench/*.png``; with
``--gpu``, the GPU benchmark of the release model instead (``bench/gpu.sh``, ``bench/gpu_bench.py``).
Both run through the one bench runner (``bench/runner.py``).

Each figure is a ratio to a baseline measured in the same run on the same machine (named in every
figure), so that a loaded or slow machine shifts both sides alike:

1. heads: the aggregators on the same DINOv2-B tokens (``scripts.bench_heads.measure_heads``):
   params, GFLOPs, descriptor bytes, latency, each as a ratio to QAA;
2. extraction: images/s of DINOv2-B + QAA-8192 at 224 and 322 as a ratio to the backbone alone;
3. ONNX Runtime (CPU provider) vs torch on the node's extractor path: speed ratio and numeric
   difference;
4. map search: flat / IVF-PQ / HNSW at 10k, 100k and 1M x 1024 against the goal (<= 2 ms per
   query, recall@1 >= 0.99 of exact, <= 1.5 GB), plus the NumPy brute-force loop of cslam
   (Swarm-SLAM's ``NearestNeighborsMatching.search``: L2 distance to every row, full argsort) as
   the peer baseline; build times;
5. the node end to end over DDS as a ratio to the bare model + search, 1 and 4 cameras
   (``scripts.bench_node``, its own processes), and map building from a bag as a ratio to the bare
   extractor (``scripts.bench_maps.bench_build``);
6. build_map --ray on a local Ray instance as a ratio to the one-process build of the same bags, and
   Ray's start-up (``scripts.bench_maps.bench_ray_build``);
7. local features: SIFT extraction ms per 640x480 TUM fr1/rpy frame (1 OpenCV thread and the
   default), as a ratio to the DINOv2 descriptor's time when section 2 ran in the same run, and
   the feature bytes per keyframe with depth (``../shared/data/tum_fr1_rpy``; skipped without it);
8. verification: ``verify_features`` ms per candidate on TUM fr1/rpy (queries 50-138 against map
   frames 0-49): nearest views that verify (PnP both ways on depth), unrelated views (before
   RANSAC, or RANSAC with no consistent model), and the same without depth (essential matrix), as
   a ratio to the DINOv2-B descriptor's time when section 2 ran in the same run;
9. node_verification: ``FramePipeline.process`` per frame (what the node runs) with
   ``verify_geometry`` true vs false in the same run, TUM queries 50-138 against an in-process map
   of frames 0-49 (``models/nordland_tiny``), online loop closure on, depth paired: the ratio and
   the milliseconds added (``--quick``: every other frame).

Every section runs under its own time limit inside ``--budget-s`` (default 19 minutes) and in a
try/except, so one failure is reported and the rest still run. How busy the CPU was with other
work during each section is measured from /proc/stat and reported next to its figures.

    .venv/bin/python -m bench.run [--out bench] [--budget-s 1140] [--quick]
    python3 -m bench.run --gpu [--out bench/gpu_out] [--budget-s 420] [--smoke] [--parts P,...]

Weights are random (nothing is downloaded); speed does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.runner import LoadMeter, Runner, log, meminfo  # noqa: E402

GOAL_MS, GOAL_RECALL, GOAL_BYTES = 2.0, 0.99, 1.5e9


# --- machine and load -------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"host": platform.node(), "cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "mem_gb": meminfo("MemTotal") / 2**30}


# --- sections ---------------------------------------------------------------------------------------
def section_heads(ctx: Context) -> dict[str, Any]:
    from scripts.bench_heads import measure_heads

    rows = measure_heads(batch=1, repeats=5 if ctx.quick else 8)
    qaa = next(r for r in rows if r.name == "QAA")
    out = []
    for r in rows:
        out.append({"name": r.name, "params": r.params, "gflops": r.gflops, "dim": r.dim,
                    "descriptor_bytes": r.descriptor_bytes, "ms": r.ms, "gflops_vs_qaa": r.gflops / qaa.gflops,
                    "ms_vs_qaa": r.ms / qaa.ms})
        log(f"  {r.name:13s} {r.params:>11,d} params {r.gflops:7.3f} GFLOPs {r.dim:6d}-d {r.ms:8.1f} ms "
            f"({r.ms / qaa.ms:.2f}x QAA)")
    return {"rows": out}


def release_model(image_size: tuple[int, int]):
    import torch

    from bench.gpu_bench import load_release_config
    from qaa_vpr_ros.model import build_model

    torch.manual_seed(0)
    return build_model(load_release_config(), image_size=image_size).eval()


def section_extraction(ctx: Context) -> dict[str, Any]:
    import torch

    from scripts.bench_heads import _latency_ms

    batch = 1
    model = release_model((322, 322))
    out = {}
    for size in (224, 322):
        images = torch.randn(batch, 3, size, size)
        with torch.inference_mode():
            calls = {"full": lambda images=images: model(images),
                     "backbone": lambda images=images: model.backbone(images)}
            ms = _latency_ms(calls, repeats=2, warmup=1)
        full_ips, backbone_ips = 1e3 * batch / ms["full"], 1e3 * batch / ms["backbone"]
        out[str(size)] = {"batch": batch, "full_img_s": full_ips, "backbone_img_s": backbone_ips,
                          "ratio": full_ips / backbone_ips}
        log(f"  {size}x{size}: full model {full_ips:.2f} img/s, backbone alone {backbone_ips:.2f} img/s -> "
            f"{full_ips / backbone_ips:.3f} of the backbone-bound limit")
    return out


def section_onnxruntime(ctx: Context) -> dict[str, Any]:
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.model.onnx_export import export_onnx
    from scripts.bench_heads import _latency_ms

    size = (322, 322)
    model = release_model(size)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(4)]
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        started = time.perf_counter()
        export = export_onnx(model, Path(tmp) / "qaa8192.onnx", size)
        export_s = time.perf_counter() - started
        by_torch = DescriptorExtractor(model, device="cpu", batch_size=1)
        by_ort = DescriptorExtractor(model, device="cpu", batch_size=1, backend="onnxruntime",
                                     onnx_path=export.path)
        diff = float(np.abs(by_torch.extract(frames) - by_ort.extract(frames)).max())
        one = frames[:1]
        ms = _latency_ms({"torch": lambda: by_torch.extract(one), "onnxruntime": lambda: by_ort.extract(one)},
                         repeats=2 if ctx.quick else 3, warmup=1)
    out = {"model": "DINOv2-B/14 + QAA-8192 at 322x322", "export_s": export_s, "max_abs_diff": diff,
           "torch_ms": ms["torch"], "onnxruntime_ms": ms["onnxruntime"],
           "speed_ratio_ort_vs_torch": ms["torch"] / ms["onnxruntime"], "providers": by_ort.providers}
    log(f"  node path, batch 1, uint8 480x640: torch {ms['torch']:.0f} ms, onnxruntime {ms['onnxruntime']:.0f} ms "
        f"-> onnxruntime {out['speed_ratio_ort_vs_torch']:.2f}x torch's speed; max |diff| {diff:.1e}")
    return out


def cslam_search(data: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """The peer baseline, as cslam searches: L2 distance to every stored row, then a full argsort."""
    distances = np.linalg.norm(query[None, :] - data, axis=1)
    return np.argsort(distances)[:k]


def time_cslam(database: np.ndarray, queries: np.ndarray, count: int) -> float:
    """Median ms per query of :func:`cslam_search` over ``count`` queries."""
    times = []
    for q in queries[:count]:
        t0 = time.perf_counter()
        cslam_search(database, q, 5)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def section_search(ctx: Context) -> dict[str, Any]:
    import faiss

    from scripts.bench_maps import DEFAULT_INDEXES, revisits, search_rows, synthetic_descriptors

    rows: list[dict[str, Any]] = []
    # One faiss thread: on a CPU shared with other work, OpenMP threads spin-waiting for each other
    # made every index 10-100x slower in our runs; the node issues one query at a time anyway.
    faiss.omp_set_num_threads(1)
    notes: list[str] = ["faiss ran with 1 thread (faiss.omp_set_num_threads(1)); the cslam loop is NumPy's, "
                        "also single-threaded."]
    dim = 1024

    def measure(n: int, indexes: tuple) -> None:
        database = synthetic_descriptors(n, dim)
        queries = revisits(database, 100 if ctx.quick else 200)
        for row in search_rows(database, queries, indexes, single_queries=30):
            rows.append(row)
            log(f"  {n:>8} x {dim} {row['index']:6s} build {row['build_s']:6.1f} s, {row['ms_median']:8.3f} ms/query,"
                f" R@1 {row['recall_at_1_vs_exact']:.3f}, index {row['index_bytes'] / 1e6:8.1f} MB")
        cslam_ms = time_cslam(database, queries, 10)
        rows.append({"n": n, "dim": dim, "index": "cslam numpy", "ms_median": cslam_ms, "recall_at_1_vs_exact": 1.0,
                     "index_bytes": database.nbytes, "build_s": 0.0})
        log(f"  {n:>8} x {dim} cslam numpy loop {cslam_ms:.2f} ms/query")

    measure(10_000, DEFAULT_INDEXES)
    hnsw_10k_s = next(r["build_s"] for r in rows if r["index"] == "hnsw")
    # The 1M part before 100k: it is the goal's size, and the slowest.
    rows += million(ctx, dim, notes, hnsw_10k_s)
    # HNSW's build grew over 25x from 10k to 100k on this shared CPU (graph and cache effects on top of
    # N log N); it runs at 100k only when that estimate leaves time for the other sections.
    hnsw_100k_estimate = 25 * hnsw_10k_s
    with_hnsw = ctx.left() > hnsw_100k_estimate + 420
    if not with_hnsw:
        notes.append(f"HNSW at 100,000 was not built: about {hnsw_100k_estimate:.0f} s estimated from its "
                     f"{hnsw_10k_s:.0f} s build at 10k, with {ctx.left():.0f} s of the budget left")
    measure(100_000, DEFAULT_INDEXES if with_hnsw else DEFAULT_INDEXES[:2])
    return {"rows": rows, "notes": notes}


def million(ctx: Context, dim: int, notes: list[str], hnsw_10k_build_s: float,
            n: int | None = None) -> list[dict[str, Any]]:
    """1M x dim with faiss directly, using the map's own IVF-PQ factory string (PlaceMap's
    per-keyframe Python records would only add memory here)."""
    import faiss

    from qaa_vpr_ros.maps.index import MAX_TRAIN, index_factory_string
    from scripts.bench_maps import revisits, synthetic_descriptors

    n = n or (250_000 if ctx.quick else 1_000_000)
    if ctx.left() < 240 and n > 500_000:
        notes.append(f"{ctx.left():.0f} s of the budget left before the 1M part: measured at 500,000 instead")
        n = 500_000
    if ctx.left() < 150:
        notes.append(f"the {n:,} part was skipped: {ctx.left():.0f} s of the budget left")
        return []
    need = n * dim * 4 * 2.6  # database + flat index + search scratch
    available = meminfo("MemAvailable")
    if available < need:
        notes.append(f"{n:,} x {dim} skipped: {available / 2**30:.1f} GB available, about {need / 2**30:.1f} GB needed")
        return []
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    database = synthetic_descriptors(n, dim)
    queries = revisits(database, 100)
    log(f"  {n:,} x {dim}: synthetic descriptors in {time.perf_counter() - started:.0f} s")

    def timed_single(index: Any, count: int) -> tuple[float, float]:
        times = []
        for q in queries[:count]:
            t0 = time.perf_counter()
            index.search(q[None], 5)
            times.append(time.perf_counter() - t0)
        return 1e3 * float(np.median(times)), 1e3 * float(np.percentile(times, 99))

    def add_blocks(index: Any) -> None:
        for start in range(0, n, 65536):
            index.add(database[start:start + 65536])

    # Exact: the reference for recall, and the memory a flat map needs.
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    add_blocks(flat)
    build = time.perf_counter() - t0
    ms, p99 = timed_single(flat, 5)
    exact = flat.search(queries, 5)[1][:, 0]
    rows.append({"n": n, "dim": dim, "index": "flat", "build_s": build, "ms_median": ms, "ms_p99": p99,
                 "recall_at_1_vs_exact": 1.0, "index_bytes": n * dim * 4})
    log(f"  {n:,} flat: {ms:.1f} ms/query")
    del flat

    # The map's IVF-PQ (PlaceMap defaults at this size), trained as PlaceMap trains it.
    description, resolved = index_factory_string("ivfpq", dim, n, {})
    t0 = time.perf_counter()
    ivfpq = faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)
    faiss.downcast_index(faiss.extract_index_ivf(ivfpq)).pq.cp.niter = 10
    ivfpq.train(database[:: max(1, -(-n // MAX_TRAIN))])
    add_blocks(ivfpq)
    build = time.perf_counter() - t0
    ivf = faiss.extract_index_ivf(ivfpq)
    ivf.nprobe = resolved["nprobe"]
    code_bytes = n * (resolved["m"] * resolved["nbits"] // 8 + 8)  # codes + ids in the inverted lists
    ms, p99 = timed_single(ivfpq, 30)
    recall = float(np.mean(ivfpq.search(queries, 5)[1][:, 0] == exact))
    rows.append({"n": n, "dim": dim, "index": "ivfpq", "params": resolved, "build_s": build, "ms_median": ms,
                 "ms_p99": p99, "recall_at_1_vs_exact": recall, "index_bytes": code_bytes})
    log(f"  {n:,} ivfpq {description} nprobe {ivf.nprobe}: build {build:.0f} s, {ms:.2f} ms/query, R@1 {recall:.3f}")

    if ctx.left() < 60:
        notes.append("the IVF-PQ + SQ8 re-ranking variant was skipped: budget spent")
        return rows

    # IVF-PQ shortlist re-ranked with 8-bit scalar-quantised vectors (1 byte per dimension).
    t0 = time.perf_counter()
    sq8 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq8.train(database[:: max(1, -(-n // MAX_TRAIN))])
    add_blocks(sq8)
    refined = faiss.IndexRefine(ivfpq, sq8)
    build_refine = build + time.perf_counter() - t0
    # k_factor (shortlist = k_factor x 5) did not change recall at nprobe 16 in our runs: the
    # inverted lists probed bound it, so the sweep is over nprobe.
    refined.k_factor = 8
    for nprobe in (16, 64, 256):
        if ctx.left() < 30:
            notes.append(f"IVF-PQ + SQ8 from nprobe {nprobe} on was skipped: budget spent")
            break
        ivf.nprobe = nprobe
        ms, p99 = timed_single(refined, 30)
        recall = float(np.mean(refined.search(queries, 5)[1][:, 0] == exact))
        rows.append({"n": n, "dim": dim, "index": f"ivfpq+sq8 nprobe{nprobe}",
                     "params": resolved | {"nprobe": nprobe, "k_factor": 8}, "build_s": build_refine,
                     "ms_median": ms, "ms_p99": p99, "recall_at_1_vs_exact": recall,
                     "index_bytes": code_bytes + n * dim})
        log(f"  {n:,} ivfpq + SQ8 re-rank (nprobe {nprobe}, k_factor 8): {ms:.2f} ms/query, R@1 {recall:.3f}")
    del refined, sq8, ivfpq

    # HNSW: its build grew faster than N log N here (over 25x from 10k to 100k on this shared CPU).
    estimate = hnsw_10k_build_s * 25 * (n / 100_000) * np.log(n) / np.log(100_000)
    notes.append(f"HNSW at {n:,} x {dim} was not built: its build took {hnsw_10k_build_s:.0f} s at 10k, so roughly "
                 f"{estimate / 60:.0f} min at {n:,}, beyond the 20-minute budget. Its memory at {n:,}: "
                 f"{n * (dim * 4 + 2 * 32 * 4) / 1e9:.1f} GB (float32 vectors + M=32 links), over the 1.5 GB "
                 "goal whatever its speed.")

    # The cslam loop: 2 x the database in temporaries per query.
    if meminfo("MemAvailable") > 2.2 * database.nbytes:
        cslam_ms = time_cslam(database, queries, 2)
        rows.append({"n": n, "dim": dim, "index": "cslam numpy", "ms_median": cslam_ms, "recall_at_1_vs_exact": 1.0,
                     "index_bytes": database.nbytes, "build_s": 0.0})
        log(f"  {n:,} cslam numpy loop: {cslam_ms:.0f} ms/query")
    else:
        notes.append(f"cslam loop at {n:,} skipped: not enough free memory for its temporaries")
    return rows


def section_node(ctx: Context) -> dict[str, Any]:
    out = {}
    for cameras in (1, 4):
        with tempfile.NamedTemporaryFile(suffix=".json") as result:
            command = [sys.executable, "-m", "scripts.bench_node", "--arch", "small", "--frames",
                       "4" if ctx.quick else "5", "--duration", "0", "--overhead-cameras", str(cameras),
                       "--json", result.name]
            # Its own session, so that a timeout ends the node and helper processes it started too.
            proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
            try:
                output, _ = proc.communicate(timeout=max(60.0, ctx.left() - 30))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                output, _ = proc.communicate()
                raise RuntimeError(f"scripts.bench_node ({cameras} cameras) ran out of the budget; "
                                   f"measured so far: {out}") from None
            if proc.returncode != 0:
                raise RuntimeError(f"scripts.bench_node ({cameras} cameras) failed: {output[-1500:]}")
            figures = json.loads(Path(result.name).read_text())["overhead"]
        out[str(cameras)] = figures
        log(f"  {cameras} camera(s): bare {figures['bare_ms_median']:.0f} ms, node {figures['node_ms_median']:.0f} ms "
            f"-> ratio {figures['ratio']:.2f}")
    return out


def section_build(ctx: Context) -> dict[str, Any]:
    from scripts.bench_maps import bench_build

    args = argparse.Namespace(model_size="small", frames=8 if ctx.quick else 12, batch_size=4, repeats=2,
                              device="cpu")
    return bench_build(args)


def section_ray_build(ctx: Context) -> dict[str, Any]:
    """build_map --ray (a local Ray instance, one CPU per task) against the one-process build."""
    from qaa_vpr_ros.map_tools.ray_build import RayMissingError, import_ray
    from scripts.bench_maps import bench_ray_build

    try:
        import_ray()
    except RayMissingError as err:
        return {"skipped": str(err)}
    args = argparse.Namespace(model_size="small", bags=2, frames=6 if ctx.quick else 8, chunk_size=4, batch_size=4,
                              cpus_per_task=1)
    return bench_ray_build(args)


def section_local_features(ctx: Context) -> dict[str, Any]:
    """SIFT + depth of every TUM fr1/rpy frame (what a keyframe stores), timed with 1 OpenCV thread and
    with OpenCV's default, interleaved frame by frame so that both see the same load."""
    import cv2

    from qaa_vpr_ros.local_features import FeatureConfig, extract_local_features
    from scripts.tum_rgbd import TUM_FR1_RPY, load_tum

    if not (TUM_FR1_RPY / "associations.txt").is_file():
        return {"skipped": f"TUM RGB-D data absent: {TUM_FR1_RPY} (../shared/data/README.md)"}
    sequence = load_tum(TUM_FR1_RPY)
    frames = range(0, len(sequence), 4 if ctx.quick else 1)
    default_threads = cv2.getNumThreads()
    config = FeatureConfig()
    ms: dict[str, list[float]] = {"1": [], "default": []}
    nbytes, counts, with_depth = [], [], []
    try:
        extract_local_features(sequence.rgb(0), sequence.depth_m(0), config)  # warm-up
        for i in frames:
            rgb, depth = sequence.rgb(i), sequence.depth_m(i)
            for key, threads in (("1", 1), ("default", default_threads)):
                cv2.setNumThreads(threads)
                started = time.perf_counter()
                features = extract_local_features(rgb, depth, config)
                ms[key].append(1e3 * (time.perf_counter() - started))
            nbytes.append(features.nbytes)
            counts.append(len(features))
            with_depth.append(float(np.mean(features.depth_mm > 0)) if len(features) else 0.0)
    finally:
        cv2.setNumThreads(default_threads)
    out: dict[str, Any] = {
        "frames": len(nbytes), "image": "640x480", "max_features": config.max_features,
        "opencv_default_threads": default_threads,
        "ms_1_thread_median": float(np.median(ms["1"])), "ms_1_thread_p90": float(np.percentile(ms["1"], 90)),
        "ms_default_threads_median": float(np.median(ms["default"])),
        "ms_default_threads_p90": float(np.percentile(ms["default"], 90)),
        "bytes_mean": float(np.mean(nbytes)), "bytes_max": int(np.max(nbytes)),
        "features_mean": float(np.mean(counts)), "keypoints_with_depth": float(np.mean(with_depth))}
    log(f"  SIFT + depth, {out['frames']} TUM frames 640x480: {out['ms_1_thread_median']:.1f} ms (1 OpenCV thread), "
        f"{out['ms_default_threads_median']:.1f} ms ({default_threads} threads) per frame (median); "
        f"{out['bytes_mean'] / 1e3:.1f} kB mean, {out['bytes_max'] / 1e3:.1f} kB max per keyframe "
        f"({out['features_mean']:.0f} features, {100 * out['keypoints_with_depth']:.0f} % with depth)")
    extraction = ctx.sections.get("extraction", {}).get("322")
    if extraction:  # the DINOv2-B + QAA descriptor measured earlier in this run (batch 1, 322x322)
        out["descriptor_ms"] = 1e3 / extraction["full_img_s"]
        out["ratio_1_thread_vs_descriptor"] = out["ms_1_thread_median"] / out["descriptor_ms"]
        out["ratio_default_vs_descriptor"] = out["ms_default_threads_median"] / out["descriptor_ms"]
        log(f"  -> {out['ratio_1_thread_vs_descriptor']:.3f} (1 thread), {out['ratio_default_vs_descriptor']:.3f} "
            f"(default) of the DINOv2-B + QAA descriptor's {out['descriptor_ms']:.0f} ms (322x322, same run)")
    return out


def _ms_stats(values: list[float]) -> dict[str, float]:
    return {"ms_median": float(np.median(values)), "ms_p90": float(np.percentile(values, 90))}


UNRELATED_PER_QUERY = 5  # unrelated candidates timed per query: few reach RANSAC (most fail the ratio test)


def section_verification(ctx: Context) -> dict[str, Any]:
    """``verify_features`` per candidate on TUM fr1/rpy: each query frame 50-138 against the map frame
    0-49 nearest in view (ground truth: the smallest angle between the optical axes; the candidates
    that verify) and the :data:`UNRELATED_PER_QUERY` farthest ones (unrelated views of the room), with
    depth on both sides (PnP both ways) and with the depth left out (the essential matrix)."""
    from qaa_vpr_ros.local_features import FeatureConfig, LocalFeatures, extract_local_features
    from qaa_vpr_ros.verification import FeatureVerificationConfig, feature_matches, verify_features
    from scripts.tum_rgbd import TUM_FR1_INTRINSICS, TUM_FR1_RPY, load_tum

    if not (TUM_FR1_RPY / "associations.txt").is_file():
        return {"skipped": f"TUM RGB-D data absent: {TUM_FR1_RPY} (../shared/data/README.md)"}
    sequence = load_tum(TUM_FR1_RPY)
    intrinsics, config = TUM_FR1_INTRINSICS, FeatureVerificationConfig()
    map_frames = np.arange(0, 50)
    queries = list(range(50, len(sequence), 2 if ctx.quick else 1))
    features = {int(i): extract_local_features(sequence.rgb(int(i)), sequence.depth_m(int(i)), FeatureConfig())
                for i in (*map_frames, *queries)}
    axes = sequence.camera_pose([f.rgb_stamp_ns for f in sequence.frames])[:, :3, 2]  # optical axes in the world

    def reaches_ransac(query: LocalFeatures, match: LocalFeatures) -> bool:
        """Whether verify_features gets to RANSAC: enough ratio-test matches (with depth on the match
        side for PnP, whose 3D points come from it) for ``min_inliers``."""
        rows_q, rows_m = feature_matches(query, match, config.ratio)
        if len(rows_q) < config.min_matches:
            return False
        return not match.has_depth or int(np.sum(match.depth_mm[rows_m] > 0)) >= config.min_inliers

    # (view, depth, outcome) -> ms per candidate; outcome: "verified"/"rejected" for the nearest view,
    # "ransac" (ran to its cap: no consistent model) / "before_ransac" for the unrelated one.
    times: dict[tuple[str, str, str], list[float]] = {}
    angles: dict[str, list[float]] = {"nearest": [], "unrelated": []}
    both_ways = 0
    verify_features(features[queries[0]], intrinsics, features[0], intrinsics, config)  # warm-up
    for q in queries:
        degrees = np.degrees(np.arccos(np.clip(axes[map_frames] @ axes[q], -1.0, 1.0)))
        farthest = np.argsort(-degrees)[:UNRELATED_PER_QUERY]
        for view, row in [("nearest", int(np.argmin(degrees)))] + [("unrelated", int(r)) for r in farthest]:
            m = int(map_frames[row])
            angles[view].append(float(degrees[row]))
            for depth in ("depth", "no_depth"):
                query, match = features[q], features[m]
                if depth == "no_depth":
                    query, match = (LocalFeatures(f.keypoints, f.descriptors) for f in (query, match))
                started = time.perf_counter()
                outcome = verify_features(query, intrinsics, match, intrinsics, config)
                ms = 1e3 * (time.perf_counter() - started)
                if view == "nearest":
                    kind = "verified" if outcome.accepted else "rejected"
                    both_ways += depth == "depth" and outcome.accepted and math.isfinite(outcome.disagreement_deg)
                else:
                    kind = "ransac" if reaches_ransac(query, match) else "before_ransac"
                    kind = "accepted" if outcome.accepted else kind  # a wrong acceptance: reported as such
                times.setdefault((view, depth, kind), []).append(ms)
    order = [(view, depth, kind) for view in ("nearest", "unrelated") for depth in ("depth", "no_depth")
             for kind in ("verified", "rejected", "before_ransac", "ransac", "accepted")]
    rows = [{"view": view, "depth": depth, "outcome": kind, "count": len(times[view, depth, kind]),
             **_ms_stats(times[view, depth, kind])} for view, depth, kind in order if (view, depth, kind) in times]
    out: dict[str, Any] = {
        "queries": len(queries), "map_frames": len(map_frames), "image": "640x480",
        "max_features": FeatureConfig().max_features, "pnp_iterations": config.pnp_iterations,
        "min_inliers": config.min_inliers, "verified_both_ways": both_ways, "unrelated_per_query": UNRELATED_PER_QUERY,
        "nearest_deg_median": float(np.median(angles["nearest"])),
        "unrelated_deg_min": float(np.min(angles["unrelated"])),
        "unrelated_deg_max": float(np.max(angles["unrelated"])),
        "rows": rows}
    extraction = ctx.sections.get("extraction", {}).get("322")
    if extraction:  # the DINOv2-B + QAA descriptor measured earlier in this run (batch 1, 322x322)
        out["descriptor_ms"] = 1e3 / extraction["full_img_s"]
        for row in rows:
            row["ratio_vs_descriptor"] = row["ms_median"] / out["descriptor_ms"]
    for row in rows:
        versus = (f" = {row['ratio_vs_descriptor']:.3f}x the descriptor's {out['descriptor_ms']:.0f} ms"
                  if "ratio_vs_descriptor" in row else "")
        log(f"  {row['view']:9s} {row['depth']:8s} {row['outcome']:13s} {row['count']:3d} candidates: "
            f"{row['ms_median']:6.1f} ms median, {row['ms_p90']:6.1f} ms p90{versus}")
    log(f"  ({len(queries)} TUM queries x map frames 0-49; nearest view {out['nearest_deg_median']:.0f} deg apart "
        f"in the median, the {UNRELATED_PER_QUERY} unrelated {out['unrelated_deg_min']:.0f}-"
        f"{out['unrelated_deg_max']:.0f} deg; "
        f"{both_ways} verified by PnP both ways)")
    return out


def section_node_verification(ctx: Context) -> dict[str, Any]:
    """``FramePipeline.process`` per frame (what the node runs) with ``verify_geometry`` on and off in
    the same run: TUM fr1/rpy queries 50-138 against a map of frames 0-49 built in-process (descriptors
    of the bundled ``models/nordland_tiny``, SIFT + depth, the camera's intrinsics), online loop
    closure on, depth paired, odometry the ground truth. The two pipelines take each frame in turn,
    alternating which goes first, so both see the same load."""
    from qaa_vpr_ros.bag_writer import depth_message, image_message
    from qaa_vpr_ros.decision import LocalizeConfig, Localizer
    from qaa_vpr_ros.decision.verifier import CandidateVerifier
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.extrinsics import ExtrinsicsSource
    from qaa_vpr_ros.local_features import FeatureConfig, extract_local_features
    from qaa_vpr_ros.maps import Keyframe, PlaceMap
    from qaa_vpr_ros.model import load_model
    from qaa_vpr_ros.pipeline import Frame, FramePipeline
    from qaa_vpr_ros.poses import matrix_quaternion
    from scripts.tum_rgbd import CAMERA_FRAME, DEPTH_TOPIC, RGB_TOPIC, TUM_FR1_INTRINSICS, TUM_FR1_RPY, load_tum

    if not (TUM_FR1_RPY / "associations.txt").is_file():
        return {"skipped": f"TUM RGB-D data absent: {TUM_FR1_RPY} (../shared/data/README.md)"}
    sequence = load_tum(TUM_FR1_RPY)
    model_path = REPO / "models" / "nordland_tiny"
    extractor = DescriptorExtractor(load_model(model_path), device="cpu", batch_size=16)
    configs = {verify: LocalizeConfig(image_topics=[RGB_TOPIC], depth_topics=[DEPTH_TOPIC], odom_topic="/odom",
                                      online_loop_closure=True, verify_geometry=verify).validate()
               for verify in (True, False)}
    map_frames = range(50)
    stamps = [sequence.frames[i].rgb_stamp_ns for i in map_frames]
    poses = sequence.base_pose(stamps)
    keyframes = [Keyframe(id=i, stamp_sec=s // 10**9, stamp_nanosec=s % 10**9, camera=RGB_TOPIC,
                          frame_id=CAMERA_FRAME, position=tuple(p[:3, 3]), orientation=matrix_quaternion(p[:3, :3]))
                 for i, s, p in zip(map_frames, stamps, poses, strict=True)]
    images = [sequence.rgb(i) for i in map_frames]
    place_map = PlaceMap.create(extractor.dim, extractor.fingerprint, map_frame="map")
    feature_config = FeatureConfig(max_features=configs[True].local_features_max)
    place_map.add(extractor.extract(images), keyframes,
                  features=[extract_local_features(image, sequence.depth_m(i), feature_config)
                            for i, image in zip(map_frames, images, strict=True)])
    place_map.set_camera(RGB_TOPIC, TUM_FR1_INTRINSICS)
    pipelines: dict[bool, FramePipeline] = {}
    for verify, cfg in configs.items():
        verifier = None
        if verify:  # as the node's start-up makes it (camera_info gives the intrinsics)
            verifier = CandidateVerifier(cfg)
            verifier.set_intrinsics(RGB_TOPIC, TUM_FR1_INTRINSICS)
        pipelines[verify] = FramePipeline(cfg, ExtrinsicsSource(cfg.base_frame, {}), verifier)
        pipelines[verify].attach(extractor, Localizer(cfg, extractor.dim, extractor.fingerprint, place_map), "tum-map")

    step = 2 if ctx.quick else 1
    queries = list(range(50, len(sequence), step))
    gt = sequence.gt_stamps_ns
    ms: dict[bool, list[float]] = {True: [], False: []}
    parts: dict[bool, dict[str, list[float]]] = {v: {"inference": [], "features": [], "search": []} for v in ms}
    geometry_matches = dict.fromkeys(ms, 0)
    processed = dict.fromkeys(ms, 0)
    sent = int(sequence.frames[queries[0]].rgb_stamp_ns) - 200_000_000
    for n, q in enumerate(queries):
        frame = sequence.frames[q]
        # What a live camera and odometry have delivered by the time the frame is processed: the ground
        # truth up to 50 ms past the image, and the depth images up to the next frame's (so the pairing
        # never waits depth_max_age_s for one stamped after the colour image).
        rows = np.flatnonzero((gt > sent) & (gt <= frame.rgb_stamp_ns + 50_000_000))
        sent = int(frame.rgb_stamp_ns) + 50_000_000
        odometry = [(int(gt[r]) * 1e-9, (tuple(p[:3, 3]), matrix_quaternion(p[:3, :3])))
                    for r, p in zip(rows, sequence.base_pose(gt[rows]) if len(rows) else [], strict=True)]
        depths = [(sequence.frames[i].depth_stamp_ns, np.rint(sequence.depth_png(i) / 5.0).astype(np.uint16))
                  for i in range(q, min(q + 2, len(sequence)))]
        message = image_message(sequence.rgb(q), frame.rgb_stamp_ns, CAMERA_FRAME)
        sec, nanosec = divmod(frame.rgb_stamp_ns, 10**9)
        for verify in ((True, False) if n % 2 == 0 else (False, True)):
            pipeline = pipelines[verify]
            for stamp, pose in odometry:
                pipeline.add_odometry(stamp, pose, "odom")
            for stamp_ns, depth_mm in depths:
                pipeline.depth.add(RGB_TOPIC, stamp_ns * 1e-9, depth_message(depth_mm, stamp_ns, CAMERA_FRAME))
            started = time.perf_counter()
            batch = pipeline.process([Frame(RGB_TOPIC, sec, nanosec, CAMERA_FRAME, message)])
            ms[verify].append(1e3 * (time.perf_counter() - started))
            if batch.answers:
                processed[verify] += 1
                for key in parts[verify]:
                    parts[verify][key].append(getattr(batch, f"{key}_ms"))
                match = batch.answers[0].place_match
                geometry_matches[verify] += match is not None and match.accepted and match.source == "geometry"
    on, off = (_ms_stats(ms[v]) for v in (True, False))
    counts = pipelines[True].verifier.counts()
    out: dict[str, Any] = {
        "frames": len(queries), "step": step, "map_keyframes": len(map_frames), "model": "models/nordland_tiny",
        "processed_on": processed[True], "processed_off": processed[False],
        "on": on | {f"{k}_ms_median": float(np.median(v)) for k, v in parts[True].items() if v},
        "off": off | {f"{k}_ms_median": float(np.median(v)) for k, v in parts[False].items() if v},
        "ratio_median": on["ms_median"] / off["ms_median"], "ratio_p90": on["ms_p90"] / off["ms_p90"],
        "overhead_ms_median": on["ms_median"] - off["ms_median"],
        "verified": counts["verified"], "verified_pnp": counts["verified_pnp"], "rejected": counts["rejected"],
        "geometry_place_matches": geometry_matches[True], "online_keyframes": len(pipelines[True].localizer.online_map)}
    subsampled = f" (1 frame in {step}: --quick)" if step > 1 else ""
    log(f"  {len(queries)} TUM queries{subsampled} against {len(map_frames)} keyframes, online loop closure on, "
        f"depth paired: verify_geometry on {on['ms_median']:.0f} ms median / {on['ms_p90']:.0f} ms p90 per frame, off "
        f"{off['ms_median']:.0f} / {off['ms_p90']:.0f} ms -> on / off {out['ratio_median']:.2f}x (median), "
        f"{out['ratio_p90']:.2f}x (p90); +{out['overhead_ms_median']:.0f} ms per frame")
    log(f"  on: SIFT {out['on']['features_ms_median']:.0f} ms, decision + verification "
        f"{out['on']['search_ms_median']:.0f} ms (off: decision {out['off']['search_ms_median']:.1f} ms) per frame "
        f"(median); {counts['verified']} "
        f"candidates verified ({counts['verified_pnp']} by PnP), {counts['rejected']} rejected; "
        f"{geometry_matches[True]} place matches from geometry")
    extraction = ctx.sections.get("extraction", {}).get("322")
    if extraction:  # the overhead against the release model's descriptor (the tiny model's is much cheaper)
        out["descriptor_ms"] = 1e3 / extraction["full_img_s"]
        out["overhead_vs_descriptor"] = out["overhead_ms_median"] / out["descriptor_ms"]
        log(f"  -> the overhead is {out['overhead_vs_descriptor']:.3f}x the DINOv2-B + QAA descriptor's "
            f"{out['descriptor_ms']:.0f} ms (322x322, same run)")
    return out


# --- driver -----------------------------------------------------------------------------------------
SECTIONS: list[tuple[str, Callable[[Context], Any], float]] = [
    # Search first after the heads: its 1M x 1024 part is the headline figure and the slowest.
    ("heads", section_heads, 90),
    ("search", section_search, 540),
    ("extraction", section_extraction, 150),
    ("onnxruntime", section_onnxruntime, 150),
    ("node", section_node, 240),
    ("build", section_build, 150),
    ("ray_build", section_ray_build, 150),
    ("local_features", section_local_features, 90),
    ("verification", section_verification, 60),
    ("node_verification", section_node_verification, 150),
]


class Context:
    """What a CPU section reads: ``quick``, the seconds of the budget left, and the sections measured
    so far in this run (for same-run ratios)."""

    def __init__(self, quick: bool, runner: Runner) -> None:
        self.quick = quick
        self.left = runner.left
        self.sections: dict[str, Any] = runner.results["sections"]


def run_sections(runner: Runner, ctx: Context, only: list[str] | None) -> dict[str, Any]:
    for name, fn, _limit in SECTIONS:
        if only and name not in only:
            continue
        runner.run(name, lambda _deadline, fn=fn: fn(ctx))
    return runner.results


def merge(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """``earlier``'s results completed by ``later``'s sections (a run that spent its budget + the rest)."""
    merged = dict(earlier)
    for key in ("sections", "load"):
        merged[key] = {**earlier[key], **later[key]}
    merged["errors"] = {k: v for k, v in {**earlier["errors"], **later["errors"]}.items()
                        if k not in merged["sections"]}
    merged["skipped"] = {k: v for k, v in {**earlier["skipped"], **later["skipped"]}.items()
                         if k not in merged["sections"]}
    first = earlier.get("runs") or [{"command": earlier["command"], "total_s": earlier["total_s"],
                                     "others_share": earlier["overall_load"]["others_share"],
                                     "sections": list(earlier["sections"])}]
    merged["runs"] = first + later["runs"]
    merged["total_s"] = sum(run["total_s"] for run in merged["runs"])
    merged["command"] = " + ".join(run["command"] for run in merged["runs"])
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU benchmark of the release model (bench/gpu_bench.py; what bench/gpu.sh runs) "
                             "instead of the CPU sections")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for report.md, PNGs, results.json (default bench; --gpu: results.json, "
                             "summary.md, default bench/gpu_out)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget (default 1140 s = 19 min; --gpu: 420 s)")
    cpu = parser.add_argument_group("CPU mode")
    cpu.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a smoke run)")
    cpu.add_argument("--only", nargs="+", choices=[s[0] for s in SECTIONS], help="run these sections only")
    cpu.add_argument("--complete", type=Path, metavar="RESULTS_JSON",
                     help="run only the sections that results.json of an earlier run lacks (skipped or "
                          "failed there, e.g. when a loaded machine spent its budget), or those given with "
                          "--only (they replace the earlier ones), and report both runs")
    gpu = parser.add_argument_group("GPU mode (--gpu)")
    gpu.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script in seconds")
    gpu.add_argument("--parts", type=lambda text: set(text.split(",")), default=None,
                     help="comma-separated subset of: flops, eager, differences, extractor, onnxruntime, "
                          "faiss_gpu, compiled (default: all); the extractor's ratios need eager")
    gpu.add_argument("--peak-tflops", type=float, default=None,
                     help="the card's dense peak TFLOP/s for every precision (default: from its name)")
    args = parser.parse_args(argv)
    if args.gpu:
        return run_gpu(args)
    if args.smoke or args.parts or args.peak_tflops:
        parser.error("--smoke, --parts and --peak-tflops need --gpu")
    args.out = args.out or REPO / "bench"
    args.budget_s = 1140.0 if args.budget_s is None else args.budget_s
    earlier = json.loads(args.complete.read_text()) if args.complete else None
    if earlier is not None and not args.only:
        args.only = [name for name, _, _ in SECTIONS if name not in earlier["sections"]]
    from bench.report import write_report

    started = time.monotonic()
    overall = LoadMeter()
    runner = Runner(args.budget_s)
    ctx = Context(args.quick, runner)
    info = machine()
    log(f"make bench on {info['host']}: {info['cpu']}, {info['cores']} cores, {info['mem_gb']:.0f} GB; "
        f"budget {args.budget_s:.0f} s")
    results = run_sections(runner, ctx, args.only)
    results["machine"] = info
    results["overall_load"] = overall.result()
    results["total_s"] = time.monotonic() - started
    given = argv if argv is not None else sys.argv[1:]
    results["command"] = " ".join(["python -m bench.run", *given]) if given else "make bench"
    results["runs"] = [{"command": results["command"], "cpu": info["cpu"], "total_s": results["total_s"],
                        "others_share": results["overall_load"]["others_share"],
                        "sections": list(results["sections"])}]
    if earlier is not None:
        results = merge(earlier, results)
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(results, args.out)
    log(f"wrote {args.out / 'report.md'} in {results['total_s']:.0f} s total")
    return 1 if results["errors"] else 0


def run_gpu(args: argparse.Namespace) -> int:
    """GPU mode: bench/gpu_bench.py's sections -> OUT/results.json and summary.md; prints the summary."""
    from bench.gpu_bench import Bench, summary

    args.out = args.out or REPO / "bench" / "gpu_out"
    args.budget_s = 420.0 if args.budget_s is None else args.budget_s
    Path(args.out).mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    results = bench.run()
    bench.save()
    print("\n" + summary(results), flush=True)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
