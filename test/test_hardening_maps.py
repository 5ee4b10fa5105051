"""Review findings on untrusted maps (issue 11): a map from elsewhere never reaches faiss's binary
parser unless marked trusted, its files are confined to the map folder, and its manifest, header
and tables are checked before anything is allocated from them."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3

import faiss
import numpy as np
import pytest

from qaa_vpr_ros.maps import Keyframe, MapError, PlaceMap

FINGERPRINT = "c" * 64
DIM = 16


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def saved_map(folder, n: int = 20):
    m = PlaceMap.create(DIM, FINGERPRINT)
    desc = unit_rows(n, 0)
    m.add(desc, [Keyframe(id=i, stamp_sec=i, stamp_nanosec=0, camera="/cam", frame_id="cam") for i in range(n)])
    m.save(folder)
    return desc.astype(np.float16).astype(np.float32)


def reseal(folder) -> None:
    """Recompute the manifest's sizes and checksums, as someone handing us a crafted map would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "manifest.json").write_text(json.dumps(manifest))


def edit_manifest(folder, edit) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_untrusted_map_rebuilds_its_index_from_the_descriptors(tmp_path):
    folder = tmp_path / "map"
    desc = saved_map(folder)
    lying = faiss.IndexFlatIP(DIM)
    lying.add(unit_rows(20, 99))  # same size and dim, other vectors: search results would be wrong
    faiss.write_index(lying, str(folder / "index.faiss"))
    reseal(folder)
    m = PlaceMap.load(folder)
    np.testing.assert_array_equal(m.search(desc, k=1).ids[:, 0], np.arange(20))
    trusted = PlaceMap.load(folder, trusted=True)  # the saved index as it is
    assert not np.array_equal(trusted.search(desc, k=1).ids[:, 0], np.arange(20))


def test_untrusted_map_never_parses_index_faiss(tmp_path):
    folder = tmp_path / "map"
    desc = saved_map(folder)
    (folder / "index.faiss").write_bytes(b"IxFI" + b"\xff" * 64)  # garbage for faiss's parser
    reseal(folder)
    m = PlaceMap.load(folder)
    assert m.search(desc[:3], k=1).ids[:, 0].tolist() == [0, 1, 2]
    with pytest.raises(MapError, match="index.faiss"):
        PlaceMap.load(folder, trusted=True)


@pytest.mark.parametrize("name", ["descriptors.npy", "keyframes.sqlite", "index.faiss"])
def test_map_files_must_be_regular_files_inside_the_map(tmp_path, name):
    folder = tmp_path / "map"
    saved_map(folder)
    outside = tmp_path / "elsewhere"
    os.replace(folder / name, outside)
    os.symlink(outside, folder / name)  # same content, checksum matches, but it lives elsewhere
    with pytest.raises(MapError, match=f"{name}.*(symlink|regular file)"):
        PlaceMap.load(folder)


def test_a_symlink_to_a_device_is_refused_without_reading_it(tmp_path):
    folder = tmp_path / "map"
    saved_map(folder)
    (folder / "descriptors.npy").unlink()
    os.symlink("/dev/zero", folder / "descriptors.npy")  # hashing it would never end
    with pytest.raises(MapError, match="descriptors.npy"):
        PlaceMap.load(folder)


def test_a_descriptor_header_claiming_more_rows_than_the_file_holds_is_refused(tmp_path):
    folder = tmp_path / "map"
    saved_map(folder)
    path = folder / "descriptors.npy"
    data = np.load(path)
    with open(path, "wb") as f:  # a well-formed header for 32 GB of float16, then 640 bytes
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f2", "fortran_order": False, "shape": (1_000_000_000, DIM)})
        f.write(data.tobytes())
    edit_manifest(folder, lambda m: m["counts"].update(keyframes=1_000_000_000))
    reseal(folder)
    for mmap in (True, False):
        with pytest.raises(MapError, match="descriptors.npy"):
            PlaceMap.load(folder, mmap=mmap)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["counts"].update(keyframes=-1), "counts.keyframes"),
    (lambda m: m.update(descriptor_dim=1 << 40), "descriptor_dim"),
    (lambda m: m["files"]["index.faiss"].update(bytes="12"), "bytes"),
    (lambda m: m["files"]["index.faiss"].update(sha256="not-hex"), "sha256"),
    (lambda m: m.update(sources="evil"), "sources"),
    (lambda m: m["index"].update(type="hnsw", params={"M": 10**9}), "M"),
    (lambda m: m["index"].update(params={"pca_dim": "8"}), "pca_dim"),
    (lambda m: m.update(map_id="online"), "field 'map_id' 'online' is reserved"),
    (lambda m: m.update(map_id=["a"]), "field 'map_id' must be a non-empty string"),
    (lambda m: m.update(map_id="x" * 65), "field 'map_id' .* has 65 UTF-8 bytes"),
])
def test_manifest_fields_are_checked_for_type_and_range(tmp_path, edit, match):
    folder = tmp_path / "map"
    saved_map(folder)
    edit_manifest(folder, edit)
    with pytest.raises(MapError, match=match):
        PlaceMap.load(folder)


def test_keyframe_rows_of_the_wrong_type_are_refused(tmp_path):
    folder = tmp_path / "map"
    saved_map(folder)
    with sqlite3.connect(folder / "keyframes.sqlite") as db:
        db.execute("UPDATE keyframes SET stamp_sec = 'yesterday' WHERE row = 3")
    reseal(folder)
    with pytest.raises(MapError, match="keyframes.sqlite.*stamp_sec"):
        PlaceMap.load(folder)


def _map_naming_bag(folder, bag_path: str, sha256: str | None) -> PlaceMap:
    m = PlaceMap.create(DIM, FINGERPRINT)
    m.add(unit_rows(2, 0), [Keyframe(id=i, stamp_sec=i, stamp_nanosec=0, camera="/cam", frame_id="cam",
                                     position=(1.0, 2.0, 0.0), source="run1") for i in range(2)])
    m.sources = [{"name": "run1", "path": bag_path, **({"sha256": sha256} if sha256 else {})}]
    m.save(folder)
    return PlaceMap.load(folder)


def test_export_opens_no_path_a_map_names_unless_it_is_the_recorded_bag(tmp_path):
    from qaa_vpr_ros.bags import BagError
    from qaa_vpr_ros.map_tools.export import export_map

    fifo = tmp_path / "run1.mcap"
    os.mkfifo(fifo)  # opening it for reading would block forever
    m = _map_naming_bag(tmp_path / "map", str(fifo), "0" * 64)
    with pytest.raises(BagError, match="run1.mcap.*regular file"):
        export_map(m, tmp_path / "out", check_hashes=False)
    other = tmp_path / "other.mcap"
    other.write_bytes(b"\x89MCAP0\r\n" + b"\0" * 64)  # a real file, but not the bag the map was built from
    for sha in (None, "0" * 64):
        m = _map_naming_bag(tmp_path / "map", str(other), sha)
        with pytest.raises(BagError, match="other.mcap"):
            export_map(m, tmp_path / "out", check_hashes=False)  # --no-hash-check covers --bags only
    assert not (tmp_path / "out").exists()
