"""Joint multi-dataset training of a VPR model (the paper's recipe), from a laptop CPU to many GPUs.

Command line::

    python -m training.train --config CFG --out DIR [--set key=value ...] [--resume]
    torchrun --nproc_per_node N -m training.train --config CFG --out DIR   # DDP (gloo on CPU, nccl on GPU)

Each step draws P x K images from every dataset (labels offset per dataset), computes the
Multi-Similarity loss with its miner per dataset and sums the losses. AdamW with separate learning
rates for the aggregator and the trainable backbone blocks, linear warm-up, optional decay, AMP on
GPU, optional gradient clipping. Output folder::

    DIR/config.yaml               the resolved config
    DIR/checkpoints/last/         every epoch: config.json + model.safetensors (load_model reads it)
                                  + training_state.pt (optimizer, scheduler, RNG, step; weights_only)
    DIR/checkpoints/best/         the best validation recall so far
    DIR/metrics.csv               step,epoch,tag,value (loss, lr, mined pairs, validation recall)
    DIR/tensorboard/              the same scalars for TensorBoard
    DIR/curves.png                the curves, drawn at the end

``--resume`` continues from ``DIR/checkpoints/last`` exactly (model, optimizer, scheduler, sampler
state, RNG, step): the batches and losses after the resume equal those of an uninterrupted run.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torchvision.transforms as T
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from qaa_vpr_ros.atomic import atomic_folder, atomic_write_text, save_figure
from qaa_vpr_ros.extractor import DescriptorExtractor, normalize, resize_uint8, to_rgb
from qaa_vpr_ros.paths import expand_path
from qaa_vpr_ros.progress import progress_bar

from .config import AugmentConfig, ConfigError, OptimConfig, TrainConfig, config_to_dict, load_config
from .datasets import PlaceSet, RetrievalSet, build_place_set, build_retrieval_set, load_image_rgb
from .evaluate import evaluate_descriptors, extract_descriptors
from .losses import PerDatasetMultiSimilarity
from .samplers import JointBatchSampler, PlaceSampler, SampleKey

STATE_FILE = "training_state.pt"


# ----------------------------------------------------------------------------- data
class TrainImages(Dataset):
    """Images addressed by :class:`SampleKey`: resize (as the extractor does), RandAugment, normalise.

    The augmentation of each image is seeded by its key, so batches are reproducible whatever the
    number of workers, and identical after a resume. Returns (image (3, H, W) float32, label, dataset).
    """

    def __init__(self, place_sets: Sequence[PlaceSet], image_size: tuple[int, int], augment: AugmentConfig) -> None:
        self.paths = [ps.paths for ps in place_sets]
        self.image_size = [int(image_size[0]), int(image_size[1])]
        self.randaugment = (T.RandAugment(augment.randaugment_num_ops, augment.randaugment_magnitude,
                                          augment.randaugment_num_magnitude_bins)
                            if augment.randaugment_num_ops > 0 else None)

    def __len__(self) -> int:
        return sum(len(p) for p in self.paths)

    def __getitem__(self, key: SampleKey) -> tuple[Tensor, int, int]:
        image = to_rgb(load_image_rgb(self.paths[key.dataset][key.image]), "rgb")
        chw = torch.from_numpy(image).permute(2, 0, 1)
        chw = resize_uint8(chw, self.image_size)
        if self.randaugment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key.seed)
                chw = self.randaugment(chw)
        return normalize(chw), key.label, key.dataset


def collate(batch: list[tuple[Tensor, int, int]]) -> tuple[Tensor, Tensor, Tensor]:
    images, labels, datasets = zip(*batch, strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), torch.tensor(datasets, dtype=torch.int64)


# ----------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; gloo on CPU, nccl on GPU. Single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _gather_per_rank(tensor: Tensor, info: DistInfo, device: torch.device) -> Tensor:
    """Stack every rank's copy of ``tensor`` (same shape on all ranks): (world_size, ...) on CPU."""
    if info.world_size == 1:
        return tensor.unsqueeze(0)
    local = tensor.to(device)
    parts = [torch.empty_like(local) for _ in range(info.world_size)]
    dist.all_gather(parts, local)
    return torch.stack([p.cpu() for p in parts])


