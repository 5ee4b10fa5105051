"""The on-disk format of a place map: folder layout, format versions, the manifest (read and
checked field by field), the map id, and the checks that every data file is what the manifest says.

Folder layout (format version 2)::

    manifest.json      format, versions, map_id, model fingerprint, dim, index type+params, counts,
                       source bags (sha256, topics), map frame, sha256 of every other file
    index.faiss        faiss index over the descriptors (inner product = cosine)
    keyframes.sqlite   one row per keyframe (id, stamp, camera, frame_id, pose, UTM zone, source)
    descriptors.npy    (N, D) float16, row i belongs to keyframe row i; lets the index be rebuilt
    features_*.npy     only in a map with local features (:mod:`.features`): features_index.npy
                       (N, 3) int64 start, count, flags per keyframe row; features_keypoints.npy
                       (F, 2) float32; features_descriptors.npy (F, 128) uint8;
                       features_depth.npy (F,) uint16 millimetres

Format versions: 1, the first; 2: ``map_id`` and the local features of the metric loop closure
(the manifest's ``local_features`` and ``cameras``, and the features files). A format-1 map still
loads: it has no ``map_id``, and :func:`map_session` falls back to its folder name. A format-2 map
without features loads too: it has no local features, and matches against it are not verified.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

import numpy as np

from qaa_vpr_ros.atomic import resolve_folder
from qaa_vpr_ros.local_features import Intrinsics
from qaa_vpr_ros.maps.errors import MapError
from qaa_vpr_ros.maps.index import MAX_DIM, check_index_params

__all__ = [
    "DATA_FILES",
    "DESCRIPTORS_FILE",
    "FEATURE_FILES",
    "FEATURES_DEPTH_FILE",
    "FEATURES_DESCRIPTORS_FILE",
    "FEATURES_INDEX_FILE",
    "FEATURES_KEYPOINTS_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "KEYFRAMES_FILE",
    "MANIFEST",
    "MAP_ID_MAX_BYTES",
    "RESERVED_MAP_ID",
    "check_map_id",
    "cameras_from_manifest",
    "check_npy_header",
    "is_place_map_folder",
    "map_session",
    "new_map_id",
    "read_manifest",
    "sha256_file",
    "tool_version",
]

FORMAT_VERSION = 2  # 2: map_id and the local features of the metric loop closure (optional files)
# A map_id is what a loop-closure record names as its match_session: at most that field's width
# (decision.record.NAME_BYTES), and never the name records give the robot's own keyframes.
MAP_ID_MAX_BYTES = 64
RESERVED_MAP_ID = "online"
FORMAT_NAME = "qaa_vpr_ros.place_map"
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
KEYFRAMES_FILE = "keyframes.sqlite"
DESCRIPTORS_FILE = "descriptors.npy"
DATA_FILES = (INDEX_FILE, KEYFRAMES_FILE, DESCRIPTORS_FILE)
FEATURES_INDEX_FILE = "features_index.npy"
FEATURES_KEYPOINTS_FILE = "features_keypoints.npy"
FEATURES_DESCRIPTORS_FILE = "features_descriptors.npy"
FEATURES_DEPTH_FILE = "features_depth.npy"
# Present (all four) exactly when the manifest has "local_features".
FEATURE_FILES = (FEATURES_INDEX_FILE, FEATURES_KEYPOINTS_FILE, FEATURES_DESCRIPTORS_FILE, FEATURES_DEPTH_FILE)


def tool_version() -> str:
    """Version of the installed qaa_vpr_ros package (the source tree's in a checkout)."""
    from importlib import metadata

    try:
        return metadata.version("qaa_vpr_ros")
    except metadata.PackageNotFoundError:  # running from a source checkout
        from qaa_vpr_ros import __version__

        return __version__


def check_map_id(value: Any, what: str = "map_id") -> str:
    """``value`` if it is a valid map id, else a :class:`MapError` naming ``what``.

    Valid: a non-empty string of printable characters without surrounding blanks, at most
    :data:`MAP_ID_MAX_BYTES` UTF-8 bytes, and not :data:`RESERVED_MAP_ID` ("online", which loop-
    closure records give the robot's own keyframes)."""
    if not isinstance(value, str) or not value:
        raise MapError(f"{what} must be a non-empty string, got {value!r}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as err:
        raise MapError(f"{what} {value!r} is not encodable as UTF-8 ({err})") from err
    if size > MAP_ID_MAX_BYTES:
        raise MapError(f"{what} {value!r} has {size} UTF-8 bytes, more than the {MAP_ID_MAX_BYTES} a "
                       "loop-closure record's match_session holds; choose a shorter id")
    if not value.isprintable() or value != value.strip():
        raise MapError(f"{what} {value!r} holds control characters or surrounding blanks")
    if value == RESERVED_MAP_ID:
        raise MapError(f"{what} {value!r} is reserved: loop-closure records name the robot's own keyframes "
                       f"{RESERVED_MAP_ID!r}; choose another id")
    return value


def _cut_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes at a character boundary."""
    return text.encode("utf-8", "ignore")[:max_bytes].decode("utf-8", "ignore")


def new_map_id(name: str, suffix: str | None = None) -> str:
    """A map id: ``name`` (its printable characters, cut to fit) + "-" + ``suffix`` (default: 8
    random hex digits; at most 16 characters)."""
    suffix = secrets.token_hex(4) if suffix is None else suffix
    if not 0 < len(suffix.encode("utf-8")) <= 16:
        raise MapError(f"map id suffix {suffix!r} must have 1..16 UTF-8 bytes")
    room = MAP_ID_MAX_BYTES - 1 - len(suffix.encode("utf-8"))
    base = _cut_utf8("".join(c for c in name if c.isprintable()).strip(), room).strip()
    return check_map_id(f"{base or 'map'}-{suffix}")


def map_session(map_id: str | None, folder: str | os.PathLike[str] | None) -> str:
    """The ``match_session`` of loop-closure records that match a prebuilt map.

    The map's ``map_id``; a format-1 map (``map_id`` None) falls back to its ``folder``'s name,
    cut to :data:`MAP_ID_MAX_BYTES`, "map" when it has none, and "map:online" for a folder named
    "online": records name only the robot's own keyframes "online"."""
    if map_id is not None:
        return check_map_id(map_id)
    name = _cut_utf8(Path(folder).name if folder else "", MAP_ID_MAX_BYTES) or "map"
    return f"map:{name}" if name == RESERVED_MAP_ID else name


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_place_map_folder(folder: str | os.PathLike[str]) -> bool:
    """True for a folder :meth:`PlaceMap.save` may replace: nothing in it but map files, and a
    manifest of this format. Anything else (a home folder, a half-typed parameter) is never deleted."""
    folder = Path(folder)
    try:
        names = {p.name for p in folder.iterdir()}
        if not names <= {MANIFEST, *DATA_FILES, *FEATURE_FILES} or MANIFEST not in names:
            return False
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME


_REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "model_fingerprint": str,
    "descriptor_dim": int,
    "index": dict,
    "counts": dict,
    "map_frame": str,
    "files": dict,
}


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check ``folder/manifest.json`` (not the data files)."""
    folder = resolve_folder(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise MapError(f"map folder {folder} does not exist (or is not a folder)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise MapError(f"{path} is missing: {folder} is not a place map (or its save failed)") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MapError(f"{path} is not valid JSON ({err}); the map is corrupt") from err
    if not isinstance(manifest, dict):
        raise MapError(f"{path} must hold a JSON object")
    for key, typ in _REQUIRED_FIELDS.items():
        if key not in manifest:
            raise MapError(f"{path} lacks the field {key!r}")
        if not isinstance(manifest[key], typ) or isinstance(manifest[key], bool):
            raise MapError(f"{path} field {key!r} has the wrong type {type(manifest[key]).__name__}")
    if manifest["format"] != FORMAT_NAME:
        raise MapError(f"{path} field 'format' is {manifest['format']!r}, expected {FORMAT_NAME!r}")
    if manifest["format_version"] > FORMAT_VERSION:
        raise MapError(
            f"{path} has format_version {manifest['format_version']}, newer than this tool's "
            f"{FORMAT_VERSION}; update qaa_vpr_ros"
        )
    if manifest["format_version"] >= 2 and "map_id" not in manifest:
        raise MapError(f"{path} lacks the field 'map_id' (format {manifest['format_version']} requires it)")
    if "map_id" in manifest:
        check_map_id(manifest["map_id"], f"{path} field 'map_id'")
    if "type" not in manifest["index"]:
        raise MapError(f"{path} field 'index' lacks 'type'")
    params = manifest["index"].get("params", {})
    if not isinstance(params, dict):
        raise MapError(f"{path} field 'index.params' must be an object")
    try:
        check_index_params(manifest["index"]["type"], params)
    except MapError as err:
        raise MapError(f"{path} field 'index': {err}") from err
    if not 1 <= manifest["descriptor_dim"] <= MAX_DIM:
        raise MapError(f"{path} field 'descriptor_dim' must lie in 1..{MAX_DIM}, got {manifest['descriptor_dim']}")
    count = manifest["counts"].get("keyframes")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise MapError(f"{path} field 'counts.keyframes' must be a non-negative integer, got {count!r}")
    for key, typ in (("sources", list), ("info", dict), ("utm_zones", list), ("created", str)):
        if key in manifest and not isinstance(manifest[key], typ):
            raise MapError(f"{path} field {key!r} must be a {typ.__name__}")
    if not all(isinstance(s, dict) for s in manifest.get("sources", [])):
        raise MapError(f"{path} field 'sources' must be a list of objects")
    features = manifest.get("local_features")
    if features is not None:
        _check_local_features(features, path)
    elif any(name in manifest["files"] for name in FEATURE_FILES):
        raise MapError(f"{path} field 'files' lists local feature files but the manifest lacks 'local_features'")
    cameras_from_manifest(manifest, path)
    for name in DATA_FILES + (FEATURE_FILES if features is not None else ()):
        entry = manifest["files"].get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise MapError(f"{path} field 'files' lacks the sha256 of {name}")
        if not _SHA256.fullmatch(entry["sha256"]):
            raise MapError(f"{path} field 'files.{name}.sha256' is not 64 hex digits")
        size = entry.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise MapError(f"{path} field 'files.{name}.bytes' must be a non-negative integer, got {size!r}")
        _check_regular_file(folder / name)
    return manifest


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_local_features(features: Any, path: Path) -> None:
    """The manifest's ``local_features``: detector, max_features, contrast_threshold, count."""
    if not isinstance(features, dict):
        raise MapError(f"{path} field 'local_features' must be an object")
    if features.get("detector") != "sift":
        raise MapError(f"{path} field 'local_features.detector' is {features.get('detector')!r}; this tool "
                       "reads 'sift'")
    for key in ("max_features", "count"):
        value = features.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise MapError(f"{path} field 'local_features.{key}' must be a non-negative integer, got {value!r}")
    value = features.get("contrast_threshold")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise MapError(f"{path} field 'local_features.contrast_threshold' must be a positive number, got {value!r}")


def cameras_from_manifest(manifest: dict[str, Any], path: Path | str = MANIFEST) -> dict[str, Intrinsics]:
    """The manifest's ``cameras`` (topic -> [fx, fy, cx, cy, distortion...]) as :class:`Intrinsics`;
    a MapError names the field at fault (``path``: the manifest, for the message)."""
    cameras = manifest.get("cameras", {})
    if not isinstance(cameras, dict):
        raise MapError(f"{path} field 'cameras' must be an object (topic -> [fx, fy, cx, cy, distortion...])")
    out = {}
    for topic, values in cameras.items():
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in values):
            raise MapError(f"{path} field 'cameras.{topic}' must be a list of numbers, got {values!r}")
        try:
            out[topic] = Intrinsics.from_parameter(values)
        except ValueError as err:
            raise MapError(f"{path} field 'cameras.{topic}': {err}") from err
    return out


