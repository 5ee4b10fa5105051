"""The place map: keyframe records, their descriptors and a faiss index, saved as one folder.

Folder layout (format version 2)::

    manifest.json      format, versions, map_id, model fingerprint, dim, index type+params, counts,
                       source bags (sha256, topics), map frame, sha256 of every other file
    index.faiss        faiss index over the descriptors (inner product = cosine)
    keyframes.sqlite   one row per keyframe (id, stamp, camera, frame_id, pose, UTM zone, source)
    descriptors.npy    (N, D) float16, row i belongs to keyframe row i; lets the index be rebuilt

Format versions: 1, the first; 2: ``map_id`` (and the local features of the metric loop
closure, to come under the same number). A format-1 map still loads: it has no ``map_id``, and
:func:`map_session` falls back to its folder name.

Nothing is unpickled when loading; every file is checked against the manifest first.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import re
import secrets
import sqlite3
import stat
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from qaa_vpr_ros.atomic import FolderNotOursError, atomic_folder, resolve_folder
from qaa_vpr_ros.paths import expand_path

__all__ = [
    "FORMAT_VERSION",
    "INDEX_TYPES",
    "MAP_ID_MAX_BYTES",
    "RESERVED_MAP_ID",
    "Keyframe",
    "MapError",
    "MapSaveError",
    "PlaceMap",
    "SearchResult",
    "check_map_id",
    "map_session",
    "new_map_id",
    "tool_version",
]

FORMAT_VERSION = 2  # 2: map_id (and the local features of the metric loop closure, to come)
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
INDEX_TYPES = ("flat", "ivfpq", "hnsw")
_INDEX_PARAMS = {
    "flat": {"pca_dim"},
    "ivfpq": {"pca_dim", "nlist", "m", "nbits", "nprobe"},
    "hnsw": {"pca_dim", "M", "ef_construction", "ef_search"},
}
_NO_POSE = (math.nan, math.nan, math.nan)
MAX_TRAIN = 50_000  # vectors used to train PCA / IVF-PQ
MAX_DIM = 1 << 16  # largest descriptor dim a manifest may claim
# Largest value of each index parameter (a manifest from elsewhere must not size allocations).
_PARAM_MAX = {"pca_dim": MAX_DIM, "nlist": 1 << 20, "m": MAX_DIM, "nbits": 16, "nprobe": 1 << 20,
              "M": 512, "ef_construction": 1 << 16, "ef_search": 1 << 16}


class MapError(RuntimeError):
    """A map that cannot be created, loaded, searched or saved (the message says which file/field)."""


class MapSaveError(MapError, OSError):
    """Writing a map failed (full disk, read-only folder); an existing map there is untouched.
    Also an ``OSError``, as the failure underneath it was."""


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


@dataclass(frozen=True)
class Keyframe:
    """One map keyframe.

    ``position`` (m) and ``orientation`` (qx, qy, qz, qw) are the pose-topic pose interpolated to the
    image stamp, in the map frame (UTM easting/northing/altitude when ``utm_zone`` is set). A map
    built without a pose topic has NaN positions and identity orientations (see ``has_pose``).
    """

    id: int
    stamp_sec: int
    stamp_nanosec: int
    camera: str
    frame_id: str
    position: tuple[float, float, float] = _NO_POSE
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    utm_zone: str | None = None
    source: str = ""

    @property
    def stamp(self) -> float:
        """Image stamp in seconds."""
        return self.stamp_sec + self.stamp_nanosec * 1e-9

    @property
    def stamp_ns(self) -> int:
        """Image stamp in integer nanoseconds."""
        return self.stamp_sec * 1_000_000_000 + self.stamp_nanosec

    @property
    def has_pose(self) -> bool:
        """False for keyframes of a map built without a pose topic."""
        return all(math.isfinite(v) for v in self.position)


@dataclass
class SearchResult:
    """Top-k matches for M queries, best first.

    ``ids`` (M, k) int64 keyframe ids, -1 where fewer than k results exist; ``scores`` (M, k)
    float32 inner products (= cosine similarity of L2-normalised descriptors), -inf where padded;
    ``keyframes[i]`` the records of the valid ids of query i, in rank order.
    """

    ids: np.ndarray
    scores: np.ndarray
    keyframes: list[list[Keyframe]] = field(default_factory=list)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_index_params(index_type: str, params: dict[str, Any]) -> dict[str, Any]:
    if index_type not in INDEX_TYPES:
        raise MapError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    unknown = set(params) - _INDEX_PARAMS[index_type]
    if unknown:
        raise MapError(
            f"unknown parameter(s) {sorted(unknown)} for index type {index_type!r}; "
            f"allowed: {sorted(_INDEX_PARAMS[index_type])}"
        )
    clean: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or int(value) <= 0:
            raise MapError(f"index parameter {key}={value!r} must be a positive integer")
        if int(value) > _PARAM_MAX[key]:
            raise MapError(f"index parameter {key}={value!r} exceeds its limit {_PARAM_MAX[key]}")
        clean[key] = int(value)
    return clean


def _largest_divisor_at_most(n: int, limit: int) -> int:
    for m in range(min(n, limit), 0, -1):
        if n % m == 0:
            return m
    return 1


def index_factory_string(index_type: str, dim: int, n: int, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """faiss index_factory description and the resolved parameters for ``n`` training vectors."""
    resolved = dict(params)
    prefix = ""
    work_dim = dim
    if "pca_dim" in params:
        if params["pca_dim"] >= dim:
            raise MapError(f"pca_dim={params['pca_dim']} must be smaller than the descriptor dim {dim}")
        if n < params["pca_dim"]:
            raise MapError(f"PCA to {params['pca_dim']} dims needs at least that many keyframes, have {n}")
        work_dim = params["pca_dim"]
        prefix = f"PCA{work_dim},L2norm,"
    if index_type == "flat":
        return prefix + "Flat", resolved
    if index_type == "hnsw":
        resolved.setdefault("M", 32)
        resolved.setdefault("ef_construction", 40)
        resolved.setdefault("ef_search", 64)
        return prefix + f"HNSW{resolved['M']},Flat", resolved
    # IVF-PQ: product quantiser codes, coarse inverted lists.
    resolved.setdefault("nbits", 8)
    # Default sub-quantisers (code bytes with nbits 8): 64 up to 2048 dims, then dim/32 up to 256
    # (8192-d: 64-byte codes reached recall@1 0.40 vs exact in scripts/bench_maps.py, 256 bytes 0.975),
    # each of >= 4 dims, dividing the dim.
    limit = min(max(64, work_dim // 32), 256, max(1, work_dim // 4))
    resolved.setdefault("m", _largest_divisor_at_most(work_dim, limit))
    if work_dim % resolved["m"]:
        raise MapError(f"ivfpq m={resolved['m']} must divide the (PCA) descriptor dim {work_dim}")
    min_train = 1 << resolved["nbits"]
    if n < min_train:
        raise MapError(
            f"ivfpq with nbits={resolved['nbits']} needs at least {min_train} keyframes to train, have {n}; "
            "use the flat index for small maps"
        )
    resolved.setdefault("nlist", max(1, min(int(4 * math.sqrt(n)), min(n, MAX_TRAIN) // 39)))
    if resolved["nlist"] > n:
        raise MapError(f"ivfpq nlist={resolved['nlist']} exceeds the {n} keyframes to train on")
    resolved.setdefault("nprobe", min(resolved["nlist"], 16))
    # "np": no polysemous training (slow, and only useful for Hamming filtering, which we do not use).
    return prefix + f"IVF{resolved['nlist']},PQ{resolved['m']}x{resolved['nbits']}np", resolved


def _apply_runtime_params(index: faiss.Index, index_type: str, params: dict[str, Any]) -> None:
    space = faiss.ParameterSpace()
    if index_type == "ivfpq" and "nprobe" in params:
        space.set_index_parameter(index, "nprobe", params["nprobe"])
    if index_type == "hnsw" and "ef_search" in params:
        space.set_index_parameter(index, "efSearch", params["ef_search"])


def _hnsw_of(index: faiss.Index) -> Any:
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return inner.hnsw


class _GrowableArray:
    """Row-appendable 2-D buffer with amortised O(1) appends (capacity doubles)."""

    def __init__(self, width: int, dtype: Any, initial: np.ndarray | None = None) -> None:
        self._dtype = np.dtype(dtype)
        self._width = width
        self._data = initial if initial is not None else np.empty((0, width), self._dtype)
        self._n = len(self._data)
        self._owned = initial is None

    def view(self) -> np.ndarray:
        return self._data[: self._n]

    def append(self, rows: np.ndarray) -> None:
        need = self._n + len(rows)
        if not self._owned or need > len(self._data):
            capacity = max(need, 2 * len(self._data), 64)
            grown = np.empty((capacity, self._width), self._dtype)
            grown[: self._n] = self._data[: self._n]
            self._data, self._owned = grown, True
        self._data[self._n : need] = rows
        self._n = need

    def __len__(self) -> int:
        return self._n


class PlaceMap:
    """Keyframes + descriptors + faiss index. Thread-safe: add/search/save hold one lock.

    Build with :meth:`create` + :meth:`add`, or :meth:`load` a saved folder.
    """

    def __init__(
        self,
        dim: int,
        model_fingerprint: str,
        index_type: str,
        index_params: dict[str, Any],
        map_frame: str,
        *,
        map_id: str | None = None,
        _descriptors: np.ndarray | None = None,
        _keyframes: list[Keyframe] | None = None,
        _index: faiss.Index | None = None,
    ) -> None:
        if dim <= 0:
            raise MapError(f"descriptor dim must be positive, got {dim}")
        self.dim = int(dim)
        self.model_fingerprint = str(model_fingerprint)
        self.map_frame = str(map_frame)
        self.index_type = index_type
        self.index_params = _check_index_params(index_type, index_params)
        # The id loop-closure records name this map by (see map_session); None until the first
        # save gives one to a map created without it, and for a loaded format-1 map.
        self.map_id = None if map_id is None else check_map_id(map_id)
        self.sources: list[dict[str, Any]] = []  # source bags: {path, sha256, topics, ...}
        self.info: dict[str, Any] = {}  # free-form build details stored in the manifest
        self.created: str | None = None
        self._lock = threading.RLock()
        self._desc = _GrowableArray(self.dim, np.float16, _descriptors)
        self._keyframes: list[Keyframe] = list(_keyframes or [])
        self._row_of_id = {kf.id: row for row, kf in enumerate(self._keyframes)}
        if len(self._row_of_id) != len(self._keyframes):
            raise MapError("keyframe ids are not unique")
        self._ids = np.fromiter((kf.id for kf in self._keyframes), np.int64, len(self._keyframes))
        self._index = _index
        self._indexed = _index.ntotal if _index is not None else 0

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        dim: int,
        model_fingerprint: str,
        index_type: str = "flat",
        map_frame: str = "map",
        map_id: str | None = None,
        **index_params: Any,
    ) -> PlaceMap:
        """An empty map for ``dim``-dimensional descriptors of the model with ``model_fingerprint``.

        ``index_type``: "flat" (exact inner product), "ivfpq" (params nlist, m, nbits, nprobe) or
        "hnsw" (params M, ef_construction, ef_search); any of them takes ``pca_dim``.
        ``map_id`` (see :func:`check_map_id`): None gives the map a fresh one at its first
        :meth:`save` (:func:`new_map_id` of the folder name).
        """
        return cls(dim, model_fingerprint, index_type, index_params, map_frame, map_id=map_id)

    # --- properties ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._keyframes)

    @property
    def keyframes(self) -> list[Keyframe]:
        """Keyframe records in row order (a copy)."""
        with self._lock:
            return list(self._keyframes)

    @property
    def descriptors(self) -> np.ndarray:
        """(N, D) float16 descriptors in row order (read-only view)."""
        with self._lock:
            view = self._desc.view()
            view = view.view()
            view.flags.writeable = False
            return view

    @property
    def ids(self) -> np.ndarray:
        """(N,) int64 keyframe ids in row order."""
        with self._lock:
            return self._ids.copy()

    @property
    def is_exact(self) -> bool:
        """Whether the index is a flat (exact) one. Its float32 copy of the descriptors is made at
        the first :meth:`search`, not at :meth:`load` or :meth:`subset`: a caller that searches
        the descriptors itself (the node's decision does, with one product) never holds it."""
        return self.index_type == "flat" and "pca_dim" not in self.index_params

    @property
    def index_nbytes(self) -> int:
        """Size of the serialised faiss index in bytes (about what it occupies in memory)."""
        with self._lock:
            return int(faiss.serialize_index(self._ensure_index()).size)

    @property
    def memory_bytes(self) -> int:
        """Bytes held in memory: the float16 descriptor buffer (its capacity) and, for a flat index,
        its float32 copy (other index types: their code size is not counted here)."""
        with self._lock:
            data = self._desc._data
            held = 0 if isinstance(data, np.memmap) else data.nbytes  # a loaded map stays on disk
            if self._index is not None and self.is_exact:
                held += self._index.ntotal * self.dim * 4
            return int(held)

    def subset(self, rows: Sequence[int] | np.ndarray) -> PlaceMap:
        """A new map of the keyframes at ``rows`` (kept in row order, ids unchanged) with its index
        rebuilt from their descriptors; map_id, sources and info are copied."""
        with self._lock:
            rows = np.unique(np.asarray(rows, np.int64))
            if len(rows) and (rows[0] < 0 or rows[-1] >= len(self._keyframes)):
                raise MapError(f"rows must lie in 0..{len(self._keyframes) - 1}")
            kept = PlaceMap(self.dim, self.model_fingerprint, self.index_type, dict(self.index_params), self.map_frame,
                            map_id=self.map_id, _descriptors=np.array(self._desc.view()[rows]),
                            _keyframes=[self._keyframes[r] for r in rows])
            kept.sources, kept.info = list(self.sources), dict(self.info)
        if len(kept) and not kept.is_exact:  # a trained index is trained now; a flat one at first search
            with kept._lock:
                kept._ensure_index()
        return kept

    def keyframe(self, keyframe_id: int) -> Keyframe:
        """The keyframe with this id (KeyError when absent)."""
        with self._lock:
            return self._keyframes[self._row_of_id[int(keyframe_id)]]

    # --- mutation -----------------------------------------------------------------------------
    def add(self, descriptors: np.ndarray, keyframes: Sequence[Keyframe]) -> None:
        """Append N keyframes with their (N, D) L2-normalised float32 descriptors."""
        descriptors = np.asarray(descriptors, dtype=np.float32)
        if descriptors.ndim != 2 or descriptors.shape[1] != self.dim:
            raise MapError(f"descriptors must have shape (N, {self.dim}), got {descriptors.shape}")
        if len(descriptors) != len(keyframes):
            raise MapError(f"{len(descriptors)} descriptors but {len(keyframes)} keyframes")
        if not np.all(np.isfinite(descriptors)):
            raise MapError("descriptors contain NaN or inf")
        new_ids = [int(kf.id) for kf in keyframes]
        with self._lock:
            clashes = [i for i in new_ids if i in self._row_of_id]
            if clashes or len(set(new_ids)) != len(new_ids):
                raise MapError(f"keyframe ids already in the map or repeated: {sorted(set(clashes))[:5]}...")
            for offset, kf in enumerate(keyframes):
                self._row_of_id[int(kf.id)] = len(self._keyframes) + offset
            self._keyframes.extend(keyframes)
            self._ids = np.concatenate([self._ids, np.asarray(new_ids, np.int64)])
            stored = descriptors.astype(np.float16)
            self._desc.append(stored)
            # The index holds exactly the stored (float16) values, so a rebuild reproduces it.
            in_sync = self._indexed == len(self._desc) - len(stored)
            if self._index is not None and self._index.is_trained and in_sync:
                self._index.add(stored.astype(np.float32))
                self._indexed = self._index.ntotal

    def rebuild_index(self, index_type: str | None = None, **params: Any) -> None:
        """Rebuild the index from the stored descriptors, optionally with another type/params."""
        with self._lock:
            if index_type is not None:
                self.index_params = _check_index_params(index_type, params)
                self.index_type = index_type
            self._index = None
            self._indexed = 0
            self._ensure_index()

    def _ensure_index(self) -> faiss.Index:
        """Create/train the index when missing and add rows not yet indexed (under the lock)."""
        n = len(self._desc)
        if self._index is None:
            if self.is_exact:
                self._index = faiss.IndexFlatIP(self.dim)
            else:
                if n == 0:
                    raise MapError(f"a {self.index_type} index needs keyframes to train on; add some first")
                desc, resolved = index_factory_string(self.index_type, self.dim, n, self.index_params)
                self._index = faiss.index_factory(self.dim, desc, faiss.METRIC_INNER_PRODUCT)
                if self.index_type == "hnsw":
                    _hnsw_of(self._index).efConstruction = resolved["ef_construction"]
                if self.index_type == "ivfpq":
                    # 10 k-means rounds for the PQ codebooks (as faiss uses for the coarse
                    # quantiser) instead of 25: training 2x faster, recall unchanged in our bench.
                    faiss.downcast_index(faiss.extract_index_ivf(self._index)).pq.cp.niter = 10
                # Train on at most MAX_TRAIN evenly spaced rows: bounded time, deterministic.
                stride = max(1, -(-n // MAX_TRAIN))
                self._index.train(self._desc.view()[::stride].astype(np.float32))
                self.index_params = resolved
            _apply_runtime_params(self._index, self.index_type, self.index_params)
            self._indexed = 0
        if self._indexed < n:
            block = 65536
            for start in range(self._indexed, n, block):
                self._index.add(self._desc.view()[start : min(n, start + block)].astype(np.float32))
            self._indexed = n
        return self._index

    # --- search -------------------------------------------------------------------------------
    def search(self, descriptors: np.ndarray, k: int) -> SearchResult:
        """Top-``k`` keyframes for each of the (M, D) query descriptors."""
        queries = np.ascontiguousarray(np.asarray(descriptors, dtype=np.float32))
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise MapError(f"query descriptors must have shape (M, {self.dim}), got {np.shape(descriptors)}")
        if k < 1:
            raise MapError(f"k must be >= 1, got {k}")
        m = len(queries)
        with self._lock:
            n = len(self._keyframes)
            if n == 0 or m == 0:
                ids = np.full((m, k), -1, np.int64)
                return SearchResult(ids, np.full((m, k), -np.inf, np.float32), [[] for _ in range(m)])
            index = self._ensure_index()
            scores, rows = index.search(queries, k)
            valid = rows >= 0
            ids = np.where(valid, self._ids[np.where(valid, rows, 0)], -1).astype(np.int64)
            scores = np.where(valid, scores, -np.inf).astype(np.float32)
            records = [[self._keyframes[r] for r in row[row >= 0]] for row in rows]
        return SearchResult(ids, scores, records)

    # --- persistence --------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The manifest describing this map (without file checksums; without ``map_id`` until the
        map has one, which :meth:`save` gives it first)."""
        cameras: dict[str, int] = {}
        zones = set()
        for kf in self._keyframes:
            cameras[kf.camera] = cameras.get(kf.camera, 0) + 1
            if kf.utm_zone:
                zones.add(kf.utm_zone)
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "tool_version": tool_version(),
            **({"map_id": self.map_id} if self.map_id is not None else {}),
            "model_fingerprint": self.model_fingerprint,
            "descriptor_dim": self.dim,
            "descriptor_dtype": "float16",
            "index": {"type": self.index_type, "params": dict(self.index_params)},
            "counts": {"keyframes": len(self._keyframes), "per_camera": cameras},
            "map_frame": self.map_frame,
            "utm_zones": sorted(zones),
            "sources": list(self.sources),
            "info": dict(self.info),
        }

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write the map folder atomically; an existing map there is replaced only on success.
        A map without a ``map_id`` gets one first (:func:`new_map_id` of the folder's name) and keeps
        it for later saves."""
        folder = expand_path(folder)
        with self._lock:
            if self.map_id is None:
                self.map_id = new_map_id(folder.name)
            index = self._ensure_index()
            manifest = self.manifest()
            try:
                with atomic_folder(folder, replaces=is_place_map_folder) as tmp:
                    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a map is an ordinary folder
                    faiss.write_index(index, str(tmp / INDEX_FILE))
                    _write_keyframes(tmp / KEYFRAMES_FILE, self._keyframes)
                    with open(tmp / DESCRIPTORS_FILE, "wb") as f:
                        np.save(f, np.ascontiguousarray(self._desc.view()), allow_pickle=False)
                    manifest["files"] = {
                        name: {"sha256": _sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                        for name in DATA_FILES
                    }
                    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
                    (tmp / MANIFEST).write_text(text, encoding="utf-8")
            except FolderNotOursError as err:
                what = "is not a folder" if os.path.lexists(folder) and not folder.is_dir() else "is not a place map"
                raise MapError(f"{folder} {what}; a map save replaces only a map folder or an empty one "
                               f"and never deletes anything else ({err})") from err
            except (OSError, RuntimeError) as err:  # full disk, read-only or vanished folder (faiss: RuntimeError)
                import shutil

                try:
                    free = f"{shutil.disk_usage(folder.parent).free} bytes free there"
                except OSError:
                    free = "free space unknown"
                raise MapSaveError(f"saving the map to {folder} failed ({free}): {err}; any map that was there "
                                   "is untouched") from err
            self.created = manifest["created"]

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        expected_fingerprint: str | None = None,
        *,
        verify_checksums: bool = True,
        mmap: bool = True,
        trusted: bool = False,
    ) -> PlaceMap:
        """Load and validate a map folder.

        Checks the manifest (schema, types, ranges), that every file is a regular file inside the
        folder, file sizes and checksums, the descriptor header, keyframe rows, counts and dims;
        with ``expected_fingerprint``, refuses a map built with another model. ``mmap`` keeps the
        descriptors on disk until needed.

        ``trusted``: read ``index.faiss`` with faiss's own (binary, unhardened) parser. By default
        a map is untrusted: that file is never parsed and the index is rebuilt from
        ``descriptors.npy``, which is parsed safely (exact for flat; ivfpq/hnsw retrain, which
        takes time on large maps). Pass True only for maps you built yourself.

        Raises:
            MapError: naming the file or field at fault.
        """
        folder = resolve_folder(expand_path(folder))  # after a crash mid-replacement: the old map, set aside
        manifest = read_manifest(folder)
        fingerprint = manifest["model_fingerprint"]
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise MapError(
                f"map {folder} was built with model fingerprint {fingerprint}, but the model in use has "
                f"fingerprint {expected_fingerprint}; rebuild the map with this model (build_map) "
                "or load the model the map was built with"
            )
        for name in DATA_FILES:
            path = folder / name
            expected = manifest["files"][name]
            size = path.lstat().st_size
            if size != expected.get("bytes", size):
                raise MapError(
                    f"{path} has {size} bytes, the manifest says {expected['bytes']}: "
                    "the map is truncated or was modified; rebuild or restore it"
                )
            if verify_checksums:
                if _sha256_file(path) != expected["sha256"]:
                    raise MapError(
                        f"{path} does not match its sha256 in {folder / MANIFEST}: "
                        "the map is corrupt or was modified; rebuild or restore it"
                    )
        dim = manifest["descriptor_dim"]
        count = manifest["counts"]["keyframes"]
        _check_npy_header(folder / DESCRIPTORS_FILE, count, dim)
        try:
            descriptors = np.load(
                folder / DESCRIPTORS_FILE, mmap_mode="r" if mmap else None, allow_pickle=False
            )
        except (ValueError, OSError) as err:
            raise MapError(f"{folder / DESCRIPTORS_FILE} is not a readable .npy array: {err}") from err
        if descriptors.dtype != np.float16 or descriptors.shape != (count, dim):
            raise MapError(
                f"{folder / DESCRIPTORS_FILE} holds {descriptors.dtype} {descriptors.shape}, the manifest "
                f"says float16 ({count}, {dim})"
            )
        keyframes = _read_keyframes(folder / KEYFRAMES_FILE, limit=count + 1)
        if len(keyframes) != count:
            raise MapError(
                f"{folder / KEYFRAMES_FILE} has {len(keyframes)} keyframes, the manifest says {count}"
            )
        index = None
        if trusted:
            try:
                index = faiss.read_index(str(folder / INDEX_FILE))
            except RuntimeError as err:
                raise MapError(f"{folder / INDEX_FILE} is not a readable faiss index: {err}") from err
        if index is not None and (index.d != dim or index.ntotal != count):
            raise MapError(
                f"{folder / INDEX_FILE} indexes {index.ntotal} vectors of dim {index.d}, "
                f"the manifest says {count} of dim {dim}"
            )
        idx = manifest["index"]
        try:
            place_map = cls(
                dim,
                fingerprint,
                idx["type"],
                idx.get("params", {}),
                manifest["map_frame"],
                _descriptors=descriptors,
                _keyframes=keyframes,
                _index=index,
            )
        except MapError as err:
            raise MapError(f"{folder / MANIFEST}: {err}") from err
        if index is not None:
            _apply_runtime_params(index, place_map.index_type, place_map.index_params)
        elif not place_map.is_exact:
            with place_map._lock:
                place_map._ensure_index()  # rebuilt (retrained) from the descriptors just checked
        place_map.sources = list(manifest.get("sources", []))
        place_map.info = dict(manifest.get("info", {}))
        place_map.created = manifest.get("created")
        place_map.map_id = manifest.get("map_id")  # checked by read_manifest; None in a format-1 map
        return place_map


def is_place_map_folder(folder: str | os.PathLike[str]) -> bool:
    """True for a folder :meth:`PlaceMap.save` may replace: nothing in it but map files, and a
    manifest of this format. Anything else (a home folder, a half-typed parameter) is never deleted."""
    folder = Path(folder)
    try:
        names = {p.name for p in folder.iterdir()}
        if not names <= {MANIFEST, *DATA_FILES} or MANIFEST not in names:
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
        _check_index_params(manifest["index"]["type"], params)
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
    for name in DATA_FILES:
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


def _check_npy_header(path: Path, count: int, dim: int) -> None:
    """The .npy header must describe exactly (count, dim) little-endian float16 in C order, and the
    file must hold exactly that many bytes: nothing is allocated from a header that lies."""
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
    if dtype != np.dtype("<f2") or fortran or tuple(shape) != (count, dim):
        raise MapError(
            f"{path} holds {dtype} {tuple(shape)}{' (Fortran order)' if fortran else ''}, the manifest "
            f"says float16 ({count}, {dim})"
        )
    size = path.stat().st_size
    if size != offset + 2 * count * dim:
        raise MapError(f"{path} has {size} bytes, its header promises {offset + 2 * count * dim}")


_KEYFRAME_COLUMNS = (
    "id", "stamp_sec", "stamp_nanosec", "camera", "frame_id",
    "x", "y", "z", "qx", "qy", "qz", "qw", "utm_zone", "source",
)


def _write_keyframes(path: Path, keyframes: Iterable[Keyframe]) -> None:
    """One SQLite table, rows in map order (``row`` column = descriptor row)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE keyframes (row INTEGER PRIMARY KEY, id INTEGER NOT NULL UNIQUE, "
            "stamp_sec INTEGER NOT NULL, stamp_nanosec INTEGER NOT NULL, camera TEXT NOT NULL, "
            "frame_id TEXT NOT NULL, x REAL, y REAL, z REAL, qx REAL, qy REAL, qz REAL, qw REAL, "
            "utm_zone TEXT, source TEXT NOT NULL)"
        )
        db.executemany(
            f"INSERT INTO keyframes (row, {', '.join(_KEYFRAME_COLUMNS)}) VALUES ({', '.join('?' * 15)})",
            (
                (
                    row, kf.id, kf.stamp_sec, kf.stamp_nanosec, kf.camera, kf.frame_id,
                    *(None if math.isnan(v) else float(v) for v in kf.position),
                    *(float(v) for v in kf.orientation), kf.utm_zone, kf.source,
                )
                for row, kf in enumerate(keyframes)
            ),
        )
        db.commit()


_COLUMN_TYPES: dict[str, tuple[type, ...]] = {
    "id": (int,), "stamp_sec": (int,), "stamp_nanosec": (int,), "camera": (str,), "frame_id": (str,),
    "x": (int, float, type(None)), "y": (int, float, type(None)), "z": (int, float, type(None)),
    "qx": (int, float), "qy": (int, float), "qz": (int, float), "qw": (int, float),
    "utm_zone": (str, type(None)), "source": (str,),
}


def _read_keyframes(path: Path, limit: int | None = None) -> list[Keyframe]:
    """Rows of the keyframe table (at most ``limit``), each column checked for its type."""
    nan = math.nan
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            kind = db.execute("SELECT type FROM sqlite_master WHERE name = 'keyframes'").fetchone()
            if kind is None or kind[0] != "table":  # a view could compute rows without end
                raise MapError(f"{path} has no table 'keyframes'")
            query = f"SELECT {', '.join(_KEYFRAME_COLUMNS)} FROM keyframes ORDER BY row"
            rows = db.execute(query + (f" LIMIT {int(limit)}" if limit is not None else "")).fetchall()
    except sqlite3.DatabaseError as err:
        raise MapError(f"{path} is not a readable keyframe table: {err}") from err
    for n, r in enumerate(rows):
        for column, value in zip(_KEYFRAME_COLUMNS, r, strict=True):
            if not isinstance(value, _COLUMN_TYPES[column]):
                raise MapError(f"{path} row {n}: column {column} holds {type(value).__name__} {value!r}")
        if not 0 <= r[2] < 1_000_000_000:
            raise MapError(f"{path} row {n}: stamp_nanosec {r[2]} is outside 0..999999999")
    return [
        Keyframe(
            id=r[0], stamp_sec=r[1], stamp_nanosec=r[2], camera=r[3], frame_id=r[4],
            position=tuple(nan if v is None else v for v in r[5:8]),
            orientation=(r[8], r[9], r[10], r[11]), utm_zone=r[12], source=r[13],
        )
        for r in rows
    ]
