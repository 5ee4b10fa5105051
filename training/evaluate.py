"""Retrieval evaluation: Recall@K with exact faiss search.

Command line::

    python -m training.evaluate --model PATH --dataset FORMAT:ROOT [--dataset FORMAT:ROOT ...]
        [--split val] [--radius 25] [--database-traversal summer --query-traversal winter
        --frame-tolerance 2 --frame-range 0.8:1.0] [--recalls 1 5 10 20] [--json OUT.json]
        [--plot OUT.png] [--msls-predictions OUT.txt] [--image-size H W] [--device auto]

``--model`` is anything :func:`qaa_vpr_ros.model.load_model` reads, or ``raw-pixels[:HxW]`` for the
raw-pixel baseline (grey image resized to HxW, standardised, L2-normalised). Images are preprocessed
by the project's one extractor (:class:`qaa_vpr_ros.extractor.DescriptorExtractor`).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qaa_vpr_ros.atomic import atomic_write_text, save_figure
from qaa_vpr_ros.paths import expand_path, path_argument
from qaa_vpr_ros.progress import progress_bar

from .datasets import RetrievalSet, build_retrieval_set, load_image_rgb

DEFAULT_KS = (1, 5, 10, 20)


class RawPixelDescriptor:
    """Raw-pixel baseline: grey image resized to ``size`` (H, W), zero mean, unit L2 norm. (N, H*W)."""

    def __init__(self, size: tuple[int, int] = (32, 64)) -> None:
        self.size = (int(size[0]), int(size[1]))

    def extract(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import cv2

        out = np.zeros((len(images), self.size[0] * self.size[1]), np.float32)
        for i, image in enumerate(images):
            grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            small = cv2.resize(grey, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA).astype(np.float32)
            small -= small.mean()
            out[i] = small.ravel() / max(float(np.linalg.norm(small)), 1e-6)
        return out


def _load_images(paths: Sequence[str], pool: ThreadPoolExecutor) -> list[np.ndarray]:
    return list(pool.map(load_image_rgb, paths))


def extract_descriptors(extractor: Any, paths: Sequence[str], chunk: int = 256, progress: bool = True,
                        rank: int = 0, world_size: int = 1, desc: str = "extract") -> np.ndarray:
    """Descriptors (N, D) float32 of image files, in order.

    ``extractor`` has ``.extract(list of uint8 RGB images) -> (n, D)`` (a ``DescriptorExtractor`` or
    :class:`RawPixelDescriptor`). With ``world_size > 1`` (torch.distributed initialised) each rank
    extracts the images ``rank::world_size`` and the rows are gathered so every rank returns all N.
    """
    mine = list(range(rank, len(paths), world_size))
    parts = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        bar = progress_bar(len(mine), desc=desc, unit="img", enabled=progress, leave=False)
        for start in range(0, len(mine), chunk):
            idx = mine[start:start + chunk]
            parts.append(np.asarray(extractor.extract(_load_images([paths[i] for i in idx], pool)), np.float32))
            bar.update(len(idx))
        bar.close()
    local = np.concatenate(parts) if parts else None
    if world_size == 1:
        return local if local is not None else np.zeros((0, 0), np.float32)
    return gather_rows(local, len(paths), rank, world_size)


def gather_rows(local: np.ndarray | None, total: int, rank: int, world_size: int) -> np.ndarray:
    """All-gather rows extracted round-robin (rank r holds rows r::world_size) into (total, D) on every rank."""
    import torch.distributed as dist

    dim = torch.tensor([local.shape[1] if local is not None and len(local) else 0], dtype=torch.int64)
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)
    width = int(dim.item())
    per_rank = -(-total // world_size)
    buf = torch.zeros(per_rank, width, dtype=torch.float32)
    if local is not None and len(local):
        buf[:len(local)] = torch.from_numpy(local)
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    if backend_device == "cuda":
        buf = buf.cuda()
    gathered = [torch.zeros_like(buf) for _ in range(world_size)]
    dist.all_gather(gathered, buf)
    out = np.zeros((total, width), np.float32)
    for r, g in enumerate(gathered):
        rows = len(range(r, total, world_size))
        out[r::world_size] = g[:rows].cpu().numpy()
    return out


def search(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact L2 nearest neighbours (faiss ``IndexFlatL2``). Returns (distances, indices), each (Nq, k)."""
    import faiss

    index = faiss.IndexFlatL2(database.shape[1])
    index.add(np.ascontiguousarray(database, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(database)))