def _check_regular_file(path: Path) -> None:
    """Map files are regular files in the map folder: no symlinks out of it, no devices or FIFOs."""
    try:
        info = path.lstat()
    except FileNotFoundError as err:
        raise MapError(f"{path} is missing; the map is incomplete") from err
    if stat.S_ISLNK(info.st_mode):
        raise MapError(f"{path} is a symlink; map files must be regular files inside the map folder")
    if not stat.S_ISREG(info.st_mode):
        raise MapError(f"{path} is not a regular file")


def check_npy_header(path: Path, shape: tuple[int, ...], dtype: str = "<f2") -> None:
    """The .npy header must describe exactly ``shape`` of ``dtype`` (little-endian, e.g. "<f2",
    "<i8", "|u1") in C order, and the file must hold exactly that many bytes: nothing is allocated
    from a header that lies."""
    want, expected = tuple(shape), np.dtype(dtype)  # the names are reused for the header's below
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise MapError(f"{path} is not a readable .npy array: {err}") from err
    if dtype != expected or fortran or tuple(shape) != tuple(want):
        raise MapError(
            f"{path} holds {dtype} {tuple(shape)}{' (Fortran order)' if fortran else ''}, the manifest "
            f"says {expected} {tuple(want)}"
        )
    payload = expected.itemsize * int(np.prod(want, dtype=np.int64))
    size = path.stat().st_size
    if size != offset + payload:
        raise MapError(f"{path} has {size} bytes, its header promises {offset + payload}")