def _any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    if info.world_size == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ----------------------------------------------------------------------------- model and optimiser
def build_training_model(config: TrainConfig) -> nn.Module:
    """The model of the config (random init, then ``model.pretrained`` DINOv2 weights if given)."""
    from qaa_vpr_ros.model import build_model, load_dinov2_weights

    model_config = dict(config.model)
    pretrained = model_config.pop("pretrained", None)
    model = build_model(model_config, image_size=config.eval_image_size)
    if pretrained:
        load_dinov2_weights(model.backbone, pretrained)
    if config.train_patch_embedding:
        backbone = model.backbone
        if backbone.num_trainable_blocks != len(backbone.model.blocks):
            raise ConfigError("train_patch_embedding needs backbone_config.num_trainable_blocks == depth "
                              "(the frozen blocks run without autograd)")
        for name, param in backbone.model.named_parameters():
            if name.startswith(("patch_embed.", "pos_embed", "cls_token")):
                param.requires_grad_(True)
    return model


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW: aggregator params at ``lr_aggregator``, trainable backbone params at ``lr_backbone``."""
    aggregator = [p for p in model.aggregator.parameters() if p.requires_grad]
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": aggregator, "lr": optim.lr_aggregator, "name": "aggregator"}]
    if backbone:
        groups.append({"params": backbone, "lr": optim.lr_backbone, "name": "backbone"})
    return torch.optim.AdamW(groups, weight_decay=optim.weight_decay)


def lr_factor(optim: OptimConfig, total_steps: int):
    """lr multiplier at a step: linear warm-up to 1, then constant / linear / cosine / step decay.

    A closure (not an object) so the scheduler's state dict stays plain numbers.
    """
    warmup, decay, floor = int(optim.warmup_steps), optim.decay, float(optim.decay_min_factor)
    step_size, gamma = max(1, int(optim.decay_step_size)), float(optim.decay_gamma)
    span = max(1, max(1, total_steps) - warmup)

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        after = step - warmup
        frac = min(1.0, after / span)
        if decay == "linear":
            return 1.0 - (1.0 - floor) * frac
        if decay == "cosine":
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))
        if decay == "step":
            return gamma ** (after // step_size)
        return 1.0

    return factor


# ----------------------------------------------------------------------------- logging
class ScalarLog:
    """Scalars to ``metrics.csv`` (step,epoch,tag,value) and TensorBoard; only the main rank writes."""

    def __init__(self, out: Path, enabled: bool, start_step: int) -> None:
        self.enabled = enabled
        self.path = out / "metrics.csv"
        self.writer = None
        if not enabled:
            return
        rows = []
        if start_step > 0 and self.path.is_file():  # drop rows logged after the checkpoint we resume from
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= start_step]
        text = io.StringIO()  # rewritten whole and swapped in atomically: a crash keeps the old file
        w = csv.writer(text)
        w.writerow(["step", "epoch", "tag", "value"])
        w.writerows([[r["step"], r["epoch"], r["tag"], r["value"]] for r in rows])
        atomic_write_text(self.path, text.getvalue())
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step if start_step else None)
        except ImportError:  # tensorboard is an optional extra (pip install qaa_vpr_ros[train])
            self.writer = None

    def log(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as fh:
            w = csv.writer(fh)
            for tag, value in scalars.items():
                w.writerow([step, epoch, tag, f"{value:.8g}"])
                if self.writer is not None:
                    self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(metrics_csv: Path, out_png: Path) -> None:
    """One panel per scalar family (loss, lr, mined pairs, validation) from ``metrics.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[int], list[float]]] = {}
    with open(metrics_csv, newline="") as fh:
        for r in csv.DictReader(fh):
            xs, ys = series.setdefault(r["tag"], ([], []))
            xs.append(int(r["step"]))
            ys.append(float(r["value"]))
    panels = {"loss": [t for t in series if t.startswith("train/loss")],
              "learning rate": [t for t in series if t.startswith("train/lr")],
              "mined pairs": [t for t in series if t.startswith("train/mined")],
              "validation recall (%)": [t for t in series if t.startswith("val/")]}
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (title, tags) in zip(axes[0], panels.items(), strict=True):
        for tag in sorted(tags):
            xs, ys = series[tag]
            ax.plot(xs, ys, marker="o" if title.startswith("validation") else None, ms=3, label=tag)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, out_png, dpi=110)


# ----------------------------------------------------------------------------- checkpoints
def save_training_checkpoint(folder: Path, model: nn.Module, state: dict[str, Any], extra: dict[str, Any]) -> None:
    """Model in the project format (``save_checkpoint``) + ``training_state.pt``, swapped in atomically."""
    from qaa_vpr_ros.model import save_checkpoint
    from qaa_vpr_ros.model.checkpoint import is_checkpoint_folder

    with atomic_folder(folder, replaces=lambda p: is_checkpoint_folder(p, (STATE_FILE,))) as tmp:
        save_checkpoint(model, tmp / "model", extra=extra)
        for child in (tmp / "model").iterdir():
            os.replace(child, tmp / child.name)
        (tmp / "model").rmdir()
        buf = io.BytesIO()
        torch.save(state, buf)
        (tmp / STATE_FILE).write_bytes(buf.getvalue())


