"""The QAA model: shapes, caching, checkpoints in the release layout, parity with a reference."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from reference_qaa import dinov2_forward, qaa_forward
from safetensors.torch import save_file

from qaa_vpr_ros.model import (
    CheckpointError,
    ModelConfigError,
    build_model,
    convert_dinov2_state_dict,
    load_dinov2_weights,
    load_model,
    save_checkpoint,
)
from qaa_vpr_ros.model.qaa import QAAAggregator


def write_release(folder, model) -> None:
    """What PyTorchModelHubMixin writes for the authors' QAA class: config.json + model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_config_dict": model.model_config_dict}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))


def randomise(model) -> None:
    """Random weights everywhere (LayerScale and LayerNorms too, so nothing is an identity)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.2 + (1.0 if param.ndim == 1 and param.numel() > 1 else 0.0))


def test_default_aggregator_has_paper_parameter_count():
    assert sum(p.numel() for p in QAAAggregator().parameters()) == 5_072_833


def test_descriptor_shape_and_unit_norm(tiny_model):
    out = tiny_model(torch.randn(3, 3, 56, 56))
    assert out.shape == (3, 32)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_other_resolution_and_non_square(tiny_model):
    out = tiny_model(torch.randn(2, 3, 42, 84))
    assert out.shape == (2, 32)
    with pytest.raises(ValueError, match="multiple of 14"):
        tiny_model(torch.randn(1, 3, 50, 56))


def test_cached_queries_equal_uncached(tiny_model):
    randomise(tiny_model)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        uncached = tiny_model.aggregator.score(
            tiny_model.backbone(x)[0].flatten(2).transpose(1, 2), tiny_model.aggregator.queries_score()
        )
    with torch.inference_mode():
        first = tiny_model(x)
        assert tiny_model.aggregator._cache is not None
        second = tiny_model(x)
        predicted = tiny_model.aggregator.predict_features(tiny_model.backbone(x)[0])
    assert torch.equal(first, second)
    assert torch.allclose(predicted, uncached, atol=1e-6)
    with torch.enable_grad():
        grad_path = tiny_model(x)
    assert torch.allclose(grad_path, first, atol=1e-6)


def test_cache_invalidated_when_weights_change(tiny_model):
    x = torch.randn(1, 3, 56, 56)
    with torch.inference_mode():
        before = tiny_model(x)
    with torch.no_grad():
        tiny_model.aggregator.queries_feature.queries.add_(1.0)  # like an optimizer step
    with torch.inference_mode():
        after_step = tiny_model(x)
    assert not torch.allclose(before, after_step)
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    state["aggregator.queries_score.queries"] += 0.5
    tiny_model.load_state_dict(state)
    with torch.inference_mode():
        after_load = tiny_model(x)
    with torch.no_grad():
        reference = tiny_model(x)  # grad-free but not inference mode: same cache rules
    assert not torch.allclose(after_step, after_load)
    assert torch.allclose(after_load, reference, atol=1e-6)


def test_release_layout_loads_strictly_and_round_trips(tmp_path, tiny_model):
    randomise(tiny_model)
    write_release(tmp_path / "release", tiny_model)
    loaded = load_model(tmp_path / "release")
    assert not loaded.training
    x = torch.randn(2, 3, 56, 56)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), tiny_model.eval()(x), atol=1e-6)
    save_checkpoint(loaded, tmp_path / "ours", extra={"step": 3})
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["qaa_vpr_ros"]["image_size"] == [322, 322] and config["qaa_vpr_ros"]["step"] == 3
    again = load_model(tmp_path / "ours")
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_release_folder_defaults_to_322(tmp_path, tiny_model):
    write_release(tmp_path / "release", tiny_model)
    assert load_model(tmp_path / "release").image_size == (322, 322)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, tiny_model):
    state = dict(tiny_model.state_dict())
    state.pop("aggregator.dust_bin")
    state["aggregator.extra_weight"] = torch.zeros(1)
    state["aggregator.score.conv.bias"] = torch.zeros(7)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_config_dict": tiny_model.model_config_dict}))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad" / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "bad")
    message = str(info.value)
    assert "aggregator.dust_bin" in message
    assert "aggregator.extra_weight" in message
    assert "aggregator.score.conv.bias" in message and "(7,)" in message


def test_unsupported_config_value_is_named(tiny_model_config):
    tiny_model_config["agg_config"]["skip_connection"] = "sideways"
    with pytest.raises(ModelConfigError, match="skip_connection"):
        build_model(tiny_model_config, image_size=(56, 56))
    tiny_model_config["agg_config"]["skip_connection"] = "none"
    tiny_model_config["agg_arch"] = "NoSuchHead"
    with pytest.raises(ModelConfigError, match="NoSuchHead"):
        build_model(tiny_model_config, image_size=(56, 56))


def test_skip_connection_and_token_branch(tiny_model_config):
    tiny_model_config["agg_config"].update(skip_connection="cross", token_dim=6, out_norm=True)
    model = build_model(tiny_model_config, image_size=(56, 56)).eval()
    out = model(torch.randn(2, 3, 56, 56))
    assert out.shape == (2, 32 + 6)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


class _Payload:
    def __reduce__(self):
        return (print, ("pickle executed",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_payload_is_refused(tmp_path, tiny_model, capsys):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": _Payload(), "hyper_parameters": tiny_model.model_config_dict}, handle)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model(path)
    assert "pickle executed" not in capsys.readouterr().out


def test_lightning_checkpoint_loads_with_weights_only(tmp_path, tiny_model):
    randomise(tiny_model)
    ckpt = {"state_dict": tiny_model.state_dict(), "hyper_parameters": dict(tiny_model.model_config_dict), "epoch": 3}
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded = load_model(tmp_path / "last.ckpt")
    x = torch.randn(1, 3, 322, 322)[:, :, :56, :56]
    with torch.inference_mode():
        assert torch.allclose(loaded(x), tiny_model.eval()(x), atol=1e-6)


def test_official_dinov2_keys_convert(tmp_path, tiny_model):
    randomise(tiny_model)
    official = {}
    for key, value in tiny_model.backbone.state_dict().items():
        key = key.removeprefix("model.")
        if key.startswith("blocks."):  # official block_chunks layout: blocks.{chunk}.{i}
            index = int(key.split(".")[1])
            key = f"blocks.0.{key.split('.', 1)[1]}" if index == 0 else key.replace("blocks.", "blocks.0.", 1)
        official[key] = value.clone()
    official["head.weight"] = torch.zeros(1)
    converted = convert_dinov2_state_dict(official)
    assert set(converted) == set(tiny_model.backbone.state_dict())
    timm_layout = {k.removeprefix("model."): v for k, v in tiny_model.backbone.state_dict().items() if "mask" not in k}
    save_file(timm_layout, str(tmp_path / "timm.safetensors"))
    fresh = build_model(tiny_model.model_config_dict, image_size=(56, 56))
    load_dinov2_weights(fresh.backbone, tmp_path / "timm.safetensors")
    fc2 = "model.blocks.1.mlp.fc2.weight"
    assert torch.equal(fresh.backbone.state_dict()[fc2], tiny_model.backbone.state_dict()[fc2])


@pytest.mark.parametrize("size", [322, 224])
def test_matches_independent_reference(tmp_path, size):
    """Release-shaped model (DINOv2-S width, small QAA) vs a literal reference, through load_model."""
    config = {
        "backbone_arch": "dinov2_vits14",
        "backbone_config": {"num_trainable_blocks": 2, "norm_layer": True, "return_token": False, "depth": 3},
        "agg_arch": "QAA",
        "agg_config": {
            "num_channels": 384, "num_clusters": 16, "cluster_dim": 32, "token_dim": 0, "num_queries": 32,
            "feature_nheads": 16, "score_nheads": 16, "self_attn_out_norm": True, "out_norm": False,
            "score_norm": "none", "attn_arch": "conv", "skip_connection": "none",
        },
    }
    model = build_model(config)
    randomise(model)
    write_release(tmp_path / "release", model)
    loaded = load_model(tmp_path / "release")
    state = {k: v.double() for k, v in loaded.state_dict().items()}
    images = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        ours = loaded(images)
        features, _ = dinov2_forward(images.double(), state, heads=6)
        reference = qaa_forward(features, state, heads_f=16, heads_r=16).float()
    assert ours.shape == (2, 16 * 32)
    assert (ours - reference).abs().max().item() < 1e-4


def test_authors_training_only_keys_are_accepted(tiny_model_config, caplog):
    tiny_model_config["agg_config"].update(dropout=0.3, self_attn="both", dust_bin=True, freeze="none", future_key=1)
    tiny_model_config["backbone_config"].update(domain_prompt=False, final_layer_norm=True)
    model = build_model(tiny_model_config, image_size=(56, 56))
    assert model.out_dim == 32
    assert "future_key" in caplog.text and "final_layer_norm" in caplog.text
    tiny_model_config["agg_config"]["self_attn"] = "feature"
    with pytest.raises(ModelConfigError, match="self_attn"):
        build_model(tiny_model_config, image_size=(56, 56))


@pytest.mark.parametrize("score_norm", ["softmax", "ot"])
def test_score_norm_selects_the_ablation_heads(tiny_model_config, score_norm):
    tiny_model_config["agg_config"]["score_norm"] = score_norm
    model = build_model(tiny_model_config, image_size=(56, 56))
    assert type(model.aggregator).__name__ == {"softmax": "QAASoftmax", "ot": "QAAOptimalTransport"}[score_norm]
