"""Coding-rate analysis of the predicted features P̂ (the paper's information-capacity argument).

For every image, the matrix a QAA-family head aggregates against the reference queries F̂ is
Z = P̂ (QAA, cross-query similarity) or Z = W(P̂) (QAA-Softmax: softmax over the clusters; QAA-OT:
Sinkhorn weights). Its coding rate, with Z of d rows and n columns,

    R(Z, eps) = 1/2 logdet(I_d + d / (n eps^2) Z Z^T)      (nats)

measures how much information Z can carry; softmax and optimal transport constrain it. Z is used
as the head aggregates it; ``--normalize`` L2-normalises its columns (the C_f clusters, vectors over
the N_q queries) first, so the rate compares directions only. Command line::

    python -m training.coding_rate --model RUN_QAA/checkpoints/best --model RUN_SOFTMAX/... \\
        --images ../shared/data/nordland64x32/summer --limit 200 [--variants QAA QAA-Softmax QAA-OT]
        [--eps 0.5] [--json rates.json] [--plot rates.png]

``--variants`` reads each model's weights into the other heads of the family (they share one state
dict), so all variants are compared on the same weights and the same images.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qaa_vpr_ros.atomic import atomic_write_text, save_figure
from qaa_vpr_ros.paths import expand_path, path_argument
from qaa_vpr_ros.progress import progress_bar

from .datasets import load_image_rgb
from .datasets.base import IMAGE_SUFFIXES, natural_key

QAA_FAMILY = ("QAA", "QAA-Softmax", "QAA-OT")


def coding_rate(z: Tensor, eps: float) -> Tensor:
    """R(Z, eps) = 1/2 logdet(I + d/(n eps^2) Z Z^T) for Z (..., d, n); float64, nats. Shape (...)."""
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    z = z.double()
    d, n = z.shape[-2:]
    scale = d / (n * eps**2)
    # Sylvester: logdet(I_d + c Z Z^T) = logdet(I_n + c Z^T Z); use the smaller Gram matrix.
    gram = z @ z.transpose(-1, -2) if d <= n else z.transpose(-1, -2) @ z
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return 0.5 * torch.linalg.slogdet(eye + scale * gram).logabsdet


def aggregated_matrix(aggregator: nn.Module, features: Tensor) -> Tensor:
    """Z per image (B, N_q, C_f): P̂ for QAA, the assignment weights W(P̂) for Softmax / OT."""
    if not hasattr(aggregator, "predict_features"):
        raise ValueError(f"{type(aggregator).__name__} exposes no predict_features(); coding rates need a "
                         f"QAA-family head ({', '.join(QAA_FAMILY)})")
    predicted = aggregator.predict_features(features)
    weights = getattr(aggregator, "assignment_weights", None)
    return weights(predicted) if weights is not None else predicted


def as_variant(model: nn.Module, head: str) -> nn.Module:
    """A copy of ``model`` whose QAA-family aggregator is ``head`` (same weights)."""
    from qaa_vpr_ros.model import build_model

    config = dict(model.model_config_dict)
    if str(config["agg_arch"]) not in QAA_FAMILY and str(config["agg_arch"]).upper() != "QAA":
        raise ValueError(f"--variants needs QAA-family models; this one is {config['agg_arch']!r}")
    agg_config = {k: v for k, v in config["agg_config"].items() if k != "score_norm"}
    variant = build_model({**config, "agg_arch": head, "agg_config": agg_config}, image_size=model.image_size)
    variant.load_state_dict(model.state_dict(), strict=True)
    return variant.eval()


def list_image_files(folder: Path, limit: int | None) -> list[Path]:
    """Images under ``folder`` (recursive, natural order), evenly subsampled to ``limit``."""
    files = sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: natural_key(str(p.relative_to(folder))))
    if not files:
        raise FileNotFoundError(f"no images under {folder}")
    if limit and len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    return files


@torch.inference_mode()
def rates_of_model(model: nn.Module, images: Sequence[np.ndarray], eps_values: Sequence[float], normalize: bool = False,
                   batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """Coding rates (num_images, len(eps_values)) of one model's aggregated matrix Z, images in order."""
    from qaa_vpr_ros.extractor import DescriptorExtractor

    extractor = DescriptorExtractor(model, device=device, batch_size=batch_size)  # the one preprocessing
    out = []
    for start in range(0, len(images), batch_size):
        x = extractor.preprocess(images[start:start + batch_size])
        features, _ = model.backbone(x)
        z = aggregated_matrix(model.aggregator, features).float()  # B x N_q x C_f
        if normalize:
            z = torch.nn.functional.normalize(z, p=2, dim=1)  # every C_f column over the N_q queries
        out.append(torch.stack([coding_rate(z, e) for e in eps_values], dim=1).cpu().numpy())
    return np.concatenate(out)


