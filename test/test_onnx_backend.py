"""The extractor's onnxruntime backend: torch's descriptors within 1e-4, the same fingerprint, files
from other weights refused; maps built with one backend are accepted by the node running the other."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from bag_writer import Camera, Drive, distinct_places, write_drive
from conftest import TINY_CONFIG

from qaa_vpr_ros.extractor import DescriptorExtractor, onnx_providers
from qaa_vpr_ros.map_tools.build import main as build_main
from qaa_vpr_ros.maps import PlaceMap
from qaa_vpr_ros.model import build_model, load_model
from qaa_vpr_ros.model.onnx_export import export_onnx

pytest_plugins = ["maps_fixtures"]  # fixtures: nordland, model_dir, extractor

SIZE = (56, 56)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(copy.deepcopy(TINY_CONFIG), image_size=SIZE).eval()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", SIZE).path


def test_onnxruntime_gives_torch_descriptors_within_1e_4(model, onnx_file) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 9 * i, 70 - 3 * i, 3), dtype=np.uint8) for i in range(6)]
    images.append(rng.integers(0, 256, (30, 50), dtype=np.uint8))
    encodings = ["rgb", "bgr"] * 3 + ["mono"]
    torch_out = DescriptorExtractor(model, device="cpu", batch_size=3).extract(images, encodings)
    ort = DescriptorExtractor(model, device="cpu", batch_size=3, backend="onnxruntime", onnx_path=onnx_file)
    ort_out = ort.extract(images, encodings)
    assert ort.providers == ["CPUExecutionProvider"] and ort.precision == "fp32"
    assert ort_out.shape == torch_out.shape == (7, 32) and ort_out.dtype == np.float32
    assert np.abs(ort_out - torch_out).max() < 1e-4
    assert np.allclose(np.linalg.norm(ort_out, axis=1), 1.0, atol=1e-5)
    # The images differ, so must their descriptors (a constant output would also "match").
    assert (ort_out @ ort_out.T)[~np.eye(7, dtype=bool)].max() < 0.9999
    assert ort.extract([]).shape == (0, 32)


def test_both_backends_have_the_fingerprint_export_wrote(model, onnx_file) -> None:
    torch_fp = DescriptorExtractor(model, device="cpu").fingerprint
    ort_fp = DescriptorExtractor(model, device="cpu", backend="onnxruntime", onnx_path=onnx_file).fingerprint
    assert torch_fp == ort_fp


def test_an_onnx_file_of_other_weights_is_refused(onnx_file) -> None:
    torch.manual_seed(1)
    other = build_model(copy.deepcopy(TINY_CONFIG), image_size=SIZE).eval()
    with pytest.raises(ValueError, match=f"{onnx_file.name} was exported from other weights"):
        DescriptorExtractor(other, device="cpu", backend="onnxruntime", onnx_path=onnx_file)


def test_an_onnx_file_exported_at_another_size_is_refused(model, tmp_path) -> None:
    path = export_onnx(model, tmp_path / "at42.onnx", (42, 42)).path
    with pytest.raises(ValueError, match="another image size"):
        DescriptorExtractor(model, device="cpu", backend="onnxruntime", onnx_path=path)
    assert DescriptorExtractor(model, device="cpu", backend="onnxruntime", onnx_path=path,
                               image_size=(42, 42)).extract([np.zeros((42, 42, 3), np.uint8)]).shape == (1, 32)


def test_bad_backend_options_name_the_culprit(model, onnx_file, tmp_path) -> None:
    with pytest.raises(ValueError, match="backend 'tensorrt' not one of"):
        DescriptorExtractor(model, device="cpu", backend="tensorrt")
    with pytest.raises(ValueError, match="needs onnx_path"):
        DescriptorExtractor(model, device="cpu", backend="onnxruntime")
    with pytest.raises(ValueError, match="is not a file"):
        DescriptorExtractor(model, device="cpu", backend="onnxruntime", onnx_path=tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="could not be loaded by onnxruntime"):
        DescriptorExtractor(model, device="cpu", backend="onnxruntime", onnx_path=tmp_path / "junk.onnx")
    with pytest.raises(ValueError, match="'bf16' is not supported by the onnxruntime backend"):
        DescriptorExtractor(model, device="cpu", precision="bf16", backend="onnxruntime", onnx_path=onnx_file)
    with pytest.raises(ValueError, match="but backend is 'torch'"):
        DescriptorExtractor(model, device="cpu", onnx_path=onnx_file)


def test_execution_providers_follow_the_device(tmp_path) -> None:
    import onnxruntime as ort

    assert onnx_providers("cpu", "auto", tmp_path) == (["CPUExecutionProvider"], "fp32")
    providers, _ = onnx_providers("auto", "auto", tmp_path)
    assert providers[-1] == "CPUExecutionProvider"  # always the fallback
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert providers == ["CPUExecutionProvider"]
        with pytest.raises(ValueError, match="no CUDA or TensorRT execution provider"):
            onnx_providers("cuda", "auto", tmp_path)
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ValueError, match="needs the TensorRT execution provider|needs TensorRT"):
            onnx_providers("auto", "fp16", tmp_path)


# --- build_map and the node ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The maps_fixtures tiny model folder and its ONNX export."""
    path = tmp_path_factory.mktemp("onnx_saved") / "tiny.onnx"
    return model_dir, export_onnx(load_model(model_dir), path, SIZE).path


