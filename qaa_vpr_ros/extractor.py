"""The one descriptor extractor: uint8 images (RGB, BGR or mono, any size) -> place descriptors.

Map building, the ROS node and evaluation all call :class:`DescriptorExtractor`, so they share
the release's preprocessing exactly: resize to the model's size (bilinear, antialiased, on the
uint8 image as torchvision does), scale to [0, 1], ImageNet mean/std.

Two inference backends run the model: ``torch`` and ``onnxruntime`` (the file
:func:`qaa_vpr_ros.model.onnx_export.export_onnx` wrote for the same weights; TensorRT, CUDA or
CPU execution provider). Both give the same fingerprint, so maps built with one are accepted with
the other; the onnxruntime backend refuses a file exported from other weights or at another size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode

# The preprocessing contract lives with the model; these names stay importable from here.
from .model.preprocessing import (
    FINGERPRINT_KEY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_NAME,
    OUTPUT_NAME,
    Preprocessing,
    model_fingerprint,
)

__all__ = [
    "BACKENDS",
    "ENCODINGS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRECISIONS",
    "DescriptorExtractor",
    "Preprocessing",
    "model_fingerprint",
    "normalize",
    "onnx_providers",
    "resize_uint8",
    "resolve_device",
    "to_rgb",
]

ENCODINGS = ("rgb", "bgr", "mono")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
BACKENDS = ("torch", "onnxruntime")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when present, else cpu. Raises ValueError for an unusable device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a torch device (use auto, cpu, cuda, cuda:N)") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return resolved


def onnx_providers(device: str | torch.device, precision: str, cache_dir: Path) -> tuple[list[Any], str]:
    """onnxruntime execution providers for ``device`` and the precision they run at.

    ``cpu``: the CPU provider, fp32. ``auto``: TensorRT (fp16 engine for ``auto``/``fp16``, cached
    in ``cache_dir``), else CUDA (fp32), else CPU, whichever the installed onnxruntime has;
    ``cuda``/``cuda:N`` is the same but requires a GPU provider. Raises ValueError naming what is
    missing (a GPU provider, or TensorRT for fp16; bf16 is never supported).
    """
    import onnxruntime as ort

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not one of {PRECISIONS}")
    if precision == "bf16":
        raise ValueError("precision 'bf16' is not supported by the onnxruntime backend; use fp32, fp16 "
                         "(TensorRT) or auto, or backend 'torch'")
    device = str(device)
    available = ort.get_available_providers()
    if device == "cpu":
        if precision == "fp16":
            raise ValueError("precision 'fp16' with the onnxruntime backend needs TensorRT on a GPU; on the "
                             "CPU use fp32 or auto")
        return ["CPUExecutionProvider"], "fp32"
    if device != "auto" and not device.startswith("cuda"):
        raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    device_id = int(device.split(":", 1)[1]) if ":" in device else 0
    providers: list[Any] = []
    chosen = "fp32"
    if "TensorrtExecutionProvider" in available:
        chosen = "fp32" if precision == "fp32" else "fp16"
        providers.append(("TensorrtExecutionProvider", {
            "device_id": device_id, "trt_fp16_enable": chosen == "fp16",
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)}))
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
    if device.startswith("cuda") and not providers:
        raise ValueError(f"device {device!r} requested but onnxruntime {ort.__version__} has no CUDA or TensorRT "
                         f"execution provider (it has {available}); install onnxruntime-gpu, or use device "
                         "'cpu' or 'auto'")
    if precision == "fp16" and chosen != "fp16":
        raise ValueError(f"precision 'fp16' with the onnxruntime backend needs the TensorRT execution provider, "
                         f"which onnxruntime {ort.__version__} lacks here (it has {available})")
    return providers + ["CPUExecutionProvider"], chosen


def to_rgb(image: np.ndarray, encoding: str) -> np.ndarray:
    """uint8 HxWx3 (rgb/bgr) or HxW / HxWx1 (mono) -> contiguous uint8 HxWx3 RGB."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} not one of {ENCODINGS}")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 numpy image, got {type(image).__name__} {getattr(image, 'dtype', '')}")
    if encoding == "mono":
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim != 2:
            raise ValueError(f"mono image must be HxW or HxWx1, got shape {image.shape}")
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{encoding} image must be HxWx3, got shape {image.shape}")
    elif encoding == "bgr":
        image = image[:, :, ::-1]
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch.from_numpy needs a writable array
        return image.copy()
    return np.ascontiguousarray(image)


