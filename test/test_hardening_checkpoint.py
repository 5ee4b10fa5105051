"""Fuzzing finding (issue 11): a checkpoint's config.json sized the model that was allocated
before the weights were compared with it: a lying config (or image_size) could demand gigabytes.
The model is now sized on the meta device first and refused when the weights cannot fill it."""
from __future__ import annotations

import copy
import json
import tracemalloc

import pytest
import torch

from qaa_vpr_ros.model import CheckpointError, build_model, load_model, save_checkpoint


@pytest.mark.parametrize("lie", ["embed_dim", "image_size"])
def test_a_config_describing_a_much_larger_model_is_refused_before_allocating(tmp_path, tiny_model_config, lie):
    torch.manual_seed(0)
    folder = save_checkpoint(build_model(tiny_model_config, image_size=(56, 56)), tmp_path / "tiny")
    config = json.loads((folder / "config.json").read_text())
    if lie == "embed_dim":
        big = copy.deepcopy(config["model_config_dict"])
        big["backbone_config"]["embed_dim"] = 4096
        big["agg_config"]["num_channels"] = 4096
        config["model_config_dict"] = big
    else:
        config["qaa_vpr_ros"]["image_size"] = [14 * 2000, 14 * 2000]  # 784 MP per image
    (folder / "config.json").write_text(json.dumps(config))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="config.json describes"):
            load_model(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
