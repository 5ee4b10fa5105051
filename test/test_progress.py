"""Progress output in log files, and counts that agree (issue 14, finding 2).

``python -m training.train > log 2>&1`` wrote thousands of carriage-return redraws; build_map's
bar showed more keyframes than images read (the reader thread runs ahead of the extractor).
"""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bag_writer import Camera, Drive, save_tiny_model, write_drive
from conftest import REPO_ROOT, TINY_CONFIG

from qaa_vpr_ros.progress import INTERVAL_ENV, progress_bar

HELDOUT = REPO_ROOT / "data" / "nordland_heldout"  # places 1920-2399


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gives_whole_lines_at_the_interval_and_a_final_line() -> None:
    log = io.StringIO()
    with progress_bar(500, desc="train", unit="step", file=log, interval_s=3600.0) as bar:
        for _ in range(500):
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 2, lines  # the start and the end: nothing in between within the hour
    assert re.search(r"train: +0%.*0/500", lines[0]) and re.search(r"train: 100%.*500/500", lines[1])


def test_every_interval_one_line_with_the_count_so_far() -> None:
    log = io.StringIO()
    bar = progress_bar(40, desc="build_map", unit="img", file=log, interval_s=0.0)
    for _ in range(40):
        bar.update(1)
    bar.close()
    counts = [int(m.group(1)) for m in re.finditer(r"(\d+)/40", log.getvalue())]
    assert counts == list(range(41)), counts  # one line per update, none repeated at close
    assert "\r" not in log.getvalue()


def test_a_terminal_still_gets_a_live_bar() -> None:
    screen = _Terminal()
    with progress_bar(10, desc="train", file=screen) as bar:
        bar.update(10)
    assert "\r" in screen.getvalue()


def test_disabled_writes_nothing(capsys) -> None:
    with progress_bar(10, desc="x", enabled=False) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""


class _SlowExtractor:
    """The real extractor, slowed down so the bag reader thread runs far ahead of it."""

    def __init__(self, extractor) -> None:
        self._extractor = extractor

    def __getattr__(self, name):
        return getattr(self._extractor, name)

    def extract(self, images, encodings="rgb"):
        time.sleep(0.05)
        return self._extractor.extract(images, encodings)


def test_build_map_progress_never_shows_more_keyframes_than_images_read(tmp_path: Path, monkeypatch,
                                                                        capsys) -> None:
    if not (HELDOUT / "summer").is_dir():
        pytest.skip(f"demo images absent: {HELDOUT}")
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.keyframes import SelectionConfig
    from qaa_vpr_ros.map_tools.build import BuildOptions, build_map
    from qaa_vpr_ros.model import load_model

    # 0.5 m between frames and keyframes every 1.0 m: about every other image is a keyframe.
    bag = write_drive(tmp_path / "bag", HELDOUT, Drive(cameras=[Camera("/cam")], num_frames=24, speed=1.0,
                                                       first_place=1920))
    model = save_tiny_model(tmp_path / "model", TINY_CONFIG)
    extractor = _SlowExtractor(DescriptorExtractor(load_model(model), device="cpu", batch_size=1))
    monkeypatch.setenv(INTERVAL_ENV, "0")  # a line per update
    options = BuildOptions(pose_topic="/odom", selection=SelectionConfig(min_distance_m=1.0))
    result = build_map([bag], tmp_path / "map", extractor, options, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    shown = [(int(m.group(1)), int(m.group(2))) for m in
             re.finditer(r"build_map:.*?(\d+)/24 .*?keyframes=(\d+)", err)]
    assert len(shown) >= 5, err
    assert all(keyframes <= images for images, keyframes in shown), shown
    assert shown[-1] == (24, result.keyframes_total), (shown[-1], result)
    assert 6 <= result.keyframes_total < 24


@pytest.mark.slow
def test_training_redirected_to_a_log_writes_a_few_plain_lines(tmp_path: Path) -> None:
    if not (HELDOUT / "summer").is_dir():
        pytest.skip(f"demo images absent: {HELDOUT}")
    log = tmp_path / "train.log"
    env = {k: v for k, v in os.environ.items() if k != INTERVAL_ENV}
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "training.train", "--config", "training/configs/nordland_cpu.yaml",
             "--out", str(tmp_path / "run"), "--set", f"data_root={HELDOUT}", "max_steps=40",
             "validate_every_epochs=100"],
            cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text
    train_lines = [line for line in text.splitlines() if line.startswith("train:")]
    assert 2 <= len(train_lines) <= 4, train_lines  # start, end, and one every 30 s at most
    assert re.search(r"40/40", train_lines[-1])
