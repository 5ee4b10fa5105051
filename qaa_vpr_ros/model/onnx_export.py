"""ONNX export of the inference path (queries cached), checked against PyTorch with onnxruntime.

The graph maps ``images`` (B, 3, H, W) float32, ImageNet-normalised, to ``descriptors`` (B, D)
L2-normalised; H and W are fixed at export, the batch is dynamic. What does not depend on the
image (QAA's query branches, the position embeddings at that size) is evaluated once and stored
as constants, so the graph runs the backbone, the cross-attention and the aggregation only.

The file's metadata carries the model fingerprint (:func:`qaa_vpr_ros.model.preprocessing.model_fingerprint`
of the exported weights and the preprocessing at that size): the extractor's ``onnxruntime``
backend refuses a file exported from other weights, and a map built with either backend has the
same fingerprint, so it is accepted by the other.

CLI (console script ``export_onnx``)::

    export_onnx --model QAA-8192/ --out qaa.onnx [--image-size 322 322] [--opset 17]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import fsync_path
from ..paths import path_argument
from .aggregators.flops import mha_fastpath_disabled
from .backbone import PATCH_SIZE
from .preprocessing import FINGERPRINT_KEY, IMAGE_SIZE_KEY, INPUT_NAME, OUTPUT_NAME, Preprocessing, model_fingerprint

MIN_OPSET = 17
PARITY_TOLERANCE = 1e-3  # max abs difference accepted when the export checks itself (float32)
_EXAMPLE_BATCH = 2  # not 1, so that nothing batch-dependent can pass for a constant
# torch >= 2.5 has both exporters (torch.export-based by default from 2.9); older torch only this one.
_HAS_TWO_EXPORTERS = "dynamo" in inspect.signature(torch.onnx.export).parameters
_TORCHSCRIPT_EXPORTER = {"dynamo": False} if _HAS_TWO_EXPORTERS else {}


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and how well onnxruntime matched PyTorch on it."""

    path: Path
    image_size: tuple[int, int]
    out_dim: int
    max_abs_diff: float
    fingerprint: str = ""


@contextlib.contextmanager
def _frozen_image_independent_parts(model: nn.Module, image_size: tuple[int, int]) -> Iterator[None]:
    """Replaces what does not depend on the image by constants while the graph is traced.

    - a QAA-family head's query branches (Q̂_f, F̂): as cached at PyTorch inference;
    - the backbone's position embeddings interpolated to the export grid: no Resize in the graph.
    """
    frozen: list[tuple[nn.Module, str]] = []
    aggregator = getattr(model, "aggregator", None)
    backbone = getattr(model, "backbone", None)
    with torch.no_grad():
        if hasattr(aggregator, "query_branches"):
            queries = tuple(t.detach().clone() for t in aggregator.query_branches())
            aggregator.query_branches = lambda: queries  # instance attribute shadows the method
            frozen.append((aggregator, "query_branches"))
        if hasattr(backbone, "interpolate_pos_encoding"):
            grid = (image_size[0] // PATCH_SIZE, image_size[1] // PATCH_SIZE)
            pos_embed = backbone.interpolate_pos_encoding(*grid, torch.float32).detach().clone()

            def constant_pos_embed(grid_h: int, grid_w: int, dtype: torch.dtype) -> torch.Tensor:
                if (grid_h, grid_w) != grid:
                    raise ValueError(f"exporting for a {grid} patch grid, got {(grid_h, grid_w)}")
                return pos_embed.to(dtype)

            backbone.interpolate_pos_encoding = constant_pos_embed
            frozen.append((backbone, "interpolate_pos_encoding"))
    try:
        yield
    finally:
        for module, name in frozen:
            delattr(module, name)


def _check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0 or height % PATCH_SIZE or width % PATCH_SIZE:
        raise ValueError(f"image_size {height}x{width}: both sides must be positive multiples of 14")
    return height, width


def _write_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(path))


