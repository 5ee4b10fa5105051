"""PlaceMap: the map format, its faiss indexes and the validation that protects the node."""
from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest

from qaa_vpr_ros.maps import Keyframe, MapError, PlaceMap
from qaa_vpr_ros.maps import place_map as place_map_module

FINGERPRINT = "a" * 64


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Descriptors with structure (like real ones): noisy copies of 64 centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim))
    x = centres[rng.integers(0, 64, n)] + 0.7 * rng.standard_normal((n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def keyframes(n: int, start_id: int = 0, with_pose: bool = True) -> list[Keyframe]:
    return [
        Keyframe(
            id=start_id + i, stamp_sec=1_700_000_000 + i, stamp_nanosec=i * 1000, camera=f"/cam{i % 2}",
            frame_id="camera", position=(float(i), 2.0 * i, 0.5) if with_pose else (math.nan,) * 3,
            orientation=(0.0, 0.0, math.sin(i / 20), math.cos(i / 20)), utm_zone="33W" if with_pose else None,
            source="run1",
        )
        for i in range(n)
    ]


def small_map(n: int = 50, dim: int = 16, **kwargs) -> tuple[PlaceMap, np.ndarray]:
    descriptors = unit_rows(n, dim)
    m = PlaceMap.create(dim, FINGERPRINT, **kwargs)
    m.add(descriptors, keyframes(n))
    return m, descriptors


def test_search_returns_each_keyframe_first_with_its_record():
    m, descriptors = small_map()
    result = m.search(descriptors, k=3)
    assert result.ids.shape == (50, 3) and result.ids.dtype == np.int64
    assert result.scores.dtype == np.float32
    np.testing.assert_array_equal(result.ids[:, 0], np.arange(50))
    assert np.all(result.scores[:, 0] > 0.999) and np.all(np.diff(result.scores, axis=1) <= 0)
    assert [row[0].id for row in result.keyframes] == list(range(50))
    assert result.keyframes[7][0] == m.keyframe(7)


def test_search_pads_missing_results_and_handles_an_empty_map():
    m, descriptors = small_map(n=3)
    result = m.search(descriptors[:1], k=5)
    assert (result.ids[0, 3:] == -1).all() and np.isneginf(result.scores[0, 3:]).all()
    assert len(result.keyframes[0]) == 3
    empty = PlaceMap.create(16, FINGERPRINT)
    result = empty.search(descriptors, k=2)
    assert (result.ids == -1).all() and result.keyframes == [[], [], []]


def test_ids_are_keyframe_ids_not_rows():
    m = PlaceMap.create(16, FINGERPRINT)
    descriptors = unit_rows(10, 16)
    m.add(descriptors, keyframes(10, start_id=1000))
    assert m.search(descriptors[4], k=1).ids[0, 0] == 1004


def test_add_validates_its_input():
    m, _ = small_map(n=5)
    with pytest.raises(MapError, match=r"shape \(N, 16\)"):
        m.add(unit_rows(2, 8), keyframes(2, start_id=10))
    with pytest.raises(MapError, match="2 descriptors but 1 keyframes"):
        m.add(unit_rows(2, 16), keyframes(1, start_id=10))
    with pytest.raises(MapError, match="already in the map"):
        m.add(unit_rows(1, 16), keyframes(1, start_id=3))
    bad = unit_rows(1, 16)
    bad[0, 0] = np.nan
    with pytest.raises(MapError, match="NaN"):
        m.add(bad, keyframes(1, start_id=10))
    assert len(m) == 5


def test_save_and_load_round_trip(tmp_path):
    m, descriptors = small_map()
    m.sources = [{"name": "run1", "sha256": "b" * 64}]
    m.add(unit_rows(2, 16, seed=5), keyframes(2, start_id=100, with_pose=False))
    m.save(tmp_path / "map")
    loaded = PlaceMap.load(tmp_path / "map", FINGERPRINT)
    assert len(loaded) == 52 and loaded.dim == 16 and loaded.map_frame == "map"
    assert loaded.keyframes[:50] == m.keyframes[:50]
    assert not loaded.keyframe(101).has_pose and loaded.keyframe(101).utm_zone is None
    assert loaded.descriptors.dtype == np.float16
    np.testing.assert_array_equal(loaded.descriptors, m.descriptors)
    assert loaded.sources == m.sources
    np.testing.assert_array_equal(loaded.search(descriptors, 3).ids, m.search(descriptors, 3).ids)
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert manifest["counts"]["keyframes"] == 52 and manifest["descriptor_dim"] == 16
    assert manifest["model_fingerprint"] == FINGERPRINT and manifest["format_version"] == 2
    assert set(manifest["files"]) == {"index.faiss", "keyframes.sqlite", "descriptors.npy"}


@pytest.mark.parametrize("mmap", [True, False])
def test_an_exact_map_makes_its_float32_copy_at_the_first_search_not_at_load(tmp_path, mmap):
    # The node searches an exact map with its own product and never calls search(): the
    # index's float32 copy (4 bytes per value, twice the stored float16) would be dead weight.
    m, descriptors = small_map(n=40, dim=32)
    m.save(tmp_path / "map")
    loaded = PlaceMap.load(tmp_path / "map", FINGERPRINT, mmap=mmap)
    subset = loaded.subset(range(0, 40, 2))
    assert loaded.is_exact and subset.is_exact
    before, subset_before = loaded.memory_bytes, subset.memory_bytes
    assert before == (0 if mmap else 40 * 32 * 2) and subset_before == 20 * 32 * 2
    np.testing.assert_array_equal(loaded.search(descriptors, 3).ids, m.search(descriptors, 3).ids)
    assert loaded.memory_bytes == before + 40 * 32 * 4  # built now, from the stored values
    assert subset.search(descriptors[2], 1).ids[0, 0] == 2
    assert subset.memory_bytes == subset_before + 20 * 32 * 4
    subset.add(unit_rows(1, 32, seed=9), keyframes(1, start_id=500))  # kept in step once built
    assert subset.search(unit_rows(1, 32, seed=9), 1).ids[0, 0] == 500


def test_keyframes_are_a_plain_sqlite_table(tmp_path):
    m, _ = small_map(n=4)
    m.save(tmp_path / "map")
    with sqlite3.connect(tmp_path / "map" / "keyframes.sqlite") as db:
        rows = db.execute("SELECT id, camera, x, y, qw, utm_zone, source FROM keyframes ORDER BY row").fetchall()
    assert rows[3] == (3, "/cam1", 3.0, 6.0, pytest.approx(math.cos(3 / 20)), "33W", "run1")


def test_a_map_of_another_model_is_refused_naming_both_fingerprints(tmp_path):
    m, _ = small_map(n=4)
    m.save(tmp_path / "map")
    with pytest.raises(MapError, match=f"fingerprint {FINGERPRINT}.*fingerprint {'c' * 64}"):
        PlaceMap.load(tmp_path / "map", "c" * 64)


def test_truncated_map_file_is_refused(tmp_path):
    m, _ = small_map()
    m.save(tmp_path / "map")
    path = tmp_path / "map" / "descriptors.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(MapError, match="descriptors.npy has .* bytes, the manifest says .*truncated"):
        PlaceMap.load(tmp_path / "map")


def test_tampered_map_file_is_refused(tmp_path):
    m, _ = small_map()
    m.save(tmp_path / "map")
    path = tmp_path / "map" / "index.faiss"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(MapError, match="index.faiss does not match its sha256"):
        PlaceMap.load(tmp_path / "map")


def test_manifest_problems_are_named(tmp_path):
    m, _ = small_map(n=3)
    m.save(tmp_path / "map")
    manifest_path = tmp_path / "map" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())

    del manifest["descriptor_dim"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MapError, match="lacks the field 'descriptor_dim'"):
        PlaceMap.load(tmp_path / "map")

    manifest["descriptor_dim"] = 16
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MapError, match="format_version 99, newer"):
        PlaceMap.load(tmp_path / "map")

    manifest["format_version"] = 1
    manifest["counts"]["keyframes"] = 4
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MapError, match=r"the manifest says float16 \(4, 16\)"):
        PlaceMap.load(tmp_path / "map")

    manifest_path.write_text("{not json")
    with pytest.raises(MapError, match="manifest.json is not valid JSON"):
        PlaceMap.load(tmp_path / "map")
    manifest_path.unlink()
    with pytest.raises(MapError, match="manifest.json is missing"):
        PlaceMap.load(tmp_path / "map")
    with pytest.raises(MapError, match="does not exist"):
        PlaceMap.load(tmp_path / "nowhere")


