"""`make demo` from a clone alone: the shipped held-out Nordland data and the demo pipeline on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "data" / "nordland_heldout"
HELD_OUT = range(1920, 2400)  # models/nordland_tiny was trained on places 0-1919


def _place_file(place: int) -> str:
    return f"images-{(place + 1) * 10:05d}.png"


def test_demo_data_is_exactly_the_held_out_places():
    for season in ("summer", "winter"):
        names = sorted(p.name for p in (DEMO_DATA / season).glob("*.png"))
        assert names == sorted(_place_file(p) for p in HELD_OUT), season
    image = cv2.imread(str(DEMO_DATA / "winter" / _place_file(2000)), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (32, 64, 3)
    readme = (DEMO_DATA / "README.md").read_text()
    for needed in ("NRK", "SeqSLAM", "research use", "1920-2399"):
        assert needed in readme


def _readme_demo_figure() -> str:
    """The README's quote of the demo's precision and recall (its doc-test figure marker)."""
    import doc_blocks

    _, figures = doc_blocks.parse(REPO / "README.md", REPO)
    (figure,) = [f for f in figures if "scripts.demo" in f.command and f.text and "recall" in f.text]
    return figure.text


def _readme_replay_figures() -> list[str]:
    """Every figure the README quotes from ``scripts.demo --replay`` (Nordland and RGB-D parts)."""
    import doc_blocks

    _, figures = doc_blocks.parse(REPO / "README.md", REPO)
    return [f.text for f in figures if "scripts.demo --replay" in f.command and f.text and not f.unchecked]


@pytest.mark.slow
@pytest.mark.ros
def test_demo_runs_from_a_copy_with_nothing_beside_it(tmp_path):
    """The demo (live node, the demo's size; then the RGB-D part) on the shipped data, in a copy of
    the repository that has no ../shared beside it, prints the README's figures (which the doc test
    checks against ``--replay``, the node's decision replayed offline)."""
    clone = tmp_path / "clone" / "qaa_vpr_ros"
    clone.mkdir(parents=True)
    # scripts/ is copied (the demo finds the repository from its own resolved path); the rest is linked.
    subprocess.run(["cp", "-r", str(REPO / "scripts"), str(clone / "scripts")], check=True)
    for name in ("qaa_vpr_ros", "models", "data", "training", "config"):
        (clone / name).symlink_to(REPO / name)
    assert not (clone.parent / "shared").exists()
    env = dict(os.environ, PYTHONPATH=str(clone), ROS_DOMAIN_ID=str(100 + os.getpid() % 100),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    out = tmp_path / "demo_out"
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--out", str(out),
         "--no-slam"],  # the SLAM part has its own test (test/test_demo_slam.py)
        cwd=clone, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert str(REPO.parent / "shared") not in proc.stdout + proc.stderr
    assert (out / "matches.png").stat().st_size > 1000
    assert "bundled: models/nordland_tiny" in proc.stdout
    quoted = _readme_demo_figure()
    printed = next((line for line in proc.stdout.splitlines() if line.startswith("precision ")), "")
    assert printed.startswith(quoted + " "), f"README quotes {quoted!r}, the live demo printed {printed!r}"
    import doc_blocks

    figures = _readme_replay_figures()
    assert any("relocalized" in f for f in figures), figures  # the RGB-D part is quoted too
    for figure in figures:
        assert doc_blocks.figure_matches(figure, proc.stdout), f"README quotes {figure!r}; not printed:\n{proc.stdout}"
    assert (out / "rgbd" / "rgbd_map").is_dir()


def test_demo_names_a_missing_data_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scripts.demo", "--data", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert str(tmp_path / "nope") in proc.stderr