@pytest.fixture(scope="module")
def bag(nordland, model_dir, tmp_path_factory) -> Path:
    places = distinct_places(model_dir, nordland, 8)  # so that only a frame's own image scores > 0.999
    drive = Drive(cameras=[Camera("/cam", season="summer")], num_frames=8, places=places)
    return write_drive(tmp_path_factory.mktemp("bag") / "run", nordland, drive)


@pytest.fixture(scope="module")
def maps(saved, bag, tmp_path_factory) -> dict[str, Path]:
    """The same bag mapped with each backend by the build_map CLI."""
    model_dir, onnx_file = saved
    root = tmp_path_factory.mktemp("maps")
    common = [str(bag), "--model", str(model_dir), "--pose-topic", "/odom", "--min-distance", "0",
              "--min-rotation", "0", "--device", "cpu", "--no-progress"]
    assert build_main([*common, "-o", str(root / "torch")]) == 0
    assert build_main([*common, "-o", str(root / "onnxruntime"), "--backend", "onnxruntime",
                       "--onnx", str(onnx_file)]) == 0
    return {"torch": root / "torch", "onnxruntime": root / "onnxruntime"}


def test_build_map_with_either_backend_gives_the_same_map(maps, extractor) -> None:
    by_torch = PlaceMap.load(maps["torch"], expected_fingerprint=extractor.fingerprint)
    by_ort = PlaceMap.load(maps["onnxruntime"], expected_fingerprint=extractor.fingerprint)
    assert len(by_torch) == len(by_ort) == 8
    assert np.abs(by_torch.descriptors.astype(np.float32) - by_ort.descriptors.astype(np.float32)).max() < 2e-3


def test_build_map_onnxruntime_without_the_file_is_an_error(saved, bag, tmp_path, capsys) -> None:
    model_dir, _ = saved
    assert build_main([str(bag), "--model", str(model_dir), "-o", str(tmp_path / "m"), "--backend",
                       "onnxruntime", "--no-progress"]) == 1
    assert "needs onnx_path" in capsys.readouterr().err


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:module 'sre_(parse|constants)' is deprecated:DeprecationWarning")
@pytest.mark.parametrize(("map_backend", "node_backend"), [("onnxruntime", "torch"), ("torch", "onnxruntime")])
def test_a_map_from_one_backend_is_accepted_by_the_node_running_the_other(saved, maps, bag, map_backend,
                                                                          node_backend) -> None:
    from node_harness import spinning, use_private_domain, wait_for

    use_private_domain()
    import rclpy
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image, PointCloud2

    from qaa_vpr_ros.bags import iter_image_messages, open_bag
    from qaa_vpr_ros.image_conversion import image_from_msg
    from qaa_vpr_ros.localize_node import LOOP_CANDIDATE_DTYPE, LocalizeNode

    model_dir, onnx_file = saved
    with open_bag(bag) as opened:
        frames = [image_from_msg(m.msg) for m in iter_image_messages(opened, ["/cam"])]
    place_map = PlaceMap.load(maps[map_backend])
    query = 5
    expected_id = next(kf.id for kf in place_map.keyframes if kf.stamp_ns == sorted(
        k.stamp_ns for k in place_map.keyframes)[query])

    rclpy.init()
    name = f"onnx_{node_backend}"
    params = {"image_topics": [f"/{name}/image"], "model": str(model_dir), "map": str(maps[map_backend]),
              "online_loop_closure": False, "reliable": True, "device": "cpu", "backend": node_backend}
    if node_backend == "onnxruntime":
        params["onnx"] = str(onnx_file)
    node = LocalizeNode(name, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    client = rclpy.create_node(f"{name}_client")
    tables: list[np.ndarray] = []
    client.create_subscription(PointCloud2, f"/{name}/loop_candidates",
                               lambda m: tables.append(np.frombuffer(bytes(m.data), LOOP_CANDIDATE_DTYPE)), 10)
    pub = client.create_publisher(Image, f"/{name}/image", 10)
    try:
        with spinning(node, client):
            wait_for(lambda: node.state in ("ready", "error"), 30.0, "the node to load")
            assert node.state == "ready", node.state_message
            assert node.extractor.backend == node_backend
            wait_for(lambda: pub.get_subscription_count(), 10.0, "the node's image subscription")
            rgb, encoding = frames[query]
            assert encoding == "rgb"
            msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0,
                        step=rgb.shape[1] * 3, data=np.ascontiguousarray(rgb).tobytes())
            msg.header.stamp.sec, msg.header.frame_id = 1_800_000_000, "camera"
            pub.publish(msg)
            (rows, *_) = wait_for(lambda: tables, 20.0, "loop candidates for the query")
            assert rows["match_keyframe_id"][0] == expected_id and rows["score"][0] > 0.999
    finally:
        rclpy.shutdown()
