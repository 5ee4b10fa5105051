"""Local features in the map store (format 2) and in build_map: what is stored per keyframe
(keypoints, descriptors, depth), each camera's intrinsics, the checks on load, and the tools that
carry them (subset/thinning, merge_maps, export_map, map_info). The build tests record real TUM
RGB-D frames (../shared/data/tum_fr1_rpy) into rosbag2 bags with the tiny random model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from qaa_vpr_ros.bag_writer import _T, BagWriter, camera_info_message, header, image_message, odometry_message
from qaa_vpr_ros.keyframes import SelectionConfig, view_overlap
from qaa_vpr_ros.local_features import FeatureConfig, Intrinsics, LocalFeatures, extract_local_features
from qaa_vpr_ros.map_tools.build import BuildOptions, ExtractorSpec, WorkerPool, build_map, build_map_planned
from qaa_vpr_ros.map_tools.build import main as build_main
from qaa_vpr_ros.map_tools.export import main as export_main
from qaa_vpr_ros.map_tools.info import format_summary, map_summary
from qaa_vpr_ros.map_tools.merge import merge_maps
from qaa_vpr_ros.maps import Keyframe, MapError, PlaceMap
from qaa_vpr_ros.maps.format import is_place_map_folder, sha256_file
from qaa_vpr_ros.maps.thinning import thin_rows

pytest_plugins = ["maps_fixtures"]  # fixtures: model_dir, extractor
TUM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tum_fr1_rpy"
TUM_INTRINSICS = Intrinsics(517.3, 516.5, 318.6, 255.3, (0.2624, -0.9531, -0.0054, 0.0026, 1.1633))
FRAMES = 6
COLOUR, DEPTH, INFO = "/camera/rgb/image_color", "/camera/depth/image", "/camera/rgb/camera_info"
ODOM = "/odom"


# --- synthetic features: the store ---------------------------------------------------------------
def unit_rows(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def random_features(n: int, depth: bool, seed: int) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    return LocalFeatures(rng.uniform(0, 640, (n, 2)).astype(np.float32), rng.integers(0, 256, (n, 128), np.uint8),
                         rng.integers(0, 9000, n).astype(np.uint16) if depth else None)


def feature_map(n: int = 6, start_id: int = 0, camera: str = "/cam", seed: int = 0
                ) -> tuple[PlaceMap, list[LocalFeatures | None]]:
    """A map whose keyframes have: features with depth, none, without depth, zero features, ..."""
    m = PlaceMap.create(16, "fp", map_id=f"m{seed}")
    kinds = [(7, True), None, (5, False), (0, True)]
    features = [None if kinds[i % 4] is None else random_features(*kinds[i % 4], seed=seed * 100 + i)
                for i in range(n)]
    keyframes = [Keyframe(start_id + i, 100 + i, 0, camera, "optical", position=(float(i), 0.0, 0.0))
                 for i in range(n)]
    m.add(unit_rows(n, seed=seed), keyframes, features)
    m.set_camera(camera, TUM_INTRINSICS)
    return m, features


def assert_same(a: LocalFeatures | None, b: LocalFeatures | None) -> None:
    assert (a is None) == (b is None)
    if a is None:
        return
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    np.testing.assert_array_equal(a.descriptors, b.descriptors)
    assert (a.depth_mm is None) == (b.depth_mm is None)
    if a.depth_mm is not None:
        np.testing.assert_array_equal(a.depth_mm, b.depth_mm)


def test_features_and_cameras_survive_save_and_load(tmp_path):
    m, features = feature_map()
    assert m.has_local_features
    m.save(tmp_path / "map")
    for mmap in (True, False):
        loaded = PlaceMap.load(tmp_path / "map", mmap=mmap)
        assert loaded.has_local_features and loaded.cameras == {"/cam": TUM_INTRINSICS}
        for kf, expected in zip(loaded.keyframes, features, strict=True):
            assert_same(loaded.local_features(kf.id), expected)
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["local_features"] == {"detector": "sift", "max_features": 700,
                                           "contrast_threshold": FeatureConfig().contrast_threshold,
                                           "count": sum(len(f) for f in features if f is not None)}
    assert manifest["cameras"] == {"/cam": TUM_INTRINSICS.as_list()}
    assert {"features_index.npy", "features_keypoints.npy", "features_descriptors.npy",
            "features_depth.npy"} <= set(manifest["files"])
    assert is_place_map_folder(tmp_path / "map")
    m.save(tmp_path / "map")  # a map folder with feature files is replaced like any map


def test_memory_counts_the_feature_bytes():
    plain = PlaceMap.create(16, "fp")
    plain.add(unit_rows(6), [Keyframe(i, 1, 0, "/cam", "f") for i in range(6)])
    m, features = feature_map()
    stored = sum(f.nbytes + (0 if f.depth_mm is not None else 2 * len(f)) for f in features if f is not None)
    assert m.memory_bytes - plain.memory_bytes >= stored  # capacities: at least what is stored


def test_a_format_2_map_without_features_loads_and_has_none(tmp_path):
    m = PlaceMap.create(16, "fp")
    m.add(unit_rows(3), [Keyframe(i, 1, 0, "/cam", "f") for i in range(3)])
    m.save(tmp_path / "map")
    assert not any(p.name.startswith("features") for p in (tmp_path / "map").iterdir())
    loaded = PlaceMap.load(tmp_path / "map")
    assert not loaded.has_local_features and loaded.cameras == {}
    assert loaded.local_features(1) is None


def resave_file(folder: Path, name: str, array: np.ndarray) -> None:
    """Replace a map file and fix its manifest entry: only the deeper checks can catch it."""
    with open(folder / name, "wb") as f:
        np.save(f, array, allow_pickle=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def saved(tmp_path) -> Path:
    feature_map()[0].save(tmp_path / "map")
    return tmp_path / "map"


def test_a_modified_feature_file_is_named(saved):
    path = saved / "features_descriptors.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(MapError, match="features_descriptors.npy does not match its sha256"):
        PlaceMap.load(saved)


def test_a_missing_feature_file_is_named(saved):
    (saved / "features_depth.npy").unlink()
    with pytest.raises(MapError, match="features_depth.npy is missing"):
        PlaceMap.load(saved)


def test_a_feature_file_whose_header_disagrees_is_named_before_loading(saved):
    keypoints = np.load(saved / "features_keypoints.npy")
    resave_file(saved, "features_keypoints.npy", keypoints.astype(np.float64))
    with pytest.raises(MapError, match=r"features_keypoints.npy holds float64 .* says float32"):
        PlaceMap.load(saved)


@pytest.mark.parametrize(("row", "value", "why"), [
    (2, (3, 5, 1), "inside row 1's features"),  # overlaps row 0 (7 features from 0)
    (3, (12, 900, 3), "outside the"),
    (1, (7, 0, 2), "inconsistent"),  # the depth bit without the features bit
])
def test_an_inconsistent_feature_index_is_named(saved, row, value, why):
    index = np.load(saved / "features_index.npy")
    index[row] = value
    resave_file(saved, "features_index.npy", index)
    with pytest.raises(MapError, match=f"features_index.npy row {row}.*{why}"):
        PlaceMap.load(saved)


def test_invalid_camera_intrinsics_in_the_manifest_are_named(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["cameras"]["/cam"][0] = 0.0
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MapError, match="field 'cameras./cam'.*focal lengths"):
        PlaceMap.load(saved)


def test_subset_and_thinning_keep_each_keyframes_features(tmp_path):
    m, features = feature_map(n=12)
    keep = thin_rows(np.array([kf.position for kf in m.keyframes]), [kf.stamp for kf in m.keyframes], target=5)
    kept = m.subset(keep)
    assert len(kept) == len(keep) < len(m) and kept.cameras == m.cameras
    for row in keep:
        assert_same(kept.local_features(int(row)), features[row])
    kept.save(tmp_path / "kept")
    for row in keep:
        assert_same(PlaceMap.load(tmp_path / "kept").local_features(int(row)), features[row])


def test_merge_carries_features_and_cameras():
    a, fa = feature_map(n=4, seed=1)
    b, fb = feature_map(n=5, seed=2, camera="/other")
    merged = merge_maps([a, b], ["a", "b"])
    assert merged.cameras == {"/cam": TUM_INTRINSICS, "/other": TUM_INTRINSICS}
    for kf, expected in zip(merged.keyframes, fa + fb, strict=True):  # renumbered in input order
        assert_same(merged.local_features(kf.id), expected)


def test_merge_refuses_one_camera_with_two_calibrations():
    a, _ = feature_map(n=2, seed=1)
    b, _ = feature_map(n=2, seed=2)
    b.set_camera("/cam", Intrinsics(500.0, 500.0, 320.0, 240.0))
    with pytest.raises(MapError, match=r"camera /cam has intrinsics .* in map_a but .* in map_b"):
        merge_maps([a, b], ["map_a", "map_b"])


def test_map_info_reports_features_and_intrinsics():
    m, features = feature_map(n=8)
    summary = map_summary(m)
    stored = [f for f in features if f is not None]
    sizes = [len(f) * 136 + (2 * len(f) if f.depth_mm is not None else 0) for f in stored]
    lf = summary["local_features"]
    assert lf["keyframes_with_features"] == len(stored)
    assert lf["keyframes_with_depth"] == sum(f.depth_mm is not None for f in stored)
    assert lf["mean_bytes_per_keyframe"] == pytest.approx(np.mean(sizes)) and lf["max_bytes_per_keyframe"] == max(sizes)
    text = format_summary({**summary, "folder": "x", "sources": [], "time_span": None, "extent": None})
    assert "keyframes with features" in text and "intrinsics /cam: fx 517.3" in text


# --- build_map on real RGB-D frames ---------------------------------------------------------------
def tum_frames(count: int) -> list[tuple[float, Path, float, Path]]:
    """(rgb stamp, rgb file, depth stamp, depth file) of the first ``count`` frames, or skip."""
    if not (TUM / "associations.txt").is_file():
        pytest.skip(f"shared test data absent: {TUM} (../shared/data/README.md)")
    rows = [line.split() for line in (TUM / "associations.txt").read_text().splitlines() if not line.startswith("#")]
    return [(float(a), TUM / b, float(c), TUM / d) for a, b, c, d in rows[:count]]


@pytest.fixture(scope="module")
def tum() -> list[tuple[float, Path, float, Path]]:
    return tum_frames(FRAMES)


def depth_image_message(png: Path, stamp_ns: int, encoding: str) -> object:
    """A sensor_msgs/Image depth message of a TUM depth PNG (value / 5000 m) in 16UC1 or 32FC1."""
    raw = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    if encoding == "16UC1":
        pixels = np.rint(raw.astype(np.float64) / 5.0).astype("<u2")  # millimetres
    else:
        pixels = (raw.astype(np.float32) / np.float32(5000.0)).astype("<f4")
    h, w = pixels.shape
    return _T["sensor_msgs/msg/Image"](header=header(stamp_ns, "camera_rgb_optical_frame"), height=h, width=w,
                                       encoding=encoding, is_bigendian=0, step=w * pixels.itemsize,
                                       data=np.frombuffer(pixels.tobytes(), np.uint8))


def depth_m(png: Path) -> np.ndarray:
    raw = cv2.imread(str(png), cv2.IMREAD_UNCHANGED).astype(np.float32) / np.float32(5000.0)
    raw[raw == 0] = np.nan
    return raw


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def write_tum_bag(path: Path, frames, *, encoding: str = "16UC1", colour_first: bool = True,
                  camera_info: bool = True, drop_depth: tuple[int, ...] = (), still_odometry: bool = False) -> Path:
    """The frames on COLOUR and DEPTH (stamps as recorded, 0.01-0.04 ms apart), depth written after
    (``colour_first``) or before its colour image; CameraInfo on INFO with TUM's calibration;
    with ``still_odometry``, on ODOM a robot that never moves (while the hand-held camera does)."""
    with BagWriter(path) as bag:
        for i, (t_rgb, rgb_file, t_depth, depth_file) in enumerate(frames):
            stamp, depth_stamp = int(round(t_rgb * 1e9)), int(round(t_depth * 1e9))
            if still_odometry:
                for odom_stamp in (stamp - 5_000_000, stamp + 5_000_000):
                    bag.write(ODOM, odom_stamp, odometry_message(odom_stamp, (1.0, 2.0, 0.0)))
            messages = [(COLOUR, stamp, image_message(rgb(rgb_file), stamp, "camera_rgb_optical_frame"))]
            if i not in drop_depth:
                messages.append((DEPTH, depth_stamp, depth_image_message(depth_file, depth_stamp, encoding)))
            if camera_info:
                k = (TUM_INTRINSICS.fx, TUM_INTRINSICS.fy, TUM_INTRINSICS.cx, TUM_INTRINSICS.cy)
                info = camera_info_message(stamp, 640, 480, k, distortion=TUM_INTRINSICS.distortion)
                messages.append((INFO, stamp, info))
            for topic, log_time, msg in (messages if colour_first else messages[1::-1] + messages[2:]):
                bag.write(topic, log_time, msg)
    return path


def build(*args: object) -> int:
    return build_main([*map(str, args), "--no-progress", "--min-distance", "0", "--min-rotation", "0"])


def check_depth_matches_the_images(place_map: PlaceMap, frames, with_depth: set[int]) -> None:
    """Every keyframe's features are SIFT of its image; each keypoint's depth is the depth image's
    value at the keypoint (millimetres, 0 where none)."""
    assert len(place_map) == len(frames)
    for kf, (_, rgb_file, _, depth_file) in zip(place_map.keyframes, frames, strict=True):
        features = place_map.local_features(kf.id)
        expected = extract_local_features(rgb(rgb_file), depth_m(depth_file) if kf.id in with_depth else None)
        assert features is not None and 0 < len(features) == len(expected) <= FeatureConfig().max_features
        np.testing.assert_allclose(features.keypoints, expected.keypoints, atol=0.01)
        if kf.id not in with_depth:
            assert features.depth_mm is None
            continue
        raw = cv2.imread(str(depth_file), cv2.IMREAD_UNCHANGED)
        u, v = np.rint(features.keypoints).astype(int).T
        truth = raw[np.clip(v, 0, 479), np.clip(u, 0, 639)].astype(np.float64) / 5.0
        assert np.count_nonzero(features.depth_mm) > len(features) // 2
        np.testing.assert_allclose(features.depth_mm, np.where(truth >= 100, truth, 0), atol=1.0)


def test_build_pairs_depth_read_after_its_colour_image_and_takes_camera_info(tmp_path, tum, model_dir, capsys):
    bag = write_tum_bag(tmp_path / "tum", tum, encoding="16UC1", colour_first=True)
    # No --image-topics: the depth topic (16UC1) is found but never taken as a camera.
    assert build(bag, "--model", model_dir, "-o", tmp_path / "map", "--depth-topics", DEPTH) == 0
    out = capsys.readouterr().out
    place_map = PlaceMap.load(tmp_path / "map")
    assert {kf.camera for kf in place_map.keyframes} == {COLOUR}
    assert place_map.cameras == {COLOUR: TUM_INTRINSICS}  # from the CameraInfo beside the image topic
    check_depth_matches_the_images(place_map, tum, set(range(len(tum))))
    assert f"{len(tum)} keyframes with features, {len(tum)} with depth, 0 without a depth image pair" in out


def test_a_depth_image_topic_is_never_a_camera_even_without_depth_topics(tmp_path, tum, model_dir):
    bag = write_tum_bag(tmp_path / "tum", tum[:2])
    assert build(bag, "--model", model_dir, "-o", tmp_path / "map") == 0
    place_map = PlaceMap.load(tmp_path / "map")
    assert {kf.camera for kf in place_map.keyframes} == {COLOUR}
    assert all(place_map.local_features(kf.id).depth_mm is None for kf in place_map.keyframes)


def test_build_with_32fc1_depth_first_given_intrinsics_and_a_missing_pair(tmp_path, tum, model_dir, capsys):
    bag = write_tum_bag(tmp_path / "tum", tum, encoding="32FC1", colour_first=False, camera_info=False,
                        drop_depth=(2,))
    intrinsics = f"{COLOUR} " + " ".join(str(v) for v in TUM_INTRINSICS.as_list())
    assert build(bag, "--model", model_dir, "-o", tmp_path / "map", "--image-topics", COLOUR, "--depth-topics",
                 DEPTH, "--camera-intrinsics", intrinsics, "--chunk-size", "4") == 0
    out = capsys.readouterr().out
    place_map = PlaceMap.load(tmp_path / "map")
    assert place_map.cameras == {COLOUR: TUM_INTRINSICS}
    # Frame 2's depth is missing; frame 1's and 3's are more than --depth-max-age away from it.
    check_depth_matches_the_images(place_map, tum, set(range(len(tum))) - {2})
    assert "1 without a depth image pair" in out


def test_a_camera_without_intrinsics_gets_no_features_and_a_warning(tmp_path, tum, model_dir, capsys):
    bag = write_tum_bag(tmp_path / "tum", tum[:2], camera_info=False)
    assert build(bag, "--model", model_dir, "-o", tmp_path / "map", "--image-topics", COLOUR,
                 "--depth-topics", DEPTH) == 0
    out = capsys.readouterr().out
    place_map = PlaceMap.load(tmp_path / "map")
    assert not place_map.has_local_features and place_map.cameras == {}
    assert f"warning: camera {COLOUR} has no intrinsics" in out and "cannot be verified" in out


def test_depth_topic_count_mismatch_is_a_clear_error(tmp_path, tum, model_dir, capsys):
    bag = write_tum_bag(tmp_path / "tum", tum[:1])
    assert build(bag, "--model", model_dir, "-o", tmp_path / "map", "--depth-topics", DEPTH, "/other/depth") == 1
    assert "--depth-topics has 2 topics but bag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build(bag, "--model", model_dir, "-o", tmp_path / "map2", "--image-topics", COLOUR, "--depth-topics",
              DEPTH, "/other/depth")
    assert "one depth topic per camera" in capsys.readouterr().err


class SerialPool(WorkerPool):
    """The planned build's pool, in this process (what Ray does, without Ray)."""

    def map(self, function, calls, labels, *, gpu, on_done=None):
        results = []
        for call in calls:
            results.append(function(*call))
            if on_done is not None:
                on_done(results[-1])
        return results


