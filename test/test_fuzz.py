"""Bounded fuzzing (hypothesis) of every parser of outside input: image messages (raw and
compressed), bags, maps (manifest, index, keyframes, descriptors), checkpoints (config.json,
safetensors headers with lying offsets, .pt), images.csv / @UTM@ names / MSLS CSVs, and node
parameters.

Each case must end in the parser's own typed error (or a valid result): never another exception,
never a file written, never more than ``ALLOC_LIMIT`` bytes allocated (tracemalloc: Python and
numpy allocations). ``make test`` runs ``FUZZ_EXAMPLES`` cases per target (default 25, well under a
minute in all); ``make fuzz`` runs many more (``QAA_FUZZ_EXAMPLES``), and ``make reliability``
counts them per target.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("QAA_FUZZ_EXAMPLES", "25"))
ALLOC_LIMIT = 256 << 20  # bytes; every input below is < 1 MB
MAX_PIXELS = 256 * 256
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=os.environ.get("QAA_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
CASES: dict[str, int] = {}  # target -> cases run (printed by make reliability)


@contextmanager
def bounded(target: str):
    """Count the case; fail when it allocates more than ALLOC_LIMIT."""
    CASES[target] = CASES.get(target, 0) + 1
    tracemalloc.start()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < ALLOC_LIMIT, f"{target}: a case allocated {peak / 2**20:.0f} MB"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime: "nothing written" is an equality."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def mutate(data: bytes, draw_edits: list[tuple[int, int]], truncate: int | None) -> bytes:
    buf = bytearray(data)
    for pos, val in draw_edits:
        if buf:
            buf[pos % len(buf)] = val
    if truncate is not None and buf:
        del buf[truncate % len(buf):]
    return bytes(buf)


edits = st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), max_size=16)
truncation = st.one_of(st.none(), st.integers(0, 1 << 30))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


# --- image messages ------------------------------------------------------------------------------
ENCODINGS = ["rgb8", "bgr8", "mono8", "mono16", "rgba8", "bgra8", "yuv422", "uyvy", "bayer_rggb8", "16UC1",
             "32FC1", "8UC3", ""]


def _header():
    return SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=0), frame_id="cam")


@FUZZ
@given(height=st.integers(0, 1 << 33), width=st.integers(0, 1 << 33), step=st.integers(0, 1 << 34),
       encoding=st.sampled_from(ENCODINGS) | st.text(max_size=12), bigendian=st.integers(0, 1),
       data=st.binary(max_size=8192), small=st.booleans())
def test_fuzz_raw_image_messages(height, width, step, encoding, bigendian, data, small):
    from qaa_vpr_ros.image_conversion import ImageDecodeError, image_from_msg

    if small:  # sizes that can match the data
        height, width, step = height % 40, width % 40, step % 200
    msg = SimpleNamespace(header=_header(), height=height, width=width, step=step, encoding=encoding,
                          is_bigendian=bigendian, data=data)
    with bounded("image_raw"):
        try:
            image, enc = image_from_msg(msg, max_pixels=MAX_PIXELS)
        except ImageDecodeError:
            return
    assert image.dtype == np.uint8 and image.shape[0] * image.shape[1] <= MAX_PIXELS
    assert enc in ("rgb", "bgr", "mono")


def _encoded(fmt: str) -> bytes:
    rgb = (np.arange(24 * 32 * 3) % 251).astype(np.uint8).reshape(24, 32, 3)
    return cv2.imencode(".png" if fmt == "png" else ".jpg", rgb)[1].tobytes()


@FUZZ
@given(fmt=st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", "bgr8; png compressed", "tiff"])
       | st.text(max_size=16), edit=edits, cut=truncation, random=st.none() | st.binary(max_size=4096),
       claim=st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)))
def test_fuzz_compressed_image_messages(fmt, edit, cut, random, claim):
    from qaa_vpr_ros.image_conversion import ImageDecodeError, image_from_msg

    data = random if random is not None else mutate(_encoded("png" if "png" in fmt else "jpeg"), edit, cut)
    if claim is not None and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24:  # lie in the PNG header
        data = data[:16] + struct.pack(">II", *claim) + data[24:]
    msg = SimpleNamespace(header=_header(), format=fmt, data=data)
    with bounded("image_compressed"):
        try:
            image, _ = image_from_msg(msg, max_pixels=MAX_PIXELS)
        except ImageDecodeError:
            return
    assert image.dtype == np.uint8 and image.shape[0] * image.shape[1] <= MAX_PIXELS


# --- bags ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_bags(tmp_path_factory):
    """A real 6-frame bag in each storage format (the package's bag writer), 24 x 32 raw + jpeg images."""
    from bag_writer import START_NS, TYPESTORE

    from qaa_vpr_ros.bag_writer import BagWriter, header, image_message

    root = tmp_path_factory.mktemp("fuzz_bags")
    T = TYPESTORE.types
    out = {}
    for storage in ("sqlite3", "mcap"):
        path = root / storage
        with BagWriter(path, storage) as bag:
            bag.add_topic("/cam", "sensor_msgs/msg/Image")
            bag.add_topic("/cam/compressed", "sensor_msgs/msg/CompressedImage")
            for i in range(6):
                stamp = START_NS + i * 10**8
                bag.write("/cam", stamp, image_message(np.full((24, 32, 3), 10 * i, np.uint8), stamp, "cam"))
                comp = T["sensor_msgs/msg/CompressedImage"](
                    header=header(stamp, "cam"), format="jpeg", data=np.frombuffer(_encoded("jpeg"), np.uint8))
                bag.write("/cam/compressed", stamp, comp)
        out[storage] = path
    return out


def _read_all(path: Path) -> int:
    from qaa_vpr_ros.bags import iter_image_messages, open_bag
    from qaa_vpr_ros.image_conversion import ImageDecodeError, image_from_msg

    n = 0
    with open_bag(path) as bag:
        topics = [t for t, typ in bag.topics.items() if typ.startswith("sensor_msgs/msg/")]
        for m in iter_image_messages(bag, topics):
            try:
                image_from_msg(m.msg, max_pixels=MAX_PIXELS)
            except ImageDecodeError:
                pass
            n += 1
    return n


@FUZZ
@given(storage=st.sampled_from(["sqlite3", "mcap"]), target=st.sampled_from(["storage", "metadata"]),
       edit=edits, cut=truncation, random=st.none() | st.binary(max_size=2048))
def test_fuzz_bags(small_bags, tmp_path_factory, storage, target, edit, cut, random):
    from qaa_vpr_ros.bags import BagError

    work = tmp_path_factory.mktemp("bag")
    bag = work / "bag"
    shutil.copytree(small_bags[storage], bag)
    victim = bag / "metadata.yaml" if target == "metadata" else next(p for p in bag.iterdir() if p.suffix in (
        ".db3", ".mcap"))
    victim.write_bytes(random if random is not None else mutate(victim.read_bytes(), edit, cut))
    before = snapshot(work)
    with bounded("bag"):
        try:
            _read_all(bag)
        except BagError:
            pass
    assert snapshot(work) == before


# --- maps ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_map(tmp_path_factory):
    from qaa_vpr_ros.maps import Keyframe, PlaceMap

    x = np.random.default_rng(0).standard_normal((12, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = PlaceMap.create(16, "f" * 64)
    m.add(x, [Keyframe(id=i, stamp_sec=i, stamp_nanosec=0, camera="/cam", frame_id="cam",
                       position=(float(i), 0.0, 0.0), utm_zone="33W", source="run") for i in range(12)])
    m.sources = [{"name": "run", "path": "/nonexistent/run", "sha256": "0" * 64}]
    folder = tmp_path_factory.mktemp("fuzz_map") / "map"
    m.save(folder)
    return folder


def _reseal(folder: Path) -> None:
    import hashlib

    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        for name, entry in manifest["files"].items():
            data = (folder / name).read_bytes()
            entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        (folder / "manifest.json").write_text(json.dumps(manifest))
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        pass  # the manifest itself was the target


MANIFEST_KEYS = ["format", "format_version", "map_id", "model_fingerprint", "descriptor_dim", "index", "counts",
                 "map_frame", "files", "sources", "info", "utm_zones", "created"]


@FUZZ
@given(target=st.sampled_from(["manifest.json", "index.faiss", "keyframes.sqlite", "descriptors.npy"]),
       edit=edits, cut=truncation, reseal=st.booleans(), trusted=st.booleans(),
       field=st.sampled_from(MANIFEST_KEYS), value=json_values)
def test_fuzz_maps(saved_map, tmp_path_factory, target, edit, cut, reseal, trusted, field, value):
    from qaa_vpr_ros.maps import MapError, PlaceMap

    work = tmp_path_factory.mktemp("map")
    folder = work / "map"
    shutil.copytree(saved_map, folder)
    if target == "manifest.json" and not edit:
        manifest = json.loads((folder / target).read_text())
        manifest[field] = value
        (folder / target).write_text(json.dumps(manifest))
    else:
        (folder / target).write_bytes(mutate((folder / target).read_bytes(), edit, cut))
    if reseal and target != "manifest.json":
        _reseal(folder)
    before = snapshot(work)
    with bounded("map"):
        try:
            m = PlaceMap.load(folder, trusted=trusted)
            m.search(np.ones((1, m.dim), np.float32) / np.sqrt(m.dim), k=3)
        except MapError:
            pass
    assert snapshot(work) == before


# --- checkpoints ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch
    from conftest import TINY_CONFIG

    from qaa_vpr_ros.model import build_model, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(build_model(TINY_CONFIG, image_size=(56, 56)), tmp_path_factory.mktemp("ckpt") / "tiny")


def _safetensors(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


CHECKPOINT_ERRORS = ()


def _checkpoint_errors():
    from qaa_vpr_ros.model import CheckpointError
    from qaa_vpr_ros.model.vpr_model import ModelConfigError

    return (CheckpointError, ModelConfigError)


@FUZZ
@given(kind=st.sampled_from(["config", "config_field", "safetensors", "lying_header", "pt"]), edit=edits,
       cut=truncation, path=st.lists(st.sampled_from(["model_config_dict", "backbone_config", "agg_config",
                                                      "embed_dim", "depth", "num_heads", "num_queries",
                                                      "num_clusters", "qaa_vpr_ros", "image_size"]), max_size=3),
       value=json_values, shape=st.lists(st.integers(0, 2**62), min_size=0, max_size=4),
       offsets=st.tuples(st.integers(-5, 2**64 - 1), st.integers(-5, 2**64 - 1)),
       dtype=st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "XYZ"]))
def test_fuzz_checkpoints(checkpoint, tmp_path_factory, kind, edit, cut, path, value, shape, offsets, dtype):
    from qaa_vpr_ros.model import load_model

    work = tmp_path_factory.mktemp("ckpt")
    folder = work / "tiny"
    shutil.copytree(checkpoint, folder)
    target = folder
    if kind == "config":
        (folder / "config.json").write_bytes(mutate((folder / "config.json").read_bytes(), edit, cut))
    elif kind == "config_field":
        config = json.loads((folder / "config.json").read_text())
        node = config
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else node
        if isinstance(node, dict):
            node[path[-1] if path else "model_config_dict"] = value
        (folder / "config.json").write_text(json.dumps(config))
    elif kind == "safetensors":
        (folder / "model.safetensors").write_bytes(mutate((folder / "model.safetensors").read_bytes(), edit, cut))
    elif kind == "lying_header":
        header = {"__metadata__": {"format": "pt"}, "w": {"dtype": dtype, "shape": shape,
                                                          "data_offsets": list(offsets)}}
        (folder / "model.safetensors").write_bytes(_safetensors(header, b"\0" * 64))
    else:
        import torch

        buf = io.BytesIO()
        torch.save({"state_dict": {"w": torch.zeros(3)}}, buf)
        target = folder / "model.pt"
        target.write_bytes(mutate(buf.getvalue(), edit, cut))
    before = snapshot(work)
    with bounded("checkpoint"):
        try:
            load_model(target)
        except _checkpoint_errors():
            pass
    assert snapshot(work) == before


# --- dataset indexes -----------------------------------------------------------------------------
csv_cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@FUZZ
@given(header=st.lists(st.sampled_from(["path", "easting", "northing", "heading", "timestamp", "sequence"])
                       | csv_cells, max_size=7),
       rows=st.lists(st.lists(csv_cells | st.sampled_from(["img.png", "../img.png", "/etc/passwd", "nan", "1e308"]),
                              max_size=7), max_size=6),
       raw=st.none() | st.binary(max_size=512))
def test_fuzz_images_csv(tmp_path_factory, header, rows, raw):
    from training.datasets import DatasetFormatError
    from training.datasets.images_csv import load_images_csv, load_images_csv_retrieval

    root = tmp_path_factory.mktemp("csv")
    cv2.imwrite(str(root / "img.png"), np.zeros((4, 4, 3), np.uint8))
    if raw is not None:
        (root / "images.csv").write_bytes(raw)
    else:
        lines = [",".join(header)] + [",".join(r) for r in rows]
        (root / "images.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = snapshot(root)
    with bounded("dataset_index"):
        for load in (lambda: load_images_csv(root, min_images_per_place=1), lambda: load_images_csv_retrieval(root)):
            try:
                result = load()
            except DatasetFormatError:
                continue
            for p in getattr(result, "paths", []) + getattr(result, "database_paths", []):
                assert Path(p).resolve().is_relative_to(root.resolve()), p
    assert snapshot(root) == before


@FUZZ
@given(name=st.text(max_size=60) | st.builds(lambda parts: "@".join(parts) + ".jpg",
                                              st.lists(csv_cells, min_size=0, max_size=14)))
def test_fuzz_utm_file_names(name):
    from training.datasets import DatasetFormatError
    from training.datasets.utm import parse_utm_name

    with bounded("dataset_index"):
        try:
            east, north, heading = parse_utm_name(Path(name.replace("/", "_").replace("\0", "_") or "x"))
        except DatasetFormatError:
            return
    assert np.isfinite(east) and np.isfinite(north)


# --- node parameters -----------------------------------------------------------------------------
def _param_names():
    from qaa_vpr_ros.decision import parameter_table

    return [spec.name for spec in parameter_table()]


param_values = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=True)
                | st.text(max_size=30) | st.lists(st.text(max_size=10), max_size=4)
                | st.lists(st.floats(allow_nan=True), max_size=8))


@FUZZ
@given(data=st.data())
def test_fuzz_node_parameters(data):
    from qaa_vpr_ros.decision import ConfigError, LocalizeConfig

    names = _param_names()
    values = data.draw(st.dictionaries(st.sampled_from(names), param_values, max_size=6))
    with bounded("node_parameters"):
        try:
            config = LocalizeConfig.from_dict(values)
            problems = config.problems()
        except ConfigError:
            return
    if not problems:
        config.validate()
        for name, value in values.items():
            spec = {s.name: s for s in __import__("qaa_vpr_ros.decision", fromlist=["x"]).parameter_table()}[name]
            if spec.range is not None and isinstance(getattr(config, name), (int, float)):
                assert spec.range[0] <= getattr(config, name) <= spec.range[1], (name, value)


def test_zz_report_fuzz_cases(capsys):
    """Prints the cases per target (read by scripts/reliability.py)."""
    with capsys.disabled():
        print("\nFUZZ_CASES " + json.dumps(CASES))
