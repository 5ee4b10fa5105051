"""build_map --ray and eval_map --ray on a local Ray instance: the same map as the sequential build
(keyframes, order, ids, poses, stamps, bitwise descriptors, the manifest but for ``created``), a
worker killed mid-build, a failed bag named, --resume from a sequential build's chunks; and --ray
without Ray installed."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from bag_writer import Camera, Drive, write_drive

from qaa_vpr_ros.map_tools.build import KILL_WORKER_ONCE_ENV
from qaa_vpr_ros.map_tools.build import main as build_main
from qaa_vpr_ros.map_tools.evaluate import main as eval_main
from qaa_vpr_ros.maps import PlaceMap, read_manifest

pytest_plugins = ["maps_fixtures"]  # fixtures: nordland, model_dir
REPO = Path(__file__).resolve().parents[1]
# Fields of the manifest that differ between two builds of the same map by construction.
DIFFERS_BY_CONSTRUCTION = ("created",)
CAMERAS = [Camera("/cam_front", season="summer"), Camera("/cam_rear", season="winter", compressed="jpeg")]
# Chunks of 5 keyframes in batches of 2: chunks span bags and end in a short batch.
SMALL = ("--chunk-size", "5", "--batch-size", "2", "--min-distance", "4", "--min-rotation", "0", "--no-progress")


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="Ray is not installed (optional extra: pip install qaa_vpr_ros[ray])")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def bags(tmp_path_factory, nordland) -> list[Path]:
    """Three short drives (different lengths and places; the last with a NavSatFix topic too)."""
    root = tmp_path_factory.mktemp("ray_bags")
    drive = Drive(cameras=list(CAMERAS), num_frames=7, speed=5.0)
    return [
        write_drive(root / "run_a", nordland, drive),
        write_drive(root / "run_b", nordland, replace(drive, num_frames=5, first_place=20, time_offset_s=3.0)),
        write_drive(root / "run_c", nordland, replace(drive, num_frames=6, first_place=40, fix_topic="/fix")),
    ]


@pytest.fixture(scope="module")
def sequential_map(tmp_path_factory, bags, model_dir) -> Path:
    """The one-process build, with one torch thread as each Ray task has."""
    import torch

    out = tmp_path_factory.mktemp("sequential") / "map"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert build_main([*map(str, bags), "--model", str(model_dir), "--pose-topic", "/odom", "-o", str(out),
                           "--keep-work", *SMALL]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def ray_build(bags, model_dir, out, *extra: str) -> int:
    return build_main([*map(str, bags), "--model", str(model_dir), "--pose-topic", "/odom", "-o", str(out),
                       *SMALL, "--ray", "auto", "--ray-cpus-per-task", "1", *extra])


def assert_same_map(built: Path, reference: Path) -> None:
    a, b = PlaceMap.load(built), PlaceMap.load(reference)
    assert len(b) >= 10
    assert a.keyframes == b.keyframes  # ids, order, stamps, poses, cameras, sources
    assert np.array_equal(np.asarray(a.descriptors), np.asarray(b.descriptors))  # bitwise
    assert np.asarray(a.descriptors).dtype == np.asarray(b.descriptors).dtype
    ma, mb = read_manifest(built), read_manifest(reference)
    for key in DIFFERS_BY_CONSTRUCTION:
        assert ma.pop(key) != mb.pop(key)
    assert ma == mb


def test_ray_build_equals_the_sequential_build(ray_instance, bags, model_dir, sequential_map, tmp_path, capsys):
    reference = PlaceMap.load(sequential_map)
    assert {kf.source for kf in reference.keyframes} == {"run_a", "run_b", "run_c"}
    # some images were not selected, and some chunk holds keyframes of two bags
    build = read_manifest(sequential_map)["info"]["build"]
    assert sum(c["not_selected"] for c in build["cameras"].values()) > 0
    sources_by_chunk = {}
    for kf in reference.keyframes:
        sources_by_chunk.setdefault(kf.id // 5, set()).add(kf.source)
    assert any(len(s) > 1 for s in sources_by_chunk.values())

    out = tmp_path / "ray_map"
    assert ray_build(bags, model_dir, out) == 0
    assert f"{len(reference)} keyframes ({len(reference)} computed" in capsys.readouterr().out
    assert_same_map(out, sequential_map)
    assert not (tmp_path / "ray_map.work").exists()


def test_a_worker_killed_mid_build_is_retried(ray_instance, bags, model_dir, sequential_map, tmp_path, monkeypatch):
    flag = tmp_path / "killed-once"
    monkeypatch.setenv(KILL_WORKER_ONCE_ENV, str(flag))
    out = tmp_path / "ray_map"
    assert ray_build(bags, model_dir, out) == 0
    assert flag.exists()  # a worker did SIGKILL itself
    assert_same_map(out, sequential_map)


def test_a_worker_that_keeps_dying_fails_the_build_naming_its_bags(ray_instance, bags, model_dir, tmp_path,
                                                                     monkeypatch, capsys):
    flag = tmp_path / "killed-once"
    monkeypatch.setenv(KILL_WORKER_ONCE_ENV, str(flag))
    assert ray_build(bags, model_dir, tmp_path / "ray_map", "--ray-max-retries", "0") == 1
    err = capsys.readouterr().err
    assert "worker died 1 times" in err and "run_" in err, err


def test_a_failed_bag_is_named(ray_instance, bags, model_dir, tmp_path, capsys):
    # Only run_c has /fix: the surveys of run_a and run_b fail; the first to fail is named.
    rc = build_main([*map(str, bags), "--model", str(model_dir), "--pose-topic", "/fix", "-o",
                     str(tmp_path / "map"), *SMALL, "--ray", "auto"])
    err = capsys.readouterr().err
    assert rc == 1
    assert ("run_a" in err or "run_b" in err) and "run_c" not in err and "'/fix'" in err, err
    assert not (tmp_path / "map.work").exists()


def test_resume_uses_the_chunks_an_interrupted_build_left(ray_instance, bags, model_dir, sequential_map, tmp_path,
                                                          capsys):
    out = tmp_path / "map"
    work = tmp_path / "map.work"
    work.mkdir()
    chunks = sorted((sequential_map.parent / "map.work").glob("chunk-*.npz"))
    assert len(chunks) >= 4
    for chunk in chunks[::2]:  # the sequential build "died" with every second chunk written
        (work / chunk.name).write_bytes(chunk.read_bytes())
    (work / "build.json").write_bytes((sequential_map.parent / "map.work" / "build.json").read_bytes())
    assert ray_build(bags, model_dir, out) == 1  # the work folder blocks a fresh build
    assert "--resume" in capsys.readouterr().err
    assert ray_build(bags, model_dir, out, "--resume") == 0
    assert f"{len(chunks[::2])} chunks resumed" in capsys.readouterr().out
    assert_same_map(out, sequential_map)


def test_eval_map_ray_gives_the_same_report(ray_instance, bags, model_dir, sequential_map, capsys):
    common = [str(sequential_map), "--query-bags", str(bags[2]), "--model", str(model_dir), "--pose-topic", "/odom",
              "--batch-size", "2", "--radius", "10", "--no-progress", "--no-decision"]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert eval_main(common) == 0
    finally:
        torch.set_num_threads(threads)
    plain = capsys.readouterr().out
    assert eval_main([*common, "--ray", "auto"]) == 0
    assert capsys.readouterr().out == plain
    assert "Recall@1" in plain or "R@1" in plain, plain


def test_ray_missing_fails_in_one_line_naming_the_extra(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from qaa_vpr_ros.map_tools.build import main\n"
            f"sys.exit(main(['{tmp_path}/bag', '--model', '{tmp_path}/m', '-o', '{tmp_path}/map', '--ray']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install qaa_vpr_ros[ray]" in lines[0], done.stderr