def recall_at_k(predictions: np.ndarray, positives: Sequence[np.ndarray], ks: Sequence[int] = DEFAULT_KS
                ) -> dict[str, float]:
    """Recall@K in percent: share of queries (with at least one positive) whose top K holds a positive.

    ``predictions`` (Nq, >= max K) database indices, best first; queries without positives are
    left out of the denominator.
    """
    valid = [q for q, p in enumerate(positives) if len(p)]
    if not valid:
        raise ValueError("no query has a positive; check the dataset's ground truth / radius / tolerance")
    first_hit = np.full(len(valid), np.inf)
    for row, q in enumerate(valid):
        hits = np.nonzero(np.isin(predictions[q], positives[q]))[0]
        if len(hits):
            first_hit[row] = hits[0]
    return {f"R@{k}": float(100.0 * np.mean(first_hit < k)) for k in ks}


def evaluate_descriptors(database: np.ndarray, queries: np.ndarray, dataset: RetrievalSet,
                         ks: Sequence[int] = DEFAULT_KS) -> tuple[dict[str, Any], np.ndarray]:
    """Recalls (and counts) of one split from its descriptors; also the (Nq, max K) predictions."""
    _, predictions = search(database, queries, max(ks))
    result: dict[str, Any] = {"dataset": dataset.name, "num_database": len(database), "num_queries": len(queries)}
    if dataset.has_ground_truth:
        result["num_queries_with_positives"] = int(sum(len(p) > 0 for p in dataset.positives))
        result.update(recall_at_k(predictions, dataset.positives, ks))
    return result, predictions


def make_extractor(model: str, device: str = "auto", batch_size: int = 32,
                   image_size: tuple[int, int] | None = None) -> Any:
    """A DescriptorExtractor for a checkpoint path, or the raw-pixel baseline for ``raw-pixels[:HxW]``."""
    if model.startswith("raw-pixels"):
        size = (32, 64)
        if ":" in model:
            h, w = model.split(":", 1)[1].lower().split("x")
            size = (int(h), int(w))
        return RawPixelDescriptor(size)
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.model import load_model

    return DescriptorExtractor(load_model(model, device="cpu"), device=device, batch_size=batch_size,
                               image_size=image_size)


def evaluate_dataset(extractor: Any, dataset: RetrievalSet, ks: Sequence[int] = DEFAULT_KS,
                     progress: bool = True) -> tuple[dict[str, Any], np.ndarray]:
    """Extract and evaluate one split. Returns (result dict, predictions)."""
    db = extract_descriptors(extractor, dataset.database_paths, progress=progress, desc=f"{dataset.name} database")
    qs = extract_descriptors(extractor, dataset.query_paths, progress=progress, desc=f"{dataset.name} queries")
    return evaluate_descriptors(db, qs, dataset, ks)


