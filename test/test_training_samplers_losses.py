"""P x K sampler, joint label offsets, the per-dataset Multi-Similarity sum, recall math, config overrides."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners

from training.config import ConfigError, apply_overrides, config_from_dict, load_config
from training.datasets import RetrievalSet
from training.evaluate import evaluate_descriptors, recall_at_k
from training.losses import LossConfig, PerDatasetMultiSimilarity
from training.samplers import JointBatchSampler, PlaceSampler


def _places(num_places: int, per_place: int, start: int = 0) -> list[np.ndarray]:
    return [np.arange(start + p * per_place, start + (p + 1) * per_place) for p in range(num_places)]


def test_place_sampler_batches_are_p_distinct_places_times_k_images() -> None:
    places = _places(50, 6)
    sampler = PlaceSampler(places, places_per_batch=8, images_per_place=4, seed=3)
    assert sampler.steps_per_cycle == 6
    for step in range(12):
        batch = sampler.batch(step)
        assert len(batch) == 32
        chosen = [p for p, _ in batch]
        assert len(set(chosen)) == 8
        for place in set(chosen):
            images = [i for p, i in batch if p == place]
            assert len(images) == 4 and len(set(images)) == 4 and set(images) <= set(places[place].tolist())


def test_place_sampler_covers_each_cycle_once_and_resamples_every_cycle() -> None:
    sampler = PlaceSampler(_places(40, 5), places_per_batch=5, images_per_place=2, seed=0)
    cycle0 = np.concatenate([sampler.places_at(s) for s in range(8)])
    cycle1 = np.concatenate([sampler.places_at(s) for s in range(8, 16)])
    assert sorted(cycle0.tolist()) == list(range(40)) == sorted(cycle1.tolist())
    assert not np.array_equal(cycle0, cycle1)
    images0 = {p: i for p, i in sampler.batch(0)}
    again = PlaceSampler(_places(40, 5), places_per_batch=5, images_per_place=2, seed=0)
    assert again.batch(0) == sampler.batch(0)  # a pure function of (seed, step): what resume relies on
    assert images0


def test_ranks_sample_distinct_places() -> None:
    places = _places(64, 4)
    ranks = [PlaceSampler(places, 8, 4, seed=1, rank=r, world_size=4) for r in range(4)]
    assert ranks[0].steps_per_cycle == 2
    for step in range(4):
        chosen = [set(s.places_at(step).tolist()) for s in ranks]
        assert len(set().union(*chosen)) == 32  # 4 ranks x 8 places, no overlap


def test_sampler_rejects_places_smaller_than_k_and_too_few_places() -> None:
    with pytest.raises(ValueError, match="place 1 has 2 images, fewer than K=4"):
        PlaceSampler([np.arange(4), np.arange(4, 6)], 1, 4, seed=0)
    with pytest.raises(ValueError, match="cannot fill one step"):
        PlaceSampler(_places(5, 4), 4, 4, seed=0, world_size=2)


def test_joint_sampler_offsets_labels_per_dataset() -> None:
    a = PlaceSampler(_places(10, 4), 3, 4, seed=0, dataset_index=0)
    b = PlaceSampler(_places(7, 4), 2, 4, seed=0, dataset_index=1)
    joint = JointBatchSampler([a, b], start_step=0, end_step=5)
    assert joint.label_offsets == [0, 10]
    batches = list(joint)
    assert len(batches) == len(joint) == 5
    for batch in batches:
        assert [k.dataset for k in batch] == [0] * 12 + [1] * 8
        assert all(0 <= k.label < 10 for k in batch[:12]) and all(10 <= k.label < 17 for k in batch[12:])
        assert len({k.label for k in batch}) == 5
        assert len({k.seed for k in batch}) == 20  # every image gets its own augmentation seed
    assert list(JointBatchSampler([a, b], 3, 5))[0] == batches[3]


def test_loss_is_the_sum_of_per_dataset_losses_without_cross_dataset_negatives() -> None:
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(16, 8), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 10, 10, 11, 11, 12, 12, 13, 13])
    datasets = torch.tensor([0] * 8 + [1] * 8)
    total, stats = PerDatasetMultiSimilarity(LossConfig())(emb, labels, datasets)
    ms = losses.MultiSimilarityLoss(alpha=1.0, beta=50.0, base=0.0)
    miner = miners.MultiSimilarityMiner(epsilon=0.1)
    expected = sum(ms(emb[datasets == d], labels[datasets == d], miner(emb[datasets == d], labels[datasets == d]))
                   for d in (0, 1))
    assert torch.allclose(total, expected)
    assert stats["loss/0"] + stats["loss/1"] == pytest.approx(float(total), rel=1e-6)
    # one loss over the concatenated batch mines negatives across datasets: a different value
    assert not torch.allclose(total, ms(emb, labels, miner(emb, labels)))
    assert stats["mined_pairs"] == sum(stats[f"mined_{k}/{d}"] for k in ("pos", "neg") for d in (0, 1))


def test_loss_has_gradients() -> None:
    emb = F.normalize(torch.randn(8, 4), dim=1).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    total, _ = PerDatasetMultiSimilarity()(emb, labels, torch.zeros(8, dtype=torch.long))
    total.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_recall_at_k_counts_first_hit_and_skips_queries_without_positives() -> None:
    predictions = np.array([[3, 1, 2], [0, 2, 1], [2, 0, 1], [0, 1, 2]])
    positives = [np.array([3]), np.array([1]), np.array([7]), np.array([], dtype=np.int64)]
    r = recall_at_k(predictions, positives, ks=(1, 2, 3))
    assert r == pytest.approx({"R@1": 100 / 3, "R@2": 100 / 3, "R@3": 200 / 3})


def test_evaluate_descriptors_uses_exact_nearest_neighbours() -> None:
    db = np.eye(4, dtype=np.float32)
    queries = np.array([[0.9, 0.1, 0, 0], [0, 0, 0.2, 0.8]], dtype=np.float32)
    rs = RetrievalSet("toy", [f"d{i}" for i in range(4)], ["q0", "q1"], [np.array([0]), np.array([2])])
    result, predictions = evaluate_descriptors(db, queries, rs, ks=(1, 2))
    assert predictions[:, 0].tolist() == [0, 3]
    assert result["R@1"] == 50.0 and result["R@2"] == 100.0


MINIMAL = {"model": {"backbone_arch": "x", "backbone_config": {}, "agg_arch": "QAA", "agg_config": {}},
           "datasets": [{"format": "traversal", "root": "."}]}


def test_overrides_reach_nested_keys_and_list_items() -> None:
    raw = apply_overrides(MINIMAL, ["optim.lr_aggregator=2e-5", "datasets.0.root=/data/x", "model.pretrained=/w.pth",
                                    "datasets.0.options.frame_range=[0.1, 0.5]", "max_steps=null"])
    config = config_from_dict(raw)
    assert config.optim.lr_aggregator == 2e-5 and config.datasets[0].root == "/data/x"
    assert config.model["pretrained"] == "/w.pth" and config.datasets[0].options["frame_range"] == [0.1, 0.5]
    assert MINIMAL["datasets"][0]["root"] == "."  # the input is not modified


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"datasets.0: unknown key\(s\) \['places'\]"):
        config_from_dict(apply_overrides(MINIMAL, ["datasets.0.places=3"]))
    with pytest.raises(ConfigError, match="datasets.5"):
        apply_overrides(MINIMAL, ["datasets.5.root=x"])
    with pytest.raises(ConfigError, match="train_image_size"):
        config_from_dict({**MINIMAL, "train_image_size": [224, 225]})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["nordland_cpu", "paper_joint_qaa8192", "paper_joint_qaa4096",
                                  "paper_joint_qaa2048", "paper_joint_qaa1024"])
def test_shipped_configs_parse(name: str) -> None:
    path = Path(__file__).resolve().parents[1] / "training" / "configs" / f"{name}.yaml"
    config, _ = load_config(path)
    assert config.datasets and config.validation
    if name.startswith("paper"):
        agg = config.model["agg_config"]
        assert agg["num_clusters"] * agg["cluster_dim"] == int(name[-4:])
        assert [(d.places_per_batch, d.images_per_place) for d in config.datasets] == [(30, 4)] * 3
        assert config.train_image_size == (224, 224) and config.eval_image_size == (322, 322)
