"""The map tools: merge_maps (sessions), map_info, eval_map, export_map and the dispatcher."""
from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from bag_writer import Camera, Drive, distinct_places, nordland_image, save_tiny_model, write_drive

from qaa_vpr_ros.map_tools.__main__ import main as maps_main
from qaa_vpr_ros.map_tools.build import main as build_main
from qaa_vpr_ros.map_tools.evaluate import evaluate_queries
from qaa_vpr_ros.map_tools.evaluate import main as eval_main
from qaa_vpr_ros.map_tools.export import main as export_main
from qaa_vpr_ros.map_tools.info import main as info_main
from qaa_vpr_ros.map_tools.merge import main as merge_main
from qaa_vpr_ros.maps import Keyframe, PlaceMap

pytest_plugins = ["maps_fixtures"]  # fixtures: nordland, model_dir, extractor
REPO = Path(__file__).resolve().parents[1]
FRAMES = 12
OVERLAP = 6  # session B starts where session A's frame 6 was


@pytest.fixture(scope="module")
def places(model_dir, nordland) -> list[int]:
    return distinct_places(model_dir, nordland, FRAMES + OVERLAP)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory, nordland, places, model_dir) -> dict[str, Path]:
    """Two drives along one route: B re-drives A's second half, then goes on to new places."""
    root = tmp_path_factory.mktemp("sessions")
    cameras = [Camera("/cam_front", encoding="rgb8"), Camera("/cam_rear", season="winter", compressed="png")]
    drive_a = Drive(cameras=cameras, num_frames=FRAMES, places=places[:FRAMES], fix_topic="/fix")
    drive_b = replace(drive_a, places=places[OVERLAP:], time_offset_s=OVERLAP * 0.5, storage="mcap")
    bags = {"bag_a": write_drive(root / "session_a", nordland, drive_a),
            "bag_b": write_drive(root / "session_b", nordland, drive_b)}
    for name in ("a", "b"):
        out = root / f"map_{name}"
        assert build_main([str(bags[f"bag_{name}"]), "--model", str(model_dir), "--pose-topic", "/odom", "-o",
                           str(out), "--min-distance", "0", "--min-rotation", "0", "--no-progress"]) == 0
        bags[f"map_{name}"] = out
    return bags


def test_merging_two_sessions_renumbers_and_keeps_everything(tmp_path, sessions, extractor):
    out = tmp_path / "merged"
    assert merge_main([str(sessions["map_a"]), str(sessions["map_b"]), "-o", str(out)]) == 0
    merged = PlaceMap.load(out, extractor.fingerprint)
    a, b = PlaceMap.load(sessions["map_a"]), PlaceMap.load(sessions["map_b"])
    assert len(merged) == len(a) + len(b) == 4 * FRAMES
    assert [kf.id for kf in merged.keyframes] == list(range(4 * FRAMES))
    assert [s["name"] for s in merged.sources] == ["session_a", "session_b"]
    np.testing.assert_array_equal(merged.descriptors[len(a):], b.descriptors)
    # A keyframe B saw on new ground (frame 10, beyond A) is found again, with its session recorded.
    row = next(i for i, kf in enumerate(b.keyframes) if kf.stamp_ns == b.keyframes[0].stamp_ns + 5_000_000_000)
    result = merged.search(np.asarray(b.descriptors[row : row + 1], np.float32), k=1)
    assert result.keyframes[0][0].source == "session_b"
    assert result.keyframes[0][0].stamp_ns == b.keyframes[row].stamp_ns


def test_a_merge_of_sessions_gets_its_own_map_id(tmp_path, sessions, capsys):
    a, b = PlaceMap.load(sessions["map_a"]), PlaceMap.load(sessions["map_b"])
    assert a.map_id.startswith("session_a-") and b.map_id.startswith("session_b-")
    ids = []
    for name in ("m1", "m2"):
        assert merge_main([str(sessions["map_a"]), str(sessions["map_b"]), "-o", str(tmp_path / name)]) == 0
        merged = PlaceMap.load(tmp_path / name)
        ids.append(merged.map_id)
        assert [m["map_id"] for m in merged.info["merged_from"]] == [a.map_id, b.map_id]
    assert ids[0] == ids[1] and ids[0].startswith("merged-") and ids[0] not in (a.map_id, b.map_id)
    assert merge_main([str(sessions["map_b"]), str(sessions["map_a"]), "-o", str(tmp_path / "m3")]) == 0
    assert PlaceMap.load(tmp_path / "m3").map_id not in ids  # other order, other keyframe ids: other map
    assert merge_main([str(sessions["map_a"]), str(sessions["map_b"]), "-o", str(tmp_path / "m4"),
                       "--map-id", "campus"]) == 0
    assert PlaceMap.load(tmp_path / "m4").map_id == "campus"
    assert merge_main([str(sessions["map_a"]), str(sessions["map_b"]), "-o", str(tmp_path / "m5"),
                       "--map-id", "online"]) == 1
    assert "'online' is reserved" in capsys.readouterr().err and not (tmp_path / "m5").exists()


