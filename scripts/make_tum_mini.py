"""Regenerate ``data/tum_fr1_rpy_mini`` (the RGB-D part of ``make demo``) from the developers' copy of
TUM fr1/rpy (``../shared/data/tum_fr1_rpy``). Developers only: the demo reads the shipped folder.

Every ``--step``-th frame of the source, shrunk by ``--downsample`` (colour: the mean of each
block, JPEG ``--jpeg-quality``; depth: one of each block's valid values where they agree
within :data:`DEPTH_AGREE`, else none, as 16-bit PNG), the ground truth cut to the frames' span,
and ``intrinsics.txt`` (the published calibration moved to the new pixel grid,
:func:`scripts.tum_rgbd.downsampled_intrinsics`). The folder's README.md is kept, not written.

    python -m scripts.make_tum_mini [--source DIR] [--out DIR] [--step 2] [--downsample 2]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from qaa_vpr_ros.atomic import atomic_folder
from qaa_vpr_ros.paths import path_argument
from scripts.tum_rgbd import (
    INTRINSICS_FILE,
    REPO,
    TUM_FR1_RPY,
    downsampled_intrinsics,
    load_tum,
    stamp_ns,
)

MINI = REPO / "data" / "tum_fr1_rpy_mini"
DEPTH_AGREE = 0.03  # a block's valid depths within 3 % of their mean: one surface, else an edge (no depth)
GT_MARGIN_NS = 200_000_000  # ground truth kept from 0.2 s before the first frame to 0.2 s after the last


def downsample_depth(depth: np.ndarray, factor: int) -> np.ndarray:
    """uint16 depth (0 = none) shrunk by ``factor``: in each block, when its valid values all lie
    within :data:`DEPTH_AGREE` of their mean (one surface), the valid value nearest that mean, else 0
    (a block across an edge has no single depth: a mean would invent a surface between the two).
    A value of the block rather than the mean keeps the sensor's quantisation (PNG size halves).
    Rows and columns beyond a whole block are cut."""
    h, w = (depth.shape[0] // factor) * factor, (depth.shape[1] // factor) * factor
    blocks = depth[:h, :w].reshape(h // factor, factor, w // factor, factor).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(h // factor, w // factor, factor * factor).astype(np.float64)
    valid = blocks > 0
    count = valid.sum(axis=2)
    mean = np.where(count > 0, (blocks * valid).sum(axis=2) / np.maximum(count, 1), 0.0)
    distance = np.where(valid, np.abs(blocks - mean[..., None]), np.inf)
    nearest = np.take_along_axis(blocks, distance.argmin(axis=2)[..., None], axis=2)[..., 0]
    spread = np.where(valid, distance, 0.0).max(axis=2)
    ok = (count > 0) & (spread <= DEPTH_AGREE * mean)
    return np.where(ok, nearest, 0).astype(np.uint16)


def make_mini(source: Path, out: Path, step: int, factor: int, jpeg_quality: int) -> int:
    """Write the mini sequence into ``out`` (replaced atomically; its README.md kept). Returns the
    number of frames."""
    sequence = load_tum(source)
    chosen = range(0, len(sequence), step)
    readme = (out / "README.md").read_text() if (out / "README.md").is_file() else None
    first = min(min(sequence.frames[i].rgb_stamp_ns, sequence.frames[i].depth_stamp_ns) for i in chosen)
    last = max(max(sequence.frames[i].rgb_stamp_ns, sequence.frames[i].depth_stamp_ns) for i in chosen)
    def ours(folder: Path) -> bool:  # a TUM folder, or this folder's README alone
        return (folder / "associations.txt").is_file() or {c.name for c in folder.iterdir()} <= {"README.md"}

    with atomic_folder(out, replaces=ours) as tmp:
        (tmp / "rgb").mkdir()
        (tmp / "depth").mkdir()
        lines = [f"# rgb_stamp rgb_file depth_stamp depth_file (every {step * 5}th associated pair of "
                 f"freiburg1_rpy, shrunk {factor}x: see README.md)"]
        for i in chosen:
            frame = sequence.frames[i]
            rgb_name, depth_name = f"rgb/{frame.rgb_path.stem}.jpg", f"depth/{frame.depth_path.stem}.png"
            bgr = cv2.cvtColor(sequence.rgb(i), cv2.COLOR_RGB2BGR)
            small = cv2.resize(bgr, (bgr.shape[1] // factor, bgr.shape[0] // factor), interpolation=cv2.INTER_AREA)
            if not cv2.imwrite(str(tmp / rgb_name), small, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
                raise OSError(f"cannot write {tmp / rgb_name}")
            depth = downsample_depth(sequence.depth_png(i), factor)
            if not cv2.imwrite(str(tmp / depth_name), depth, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
                raise OSError(f"cannot write {tmp / depth_name}")
            lines.append(f"{frame.rgb_path.stem} {rgb_name} {frame.depth_path.stem} {depth_name}")
        (tmp / "associations.txt").write_text("\n".join(lines) + "\n")
        kept = [line for line in (source / "groundtruth.txt").read_text().splitlines()
                if line.startswith("#") or not line.strip()
                or first - GT_MARGIN_NS <= stamp_ns(line.split()[0]) <= last + GT_MARGIN_NS]
        (tmp / "groundtruth.txt").write_text("\n".join(kept) + "\n")
        k = downsampled_intrinsics(sequence.intrinsics, factor)
        (tmp / INTRINSICS_FILE).write_text(
            f"# fx fy cx cy k1 k2 p1 p2 k3: TUM's freiburg1 calibration for {factor}x smaller images\n"
            + " ".join(f"{v:.6g}" for v in k.as_list()) + "\n")
        if readme is not None:
            (tmp / "README.md").write_text(readme)
    return len(chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=path_argument, default=TUM_FR1_RPY, help="TUM fr1/rpy folder")
    parser.add_argument("--out", type=path_argument, default=MINI, help="folder to (re)write")
    parser.add_argument("--step", type=int, default=2, help="keep every STEP-th frame of the source")
    parser.add_argument("--downsample", type=int, default=2, help="shrink the images by this integer factor")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    args = parser.parse_args(argv)
    source = Path(args.source)
    if not (source / "associations.txt").is_file():
        raise SystemExit(f"make_tum_mini: {source} is not a TUM folder (no associations.txt): pass --source")
    if args.step < 1 or args.downsample < 1:
        raise SystemExit(f"make_tum_mini: --step and --downsample must be >= 1, got {args.step}, {args.downsample}")
    count = make_mini(source, Path(args.out), args.step, args.downsample, args.jpeg_quality)
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    print(f"{args.out}: {count} frames, {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