def test_a_failed_save_leaves_the_existing_map_intact(tmp_path, monkeypatch):
    m, descriptors = small_map(n=5)
    m.save(tmp_path / "map")
    bigger, _ = small_map(n=9)

    def broken(path, records):
        raise OSError("disk full")

    monkeypatch.setattr(place_map_module, "write_keyframes", broken)
    with pytest.raises(OSError, match="disk full"):
        bigger.save(tmp_path / "map")
    assert len(PlaceMap.load(tmp_path / "map")) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]  # no temp folder left behind


def test_saving_over_a_map_replaces_it(tmp_path):
    small_map(n=5)[0].save(tmp_path / "map")
    small_map(n=9)[0].save(tmp_path / "map")
    assert len(PlaceMap.load(tmp_path / "map")) == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]


@pytest.mark.parametrize(
    ("index_type", "params", "min_recall"),
    [("hnsw", {}, 0.95), ("ivfpq", {"nprobe": 16, "m": 8, "nbits": 6}, 0.85), ("flat", {"pca_dim": 32}, 0.9),
     ("hnsw", {"pca_dim": 32, "M": 16}, 0.9)],
)
def test_approximate_indexes_agree_with_exact_search(tmp_path, index_type, params, min_recall):
    descriptors = clustered(3000, 64)
    # Revisits: noisy versions of mapped places, as a robot sees them again.
    rng = np.random.default_rng(1)
    queries = descriptors[rng.integers(0, 3000, 200)] + 0.05 * rng.standard_normal((200, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = PlaceMap.create(64, FINGERPRINT)
    exact.add(descriptors, keyframes(3000))
    approx = PlaceMap.create(64, FINGERPRINT, index_type, **params)
    approx.add(descriptors, keyframes(3000))
    truth = exact.search(queries, 1).ids[:, 0]
    recall = np.mean(approx.search(queries, 1).ids[:, 0] == truth)
    assert recall >= min_recall
    approx.save(tmp_path / "map")
    loaded = PlaceMap.load(tmp_path / "map")
    assert loaded.index_type == index_type
    np.testing.assert_array_equal(loaded.search(queries, 5).ids, approx.search(queries, 5).ids)


def test_rebuild_index_from_stored_descriptors():
    descriptors = clustered(1000, 32)
    m = PlaceMap.create(32, FINGERPRINT)
    m.add(descriptors, keyframes(1000))
    before = m.search(descriptors[:50], 1).ids
    m.rebuild_index("hnsw", M=16, ef_search=128)
    assert m.index_type == "hnsw" and m.index_params["M"] == 16
    assert np.mean(m.search(descriptors[:50], 1).ids == before) >= 0.95
    m.rebuild_index("flat")
    np.testing.assert_array_equal(m.search(descriptors[:50], 1).ids, before)


def test_index_parameters_are_checked():
    with pytest.raises(MapError, match="unknown index type 'annoy'"):
        PlaceMap.create(16, FINGERPRINT, "annoy")
    with pytest.raises(MapError, match=r"unknown parameter\(s\) \['nprobe'\] for index type 'hnsw'"):
        PlaceMap.create(16, FINGERPRINT, "hnsw", nprobe=3)
    with pytest.raises(MapError, match="must be a positive integer"):
        PlaceMap.create(16, FINGERPRINT, "hnsw", M=0)
    tiny = PlaceMap.create(16, FINGERPRINT, "ivfpq")
    tiny.add(unit_rows(20, 16), keyframes(20))
    with pytest.raises(MapError, match="needs at least 256 keyframes to train.*flat"):
        tiny.search(unit_rows(1, 16), 1)


def test_keyframe_stamp_properties():
    kf = keyframes(2)[1]
    assert kf.stamp == pytest.approx(1_700_000_001.000001)
    assert kf.stamp_ns == 1_700_000_001_000_001_000
    assert kf.has_pose and not keyframes(1, with_pose=False)[0].has_pose


# --- map_id (format 2): the session loop-closure records name a map by ------------------------
def test_a_saved_map_gets_a_map_id_and_keeps_it_through_reloads_resaves_and_subsets(tmp_path):
    m, _ = small_map(n=6)
    assert m.map_id is None
    m.save(tmp_path / "campus")
    manifest = json.loads((tmp_path / "campus" / "manifest.json").read_text())
    base, suffix = manifest["map_id"].rsplit("-", 1)
    assert base == "campus" and len(suffix) == 8 and int(suffix, 16) >= 0
    assert m.map_id == manifest["map_id"] == PlaceMap.load(tmp_path / "campus").map_id
    m.save(tmp_path / "copy")  # a second save of the same map: the same session
    assert PlaceMap.load(tmp_path / "copy").map_id == manifest["map_id"]
    assert m.subset([0, 2]).map_id == manifest["map_id"]  # thinning keeps the session
    other, _ = small_map(n=6)
    other.save(tmp_path / "campus2")
    assert other.map_id != m.map_id  # two maps, two ids, even from equal folder names' prefixes

    named = PlaceMap.create(16, FINGERPRINT, map_id="summer route ☀")
    named.add(unit_rows(3, 16), keyframes(3))
    named.save(tmp_path / "named")
    assert PlaceMap.load(tmp_path / "named").map_id == "summer route ☀"


@pytest.mark.parametrize(("map_id", "match"), [
    ("online", "reserved"), ("", "non-empty"), (7, "non-empty string"), ("é" * 33, "66 UTF-8 bytes"),
    ("a\x00", "control characters"), (" padded", "surrounding blanks"), ("\ud800", "UTF-8"),
])
def test_an_invalid_map_id_is_refused_naming_it(map_id, match):
    with pytest.raises(MapError, match=match):
        PlaceMap.create(16, FINGERPRINT, map_id=map_id)


def test_a_new_map_id_fits_a_record_whatever_the_folder_name():
    from qaa_vpr_ros.decision.record import NAME_BYTES

    assert place_map_module.MAP_ID_MAX_BYTES == NAME_BYTES
    for name in ("online", "", "ü" * 100, "tab\there", "  "):
        map_id = place_map_module.new_map_id(name)
        assert place_map_module.check_map_id(map_id) == map_id and len(map_id.encode()) <= NAME_BYTES


def downgrade_to_format_1(folder) -> None:
    """Make ``folder`` a map as format 1 wrote it: no map_id."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.pop("map_id", None)
    manifest["format_version"] = 1
    path.write_text(json.dumps(manifest))


def test_a_format_1_map_loads_and_records_name_it_by_its_folder(tmp_path):
    small_map(n=4)[0].save(tmp_path / "route_2019")
    downgrade_to_format_1(tmp_path / "route_2019")
    loaded = PlaceMap.load(tmp_path / "route_2019")
    assert len(loaded) == 4 and loaded.map_id is None
    assert place_map_module.map_session(loaded.map_id, tmp_path / "route_2019") == "route_2019"
    assert place_map_module.map_session(loaded.map_id, f"{tmp_path}/route_2019/") == "route_2019"


def test_a_format_2_manifest_without_map_id_is_refused(tmp_path):
    small_map(n=4)[0].save(tmp_path / "map")
    path = tmp_path / "map" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["map_id"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(MapError, match="lacks the field 'map_id'"):
        PlaceMap.load(tmp_path / "map")


def test_a_map_folder_called_online_never_makes_map_matches_own_session_closures(tmp_path):
    from qaa_vpr_ros.decision.record import LoopClosureRecord

    small_map(n=4)[0].save(tmp_path / "online")
    downgrade_to_format_1(tmp_path / "online")
    old = PlaceMap.load(tmp_path / "online")
    sessions = {
        "format-1 map in a folder 'online'": place_map_module.map_session(old.map_id, tmp_path / "online"),
        "the same, a trailing slash": place_map_module.map_session(None, f"{tmp_path}/online/"),
        "no folder name": place_map_module.map_session(None, ""),
        "a folder name longer than a record holds": place_map_module.map_session(None, tmp_path / ("ø" * 60)),
    }
    assert sessions["format-1 map in a folder 'online'"] == sessions["the same, a trailing slash"] == "map:online"
    assert sessions["no folder name"] == "map"
    for what, session in sessions.items():
        record = LoopClosureRecord(query_stamp_sec=1, query_stamp_nanosec=0, camera="/cam", match_keyframe_id=0,
                                   match_stamp_sec=0, match_stamp_nanosec=0, match_session=session,
                                   match_frame="map")
        assert not record.is_online, what
