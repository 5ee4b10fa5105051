"""Aggregation heads: one interface (shapes, unit norm, gradients), registry, Sinkhorn, FLOPs."""

from __future__ import annotations

import pytest
import torch

from qaa_vpr_ros.model.aggregators import (
    AGGREGATORS,
    QAAOptimalTransport,
    QAASoftmax,
    build_aggregator,
    log_optimal_transport,
)
from qaa_vpr_ros.model.aggregators.flops import count_flops
from qaa_vpr_ros.model.qaa import QAAAggregator

WIDTH = 32  # C_o of the tiny test backbone
TINY_QAA = {"num_queries": 8, "num_clusters": 4, "cluster_dim": 8, "feature_nheads": 2, "score_nheads": 2}
TINY_CONFIGS = {
    "QAA": TINY_QAA,
    "QAA-Softmax": TINY_QAA,
    "QAA-OT": TINY_QAA,
    "GeM": {},
    "NetVLAD": {"num_clusters": 4},
    "SALAD": {"num_clusters": 4, "cluster_dim": 8, "token_dim": 16},
    "BoQ": {"proj_channels": 16, "num_queries": 4, "num_layers": 2, "row_dim": 2, "num_heads": 2},
}
TINY_DIMS = {"QAA": 32, "QAA-Softmax": 32, "QAA-OT": 32, "GeM": 32, "NetVLAD": 128, "SALAD": 48, "BoQ": 32}
# Published default sizes on DINOv2-B tokens (C_o = 768).
DEFAULT_DIMS = {
    "QAA": 8192, "QAA-Softmax": 8192, "QAA-OT": 8192, "GeM": 768, "NetVLAD": 49152, "SALAD": 8448, "BoQ": 12288,
}
# Kept so released state dicts load: the output LayerNorm (out_norm off, as released), and the
# dustbin, which only QAA-OT uses.
_NORM2 = {"score.norm2_out.weight", "score.norm2_out.bias"}
UNUSED_PARAMS = {"QAA": _NORM2 | {"dust_bin"}, "QAA-Softmax": _NORM2 | {"dust_bin"}, "QAA-OT": _NORM2}


def tiny_head(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_aggregator(name, {"num_channels": WIDTH, **TINY_CONFIGS[name]})


def tiny_inputs(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(batch, WIDTH, 4, 4), torch.randn(batch, WIDTH)  # 16 tokens + CLS


def test_registry_covers_every_head():
    assert set(AGGREGATORS) == set(TINY_CONFIGS)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_output_shape_and_unit_norm(name):
    head = tiny_head(name).eval()
    features, cls_token = tiny_inputs()
    with torch.no_grad():
        out = head(features, cls_token)
    assert head.out_dim == TINY_DIMS[name]
    assert out.shape == (3, head.out_dim)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_gradients_reach_inputs_and_every_used_parameter(name):
    head = tiny_head(name).train()
    features, cls_token = tiny_inputs()
    features.requires_grad_(True)
    head(features, cls_token).pow(3).sum().backward()  # not the norm, whose gradient is 0
    assert features.grad is not None and features.grad.abs().sum() > 0
    no_grad = {n for n, p in head.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()}
    assert no_grad == UNUSED_PARAMS.get(name, set())


@pytest.mark.parametrize("name", list(DEFAULT_DIMS))
def test_published_default_sizes(name):
    assert build_aggregator(name, {}).out_dim == DEFAULT_DIMS[name]


def test_default_qaa_has_paper_parameter_count():
    head = build_aggregator("qaa", {"num_channels": 768})
    assert isinstance(head, QAAAggregator)
    assert sum(p.numel() for p in head.parameters()) == 5_072_833


def test_default_qaa_gflops_within_two_percent_of_paper():
    """The paper's 2.29 GFLOPs: 322 x 322 -> 23 x 23 DINOv2-B tokens, batch 1, cached queries."""
    head = QAAAggregator().eval()
    features = torch.randn(1, 768, 23, 23)
    with torch.no_grad():
        head(features)  # fills the query cache
        counted = count_flops(lambda: head(features))
    assert abs(counted.gflops / 2.29 - 1) < 0.02
    # Attention must be counted (torch's counter has no formula for the CPU flash kernel).
    assert counted.by_op["aten._scaled_dot_product_flash_attention_for_cpu"] == 2 * 2 * 256 * 529 * 768


def test_names_are_case_insensitive():
    assert type(build_aggregator("qaa-ot", {"num_channels": WIDTH, **TINY_QAA})) is QAAOptimalTransport
    assert type(build_aggregator("SALAD", {})) is type(build_aggregator("salad", {}))


def test_unknown_name_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"'MixVPR'.*QAA, QAA-Softmax, QAA-OT, GeM, NetVLAD, SALAD, BoQ"):
        build_aggregator("MixVPR", {})


def test_unknown_config_key_is_refused_by_name():
    with pytest.raises(ValueError, match=r"\['clusters'\].*NetVLAD.*num_clusters"):
        build_aggregator("NetVLAD", {"num_channels": WIDTH, "clusters": 4})


def test_authors_score_norm_key_selects_the_ablation():
    config = {"num_channels": WIDTH, **TINY_QAA}
    assert type(build_aggregator("QAA", {**config, "score_norm": "softmax"})) is QAASoftmax
    assert type(build_aggregator("QAA", {**config, "score_norm": "ot"})) is QAAOptimalTransport
    assert type(build_aggregator("QAA", {**config, "score_norm": "none"})) is QAAAggregator
    with pytest.raises(ValueError, match="contradicts"):
        build_aggregator("QAA-OT", {**config, "score_norm": "softmax"})


def test_ablation_heads_share_qaa_weights_but_aggregate_differently():
    features, _ = tiny_inputs()
    qaa = tiny_head("QAA").eval()
    outputs = {}
    for name in ("QAA-Softmax", "QAA-OT"):
        head = tiny_head(name).eval()
        head.load_state_dict(qaa.state_dict(), strict=True)
        with torch.no_grad():
            outputs[name] = head(features)
            predicted = head.predict_features(features)
        weights = head.assignment_weights(predicted)  # W: B x N_q x C_f
        assert weights.shape == predicted.shape and (weights >= 0).all()
        # Every query spreads at most unit mass over the clusters (exactly 1 for softmax).
        totals = weights.sum(dim=2)
        assert torch.allclose(totals, torch.ones_like(totals)) if name == "QAA-Softmax" else (totals <= 1 + 1e-5).all()
    with torch.no_grad():
        reference = qaa(features)
    for out in outputs.values():
        assert (out - reference).abs().max() > 1e-3
    assert (outputs["QAA-Softmax"] - outputs["QAA-OT"]).abs().max() > 1e-3


def test_sinkhorn_meets_its_marginals():
    torch.manual_seed(0)
    bins, items = 4, 10
    scores = torch.randn(2, bins, items) * 3
    plan = log_optimal_transport(scores, torch.tensor(0.5), num_iters=200).exp()  # B x (m+1) x n
    # Scaled by (m + n): each item carries 1, each bin takes 1, the dustbin n - m.
    assert torch.allclose(plan.sum(dim=1), torch.ones(2, items), atol=1e-4)
    expected_rows = torch.tensor([1.0] * bins + [items - bins]).expand(2, -1)
    assert torch.allclose(plan.sum(dim=2), expected_rows, atol=1e-3)


def test_sinkhorn_needs_more_items_than_bins():
    with pytest.raises(ValueError, match="more items than bins"):
        log_optimal_transport(torch.randn(1, 8, 8), torch.tensor(1.0))