def write_msls_predictions(path: str | Path, dataset: RetrievalSet, predictions: np.ndarray) -> None:
    """The MSLS challenge prediction file: per line, a query key followed by its ranked database keys."""
    lines = [" ".join([dataset.query_keys[q], *(dataset.database_keys[i] for i in row if i >= 0)])
             for q, row in enumerate(predictions)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot_recalls(results: Sequence[dict[str, Any]], ks: Sequence[int], path: str | Path) -> None:
    """Recall@K curves, one line per dataset, to a PNG."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for r in results:
        if f"R@{ks[0]}" in r:
            ax.plot(list(ks), [r[f"R@{k}"] for k in ks], marker="o", label=r["dataset"])
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_xscale("log")
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path, dpi=120)


def format_table(results: Sequence[dict[str, Any]], ks: Sequence[int]) -> str:
    """A fixed-width text table of the results."""
    header = f"{'dataset':<32} {'queries':>8} {'database':>9} " + " ".join(f"{'R@' + str(k):>7}" for k in ks)
    rows = [header, "-" * len(header)]
    for r in results:
        recalls = " ".join(f"{r[f'R@{k}']:7.2f}" if f"R@{k}" in r else f"{'-':>7}" for k in ks)
        rows.append(f"{r['dataset']:<32} {r['num_queries']:>8} {r['num_database']:>9} {recalls}")
    return "\n".join(rows)


def _parse_range(text: str) -> tuple[float, float]:
    a, b = text.split(":")
    return float(a), float(b)


def dataset_options(fmt: str, args: argparse.Namespace) -> dict[str, Any]:
    """Loader keyword arguments of one format from the command-line options."""
    if fmt == "traversal":
        if not args.database_traversal or not args.query_traversal:
            raise SystemExit("traversal datasets need --database-traversal and --query-traversal")
        return {"database": args.database_traversal, "query": args.query_traversal,
                "frame_tolerance": args.frame_tolerance, "frame_range": _parse_range(args.frame_range)}
    if fmt == "msls":
        return {"split": args.split or "val", "radius_m": args.radius}
    if fmt == "utm":
        return {"split": args.split or "test", "radius_m": args.radius}
    if fmt == "images_csv":
        return {"radius_m": args.radius, "database_sequences": args.database_sequences,
                "query_sequences": args.query_sequences}
    return {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=path_argument, help="checkpoint folder/file, or raw-pixels[:HxW]")
    p.add_argument("--dataset", required=True, action="append", metavar="FORMAT:ROOT",
                   help="msls, utm, traversal or images_csv, then ':' and the dataset root; repeatable")
    p.add_argument("--split", default=None, help="msls: val|test (default val); utm: train|val|test (default test)")
    p.add_argument("--radius", type=float, default=25.0, help="positives within this many metres (default 25)")
    p.add_argument("--database-traversal", help="traversal format: database traversal folder name")
    p.add_argument("--query-traversal", help="traversal format: query traversal folder name")
    p.add_argument("--frame-tolerance", type=int, default=2, help="traversal format: +-frames (default 2)")
    p.add_argument("--frame-range", default="0:1", help="traversal format: part of the route, fractions START:END")
    p.add_argument("--database-sequences", nargs="+", help="images_csv: database sequence(s)")
    p.add_argument("--query-sequences", nargs="+", help="images_csv: query sequence(s)")
    p.add_argument("--recalls", type=int, nargs="+", default=list(DEFAULT_KS), help="K values (default 1 5 10 20)")
    p.add_argument("--json", type=expand_path, help="write the results as JSON here")
    p.add_argument("--plot", type=expand_path, help="draw recall@K curves to this PNG")
    p.add_argument("--msls-predictions", type=expand_path, help="write the MSLS challenge prediction file here")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="override the model's image size")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ks = sorted(set(args.recalls))
    extractor = make_extractor(args.model, args.device, args.batch_size,
                               tuple(args.image_size) if args.image_size else None)
    results = []
    for spec in args.dataset:
        if ":" not in spec:
            raise SystemExit(f"--dataset {spec!r}: expected FORMAT:ROOT, e.g. traversal:../shared/data/nordland64x32")
        fmt, root = spec.split(":", 1)
        dataset = build_retrieval_set(fmt, root, **dataset_options(fmt, args))
        result, predictions = evaluate_dataset(extractor, dataset, ks, progress=not args.no_progress)
        result["model"] = args.model
        results.append(result)
        if args.msls_predictions is not None and fmt == "msls":
            write_msls_predictions(args.msls_predictions, dataset, predictions)
            print(f"wrote MSLS prediction file {args.msls_predictions}", file=sys.stderr)
    print(format_table(results, ks))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    if args.plot is not None:
        plot_recalls(results, ks, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
