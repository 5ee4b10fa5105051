"""Coding rate R(Z, eps) of P̂ and of the Softmax / OT assignment weights, and its command."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG as TINY_MODEL
from PIL import Image

from training.coding_rate import aggregated_matrix, as_variant, coding_rate, main


def test_coding_rate_of_orthonormal_columns_has_closed_form() -> None:
    d, n, eps = 6, 3, 0.5
    z = torch.linalg.qr(torch.randn(d, n, dtype=torch.float64)).Q  # orthonormal columns: Z Z^T has n unit eigenvalues
    expected = 0.5 * n * math.log(1 + d / (n * eps**2))
    assert float(coding_rate(z, eps)) == pytest.approx(expected, rel=1e-9)
    assert float(coding_rate(torch.zeros(d, n), eps)) == 0.0


@pytest.mark.parametrize(("d", "n"), [(3, 7), (7, 3)])
def test_coding_rate_matches_the_definition_for_both_gram_sizes(d: int, n: int) -> None:
    z = torch.randn(2, d, n, dtype=torch.float64)
    eps = 0.3
    direct = [0.5 * np.linalg.slogdet(np.eye(d) + d / (n * eps**2) * zi @ zi.T)[1] for zi in z.numpy()]
    assert coding_rate(z, eps).numpy() == pytest.approx(direct, rel=1e-9)


def test_rank_one_z_has_a_lower_rate_than_spread_columns() -> None:
    spread = torch.linalg.qr(torch.randn(8, 4, dtype=torch.float64)).Q
    collapsed = spread[:, :1].expand(8, 4)  # every column the same direction
    assert float(coding_rate(collapsed, 0.5)) < float(coding_rate(spread, 0.5))


def test_variants_share_weights_and_aggregate_different_matrices() -> None:
    from qaa_vpr_ros.model import build_model

    torch.manual_seed(0)
    model = build_model(TINY_MODEL, image_size=(28, 28)).eval()
    features = torch.randn(2, 32, 2, 2)
    p_hat = aggregated_matrix(model.aggregator, features)
    softmax = aggregated_matrix(as_variant(model, "QAA-Softmax").aggregator, features)
    assert p_hat.shape == softmax.shape == (2, 8, 4)
    assert torch.allclose(softmax, p_hat.softmax(dim=2), atol=1e-6)  # same P̂, then softmax over the C_f clusters
    ot = aggregated_matrix(as_variant(model, "QAA-OT").aggregator, features)
    assert ot.shape == (2, 8, 4) and (ot >= 0).all()


def test_coding_rate_command_prints_table_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from qaa_vpr_ros.model import build_model, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(build_model(TINY_MODEL, image_size=(28, 28)), tmp_path / "qaa")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    assert main(["--model", str(tmp_path / "qaa"), "--images", str(tmp_path), "--limit", "10",
                 "--variants", "QAA", "QAA-Softmax", "QAA-OT", "--json", str(tmp_path / "r.json"),
                 "--plot", str(tmp_path / "r.png")]) == 0
    table = capsys.readouterr().out
    assert all(head in table for head in ("QAA-Softmax", "QAA-OT")) and "R(Z, 0.5)" in table
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["head"] for r in rows] == ["QAA", "QAA-Softmax", "QAA-OT"]
    assert all(r["num_images"] == 10 and r["mean"] > 0 for r in rows)
    assert (tmp_path / "r.png").stat().st_size > 1000
