"""The model's preprocessing contract: how images become model input, and what identifies a model.

Everything that runs the model (the extractor's two backends, the ONNX export, checkpoints) reads
these from here, so they cannot disagree:

- :data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`: the release's normalisation (RGB, on [0, 1] values);
- :class:`Preprocessing`: size, normalisation and resize of the input, part of the fingerprint;
- :func:`model_fingerprint`: sha256 of the weights and the preprocessing; maps store it and refuse
  descriptors of another model (so its bytes must never change for the same model);
- :data:`INPUT_NAME`, :data:`OUTPUT_NAME`, :data:`FINGERPRINT_KEY`, :data:`IMAGE_SIZE_KEY`: the
  tensor names and metadata keys of the ONNX file ``export_onnx`` writes and the extractor reads.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = [
    "FINGERPRINT_KEY",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SIZE_KEY",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "Preprocessing",
    "model_fingerprint",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INPUT_NAME = "images"
"""ONNX input: (B, 3, H, W) float32, ImageNet-normalised."""
OUTPUT_NAME = "descriptors"
"""ONNX output: (B, D) float32, L2-normalised."""
# Keys of the ONNX model's metadata_props written by export_onnx.
FINGERPRINT_KEY = "qaa_vpr_ros.model_fingerprint"
IMAGE_SIZE_KEY = "qaa_vpr_ros.image_size"  # "H,W"


@dataclass(frozen=True)
class Preprocessing:
    """How images become model input; part of the model fingerprint."""

    image_size: tuple[int, int]  # (H, W), multiples of 14
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    antialias: bool = True


def model_fingerprint(model: nn.Module, preprocessing: Preprocessing) -> str:
    """sha256 over every weight (name, dtype, shape, bytes) and the preprocessing config."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(asdict(preprocessing), sort_keys=True).encode())
    return digest.hexdigest()
