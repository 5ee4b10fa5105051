"""build_map on real rosbag2 recordings written with rosbags (sqlite3, mcap, zstd; raw and
compressed cameras; odometry and NavSatFix), with the tiny random model."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from bag_writer import START_NS, Camera, Drive, distinct_places, pose_at, storage_file, write_drive

from qaa_vpr_ros.bags import iter_image_messages, open_bag
from qaa_vpr_ros.image_conversion import image_from_msg
from qaa_vpr_ros.map_tools.build import CRASH_AFTER_CHUNKS_ENV
from qaa_vpr_ros.map_tools.build import main as build_main
from qaa_vpr_ros.map_tools.merge import main as merge_main
from qaa_vpr_ros.maps import MapError, PlaceMap, read_manifest

pytest_plugins = ["maps_fixtures"]  # fixtures: nordland, model_dir, extractor
REPO = Path(__file__).resolve().parents[1]
FRAMES = 12
CAMERAS = [
    Camera("/cam_front", season="summer", encoding="rgb8", pad=4, frame_id="front"),
    Camera("/cam_rear", season="winter", compressed="jpeg", frame_id="rear"),
]


@pytest.fixture(scope="module")
def places(model_dir, nordland) -> list[int]:
    return distinct_places(model_dir, nordland, FRAMES)


@pytest.fixture(scope="module")
def drive(places) -> Drive:
    return Drive(cameras=list(CAMERAS), num_frames=FRAMES, places=places, fix_topic="/fix")


@pytest.fixture(scope="module")
def bags(tmp_path_factory, nordland, drive) -> dict[str, Path]:
    """The same drive recorded three ways."""
    root = tmp_path_factory.mktemp("bags")
    return {
        "sqlite": write_drive(root / "run_sqlite", nordland, drive),
        "mcap": storage_file(write_drive(root / "run_mcap", nordland, replace(drive, storage="mcap"))),
        "zstd": write_drive(root / "run_zstd", nordland, replace(drive, storage="mcap", compress_zstd=True)),
    }


def build(*args: str) -> int:
    return build_main([*map(str, args), "--no-progress"])


ALL_FRAMES = ("--min-distance", "0", "--min-rotation", "0")


@pytest.fixture(scope="module")
def reference_map(tmp_path_factory, bags, model_dir) -> Path:
    """An uninterrupted, unsharded build in small chunks (compared against resume and shards)."""
    out = tmp_path_factory.mktemp("reference") / "map"
    assert build(bags["sqlite"], bags["mcap"], "--model", model_dir, "--pose-topic", "/odom", "-o", out,
                 *ALL_FRAMES, "--chunk-size", "6", "--batch-size", "3") == 0
    return out


def images_of(bag: Path, topics=("/cam_front", "/cam_rear")):
    with open_bag(bag) as opened:
        for message in iter_image_messages(opened, list(topics)):
            yield message.topic, message.stamp_ns, image_from_msg(message.msg)


def test_build_reload_and_each_keyframe_image_finds_itself(reference_map, bags, extractor):
    place_map = PlaceMap.load(reference_map, extractor.fingerprint)
    assert len(place_map) == 2 * 2 * FRAMES  # two bags x two cameras, every frame a keyframe
    assert place_map.map_frame == "odom"
    by_key = {(kf.source, kf.camera, kf.stamp_ns): kf for kf in place_map.keyframes}
    for name in ("sqlite", "mcap"):
        records = list(images_of(bags[name]))
        assert len(records) == 2 * FRAMES
        descriptors = extractor.extract([r[2][0] for r in records], [r[2][1] for r in records])
        result = place_map.search(descriptors, k=3)
        for (topic, stamp, _), ids, scores in zip(records, result.ids, result.scores, strict=True):
            expected = by_key[(bags[name].name, topic, stamp)]
            # The same image is in the map twice (both bags hold the same drive): either copy.
            twins = {kf.id for kf in place_map.keyframes if kf.camera == topic and kf.stamp_ns == stamp}
            assert ids[0] in twins and expected.id in ids[:2]
            assert scores[0] > 0.995


def test_keyframe_records_carry_interpolated_poses_and_metadata(reference_map, drive):
    place_map = PlaceMap.load(reference_map)
    for kf in place_map.keyframes:
        t = (kf.stamp_ns - START_NS) / 1e9
        position, orientation = pose_at(t, drive)
        np.testing.assert_allclose(kf.position, position, atol=1e-6)
        np.testing.assert_allclose(kf.orientation, orientation, atol=1e-6)
        assert kf.frame_id == {"/cam_front": "front", "/cam_rear": "rear"}[kf.camera]
        assert kf.utm_zone is None
    manifest = json.loads((reference_map / "manifest.json").read_text())
    assert [s["name"] for s in manifest["sources"]] == ["run_sqlite", "run_mcap.mcap"]
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"])
    assert manifest["counts"]["per_camera"] == {"/cam_front": 24, "/cam_rear": 24}


def test_navsatfix_poses_become_utm_with_the_zone_kept(tmp_path, bags, model_dir):
    out = tmp_path / "map"
    assert build(bags["zstd"], "--model", model_dir, "--pose-topic", "/fix", "-o", out, *ALL_FRAMES) == 0
    place_map = PlaceMap.load(out)
    assert place_map.map_frame == "utm" and len(place_map) == 2 * FRAMES
    front = [kf for kf in place_map.keyframes if kf.camera == "/cam_front"]
    assert {kf.utm_zone for kf in front} == {"33W"}
    eastings = np.array([kf.position[0] for kf in front])
    assert 300_000 < eastings[0] < 700_000
    np.testing.assert_allclose(np.diff(eastings), 1.5, atol=0.05)  # 3 m/s, 2 Hz


def test_selection_thresholds_thin_out_keyframes(tmp_path, bags, model_dir):
    out = tmp_path / "map"
    assert build(bags["sqlite"], "--model", model_dir, "--pose-topic", "/odom", "-o", out,
                 "--min-distance", "2.5", "--min-rotation", "0") == 0
    place_map = PlaceMap.load(out)
    # 1.5 m between frames: every second frame travels >= 2.5 m since the last keyframe.
    assert len(place_map) == 2 * FRAMES // 2
    info = json.loads((out / "manifest.json").read_text())["info"]["build"]["cameras"]["/cam_front"]
    assert info == {"images": FRAMES, "keyframes": FRAMES // 2, "not_selected": FRAMES // 2,
                    "outside_pose_range": 0, "in_pose_gap": 0, "undecodable": 0,
                    "view_keyframes": 0}


def test_images_outside_the_poses_or_in_gaps_are_skipped_and_counted(tmp_path, nordland, drive, model_dir):
    # Poses only from t=1.0 to t=4.5 s, missing between 2 and 4 s; images every 0.5 s from 0 to 5.5 s.
    bag = write_drive(tmp_path / "gappy", nordland,
                      replace(drive, cameras=[CAMERAS[0]], pose_lead_s=-1.0, pose_gap=(2.0, 4.0)))
    out = tmp_path / "map"
    assert build(bag, "--model", model_dir, "--pose-topic", "/odom", "--max-pose-gap", "1.0", "-o", out,
                 *ALL_FRAMES) == 0
    stats = json.loads((out / "manifest.json").read_text())["info"]["build"]["cameras"]["/cam_front"]
    assert stats["outside_pose_range"] == 4  # t = 0, 0.5, 5.0, 5.5
    assert stats["in_pose_gap"] == 3  # t = 2.5, 3.0, 3.5
    assert stats["keyframes"] == len(PlaceMap.load(out)) == FRAMES - 7


def test_an_undecodable_jpeg_is_skipped_and_counted(tmp_path, nordland, drive, model_dir):
    bag = write_drive(tmp_path / "bad_jpeg", nordland, replace(drive, corrupt_frames=(3,)))
    out = tmp_path / "map"
    assert build(bag, "--model", model_dir, "--pose-topic", "/odom", "-o", out, *ALL_FRAMES) == 0
    stats = json.loads((out / "manifest.json").read_text())["info"]["build"]["cameras"]
    assert stats["/cam_rear"]["undecodable"] == 1 and stats["/cam_rear"]["keyframes"] == FRAMES - 1
    assert stats["/cam_front"]["keyframes"] == FRAMES  # the raw camera's frame 3 is fine
    rear_stamps = {kf.stamp_ns for kf in PlaceMap.load(out).keyframes if kf.camera == "/cam_rear"}
    assert START_NS + 1_500_000_000 not in rear_stamps


def test_a_missing_pose_topic_is_a_clear_error(tmp_path, bags, model_dir, capsys):
    assert build(bags["sqlite"], "--model", model_dir, "--pose-topic", "/gps", "-o", tmp_path / "map") == 1
    err = capsys.readouterr().err
    assert "pose topic '/gps' is not in bag" in err and "run_sqlite" in err and "/fix, /odom" in err
    assert not (tmp_path / "map").exists()
    # --allow-truncated tolerates damaged bags, not wrong arguments.
    assert build(bags["sqlite"], "--model", model_dir, "--pose-topic", "/gps", "-o", tmp_path / "map",
                 "--allow-truncated") == 1
    assert "pose topic '/gps' is not in bag" in capsys.readouterr().err


def test_without_a_pose_topic_keyframes_carry_stamps_only(tmp_path, bags, model_dir):
    out = tmp_path / "map"
    assert build(bags["sqlite"], "--model", model_dir, "--image-topics", "/cam_rear", "-o", out,
                 "--min-interval", "0.9") == 0
    place_map = PlaceMap.load(out)
    assert place_map.map_frame == "map"
    assert len(place_map) == FRAMES // 2  # one image per second, distance thresholds ignored
    assert not any(kf.has_pose for kf in place_map.keyframes)


def test_a_truncated_bag_is_named_or_skipped_when_allowed(tmp_path, nordland, drive, bags, model_dir, capsys):
    bag = write_drive(tmp_path / "cut", nordland, drive)
    db = storage_file(bag)
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    assert build(bag, "--model", model_dir, "--pose-topic", "/odom", "-o", tmp_path / "map") == 1
    err = capsys.readouterr().err
    assert f"bag {bag} cannot be opened, it is truncated or corrupt" in err

    out = tmp_path / "map2"
    assert build(bags["sqlite"], bag, "--model", model_dir, "--pose-topic", "/odom", "-o", out, *ALL_FRAMES,
                 "--allow-truncated") == 0
    assert len(PlaceMap.load(out)) == 2 * FRAMES
    damaged = json.loads((out / "manifest.json").read_text())["info"]["build"]["damaged_bags"]
    assert list(damaged) == ["cut"]


def test_an_existing_map_is_not_overwritten_by_accident(tmp_path, bags, model_dir, capsys):
    out = tmp_path / "map"
    out.mkdir()
    assert build(bags["sqlite"], "--model", model_dir, "-o", out) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.slow  # a separate process that is killed mid-build
def test_resume_after_kill_9_gives_the_same_map(tmp_path, reference_map, bags, model_dir):
    out = tmp_path / "map"
    args = [str(bags["sqlite"]), str(bags["mcap"]), "--model", str(model_dir), "--pose-topic", "/odom", "-o",
            str(out), *ALL_FRAMES, "--chunk-size", "6", "--batch-size", "3", "--no-progress"]
    env = dict(os.environ, **{CRASH_AFTER_CHUNKS_ENV: "3"})
    proc = subprocess.run([sys.executable, "-m", "qaa_vpr_ros.map_tools.build", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), proc.stderr
    work = out.with_name("map.work")
    assert sorted(p.name for p in work.glob("chunk-*.npz")) == [f"chunk-00000{i}.npz" for i in range(3)]
    assert not out.exists()

    assert build_main([*args[:-1], "--no-progress"]) == 1  # without --resume: refuses, keeps the chunks
    assert build_main([*args, "--resume"]) == 0
    assert not work.exists()
    for name in ("descriptors.npy", "keyframes.sqlite", "index.faiss"):
        assert (out / name).read_bytes() == (reference_map / name).read_bytes(), name
    info = json.loads((out / "manifest.json").read_text())["info"]["build"]
    assert info["keyframes_total"] == 48


def test_resume_refuses_a_different_build(tmp_path, bags, model_dir, capsys):
    out = tmp_path / "map"
    work = out.with_name("map.work")
    common = [bags["sqlite"], "--model", model_dir, "--pose-topic", "/odom", "-o", out, "--keep-work"]
    assert build(*common, "--min-distance", "1.0") == 0
    shutil.rmtree(out)  # as if the build had died before saving: only the work folder is left
    assert build(*common, "--min-distance", "2.0", "--resume") == 1
    err = capsys.readouterr().err
    assert f"cannot resume: {work} was started with selection=" in err and "delete" in err
    assert build(*common, "--min-distance", "2.0", "--overwrite") == 0  # starts over
    assert json.loads((work / "build.json").read_text())["selection"]["min_distance_m"] == 2.0


def test_shards_merge_into_the_unsharded_map(tmp_path, reference_map, bags, model_dir, capsys):
    shards = []
    for i in range(3):
        shards.append(tmp_path / f"shard{i}")
        assert build(bags["sqlite"], bags["mcap"], "--model", model_dir, "--pose-topic", "/odom", "-o", shards[-1],
                     *ALL_FRAMES, "--chunk-size", "6", "--batch-size", "3", "--shard", f"{i}/3") == 0
    sizes = [len(PlaceMap.load(s)) for s in shards]
    assert sum(sizes) == 48 and all(s > 0 for s in sizes)
    assert merge_main([str(shards[1]), str(shards[0]), "-o", str(tmp_path / "incomplete")]) == 1
    assert "missing ['2/3']" in capsys.readouterr().err
    merged = tmp_path / "merged"
    assert merge_main([str(shards[2]), str(shards[0]), str(shards[1]), "-o", str(merged)]) == 0
    for name in ("descriptors.npy", "keyframes.sqlite", "index.faiss"):
        assert (merged / name).read_bytes() == (reference_map / name).read_bytes(), name
    # Every shard carries the build's map_id, and so does the merged map: it is that build.
    build_map_id = PlaceMap.load(reference_map).map_id
    assert [PlaceMap.load(s).map_id for s in shards] == [build_map_id] * 3
    assert PlaceMap.load(merged).map_id == build_map_id
    # Shards that disagree on the id are not merged under one by guess; --map-id decides.
    renamed = tmp_path / "shard0_renamed"
    shutil.copytree(shards[0], renamed)
    manifest = json.loads((renamed / "manifest.json").read_text())
    (renamed / "manifest.json").write_text(json.dumps({**manifest, "map_id": "elsewhere"}))
    parts = [str(renamed), str(shards[1]), str(shards[2])]
    assert merge_main([*parts, "-o", str(tmp_path / "disagree")]) == 1
    assert "different map_ids ['elsewhere', " in capsys.readouterr().err
    assert merge_main([*parts, "-o", str(tmp_path / "chosen"), "--map-id", "campus"]) == 0
    assert PlaceMap.load(tmp_path / "chosen").map_id == "campus"


def test_a_build_names_its_map_after_its_first_bag_and_its_build_id(tmp_path, reference_map, bags, model_dir,
                                                                    capsys):
    manifest = read_manifest(reference_map)
    assert manifest["format_version"] == 2
    assert manifest["map_id"] == f"run_sqlite-{manifest['info']['build']['build_id'][:8]}"
    out = tmp_path / "named"
    assert build(bags["zstd"], "--model", model_dir, "--pose-topic", "/odom", "-o", out, "--map-id", "north loop") == 0
    assert PlaceMap.load(out).map_id == "north loop"
    with pytest.raises(SystemExit):  # refused before any bag is read
        build(bags["zstd"], "--model", model_dir, "-o", tmp_path / "reserved", "--map-id", "online")
    assert "'online' is reserved" in capsys.readouterr().err and not (tmp_path / "reserved.work").exists()


def test_build_with_an_approximate_index(tmp_path, bags, model_dir):
    out = tmp_path / "map"
    assert build(bags["sqlite"], "--model", model_dir, "-o", out, *ALL_FRAMES, "--index", "hnsw",
                 "--hnsw-m", "8") == 0
    place_map = PlaceMap.load(out)
    assert place_map.index_type == "hnsw" and place_map.index_params["M"] == 8
    with pytest.raises(MapError, match="fingerprint"):
        PlaceMap.load(out, "0" * 64)


def test_a_bag_without_message_definitions_uses_the_default_typestore(tmp_path, bags, model_dir):
    """Bags recorded before ROS 2 Iron carry no message definitions."""
    import sqlite3

    bag = tmp_path / "humble_style"
    shutil.copytree(bags["sqlite"], bag)
    with sqlite3.connect(storage_file(bag)) as db:
        db.execute("DELETE FROM message_definitions")
    with open_bag(bag) as opened:
        assert all(c.msgdef.data == "" for c in opened.reader.connections)
    out = tmp_path / "map"
    assert build(bag, "--model", model_dir, "--pose-topic", "/odom", "-o", out, *ALL_FRAMES) == 0
    assert len(PlaceMap.load(out)) == 2 * FRAMES


def test_posestamped_and_pose_with_covariance_topics(tmp_path, nordland, drive, model_dir):
    bag = write_drive(tmp_path / "poses", nordland, replace(drive, cameras=[CAMERAS[0]], odom_topic=None,
                                                            pose_topic="/pose", posecov_topic="/amcl_pose"))
    for topic in ("/pose", "/amcl_pose"):
        out = tmp_path / topic.strip("/")
        assert build(bag, "--model", model_dir, "--pose-topic", topic, "-o", out, *ALL_FRAMES) == 0
        place_map = PlaceMap.load(out)
        assert place_map.map_frame == "map" and len(place_map) == FRAMES
        for kf in place_map.keyframes:
            position, orientation = pose_at((kf.stamp_ns - START_NS) / 1e9, drive)
            np.testing.assert_allclose(kf.position, position, atol=1e-6)
            np.testing.assert_allclose(kf.orientation, orientation, atol=1e-6)


def test_rebuilding_a_map_with_another_index(tmp_path, reference_map):
    out = tmp_path / "hnsw"
    assert merge_main([str(reference_map), "-o", str(out), "--index", "hnsw", "--hnsw-m", "8"]) == 0
    original, rebuilt = PlaceMap.load(reference_map), PlaceMap.load(out)
    assert rebuilt.index_type == "hnsw" and rebuilt.keyframes == original.keyframes
    np.testing.assert_array_equal(rebuilt.descriptors, original.descriptors)
    queries = np.asarray(original.descriptors, np.float32)
    # Both bags hold the same drive, so every descriptor has a twin: compare scores, not ids.
    np.testing.assert_allclose(rebuilt.search(queries, 2).scores, original.search(queries, 2).scores, atol=1e-5)
