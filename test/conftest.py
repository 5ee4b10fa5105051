"""Shared fixtures: tiny model configs, the shared Nordland images."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
NORDLAND = SHARED_DATA / "nordland64x32"

TINY_CONFIG = {
    "backbone_arch": "vit_small_patch14_dinov2",
    "backbone_config": {
        "num_trainable_blocks": 1,
        "norm_layer": True,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
    },
    "agg_arch": "QAA",
    "agg_config": {
        "num_channels": 32,
        "num_queries": 8,
        "num_clusters": 4,
        "cluster_dim": 8,
        "feature_nheads": 2,
        "score_nheads": 2,
    },
}


@pytest.fixture
def tiny_model_config() -> dict:
    """A 2-block ViT (width 32) + QAA head with 32-d descriptors; fast on any CPU."""
    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture
def tiny_model(tiny_model_config):
    from qaa_vpr_ros.model import build_model

    torch.manual_seed(0)
    return build_model(tiny_model_config, image_size=(56, 56)).eval()


@pytest.fixture
def nordland_root() -> Path:
    """../shared/data/nordland64x32 (summer/ and winter/), or skip when it is absent."""
    if not (NORDLAND / "summer").is_dir() or not (NORDLAND / "winter").is_dir():
        pytest.skip(f"shared test data absent: {NORDLAND} (see ../shared/data/README.md)")
    return NORDLAND


def pytest_terminal_summary(terminalreporter) -> None:
    """The doc test's list of blocks run and skipped, with reasons (test_docs.REPORT)."""
    import sys

    report = getattr(sys.modules.get("test_docs"), "REPORT", None)
    if report:
        terminalreporter.section("docs: blocks run and skipped (test_docs.py)")
        for line in report:
            terminalreporter.write_line(line)
        runs = sum(line.startswith("ran") for line in report)
        skips = sum(line.startswith("skip") for line in report)
        unchecked = sum(line.startswith("unchecked") for line in report)
        checked = sum(line.startswith("checked") for line in report)
        terminalreporter.write_line(f"docs: {runs} commands/snippets ran, {skips} skipped; figures: "
                                    f"{checked} checked, {unchecked} marked unchecked")