def resize_uint8(chw: Tensor, image_size: tuple[int, int]) -> Tensor:
    """uint8 (..., 3, H, W) -> uint8 (..., 3, h, w): the release's resize (bilinear, antialias, on uint8)."""
    return TF.resize(chw, [int(image_size[0]), int(image_size[1])], interpolation=InterpolationMode.BILINEAR,
                     antialias=True)


def normalize(images: Tensor) -> Tensor:
    """uint8 (..., 3, H, W) -> float32 scaled to [0, 1] and ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    return (images.float() / 255.0 - mean) / std


class DescriptorExtractor:
    """Batched, device-aware descriptor extraction with the release's preprocessing.

    Args:
        model: a model mapping (B, 3, H, W) normalised images to (B, D) descriptors; ``image_size``
            defaults to ``model.image_size``.
        device: ``auto`` (cuda when present), ``cpu``, ``cuda``, ``cuda:N``.
        batch_size: images per forward pass.
        precision: ``auto`` (fp16 autocast on GPU, fp32 on CPU), ``fp32``, ``fp16``, ``bf16``.
        backend: ``torch`` or ``onnxruntime`` (then ``onnx_path`` is the file ``export_onnx`` wrote
            for ``model``; preprocessing runs on the CPU; see :func:`onnx_providers` for devices
            and precisions). ``model`` is still needed: the fingerprint is of its weights.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "auto",
        batch_size: int = 16,
        precision: str = "auto",
        image_size: tuple[int, int] | None = None,
        backend: str = "torch",
        onnx_path: str | Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} not one of {PRECISIONS}")
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} not one of {BACKENDS}")
        self.backend = backend
        self.batch_size = batch_size
        size = image_size if image_size is not None else getattr(model, "image_size", None)
        if size is None:
            raise ValueError("image_size not given and the model has no image_size attribute")
        self.preprocessing = Preprocessing(image_size=(int(size[0]), int(size[1])))
        self._fingerprint: str | None = None
        self._dim: int | None = getattr(model, "out_dim", None)
        self._session: Any = None
        self.providers: list[str] = []
        if backend == "onnxruntime":
            self.device = torch.device("cpu")  # preprocessing; the session runs on its providers
            self.model = model.eval()
            self.precision = self._open_onnx(onnx_path, device, precision)
            return
        if onnx_path is not None:
            raise ValueError(f"onnx_path {onnx_path} given but backend is 'torch'; set backend 'onnxruntime'")
        self.device = resolve_device(device)
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        self.precision = precision
        self.model = model.to(self.device).eval()

    def _open_onnx(self, onnx_path: str | Path | None, device: str | torch.device, precision: str) -> str:
        """Opens the onnxruntime session and checks the file is this model's; returns the precision."""
        import onnxruntime as ort

        if onnx_path is None or not str(onnx_path):
            raise ValueError("backend 'onnxruntime' needs onnx_path: the .onnx file export_onnx wrote for this model")
        path = Path(onnx_path).expanduser()
        if not path.is_file():
            raise ValueError(f"onnx_path {path} is not a file (write one with: export_onnx --model DIR --out {path})")
        providers, chosen = onnx_providers(device, precision, path.parent / f"{path.stem}.trt_cache")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # one knob (torch_threads) for both backends
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
            raise ValueError(f"onnx_path {path} could not be loaded by onnxruntime: {err}") from err
        stored = self._session.get_modelmeta().custom_metadata_map.get(FINGERPRINT_KEY)
        if stored is None:
            raise ValueError(f"onnx_path {path} carries no model fingerprint (exported by an older export_onnx?); "
                             "export it again with export_onnx")
        if stored != self.fingerprint:
            raise ValueError(f"onnx_path {path} was exported from other weights or at another image size than "
                             f"this model at {self.image_size[0]}x{self.image_size[1]} (fingerprint "
                             f"{stored[:12]} vs {self.fingerprint[:12]}); export it again from this model")
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
            raise ValueError(f"onnx_path {path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}")
        if isinstance(outputs[0].shape[1], int):
            self._dim = int(outputs[0].shape[1])
        self.providers = list(self._session.get_providers())
        return chosen

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocessing.image_size

    @property
    def fingerprint(self) -> str:
        """Model fingerprint (weights + preprocessing); maps built with another one are refused."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model, self.preprocessing)
        return self._fingerprint

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.extract([np.zeros((14, 14, 3), np.uint8)]).shape[1])
        return self._dim

    def preprocess(self, images: Sequence[np.ndarray], encodings: str | Sequence[str] = "rgb") -> Tensor:
        """uint8 images -> (B, 3, H, W) float32 ImageNet-normalised tensor on ``self.device``."""
        if isinstance(encodings, str):
            encodings = [encodings] * len(images)
        if len(encodings) != len(images):
            raise ValueError(f"{len(images)} images but {len(encodings)} encodings")
        if self.device.type != "cuda":
            resized = [resize_uint8(torch.from_numpy(to_rgb(image, encoding)).permute(2, 0, 1), self.image_size)
                       for image, encoding in zip(images, encodings, strict=True)]
            return normalize(torch.stack(resized))
        return normalize(self._resize_on_device(images, encodings))

    def _resize_on_device(self, images: Sequence[np.ndarray], encodings: Sequence[str]) -> Tensor:
        """uint8 (B, 3, h, w) RGB on the GPU: one host-to-device copy and one resize per image size.

        Channel order and mono expansion happen on the device; per-image copies, flips and
        kernel launches made the node's GPU path CPU-bound (0.1x the bare model at batch 512).
        """
        out = torch.empty((len(images), 3, *self.image_size), dtype=torch.uint8, device=self.device)
        groups: dict[tuple[tuple[int, ...], str], list[int]] = {}
        for i, (image, encoding) in enumerate(zip(images, encodings, strict=True)):
            # validates type, dtype, shape and encoding (on a 1x1 corner: no copy of the image)
            to_rgb(image[:1, :1] if isinstance(image, np.ndarray) else image, encoding)
            if image.shape[0] == 0 or image.shape[1] == 0:
                raise ValueError(f"empty image of shape {image.shape}")
            groups.setdefault((image.shape, encoding), []).append(i)
        for (_, encoding), rows in groups.items():
            stacked = torch.from_numpy(np.stack([images[i] for i in rows])).to(self.device, non_blocking=True)
            if encoding == "mono":
                chw = stacked.reshape(len(rows), 1, *stacked.shape[1:3]).expand(-1, 3, -1, -1)
            else:
                chw = stacked.permute(0, 3, 1, 2)
                if encoding == "bgr":
                    chw = chw.flip(1)
            out[rows] = resize_uint8(chw.contiguous(), self.image_size)
        return out

    def _autocast(self) -> torch.autocast:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def extract(self, images: Sequence[np.ndarray], encodings: str | Sequence[str] = "rgb") -> np.ndarray:
        """Descriptors (N, D) float32, L2-normalised, in input order. Empty input -> (0, D)."""
        if isinstance(encodings, str):
            encodings = [encodings] * len(images)
        if self._session is not None:
            return self._extract_onnx(images, encodings)
        outputs = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(images), self.batch_size):
                stop = start + self.batch_size
                batch = self.preprocess(images[start:stop], encodings[start:stop])
                outputs.append(self.model(batch).float().cpu())
        if not outputs:
            return np.zeros((0, self.dim), np.float32)
        return torch.cat(outputs).numpy()

    def _extract_onnx(self, images: Sequence[np.ndarray], encodings: Sequence[str]) -> np.ndarray:
        outputs = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            with torch.inference_mode():
                batch = self.preprocess(images[start:stop], encodings[start:stop]).numpy()
            outputs.append(self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0].astype(np.float32, copy=False))
        if not outputs:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(outputs)
