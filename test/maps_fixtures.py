"""pytest fixtures shared by the map tests; load with ``pytest_plugins = ["maps_fixtures"]``."""
from __future__ import annotations

from pathlib import Path

import pytest
from bag_writer import save_tiny_model


@pytest.fixture(scope="module")
def nordland() -> Path:
    """../shared/data/nordland64x32, or skip."""
    from conftest import NORDLAND

    if not (NORDLAND / "summer").is_dir() or not (NORDLAND / "winter").is_dir():
        pytest.skip(f"shared test data absent: {NORDLAND} (../shared/data absent)")
    return NORDLAND


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny random model (conftest's TINY_CONFIG, seed 0) saved as a checkpoint folder."""
    from conftest import TINY_CONFIG

    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", TINY_CONFIG)


@pytest.fixture(scope="module")
def extractor(model_dir):
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.model import load_model

    return DescriptorExtractor(load_model(model_dir), device="cpu", batch_size=8)
