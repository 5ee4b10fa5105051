"""GPU benchmark of the release-sized model: DINOv2-B/14 + QAA-8192 at 322 x 322, random weights.

The GPU sections ("parts") of the one bench runner (``bench/runner.py``). Run through
``bench/gpu.sh [OUT]`` (or ``python3 -m bench.run --gpu --out OUT``); ``--smoke`` runs every part
on a tiny model on the CPU in seconds, to check the script itself.

Parts, each under its own time budget and try/except (a failing part is reported, the rest run):
  1. FLOPs per image with the project's counter (``count_flops``), model and backbone alone;
  2. eager throughput in fp32, tf32, fp16 and bf16 (autocast, as the extractor runs), batch 1 and
     the best batch found by a sweep: images/s, ms/image, peak GPU memory, achieved TFLOP/s and its
     fraction of the card's dense peak;
  3. the same with ``torch.compile`` (bf16 first; later compiles are skipped when the budget left
     is below the time the last one took);
  4. fp16 / bf16 / tf32 vs fp32 descriptor difference (max abs, min cosine) on the same inputs;
  5. the node's extractor path (``DescriptorExtractor`` on uint8 480 x 640 images) as a ratio to
     the bare model at the same batch and precision;
  6. ONNX Runtime with the CUDA (and TensorRT) provider when the installed onnxruntime has it;
  7. faiss on the GPU when importable: exact search over 1M x 1024.

Writes ``results.json``, ``summary.md`` and ``log.txt`` (via gpu.sh) under OUT; prints the
summary. Nothing is downloaded or installed. Weights are random: speed does not depend on them,
descriptor differences do a little (real weights give structured, not random, features).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.runner import Runner, log  # noqa: E402
from qaa_vpr_ros.atomic import atomic_write_text  # noqa: E402
from qaa_vpr_ros.extractor import DescriptorExtractor  # noqa: E402
from qaa_vpr_ros.model import build_model  # noqa: E402
from qaa_vpr_ros.model.aggregators.flops import count_flops  # noqa: E402

RELEASE_CONFIG = REPO / "training" / "configs" / "paper_joint_qaa8192.yaml"
RELEASE_IMAGE_SIZE = (322, 322)
SMOKE_CONFIG = {
    "backbone_arch": "vit_small_patch14_dinov2",
    "backbone_config": {"num_trainable_blocks": 1, "norm_layer": True, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "agg_arch": "QAA",
    "agg_config": {"num_channels": 32, "num_queries": 8, "num_clusters": 4, "cluster_dim": 8,
                   "feature_nheads": 2, "score_nheads": 2},
}
SMOKE_IMAGE_SIZE = (56, 56)
# Dense (no sparsity) peak TFLOP/s by card name: (fp32, tf32, fp16/bf16). H100/H200 SXM data sheets.
PEAK_TFLOPS = {"H200": (67.0, 494.0, 989.0), "H100": (67.0, 494.0, 989.0), "A100": (19.5, 156.0, 312.0)}
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
BATCH_SWEEP = (1, 8, 16, 32, 64, 128, 256, 512)


def load_release_config() -> dict[str, Any]:
    import yaml

    model = yaml.safe_load(RELEASE_CONFIG.read_text())["model"]
    return {key: model[key] for key in ("backbone_arch", "backbone_config", "agg_arch", "agg_config")}


def peak_for(device_name: str) -> dict[str, float] | None:
    for key, (fp32, tf32, half) in PEAK_TFLOPS.items():
        if key in device_name:
            return {"fp32": fp32, "tf32": tf32, "fp16": half, "bf16": half}
    return None


class Precision:
    """Autocast dtype (as :class:`DescriptorExtractor` runs) and the TF32 switch for one precision."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name, self.device = name, device
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name)

    def __enter__(self) -> Precision:
        self._tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        tf32 = self.name == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        self._autocast = torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                                        enabled=self.dtype is not None)
        self._autocast.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._autocast.__exit__(*exc)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._tf32


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, max_s: float, min_iters: int = 3,
              max_iters: int = 200, warmup: int = 2) -> float:
    """Median seconds per call after ``warmup`` calls; stops after ``max_s`` (at least ``min_iters``)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_iters or (len(times) < max_iters and time.perf_counter() - started < max_s):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def peak_memory_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.out = Path(args.out)
        self.smoke = args.smoke
        self.device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
        self.runner = Runner(args.budget_s, gpu=True, after=self._after_part)
        self.results: dict[str, Any] = self.runner.results
        config = SMOKE_CONFIG if args.smoke else load_release_config()
        self.image_size = SMOKE_IMAGE_SIZE if args.smoke else RELEASE_IMAGE_SIZE
        torch.manual_seed(0)
        self.model = build_model(config, image_size=self.image_size).eval().to(self.device)
        self.out_dim = self.model.out_dim
        self.gflops: float | None = None
        self.best_batch: dict[str, int] = {}
        self.eager_ips: dict[tuple[str, int], float] = {}
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or "cpu"
        self.peak = {k: args.peak_tflops for k in PRECISIONS} if args.peak_tflops else peak_for(name)
        self.results["machine"] = {
            "device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpu_cores": os.cpu_count(), "host": platform.node(), "peak_tflops": self.peak,
            "model": "tiny (smoke)" if args.smoke else "DINOv2-B/14 + QAA-8192 (random init)",
            "image_size": list(self.image_size), "descriptor_dim": self.out_dim, "budget_s": args.budget_s,
        }
        log(f"device {name}, torch {torch.__version__} (CUDA {torch.version.cuda}), model "
            f"{self.results['machine']['model']} at {self.image_size[0]}x{self.image_size[1]} -> {self.out_dim}-d")

    def images(self, batch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(batch)
        return torch.randn(batch, 3, *self.image_size, generator=generator).to(self.device)

    def part(self, name: str, fn: Callable[[float], Any], seconds: float) -> None:
        """Runs part ``name`` with at most ``seconds`` (less when the whole budget is shorter)."""
        if self.args.parts and name not in self.args.parts:
            self.results["skipped"][name] = "not in --parts"
            return
        self.runner.run(name, fn, seconds)

    def _after_part(self) -> None:
        reset_memory(self.device)
        self.save()  # after every part: a run cut short by the outer timeout keeps what it measured

    def save(self) -> None:
        self.results["total_s"] = time.monotonic() - self.started
        atomic_write_text(self.out / "results.json", json.dumps(self.results, indent=1, default=str))
        atomic_write_text(self.out / "summary.md", summary(self.results))

    # 1. FLOPs ---------------------------------------------------------------------------------
    def flops(self, deadline: float) -> dict[str, float]:
        model = copy.deepcopy(self.model).cpu()  # CPU: the counter's documented path (SDPA formula)
        one = torch.randn(1, 3, *self.image_size)
        with torch.no_grad():
            full = count_flops(lambda: model(one)).gflops  # the first call caches QAA's query branches
            full = count_flops(lambda: model(one)).gflops
            backbone = count_flops(lambda: model.backbone(one)).gflops
        self.gflops = full
        log(f"  GFLOPs/image: model {full:.4g}, backbone {backbone:.4g}, aggregator {full - backbone:.4g}")
        return {"gflops_model": full, "gflops_backbone": backbone, "gflops_aggregator": full - backbone}

    # 2./3. throughput ---------------------------------------------------------------------------
    def _row(self, precision: str, batch: int, seconds: float, compiled: bool) -> dict[str, Any]:
        ips = batch / seconds
        row = {"precision": precision, "batch": batch, "compiled": compiled, "images_per_s": ips,
               "ms_per_image": 1e3 * seconds / batch, "ms_per_batch": 1e3 * seconds,
               "peak_mem_mb": peak_memory_mb(self.device)}
        if self.gflops is not None:
            tflops = self.gflops * ips / 1e3
            row["tflops"] = tflops
            row["fraction_of_peak"] = tflops / self.peak[precision] if self.peak else None
        return row

    def _measure(self, model: Callable, precision: str, batch: int, max_s: float, compiled: bool) -> dict:
        images = self.images(batch)
        reset_memory(self.device)
        with torch.inference_mode(), Precision(precision, self.device):
            seconds = time_call(lambda: model(images), self.device, max_s=max_s)
        return self._row(precision, batch, seconds, compiled)

    def eager(self, deadline: float) -> list[dict]:
        rows = []
        sweep = (1, 2, 4) if self.smoke else BATCH_SWEEP
        per_precision = (deadline - time.monotonic()) / len(PRECISIONS)
        for precision in PRECISIONS:
            stop = time.monotonic() + per_precision
            best: dict | None = None
            for batch in sweep:
                if time.monotonic() > stop and best is not None:
                    log(f"  {precision}: batch sweep stopped at {batch} (part budget)")
                    break
                try:
                    row = self._measure(self.model, precision, batch, max_s=1.0 if batch == 1 else 1.5,
                                        compiled=False)
                except RuntimeError as err:
                    if not is_oom(err):
                        raise
                    log(f"  {precision} batch {batch}: out of memory")
                    break
                rows.append(row)
                self.eager_ips[(precision, batch)] = row["images_per_s"]
                log(f"  eager {precision:4s} batch {batch:4d}: {row['images_per_s']:9.1f} img/s "
                    f"{row['ms_per_image']:8.3f} ms/img  mem {row['peak_mem_mb'] or 0:8.0f} MB  "
                    f"{row.get('tflops', 0):7.1f} TFLOP/s")
                if best is None or row["images_per_s"] > best["images_per_s"]:
                    if best is not None and batch > 1 and row["images_per_s"] < 1.03 * best["images_per_s"]:
                        best = row  # saturated: a bigger batch gains < 3 %
                        break
                    best = row
                elif batch > 1:
                    break  # slower than the previous batch: past the best
            if best is not None:
                self.best_batch[precision] = best["batch"]
        for row in rows:
            row["is_best_batch"] = row["batch"] == self.best_batch.get(row["precision"])
        return rows

    def compiled(self, deadline: float) -> dict[str, Any]:
        if not hasattr(torch, "compile"):
            raise RuntimeError("torch.compile not available in this torch")
        rows, skipped = [], []
        # (precision, batch, mode): "reduce-overhead" adds CUDA graphs, which matter most at batch 1.
        plan = [("bf16", "best", "default"), ("bf16", 1, "default"), ("bf16", 1, "reduce-overhead"),
                ("fp16", "best", "default"), ("fp16", 1, "default"), ("fp32", "best", "default"),
                ("fp32", 1, "default"), ("tf32", "best", "default"), ("tf32", 1, "default")]
        if self.smoke:
            plan = [("fp32", "best", "default")]
        last_compile_s = 0.0
        compiled_models: dict[tuple[str, str], Callable] = {}
        for precision, which, mode in plan:
            batch = self.best_batch.get(precision, 1) if which == "best" else 1
            if which == 1 and mode == "default" and self.best_batch.get(precision) == 1:
                continue
            if mode == "reduce-overhead" and self.device.type != "cuda":
                continue
            left = deadline - time.monotonic()
            if left < 1.5 * last_compile_s + 5:
                skipped.append(f"{precision} batch {batch} mode {mode}: {left:.0f} s left < 1.5 x last compile "
                               f"({last_compile_s:.0f} s)")
                continue
            if (precision, mode) not in compiled_models:
                torch._dynamo.reset()
                compiled_models = {(precision, mode): torch.compile(self.model, dynamic=False, mode=mode)}
            model = compiled_models[(precision, mode)]
            images = self.images(batch)
            started = time.monotonic()
            try:
                with torch.inference_mode(), Precision(precision, self.device):
                    model(images)
                    model(images)  # CUDA graphs record on a later call than the first
                    synchronize(self.device)
            except RuntimeError as err:
                if not is_oom(err):
                    raise
                skipped.append(f"{precision} batch {batch} mode {mode}: out of memory")
                continue
            last_compile_s = time.monotonic() - started
            row = self._measure(model, precision, batch, max_s=1.5, compiled=True)
            row["compile_mode"] = mode
            row["compile_s"] = last_compile_s
            eager = self.eager_ips.get((precision, batch))
            row["speedup_vs_eager"] = row["images_per_s"] / eager if eager else None
            rows.append(row)
            log(f"  compiled ({mode}) {precision:4s} batch {batch:4d}: {row['images_per_s']:9.1f} img/s "
                f"({_fmt(row['speedup_vs_eager'], '.2f')}x eager), compile {last_compile_s:.0f} s")
        for reason in skipped:
            log(f"  compile skipped: {reason}")
        torch._dynamo.reset()
        return {"rows": rows, "skipped": skipped}

    # 4. descriptor differences ------------------------------------------------------------------
    def differences(self, deadline: float) -> dict[str, Any]:
        images = self.images(8)
        out: dict[str, Any] = {}
        with torch.inference_mode():
            with Precision("fp32", self.device):
                reference = self.model(images).float()
            for precision in ("tf32", "fp16", "bf16"):
                with Precision(precision, self.device):
                    other = self.model(images).float()
                cosine = torch.nn.functional.cosine_similarity(reference, other, dim=1)
                out[precision] = {"max_abs_diff": float((other - reference).abs().max()),
                                  "min_cosine": float(cosine.min()),
                                  "max_abs_value": float(reference.abs().max())}
                log(f"  {precision} vs fp32: max |diff| {out[precision]['max_abs_diff']:.2e} (values up to "
                    f"{out[precision]['max_abs_value']:.2e}), min cosine {out[precision]['min_cosine']:.6f}")
        return out

    # 5. the node's extractor path ---------------------------------------------------------------
    def extractor(self, deadline: float) -> list[dict]:
        rows = []
        rng = np.random.default_rng(0)
        for precision in ("fp16", "bf16", "fp32"):
            for batch in sorted({1, self.best_batch.get(precision, 1)}):
                if time.monotonic() > deadline - 3:
                    break
                extractor = DescriptorExtractor(self.model, device=self.device, batch_size=batch,
                                                precision=precision)
                frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(batch)]
                reset_memory(self.device)
                seconds = time_call(lambda frames=frames, extractor=extractor: extractor.extract(frames, "bgr"),
                                    self.device, max_s=1.5)
                row = self._row(precision, batch, seconds, compiled=False)
                bare = self.eager_ips.get((precision, batch))
                row["ratio_to_bare_model"] = row["images_per_s"] / bare if bare else None
                rows.append(row)
                log(f"  extractor {precision:4s} batch {batch:4d} (uint8 480x640 BGR): {row['images_per_s']:9.1f} "
                    f"img/s, {row['ms_per_image']:.3f} ms/img, {row['ratio_to_bare_model'] or float('nan'):.3f} "
                    f"of the bare model")
        return rows

    # 6. ONNX Runtime ----------------------------------------------------------------------------
    def onnxruntime(self, deadline: float) -> dict[str, Any]:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise _Skip(f"onnxruntime is not importable ({err}); nothing is installed here") from err

        from qaa_vpr_ros.model.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx

        available = ort.get_available_providers()
        wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        out: dict[str, Any] = {"onnxruntime": ort.__version__, "available_providers": available}
        if not wanted:
            if not self.smoke:
                raise _Skip(f"onnxruntime {ort.__version__} has no CUDA/TensorRT provider (providers: "
                            f"{available}); onnxruntime-gpu is not installed and cannot be downloaded here")
            wanted = ["CPUExecutionProvider"]  # smoke mode: exercise the code path on the CPU
        with tempfile.TemporaryDirectory(prefix="gpu_bench-") as tmp:
            path = Path(tmp) / "qaa.onnx"
            started = time.monotonic()
            export = export_onnx(copy.deepcopy(self.model).cpu(), path, self.image_size)
            out["export_s"] = time.monotonic() - started
            out["export_parity_cpu"] = export.max_abs_diff
            rows = []
            for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"):
                if provider not in wanted or time.monotonic() > deadline - 10:
                    continue
                providers = [provider] + (["CUDAExecutionProvider"] if provider == "TensorrtExecutionProvider" else [])
                session = ort.InferenceSession(str(path), providers=providers)
                for batch in sorted({1, self.best_batch.get("fp32", 1)}):
                    images = self.images(batch).cpu().numpy()
                    feed = {INPUT_NAME: images}
                    seconds = time_call(lambda s=session, f=feed: s.run([OUTPUT_NAME], f), torch.device("cpu"),
                                        max_s=1.5)
                    got = session.run([OUTPUT_NAME], feed)[0]
                    with torch.inference_mode(), Precision("fp32", self.device):
                        expected = self.model(torch.from_numpy(images).to(self.device)).float().cpu().numpy()
                    row = self._row("fp32", batch, seconds, compiled=False)
                    row["provider"] = provider
                    row["max_abs_diff_vs_torch_fp32"] = float(np.abs(got - expected).max())
                    bare = self.eager_ips.get(("fp32", batch))
                    row["ratio_to_torch_fp32"] = row["images_per_s"] / bare if bare else None
                    rows.append(row)
                    log(f"  onnxruntime {provider} batch {batch}: {row['images_per_s']:.1f} img/s, "
                        f"{row['ratio_to_torch_fp32'] or float('nan'):.2f}x torch fp32, max |diff| "
                        f"{row['max_abs_diff_vs_torch_fp32']:.1e}")
            out["rows"] = rows
        return out

    # 7. faiss on the GPU ------------------------------------------------------------------------
    def faiss_gpu(self, deadline: float) -> dict[str, Any]:
        try:
            import faiss
        except ImportError as err:
            raise _Skip(f"faiss is not importable ({err}); nothing is installed here") from err
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if gpus == 0:
            raise _Skip(f"faiss {faiss.__version__} has no GPU support (get_num_gpus() = 0)")
        n, dim = (10_000, 64) if self.smoke else (1_000_000, 1024)
        rng = np.random.default_rng(0)
        database = rng.standard_normal((n, dim), dtype=np.float32)
        database /= np.linalg.norm(database, axis=1, keepdims=True)
        queries = database[rng.integers(0, n, 1000)] + 0.03 * rng.standard_normal((1000, dim), dtype=np.float32)
        resources = faiss.StandardGpuResources()
        started = time.monotonic()
        index = faiss.GpuIndexFlatIP(resources, dim)
        index.add(database)
        build_s = time.monotonic() - started
        one = time_call(lambda: index.search(queries[:1], 5), torch.device("cpu"), max_s=1.5)
        batch = time_call(lambda: index.search(queries, 5), torch.device("cpu"), max_s=2.0)
        out = {"n": n, "dim": dim, "build_s": build_s, "ms_per_single_query": 1e3 * one,
               "ms_per_query_batch_1000": 1e3 * batch / len(queries)}
        log(f"  faiss GPU flat {n}x{dim}: 1 query {1e3 * one:.3f} ms, batch of 1000 {1e3 * batch:.1f} ms")
        return out

    def run(self) -> dict[str, Any]:
        scale = 0.1 if self.smoke else 1.0
        self.part("flops", self.flops, 30)
        self.part("eager", self.eager, 150 * scale + 10)
        self.part("differences", self.differences, 20)
        self.part("extractor", self.extractor, 40 * scale + 10)
        self.part("onnxruntime", self._skippable(self.onnxruntime), 60 * scale + 20)
        self.part("faiss_gpu", self._skippable(self.faiss_gpu), 30)
        self.part("compiled", self.compiled, max(10.0, self.runner.left() - 10))
        return self.results

    def _skippable(self, fn: Callable[[float], Any]) -> Callable[[float], Any]:
        def wrapped(deadline: float) -> Any:
            try:
                return fn(deadline)
            except _Skip as skip:
                name = fn.__name__
                self.results["skipped"][name] = str(skip)
                log(f"  skipped: {skip}")
                return None
        return wrapped


class _Skip(Exception):
    """A part cannot run on this machine (missing package or device); the reason is reported."""


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def summary(results: dict[str, Any]) -> str:
    machine = results["machine"]
    parts = results["parts"]
    lines = [f"# GPU benchmark: {machine['model']} at {machine['image_size'][0]}x{machine['image_size'][1]}",
             "",
             f"Machine: {machine['device']}, {machine['cpu_cores']} CPU cores, torch {machine['torch']} "
             f"(CUDA {machine['cuda']}), Python {machine['python']}. Dense peak TFLOP/s used: "
             f"{machine['peak_tflops']}.", ""]
    flops = parts.get("flops")
    if flops:
        lines.append(f"FLOPs per image (project counter, 2 per MAC): model {flops['gflops_model']:.4g} G, backbone "
                     f"{flops['gflops_backbone']:.4g} G, aggregator {flops['gflops_aggregator']:.4g} G.")
        lines.append("")
    rows = list(parts.get("eager") or []) + list((parts.get("compiled") or {}).get("rows", []))
    if rows:
        lines += ["| precision | compiled | batch | images/s | ms/image | peak GPU MB | TFLOP/s | of peak | vs eager |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            if not row["compiled"] and not (row["batch"] == 1 or row.get("is_best_batch")):
                continue
            lines.append(f"| {row['precision']} | {row.get('compile_mode', 'no')} | {row['batch']}"
                         f"{' (best)' if row.get('is_best_batch') else ''} | {row['images_per_s']:.1f} | "
                         f"{row['ms_per_image']:.3f} | {_fmt(row['peak_mem_mb'], '.0f')} | "
                         f"{_fmt(row.get('tflops'), '.1f')} | {_fmt(row.get('fraction_of_peak'), '.1%')} | "
                         f"{_fmt(row.get('speedup_vs_eager'), '.2f')} |")
        lines.append("")
    if parts.get("differences"):
        lines.append("Descriptor difference vs fp32 (same 8 random images): " + "; ".join(
            f"{p}: max |diff| {d['max_abs_diff']:.2e}, min cosine {d['min_cosine']:.6f}"
            for p, d in parts["differences"].items()) + ".")
        lines.append("")
    if parts.get("extractor"):
        lines.append("Node extractor path (DescriptorExtractor, uint8 480x640 BGR in, resize on device): " + "; ".join(
            f"{r['precision']} batch {r['batch']}: {r['images_per_s']:.1f} img/s = "
            f"{_fmt(r['ratio_to_bare_model'], '.3f')} of the bare model" for r in parts["extractor"]) + ".")
        lines.append("")
    ort_part = parts.get("onnxruntime")
    if ort_part and ort_part.get("rows"):
        lines.append("ONNX Runtime: " + "; ".join(
            f"{r['provider']} batch {r['batch']}: {r['images_per_s']:.1f} img/s = "
            f"{_fmt(r['ratio_to_torch_fp32'], '.2f')}x torch fp32, max |diff| {r['max_abs_diff_vs_torch_fp32']:.1e}"
            for r in ort_part["rows"]) + ".")
        lines.append("")
    if parts.get("faiss_gpu"):
        f = parts["faiss_gpu"]
        lines.append(f"faiss GPU flat {f['n']}x{f['dim']}: {f['ms_per_single_query']:.3f} ms per single query, "
                     f"{f['ms_per_query_batch_1000']:.4f} ms per query in batches of 1000.")
        lines.append("")
    for name, reason in results["skipped"].items():
        lines.append(f"- skipped {name}: {reason}")
    for name in (parts.get("compiled") or {}).get("skipped", []):
        lines.append(f"- compile skipped: {name}")
    for name, error in results["errors"].items():
        lines.append(f"- FAILED {name}: {error}")
    lines.append(f"\nTotal {results.get('total_s', 0):.0f} s.")
    return "\n".join(lines) + "\n"
