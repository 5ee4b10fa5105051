"""End-to-end training on a tiny model and tiny traversals: checkpoints, logs, exact resume, DDP, evaluation."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_CONFIG as TINY_MODEL
from PIL import Image

from training import evaluate as evaluate_cli
from training import train as train_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def route(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two frame-synchronised traversals of 40 frames (16 x 32 RGB): winter = summer, darker and noisy."""
    root = tmp_path_factory.mktemp("route")
    rng = np.random.default_rng(0)
    for frame in range(1, 41):
        summer = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
        winter = np.clip(summer.astype(int) * 0.7 + rng.integers(0, 40, summer.shape), 0, 255).astype(np.uint8)
        for name, image in (("summer", summer), ("winter", winter)):
            (root / name).mkdir(exist_ok=True)
            Image.fromarray(image).save(root / name / f"images-{frame * 10:05d}.png")
    return root


def _write_config(folder: Path, route: Path, **overrides: object) -> Path:
    config = {
        "data_root": str(route),
        "model": TINY_MODEL,
        "train_image_size": [28, 28],
        "eval_image_size": [28, 28],
        "datasets": [{"name": "route", "format": "traversal", "root": ".", "places_per_batch": 4, "images_per_place": 2,
                      "options": {"traversals": ["summer", "winter"], "frame_range": [0.0, 0.7]}}],
        "validation": [{"name": "heldout", "format": "traversal", "root": ".",
                        "options": {"database": "summer", "query": "winter", "frame_tolerance": 1,
                                    "frame_range": [0.7, 1.0]}}],
        "optim": {"lr_aggregator": 1e-3, "lr_backbone": 1e-3, "warmup_steps": 2, "decay": "cosine",
                  "grad_clip_norm": 1.0},
        "augment": {"randaugment_num_ops": 2, "randaugment_magnitude": 5},
        "epochs": 2,
        "steps_per_epoch": 3,
        "num_workers": 0,
        "device": "cpu",
        "log_every_steps": 1,
        "eval_batch_size": 16,
    }
    config.update(overrides)
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def _scalars(out: Path, tag: str) -> dict[int, float]:
    with open(out / "metrics.csv", newline="") as fh:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(fh) if r["tag"] == tag}