def test_chunked_and_planned_builds_store_the_same_features(tmp_path, tum, model_dir, extractor):
    bag = write_tum_bag(tmp_path / "tum", tum, colour_first=False)
    options = BuildOptions(image_topics=(COLOUR,), depth_topics=(DEPTH,), chunk_size=2,
                           selection=SelectionConfig(0.0, 0.0, 0.0))
    whole = build_map([bag], tmp_path / "whole", extractor, BuildOptions(
        image_topics=(COLOUR,), depth_topics=(DEPTH,), chunk_size=100, selection=SelectionConfig(0.0, 0.0, 0.0)),
        progress=False).map
    chunked = build_map([bag], tmp_path / "chunked", extractor, options, progress=False).map
    planned = build_map_planned([bag], tmp_path / "planned", ExtractorSpec(str(model_dir), "cpu", 8), options,
                                SerialPool(), progress=False).map
    assert len(whole) == len(tum) and whole.has_local_features
    for other in (chunked, planned, PlaceMap.load(tmp_path / "planned")):
        assert other.cameras == whole.cameras
        for kf in whole.keyframes:
            assert_same(other.local_features(kf.id), whole.local_features(kf.id))
            assert whole.local_features(kf.id).depth_mm is not None


def test_export_writes_each_keyframes_features_beside_its_image(tmp_path, tum, model_dir):
    bag = write_tum_bag(tmp_path / "tum", tum[:3])
    assert build(bag, "--model", model_dir, "-o", tmp_path / "map", "--depth-topics", DEPTH) == 0
    place_map = PlaceMap.load(tmp_path / "map")
    # export_map writes keyframes with a pose only: give them one.
    posed = PlaceMap.create(place_map.dim, place_map.model_fingerprint, map_id="posed")
    posed.add(np.asarray(place_map.descriptors, np.float32),
              [Keyframe(kf.id, kf.stamp_sec, kf.stamp_nanosec, kf.camera, kf.frame_id, (0.0, 0.0, 0.0),
                        source=kf.source) for kf in place_map.keyframes],
              [place_map.local_features(kf.id) for kf in place_map.keyframes])
    for topic, c in place_map.cameras.items():
        posed.set_camera(topic, c)
    posed.sources = place_map.sources
    posed.save(tmp_path / "posed")
    assert export_main([str(tmp_path / "posed"), "-o", str(tmp_path / "export")]) == 0
    images = sorted((tmp_path / "export" / "images").rglob("*.png"))
    assert len(images) == 3
    for kf, image in zip(posed.keyframes, images, strict=True):
        with np.load(image.with_suffix(".npz"), allow_pickle=False) as data:
            exported = LocalFeatures(data["keypoints"], data["descriptors"], data["depth_mm"])
        assert_same(exported, posed.local_features(kf.id))
    cameras = json.loads((tmp_path / "export" / "cameras.json").read_text())
    assert Intrinsics(**{k: (tuple(v) if k == "distortion" else v) for k, v in cameras[COLOUR].items()}) == \
        TUM_INTRINSICS
    shutil.rmtree(tmp_path / "export")


