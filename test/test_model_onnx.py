"""ONNX export: onnxruntime matches PyTorch on any batch size; the CLI exports a saved checkpoint."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_CONFIG

from qaa_vpr_ros.model import build_model, save_checkpoint
from qaa_vpr_ros.model.onnx_export import export_onnx, main, run_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny model (random weights) and its export at 56 x 56, opset 17."""
    torch.manual_seed(0)
    model = build_model(copy.deepcopy(TINY_CONFIG), image_size=(56, 56)).eval()
    result = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", (56, 56))
    return model, result


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_pytorch(exported, batch):
    model, result = exported
    images = torch.randn(batch, 3, 56, 56)
    with torch.no_grad():
        expected = model(images).numpy()
    got = run_onnx(result.path, images.numpy())
    assert got.shape == (batch, 32)
    assert np.abs(got - expected).max() < 1e-4


def test_graph_has_requested_opset_and_a_dynamic_batch(exported):
    _, result = exported
    graph = onnx.load(str(result.path))
    assert next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == 17
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    assert not any(node.op_type == "Resize" for node in graph.graph.node)  # position embeddings are constants
    assert result.max_abs_diff < 1e-4


def test_export_leaves_the_model_as_it_was(exported):
    model, _ = exported
    assert "query_branches" not in vars(model.aggregator)
    assert "interpolate_pos_encoding" not in vars(model.backbone)
    assert model(torch.randn(1, 3, 42, 84)).shape == (1, 32)  # other sizes still interpolate


def test_image_size_must_be_a_multiple_of_14(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="multiples of 14"):
        export_onnx(tiny_model, tmp_path / "bad.onnx", (50, 56))
    assert not list(tmp_path.iterdir())


def test_cli_exports_a_saved_checkpoint(tiny_model, tmp_path, capsys):
    checkpoint = save_checkpoint(tiny_model, tmp_path / "ckpt")
    out = tmp_path / "model.onnx"
    assert main(["--model", str(checkpoint), "--out", str(out), "--image-size", "42", "42"]) == 0
    assert "descriptors (B, 32)" in capsys.readouterr().out
    images = torch.randn(2, 3, 42, 42)
    with torch.no_grad():
        expected = tiny_model(images).numpy()
    assert np.abs(run_onnx(out, images.numpy()) - expected).max() < 1e-4


HEADS = {
    "QAA-Softmax": {"num_queries": 8, "num_clusters": 4, "cluster_dim": 8, "feature_nheads": 2, "score_nheads": 2},
    "QAA-OT": {"num_queries": 8, "num_clusters": 4, "cluster_dim": 8, "feature_nheads": 2, "score_nheads": 2},
    "GeM": {},
    "NetVLAD": {"num_clusters": 4},
    "SALAD": {"num_clusters": 4, "cluster_dim": 8, "token_dim": 16},
    "BoQ": {"proj_channels": 16, "num_queries": 4, "row_dim": 2, "num_heads": 2},
}


@pytest.mark.parametrize("agg_arch", list(HEADS))
def test_every_other_head_exports_with_parity(tiny_model_config, tmp_path, agg_arch):
    tiny_model_config.update(agg_arch=agg_arch, agg_config={"num_channels": 32, **HEADS[agg_arch]})
    torch.manual_seed(0)
    model = build_model(tiny_model_config, image_size=(42, 42)).eval()
    result = export_onnx(model, tmp_path / "head.onnx", (42, 42))
    images = torch.randn(3, 3, 42, 42)
    with torch.no_grad():
        expected = model(images).numpy()
    assert np.abs(run_onnx(result.path, images.numpy()) - expected).max() < 1e-4