def test_training_writes_loadable_checkpoints_logs_and_curves(tmp_path: Path, route: Path) -> None:
    from qaa_vpr_ros.model import load_model

    out = tmp_path / "run"
    assert train_cli.main(["--config", str(_write_config(tmp_path, route)), "--out", str(out), "--no-progress"]) == 0
    model = load_model(out / "checkpoints" / "last")
    assert model.out_dim == 32 and model.image_size == (28, 28)
    assert (out / "checkpoints" / "best" / "model.safetensors").is_file()
    config = json.loads((out / "checkpoints" / "last" / "config.json").read_text())
    assert config["qaa_vpr_ros"]["training"]["step"] == 6
    losses = _scalars(out, "train/loss")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(np.isfinite(list(losses.values())))
    assert set(_scalars(out, "val/heldout/R@1")) == {3, 6}  # validated at the end of each epoch
    assert _scalars(out, "train/lr_aggregator")[1] == pytest.approx(0.5e-3)  # warm-up: step 1 of 2
    assert (out / "curves.png").stat().st_size > 1000
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_continues_exactly(tmp_path: Path, route: Path) -> None:
    """The loss at step N+1 (and N+2) is identical with and without a stop + --resume at step N = 3."""
    from safetensors.torch import load_file

    config = _write_config(tmp_path, route, num_workers=1)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_cli.main(["--config", str(config), "--out", str(straight), "--no-progress"])
    train_cli.main(["--config", str(config), "--out", str(resumed), "--no-progress", "--set", "max_steps=3"])
    assert sorted(_scalars(resumed, "train/loss")) == [1, 2, 3]
    train_cli.main(["--out", str(resumed), "--resume", "--no-progress", "--set", "max_steps=null"])
    a, b = _scalars(straight, "train/loss"), _scalars(resumed, "train/loss")
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    assert a[4] == b[4] and a[5] == b[5] and a == b
    wa = load_file(str(straight / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(resumed / "checkpoints" / "last" / "model.safetensors"))
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


def test_resume_without_a_checkpoint_says_what_to_do(tmp_path: Path, route: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train without --resume first"):
        train_cli.main(["--config", str(_write_config(tmp_path, route)), "--out", str(tmp_path / "none"),
                        "--resume", "--no-progress"])


@pytest.mark.slow
def test_two_process_gloo_torchrun(tmp_path: Path, route: Path) -> None:
    """2 ranks (gloo): distinct places per rank, gathered validation equal to a single-process evaluation."""
    out = tmp_path / "ddp"
    config = _write_config(tmp_path, route, epochs=1, steps_per_epoch=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "training.train", "--config", str(config), "--out", str(out), "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 2
    state_config = json.loads((out / "checkpoints" / "last" / "config.json").read_text())
    assert state_config["qaa_vpr_ros"]["training"]["step"] == 2
    # the recall computed from descriptors gathered across the two ranks equals a one-process evaluation
    evaluate_cli.main(["--model", str(out / "checkpoints" / "last"), "--dataset", f"traversal:{route}",
                       "--database-traversal", "summer", "--query-traversal", "winter", "--frame-tolerance", "1",
                       "--frame-range", "0.7:1.0", "--json", str(tmp_path / "eval.json"), "--no-progress"])
    single = json.loads((tmp_path / "eval.json").read_text())[0]
    for k in (1, 5, 10):
        assert summary["validation"][f"val/heldout/R@{k}"] == pytest.approx(single[f"R@{k}"], abs=100 / 12 + 1e-6)
    # --resume under DDP: every rank restores its own RNG state and the run continues at step 3
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "training.train", "--out", str(out), "--resume", "--no-progress", "--set", "epochs=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["step"] == 4
    assert sorted(_scalars(out, "train/loss")) == [1, 2, 3, 4]


def test_evaluate_cli_table_json_plot_and_raw_pixels(tmp_path: Path, route: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    train_cli.main(["--config", str(_write_config(tmp_path, route, epochs=1, steps_per_epoch=1)), "--out", str(out),
                    "--no-progress"])
    args = ["--dataset", f"traversal:{route}", "--database-traversal", "summer", "--query-traversal", "winter",
            "--frame-tolerance", "0", "--no-progress"]
    evaluate_cli.main(["--model", str(out / "checkpoints" / "last"), *args, "--json", str(tmp_path / "r.json"),
                       "--plot", str(tmp_path / "r.png")])
    table = capsys.readouterr().out
    assert "R@1" in table and "R@20" in table and "_winter_to_summer" in table
    result = json.loads((tmp_path / "r.json").read_text())[0]
    assert result["num_queries"] == 40 and 0.0 <= result["R@1"] <= result["R@5"] <= result["R@20"] <= 100.0
    assert (tmp_path / "r.png").stat().st_size > 1000
    # winter = darkened, noisy summer: the raw-pixel baseline finds almost every frame
    evaluate_cli.main(["--model", "raw-pixels:8x16", *args, "--json", str(tmp_path / "raw.json")])
    assert json.loads((tmp_path / "raw.json").read_text())[0]["R@1"] > 90.0


def _msls_city(root: Path, city: str, side: str, keys: list[str], xy: list[tuple[float, float]]) -> None:
    d = root / "train_val" / city / side
    (d / "images").mkdir(parents=True)
    rng = np.random.default_rng(len(keys))
    with open(d / "postprocessed.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "key", "easting", "northing"])
        w.writerows([i, k, e, n] for i, (k, (e, n)) in enumerate(zip(keys, xy, strict=True)))
    with open(d / "raw.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "key", "lon", "lat", "ca", "pano"])
        w.writerows([i, k, 0, 0, 0, False] for i, k in enumerate(keys))
    for k in keys:
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(d / "images" / f"{k}.jpg")


def test_msls_challenge_prediction_file(tmp_path: Path) -> None:
    root = tmp_path / "msls"
    _msls_city(root, "sf", "database", ["d0", "d1", "d2"], [(0, 0), (100, 0), (200, 0)])
    _msls_city(root, "sf", "query", ["q0", "q1"], [(5, 0), (195, 0)])
    pred = tmp_path / "pred.txt"
    with pytest.warns(UserWarning, match=r"only \['sf'\] of the standard validation cities"):
        evaluate_cli.main(["--model", "raw-pixels:8x8", "--dataset", f"msls:{root}", "--msls-predictions",
                           str(pred), "--recalls", "1", "2", "--no-progress"])
    lines = [line.split() for line in pred.read_text().splitlines()]
    assert [line[0] for line in lines] == ["q0", "q1"]
    assert all(len(line) == 3 and set(line[1:]) <= {"d0", "d1", "d2"} for line in lines)