# --- keyframes by what the camera sees ------------------------------------------------------------
VIEW_FRAMES = 12  # 0.4 s of the hand-held Kinect turning (TUM fr1/rpy)


def keyframe_stamps(place_map: PlaceMap) -> list[int]:
    return [kf.stamp_ns for kf in place_map.keyframes]


def test_a_camera_whose_view_changes_gets_keyframes_while_odometry_stands_still(tmp_path, model_dir, extractor,
                                                                              capsys):
    frames = tum_frames(VIEW_FRAMES)
    bag = write_tum_bag(tmp_path / "tum", frames, still_odometry=True)
    common = [bag, "--model", model_dir, "--pose-topic", ODOM, "--depth-topics", DEPTH, "--no-progress"]
    # The pose rules alone (1 m, 0.26 rad): the odometry never moves, one keyframe.
    assert build_main([*map(str, common), "-o", str(tmp_path / "poses"), "--min-view-overlap", "0"]) == 0
    assert len(PlaceMap.load(tmp_path / "poses")) == 1
    capsys.readouterr()

    # Defaults: the view rule takes a keyframe where the image shares < 0.10 of its features with the last one.
    assert build_main([*map(str, common), "-o", str(tmp_path / "view")]) == 0
    view = PlaceMap.load(tmp_path / "view")
    assert len(view) >= 3
    assert f"{VIEW_FRAMES} images, {len(view)} keyframes ({len(view) - 1} by view change)" in capsys.readouterr().out
    features = [extract_local_features(rgb(f[1])) for f in frames]
    kept = [next(i for i, f in enumerate(frames) if round(f[0] * 1e9) == stamp) for stamp in keyframe_stamps(view)]
    last = 0
    for i in range(1, VIEW_FRAMES):
        share = view_overlap(features[i], features[last])
        assert (i in kept) == (share < 0.10), f"frame {i}: overlap {share:.3f} with keyframe frame {last}"
        last = i if i in kept else last
    for kf in view.keyframes:  # the stored features are those of the keyframe's image, with depth
        assert view.local_features(kf.id).has_depth

    # The same keyframes and features in chunks, resumed, and planned (chunk tasks start mid-bag).
    chunked = [*map(str, common), "-o", str(tmp_path / "chunked"), "--chunk-size", "2", "--keep-work"]
    assert build_main(chunked) == 0
    shutil.rmtree(tmp_path / "chunked")
    (tmp_path / "chunked.work" / "chunk-000001.npz").unlink()
    assert build_main([*chunked, "--resume"]) == 0
    options = BuildOptions(image_topics=(COLOUR,), pose_topic=ODOM, depth_topics=(DEPTH,), chunk_size=2,
                           selection=SelectionConfig(0.0, 1.0, 0.26, 0.10))
    planned = build_map_planned([bag], tmp_path / "planned", ExtractorSpec(str(model_dir), "cpu", 16), options,
                                SerialPool(), progress=False).map
    for other in (PlaceMap.load(tmp_path / "chunked"), planned):
        assert keyframe_stamps(other) == keyframe_stamps(view)
        for kf in view.keyframes:
            assert_same(other.local_features(kf.id), view.local_features(kf.id))
