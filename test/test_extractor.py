"""The shared descriptor extractor: preprocessing, encodings, batching, fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode, v2

from qaa_vpr_ros.extractor import DescriptorExtractor, normalize, resize_uint8, resolve_device, to_rgb


@pytest.fixture
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in ((32, 64), (120, 90), (56, 56))]


def test_preprocessing_matches_release_transform(tiny_model, images):
    release = v2.Compose([
        v2.ToImage(),
        v2.Resize([56, 56], interpolation=InterpolationMode.BILINEAR, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    extractor = DescriptorExtractor(tiny_model, device="cpu")
    ours = extractor.preprocess(images)
    expected = torch.stack([release(image) for image in images])
    assert ours.shape == (3, 3, 56, 56)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_extract_shape_norm_and_batching_invariance(tiny_model, images):
    one = DescriptorExtractor(tiny_model, device="cpu", batch_size=1).extract(images)
    many = DescriptorExtractor(tiny_model, device="cpu", batch_size=8).extract(images)
    assert one.shape == (3, 32) and one.dtype == np.float32
    assert np.allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-5)
    assert np.allclose(one, many, atol=1e-5)


def test_encodings_agree(tiny_model, images):
    extractor = DescriptorExtractor(tiny_model, device="cpu")
    rgb = extractor.extract(images[:1], "rgb")
    bgr = extractor.extract([images[0][:, :, ::-1]], "bgr")
    assert np.allclose(rgb, bgr, atol=1e-6)
    grey = images[0][:, :, 0]
    assert np.allclose(extractor.extract([grey], "mono"), extractor.extract([np.dstack([grey] * 3)], "rgb"), atol=1e-6)
    assert np.allclose(extractor.extract([grey[:, :, None]], "mono"), extractor.extract([grey], "mono"))


def test_empty_input_and_bad_images(tiny_model):
    extractor = DescriptorExtractor(tiny_model, device="cpu")
    assert extractor.extract([]).shape == (0, 32)
    with pytest.raises(ValueError, match="uint8"):
        extractor.extract([np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(ValueError, match="HxWx3"):
        extractor.extract([np.zeros((10, 10), np.uint8)], "rgb")
    with pytest.raises(ValueError, match="encoding"):
        extractor.extract([np.zeros((10, 10, 3), np.uint8)], "yuv")


def test_fingerprint_tracks_weights_and_preprocessing(tiny_model):
    base = DescriptorExtractor(tiny_model, device="cpu").fingerprint
    assert base == DescriptorExtractor(tiny_model, device="cpu").fingerprint
    assert base != DescriptorExtractor(tiny_model, device="cpu", image_size=(28, 28)).fingerprint
    with torch.no_grad():
        tiny_model.aggregator.dust_bin.add_(1.0)
    assert base != DescriptorExtractor(tiny_model, device="cpu").fingerprint


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gpu_autocast_close_to_fp32(tiny_model, images, precision):
    fp32 = DescriptorExtractor(tiny_model, device="cpu").extract(images)
    low = DescriptorExtractor(tiny_model, device="cuda", precision=precision).extract(images)
    assert np.abs(fp32 - low).max() < 5e-2


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_batched_device_preprocessing_equals_per_image_path(tiny_model, device):
    """The GPU path (one copy + one resize per image size, channel order on the device) gives, in
    input order, exactly what resizing each image alone on the same device gives, for mixed sizes
    and encodings; and what the CPU path gives to within one uint8 level (CUDA's resize rounds
    differently from the CPU's)."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=shape, dtype=np.uint8)
              for shape in ((48, 64, 3), (30, 40, 3), (48, 64, 3), (48, 64), (30, 40, 1), (48, 64, 3))]
    encodings = ["rgb", "bgr", "bgr", "mono", "mono", "rgb"]
    extractor = DescriptorExtractor(tiny_model, device=device)
    batched = extractor._resize_on_device(images, encodings)
    assert batched.shape == (6, 3, 56, 56) and batched.dtype == torch.uint8
    alone = torch.stack([resize_uint8(torch.from_numpy(to_rgb(image, encoding)).to(device).permute(2, 0, 1),
                                      (56, 56)) for image, encoding in zip(images, encodings, strict=True)])
    assert torch.equal(batched, alone)
    cpu = DescriptorExtractor(tiny_model, device="cpu").preprocess(images, encodings)
    assert torch.allclose(normalize(batched).cpu(), cpu, atol=1e-6 if device == "cpu" else 1.01 / 255 / 0.224)
    with pytest.raises(ValueError, match="encoding"):
        extractor._resize_on_device(images[:1], ["yuv"])
    with pytest.raises(ValueError, match="uint8"):
        extractor._resize_on_device([images[0].astype(np.float32)], ["rgb"])


def test_the_fingerprint_of_a_fixed_model_never_changes():
    # Maps store the fingerprint and refuse any other: moving or touching its code must keep its
    # bytes. The value was computed by the code before the preprocessing contract moved to model/.
    from qaa_vpr_ros import extractor
    from qaa_vpr_ros.model.preprocessing import Preprocessing, model_fingerprint

    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            with torch.no_grad():
                self.lin.weight.copy_(torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7)
                self.lin.bias.copy_(torch.tensor([0.5, -0.25]))
            self.register_buffer("steps", torch.arange(4, dtype=torch.int64))
            self.register_buffer("halves", torch.linspace(0, 1, 5, dtype=torch.float16))

    fingerprint = model_fingerprint(Fixed(), Preprocessing(image_size=(28, 56)))
    assert fingerprint == "70d186c0c4d648eff9e7ff40fc1944352b132e3aabd21e0e2243a93ae0f53fbd"
    assert extractor.model_fingerprint is model_fingerprint and extractor.Preprocessing is Preprocessing