def load_training_state(folder: Path) -> dict[str, Any]:
    """``training_state.pt`` of a checkpoint folder, read with ``weights_only=True``."""
    path = folder / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (train without --resume first)")
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- validation
def validate(model: nn.Module, sets: Sequence[RetrievalSet], config: TrainConfig, device: torch.device,
             info: DistInfo) -> dict[str, float]:
    """Recall@{1,5,10,20} of every validation split; descriptors are gathered across ranks."""
    extractor = DescriptorExtractor(model, device=device, batch_size=config.eval_batch_size,
                                    image_size=config.eval_image_size)
    out: dict[str, float] = {}
    try:
        for vs in sets:
            db = extract_descriptors(extractor, vs.database_paths, progress=False, rank=info.rank,
                                     world_size=info.world_size)
            qs = extract_descriptors(extractor, vs.query_paths, progress=False, rank=info.rank,
                                     world_size=info.world_size)
            result, _ = evaluate_descriptors(db, qs, vs)
            out.update({f"val/{vs.name}/{k}": float(v) for k, v in result.items() if k.startswith("R@")})
    finally:
        model.train()
    return out


# ----------------------------------------------------------------------------- training
def _device(config: TrainConfig, info_local_rank: int) -> torch.device:
    if config.device == "auto":
        return torch.device(f"cuda:{info_local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(config.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{info_local_rank}")
    return dev


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or config.amp == "off":
        return None
    return torch.bfloat16 if config.amp == "bf16" else torch.float16