def run_onnx(path: str | Path, images: np.ndarray) -> np.ndarray:
    """Descriptors (B, D) from an exported model on CPU; ``images`` (B, 3, H, W) float32."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]


def export_onnx(
    model: nn.Module,
    path: str | Path,
    image_size: tuple[int, int],
    opset: int = MIN_OPSET,
    dynamic_batch: bool = True,
) -> OnnxExport:
    """Export ``model`` (images (B, 3, H, W) -> descriptors (B, D)) to ``path``, verified.

    The file appears (atomically) only once onnxruntime's descriptors on a random batch match
    PyTorch's within ``PARITY_TOLERANCE``. Models over 2 GB (ViT-g) are beyond one ONNX file.
    Its metadata holds the model fingerprint at ``image_size`` (``FINGERPRINT_KEY``).

    Raises:
        ValueError: image size not a multiple of 14, or opset below 17.
        RuntimeError: the exported graph disagrees with PyTorch.
    """
    import onnxruntime  # noqa: F401  (fail before the slow export when the onnx extra is missing)

    height, width = _check_image_size(image_size)
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old; use {MIN_OPSET} or newer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    example = torch.randn(_EXAMPLE_BATCH, 3, height, width)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    fingerprint = model_fingerprint(model, Preprocessing(image_size=(height, width)))
    frozen = _frozen_image_independent_parts(model, (height, width))
    try:
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
            staged = Path(tmp) / path.name
            with torch.no_grad(), frozen, mha_fastpath_disabled(), warnings.catch_warnings():
                expected = model(example).numpy()
                # The TorchScript-based exporter: it writes opset 17 (TensorRT 8.x on JetPack 5/6
                # reads up to 17), which the torch.export-based one (opset >= 18 only) cannot.
                warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
                warnings.filterwarnings("ignore", message="The feature will be removed")  # torch-internal
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                torch.onnx.export(
                    model,
                    (example,),
                    str(staged),
                    **_TORCHSCRIPT_EXPORTER,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes=dynamic_axes,
                )
            _write_metadata(staged, {FINGERPRINT_KEY: fingerprint, IMAGE_SIZE_KEY: f"{height},{width}"})
            diff = float(np.abs(run_onnx(staged, example.numpy()) - expected).max())
            if not diff <= PARITY_TOLERANCE:
                raise RuntimeError(
                    f"ONNX export of {type(model).__name__} disagrees with PyTorch: max abs diff "
                    f"{diff:.2e} > {PARITY_TOLERANCE:.0e}; nothing was written to {path}"
                )
            fsync_path(staged)
            os.replace(staged, path)
            fsync_path(path.parent)
    finally:
        model.train(was_training)
    return OnnxExport(path, (height, width), out_dim=int(expected.shape[1]), max_abs_diff=diff,
                      fingerprint=fingerprint)


def main(argv: list[str] | None = None) -> int:
    """``export_onnx --model PATH --out FILE [--image-size H W] [--opset N]``."""
    parser = argparse.ArgumentParser(prog="export_onnx", description="Export a model to ONNX, dynamic batch.")
    parser.add_argument("--model", required=True, type=path_argument,
                        help="release folder, checkpoint folder or .pt/.ckpt file")
    parser.add_argument("--out", required=True, type=path_argument, help="output .onnx file")
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"),
                        help="input size, multiples of 14 (default: the model's, 322 322 for the release)")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    args = parser.parse_args(argv)

    from .checkpoint import load_model

    model = load_model(args.model, device="cpu")
    image_size = tuple(args.image_size) if args.image_size else tuple(model.image_size)
    try:
        result = export_onnx(model, args.out, image_size, opset=args.opset)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {result.path}: images (B, 3, {result.image_size[0]}, {result.image_size[1]}) -> "
          f"descriptors (B, {result.out_dim}); onnxruntime vs PyTorch max abs diff {result.max_abs_diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