def test_merge_refuses_other_models_and_other_frames(tmp_path, sessions, model_dir, capsys):
    from conftest import TINY_CONFIG

    other_model = save_tiny_model(tmp_path / "other_model", TINY_CONFIG, seed=1)
    other = tmp_path / "other"
    assert build_main([str(sessions["bag_a"]), "--model", str(other_model), "--pose-topic", "/odom", "-o",
                       str(other), "--no-progress"]) == 0
    assert merge_main([str(sessions["map_a"]), str(other), "-o", str(tmp_path / "m1")]) == 1
    err = capsys.readouterr().err
    a_fingerprint = PlaceMap.load(sessions["map_a"]).model_fingerprint
    assert "model fingerprint" in err and a_fingerprint in err and PlaceMap.load(other).model_fingerprint in err

    utm = tmp_path / "utm"
    assert build_main([str(sessions["bag_b"]), "--model", str(model_dir), "--pose-topic", "/fix", "-o", str(utm),
                       "--no-progress"]) == 0
    assert merge_main([str(sessions["map_a"]), str(utm), "-o", str(tmp_path / "m2")]) == 1
    assert "is in frame 'utm'" in capsys.readouterr().err
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()


def test_map_info_prints_a_summary_and_plots_keyframes(tmp_path, sessions, capsys):
    plot = tmp_path / "keyframes.png"
    assert info_main([str(sessions["map_a"]), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert f"{2 * FRAMES} keyframes" in out and "frame 'odom'" in out
    assert "camera /cam_front: 12 keyframes (12 with pose), path 16.6 m" in out
    assert "index flat" in out and "source session_a: 24 keyframes" in out
    assert f"map_id {PlaceMap.load(sessions['map_a']).map_id!r}" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cv2.imread(str(plot)).shape[0] > 200
    assert info_main([str(sessions["map_a"]), "--json", "--no-plot"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["keyframes"] == 2 * FRAMES and summary["cameras"]["/cam_rear"]["keyframes"] == FRAMES
    assert summary["extent"]["size_m"][0] == pytest.approx(16.5)


def test_evaluate_queries_recall_and_precision_recall():
    dim = 16
    reference = PlaceMap.create(dim, "f" * 64)
    eye = np.eye(dim, dtype=np.float32)
    reference.add(eye[:10], [Keyframe(i, i, 0, "/c", "c", (float(i), 0.0, 0.0)) for i in range(10)])

    def mix(i, j, wi):
        v = wi * eye[i] + math.sqrt(1 - wi * wi) * eye[j]
        return v / np.linalg.norm(v)

    queries = np.stack([eye[0], mix(5, 9, 0.8), mix(3, 7, 0.9), mix(8, 1, 0.95), eye[2]])
    positions = np.array([[0, 0, 0], [5, 0, 0], [7, 0, 0], [100, 0, 0], [np.nan, np.nan, np.nan]])
    # Scores of the top match: q0 1.0 (right), q3 0.95 (wrong, no place within 1 m), q2 0.9 (wrong,
    # the right one is second), q1 0.8 (right); q4 has no ground truth and is ignored.
    result = evaluate_queries(reference, queries, positions, ks=(1, 2, 5), radius_m=1.0)
    assert result.num_queries == 4 and result.num_with_positive == 3
    assert result.recall_at_k == {1: pytest.approx(2 / 3), 2: pytest.approx(1.0), 5: pytest.approx(1.0)}
    np.testing.assert_allclose(result.thresholds, [1.0, 0.95, 0.9, 0.8], atol=1e-3)
    np.testing.assert_allclose(result.precision, [1.0, 0.5, 1 / 3, 0.5])
    np.testing.assert_allclose(result.recall, [1 / 3, 1 / 3, 1 / 3, 2 / 3])
    assert result.recall_at_100_precision == pytest.approx(1 / 3)
    assert result.threshold_at_100_precision == pytest.approx(1.0, abs=1e-3)


def test_eval_map_with_a_query_bag_and_with_a_query_map(tmp_path, sessions, model_dir, capsys):
    out = tmp_path / "eval"
    assert eval_main([str(sessions["map_a"]), "--query-bags", str(sessions["bag_b"]), "--model", str(model_dir),
                      "--pose-topic", "/odom", "--radius", "1.0", "--k", "1", "5", "-o", str(out),
                      "--no-progress"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    # B's first 6 frames (x 2 cameras) revisit A's places; its last 6 are new ground (1.5 m apart).
    assert summary["num_queries"] == 2 * FRAMES and summary["num_with_positive"] == 2 * OVERLAP
    assert summary["recall_at_k"]["1"] == 1.0
    assert summary["recall_at_100_precision"] == 1.0
    assert "R@1=1.000" in printed and "recall at 100% precision: 1.000" in printed
    with open(out / "pr_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["precision"]) == pytest.approx(0.5)  # accepting everything
    assert (out / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"

    out2 = tmp_path / "eval2"
    assert eval_main([str(sessions["map_a"]), "--query-map", str(sessions["map_b"]), "--radius", "1.0",
                      "-o", str(out2)]) == 0
    summary2 = json.loads((out2 / "summary.json").read_text())
    assert summary2["recall_at_k"]["1"] == 1.0 and summary2["num_with_positive"] == 2 * OVERLAP


def test_export_writes_the_training_generic_format(tmp_path, sessions, nordland, places):
    root = tmp_path / "dataset"
    assert export_main([str(sessions["map_a"]), "-o", str(root)]) == 0
    with open(root / "images.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "easting", "northing", "heading", "timestamp", "sequence"]
    assert len(rows) == 2 * FRAMES
    place_map = PlaceMap.load(sessions["map_a"])
    front = [r for r in rows if r["sequence"] == "session_a:/cam_front"]
    for i, row in enumerate(front):
        image = cv2.imread(str(root / row["path"]))
        expected = cv2.cvtColor(nordland_image(nordland, "summer", places[i]), cv2.COLOR_RGB2BGR)
        np.testing.assert_array_equal(image, expected)  # raw camera, PNG: lossless
        stamp = float(row["timestamp"])
        kf = next(k for k in place_map.keyframes if k.camera == "/cam_front" and abs(k.stamp - stamp) < 1e-6)
        assert float(row["easting"]) == pytest.approx(kf.position[0], abs=1e-3)
        assert float(row["northing"]) == pytest.approx(kf.position[1], abs=1e-3)
    # yaw grows from 0 (facing +x = east): heading (clockwise from north) starts at 90 degrees.
    assert float(front[0]["heading"]) == pytest.approx(90.0)
    assert float(front[-1]["heading"]) < 90.0
    try:
        from training.datasets.images_csv import read_images_csv
    except ImportError:
        return
    table = read_images_csv(root)
    assert len(table.paths) == 2 * FRAMES and table.heading is not None


def test_export_finds_moved_bags_or_says_where_they_were(tmp_path, sessions, capsys):
    moved = tmp_path / "moved" / "session_a"
    moved.parent.mkdir()
    shutil.copytree(sessions["bag_a"], moved)
    assert export_main([str(sessions["map_a"]), "-o", str(tmp_path / "d1"), "--bags", str(moved)]) == 0
    manifest_path = sessions["map_a"] / "manifest.json"
    copy = tmp_path / "map_copy"
    shutil.copytree(sessions["map_a"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["sources"][0]["path"] = str(tmp_path / "gone")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert manifest_path.exists()
    assert export_main([str(copy), "-o", str(tmp_path / "d2")]) == 1
    assert "source bag 'session_a' of the map is not at" in capsys.readouterr().err


def test_the_maps_dispatcher(sessions, capsys):
    assert maps_main(["info", str(sessions["map_a"]), "--no-plot"]) == 0
    assert "24 keyframes" in capsys.readouterr().out
    assert maps_main(["frobnicate"]) == 2
    assert "merge" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "qaa_vpr_ros.map_tools", "info", str(sessions["map_a"]), "--no-plot"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "24 keyframes" in proc.stdout