def format_table(rows: Sequence[dict[str, Any]], eps: float) -> str:
    header = f"{'model':<48} {'head':<12} {'N_q x C_f':>10} {f'R(Z, {eps:g}) mean':>16} {'std':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['model'][-48:]:<48} {r['head']:<12} {r['shape']:>10} {r['mean']:>16.3f} {r['std']:>8.3f}")
    return "\n".join(lines)


def run_name(path: str) -> str:
    """``runs/x/checkpoints/last`` -> ``x/last``; other paths -> their last component."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return f"{parts[-3]}/{parts[-1]}"
    return Path(path).name


def plot_rates(rows: Sequence[dict[str, Any]], eps_values: Sequence[float], path: Path) -> None:
    """Mean coding rate against eps, one line per model/head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in rows:
        ax.plot(eps_values, r["curve"], marker="o", ms=3, label=f"{r['head']} ({run_name(r['model'])})")
    ax.set_xscale("log")
    ax.set_xlabel("eps")
    ax.set_ylabel("coding rate R(Z, eps) (nats, mean over images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=120)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.coding_rate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, type=path_argument, help="checkpoint (repeatable)")
    p.add_argument("--images", type=expand_path, required=True, help="folder of images (recursive)")
    p.add_argument("--limit", type=int, default=200, help="at most this many images, evenly spaced (default 200)")
    p.add_argument("--variants", nargs="+", choices=QAA_FAMILY,
                   help="also evaluate each model's weights under these QAA-family heads")
    p.add_argument("--eps", type=float, default=0.5, help="eps of the table (default 0.5)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the columns of Z (compare directions only)")
    p.add_argument("--json", type=expand_path)
    p.add_argument("--plot", type=expand_path)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from qaa_vpr_ros.model import load_model

    args = build_parser().parse_args(argv)
    files = list_image_files(args.images, args.limit)
    with progress_bar(len(files), desc="images", unit="img", leave=False) as bar:
        images = []
        for f in files:
            images.append(load_image_rgb(f))
            bar.update(1)
    eps_values = sorted({float(args.eps), *np.geomspace(0.05, 5.0, 13).tolist()})
    rows = []
    for path in args.model:
        model = load_model(path, device=args.device)
        heads = args.variants or [str(model.model_config_dict["agg_arch"])]
        for head in heads:
            variant = model if head == model.model_config_dict["agg_arch"] else as_variant(model, head)
            rates = rates_of_model(variant, images, eps_values, normalize=args.normalize,
                                   batch_size=args.batch_size, device=args.device)
            at = eps_values.index(float(args.eps))
            agg = variant.aggregator
            rows.append({"model": str(path), "head": head, "shape": f"{agg.queries_score.queries.shape[-2]}x"
                         f"{agg.num_clusters}", "eps": args.eps, "mean": float(rates[:, at].mean()),
                         "std": float(rates[:, at].std()), "num_images": len(images),
                         "curve": rates.mean(axis=0).tolist()})
    print(format_table(rows, args.eps))
    if args.json:
        atomic_write_text(args.json, json.dumps({"eps_values": eps_values, "rows": rows}, indent=2) + "\n")
    if args.plot:
        plot_rates(rows, eps_values, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