def train(config: TrainConfig, raw_config: dict[str, Any], out: Path, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Run training; returns a summary (final step, best metric, last validation scalars)."""
    if config.threads:
        torch.set_num_threads(int(config.threads))
    preliminary = "cuda" if (config.device == "auto" and torch.cuda.is_available()) or \
        config.device.startswith("cuda") else "cpu"
    info = init_distributed(preliminary)
    device = _device(config, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(raw_config, sort_keys=False))

    torch.manual_seed(config.seed)
    model = build_training_model(config).to(device)
    model.train()

    place_sets = [build_place_set(d.format, config.resolve_root(d.root), min_images_per_place=d.images_per_place,
                                  name=d.name, **d.options) for d in config.datasets]
    samplers = [PlaceSampler(ps.places, d.places_per_batch, d.images_per_place, config.seed, i, info.rank,
                             info.world_size)
                for i, (ps, d) in enumerate(zip(place_sets, config.datasets, strict=True))]
    val_sets = [build_retrieval_set(v.format, config.resolve_root(v.root), name=v.name, **v.options)
                for v in config.validation]
    steps_per_epoch = config.steps_per_epoch or min(s.steps_per_cycle for s in samplers)
    schedule_steps = config.epochs * steps_per_epoch  # the lr schedule ignores max_steps (an early stop)
    total_steps = schedule_steps
    if config.max_steps is not None:
        total_steps = min(total_steps, int(config.max_steps))

    optimizer = build_optimizer(model, config.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config.optim, schedule_steps))
    amp_dtype = _amp_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    criterion = PerDatasetMultiSimilarity(config.loss)

    start_step, best, elapsed_before = 0, -math.inf, 0.0
    state: dict[str, Any] | None = None
    last_dir, best_dir = out / "checkpoints" / "last", out / "checkpoints" / "best"
    if resume:
        from safetensors.torch import load_file

        state = load_training_state(last_dir)
        if int(state["world_size"]) != info.world_size:
            raise RuntimeError(f"{last_dir} was written by {state['world_size']} process(es); resume with the same "
                               f"number (now {info.world_size}) so the batches continue exactly")
        model.load_state_dict(load_file(str(last_dir / "model.safetensors")), strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_step, best = int(state["step"]), float(state["best_metric"])
        elapsed_before = float(state["elapsed_s"])

    ddp_model: nn.Module = model
    if info.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters)

    batches = JointBatchSampler(samplers, start_step, total_steps)
    loader = DataLoader(TrainImages(place_sets, config.train_image_size, config.augment), batch_sampler=batches,
                        num_workers=config.num_workers, collate_fn=collate, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    batch_iter = iter(loader)
    # RNG state is restored after the loader has drawn its base seed, so the resumed run continues
    # with exactly the generator state of the uninterrupted one.
    if state is not None:
        torch.set_rng_state(state["torch_rng"][info.rank].clone())
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][info.rank].clone(), device)

    log = ScalarLog(out, info.is_main, start_step)
    if info.is_main:
        names = ", ".join(f"{ps.name}: {ps.num_places} places / {ps.num_images} images" for ps in place_sets)
        print(f"training on {names}; {steps_per_epoch} steps/epoch, steps {start_step}..{total_steps}, "
              f"{info.world_size} process(es) on {device}", file=sys.stderr)
    bar = progress_bar(total_steps, initial=start_step, desc="train", unit="step",
                       enabled=progress and info.is_main)  # plain lines when stderr is a log file
    started = time.monotonic()
    acc: dict[str, list[float]] = {}
    last_val: dict[str, float] = {}
    step = start_step
    while step < total_steps:
        images, labels, datasets = next(batch_iter)
        images = images.to(device, non_blocking=True)
        labels, datasets = labels.to(device), datasets.to(device)
        autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with autocast:
            descriptors = ddp_model(images)
        loss, stats = criterion(descriptors, labels, datasets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.optim.grad_clip_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip_norm)
        lrs = {f"train/lr_{g.get('name', 'group')}": float(g["lr"]) for g in optimizer.param_groups}
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        epoch = (step - 1) // steps_per_epoch

        loss_value = float(loss.detach())
        acc.setdefault("train/loss", []).append(loss_value)
        for k, v in stats.items():
            tag = k.replace("/", "_")
            if "/" in k:
                tag = f"{k.split('/')[0]}/{config.datasets[int(k.split('/')[1])].name}"
            acc.setdefault(f"train/{tag}", []).append(v)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", **({"R@1": f"{last_val.get(_monitor_tag(config), 0):.1f}"}
                                                    if last_val else {}))
        if step % config.log_every_steps == 0 or step == total_steps:
            scalars = {**{k: float(np.mean(v)) for k, v in acc.items()}, **lrs}  # lr: the one this step used
            log.log(step, epoch, scalars)
            acc.clear()

        elapsed = elapsed_before + time.monotonic() - started
        out_of_time = config.max_minutes is not None and elapsed > 60.0 * config.max_minutes
        stop = _any_rank(out_of_time, info, device)
        end_of_epoch = step % steps_per_epoch == 0
        if end_of_epoch or stop or step == total_steps:
            epochs_done = step // steps_per_epoch
            if val_sets and (stop or step == total_steps or epochs_done % config.validate_every_epochs == 0):
                last_val = validate(model, val_sets, config, device, info)
                log.log(step, epoch, last_val)
            metric = last_val.get(_monitor_tag(config), -math.inf) if val_sets else -math.inf
            improved = val_sets and metric > best
            best = max(best, metric)
            ckpt_state = {
                "step": step, "epoch": epoch, "world_size": info.world_size, "best_metric": best,
                "elapsed_s": elapsed, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "torch_rng": _gather_per_rank(torch.get_rng_state(), info, device),  # (world, n) uint8
                "cuda_rng": _gather_per_rank(torch.cuda.get_rng_state(device), info, device)
                if device.type == "cuda" else None,
                "sampler": {"seed": config.seed, "next_step": step,
                            "label_offsets": torch.tensor(batches.label_offsets, dtype=torch.int64),
                            "num_places": torch.tensor([len(s.places) for s in samplers], dtype=torch.int64)},
            }
            extra = {"training": {"step": step, "epoch": epoch, "validation": last_val,
                                  "config": config_to_dict(config)}}
            if info.is_main:
                save_training_checkpoint(last_dir, model, ckpt_state, extra)
                if end_of_epoch and config.keep_epoch_checkpoints:
                    save_training_checkpoint(out / "checkpoints" / f"epoch_{epochs_done:03d}", model, ckpt_state, extra)
                if improved:
                    save_training_checkpoint(best_dir, model, ckpt_state, extra)
            if info.world_size > 1:
                dist.barrier()
        if stop:
            if info.is_main:
                print(f"stopping at step {step}: max_minutes={config.max_minutes} reached", file=sys.stderr)
            break
    bar.close()
    log.close()
    del batch_iter
    if info.is_main and log.path.is_file():
        plot_curves(log.path, out / "curves.png")
    summary = {"step": step, "best": best if math.isfinite(best) else None, "validation": last_val,
               "world_size": info.world_size}
    if info.is_main:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if info.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _monitor_tag(config: TrainConfig) -> str:
    return f"val/{config.validation[0].name}/{config.monitor}" if config.validation else ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=expand_path, help="YAML config (with --resume: default DIR/config.yaml)")
    p.add_argument("--out", type=expand_path, required=True, help="output folder")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set data_root=/data optim.lr_aggregator=2e-5 datasets.0.root=x")
    p.add_argument("--resume", action="store_true", help="continue exactly from DIR/checkpoints/last")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config_path = args.config
    if config_path is None:
        if not args.resume:
            raise SystemExit("--config is required (unless --resume, which reads DIR/config.yaml)")
        config_path = args.out / "config.yaml"
    try:
        config, raw = load_config(config_path, args.overrides)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from err
    summary = train(config, raw, args.out, resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
