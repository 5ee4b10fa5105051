"""The place map: keyframe records, their descriptors and a faiss index, saved as one folder.

The store's parts, one module each: the keyframe record and its table (:mod:`.keyframe`), the faiss
index (:mod:`.index`), the keyframes' local features (:mod:`.features`), the on-disk format, manifest
and map id (:mod:`.format`) and the errors (:mod:`.errors`); :class:`PlaceMap` puts them together.
The names this module exported before the split are still importable from it.

Nothing is unpickled when loading; every file is checked against the manifest first.
"""
from __future__ import annotations

import datetime
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from qaa_vpr_ros.atomic import FolderNotOursError, atomic_folder, resolve_folder
from qaa_vpr_ros.local_features import DESCRIPTOR_BYTES, FeatureConfig, Intrinsics, LocalFeatures
from qaa_vpr_ros.maps.errors import MapError, MapSaveError
from qaa_vpr_ros.maps.features import (
    FLAG_FEATURES,
    PackedFeatures,
    check_feature_index,
    feature_config_of,
    pack_features,
)
from qaa_vpr_ros.maps.format import (
    DATA_FILES,
    DESCRIPTORS_FILE,
    FEATURE_FILES,
    FEATURES_DEPTH_FILE,
    FEATURES_DESCRIPTORS_FILE,
    FEATURES_INDEX_FILE,
    FEATURES_KEYPOINTS_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    KEYFRAMES_FILE,
    MANIFEST,
    MAP_ID_MAX_BYTES,
    RESERVED_MAP_ID,
    cameras_from_manifest,
    check_map_id,
    check_npy_header,
    is_place_map_folder,
    map_session,
    new_map_id,
    read_manifest,
    sha256_file,
    tool_version,
)
from qaa_vpr_ros.maps.index import (
    INDEX_TYPES,
    MAX_TRAIN,
    apply_runtime_params,
    check_index_params,
    create_index,
    index_factory_string,
    is_exact,
)
from qaa_vpr_ros.maps.keyframe import Keyframe, read_keyframes, write_keyframes
from qaa_vpr_ros.paths import expand_path

__all__ = [
    "FORMAT_VERSION",
    "INDEX_TYPES",
    "MAP_ID_MAX_BYTES",
    "MAX_TRAIN",
    "RESERVED_MAP_ID",
    "Keyframe",
    "MapError",
    "MapSaveError",
    "PlaceMap",
    "SearchResult",
    "check_map_id",
    "index_factory_string",
    "is_place_map_folder",
    "map_session",
    "new_map_id",
    "read_manifest",
    "tool_version",
]


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


class _GrowableArray:
    """Row-appendable 2-D buffer (1-D with ``width`` None) with amortised O(1) appends (capacity doubles)."""

    def __init__(self, width: int | None, dtype: Any, initial: np.ndarray | None = None) -> None:
        self._dtype = np.dtype(dtype)
        self._tail = () if width is None else (width,)
        self._data = initial if initial is not None else np.empty((0, *self._tail), self._dtype)
        self._n = len(self._data)
        self._owned = initial is None

    def view(self) -> np.ndarray:
        return self._data[: self._n]

    def append(self, rows: np.ndarray) -> None:
        need = self._n + len(rows)
        if not self._owned or need > len(self._data):
            capacity = max(need, 2 * len(self._data), 64)
            grown = np.empty((capacity, *self._tail), self._dtype)
            grown[: self._n] = self._data[: self._n]
            self._data, self._owned = grown, True
        self._data[self._n : need] = rows
        self._n = need

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (its capacity; 0 while it is still the memory-mapped file)."""
        return 0 if isinstance(self._data, np.memmap) else int(self._data.nbytes)


class PlaceMap:
    """Keyframes + descriptors + faiss index, and optionally each keyframe's local features and
    each camera's intrinsics. Thread-safe: add/search/save hold one lock.

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
        _features: PackedFeatures | None = None,
    ) -> None:
        if dim <= 0:
            raise MapError(f"descriptor dim must be positive, got {dim}")
        self.dim = int(dim)
        self.model_fingerprint = str(model_fingerprint)
        self.map_frame = str(map_frame)
        self.index_type = index_type
        self.index_params = check_index_params(index_type, index_params)
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
        # Local features (maps/features.py): one index row per keyframe row, feature rows packed; the
        # index stays empty (all rows without features) until the first keyframe with features.
        packed = _features if _features is not None else PackedFeatures.empty()
        if len(packed.index) not in (0, len(self._keyframes)):
            raise MapError(f"{len(packed.index)} feature index rows for {len(self._keyframes)} keyframes")
        self._feat_index = _GrowableArray(3, np.int64, packed.index)
        self._feat_keypoints = _GrowableArray(2, np.float32, packed.keypoints)
        self._feat_descriptors = _GrowableArray(DESCRIPTOR_BYTES, np.uint8, packed.descriptors)
        self._feat_depth = _GrowableArray(None, np.uint16, packed.depth_mm)
        self._with_features = int(np.count_nonzero(np.asarray(packed.index)[:, 2] & FLAG_FEATURES))
        self._cameras: dict[str, Intrinsics] = {}
        # How the features were detected (the manifest's "local_features", without its count).
        self.feature_config: dict[str, Any] = feature_config_of(FeatureConfig())
        self._feature_source = "the map"  # names the files in errors about stored features

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
        return is_exact(self.index_type, self.index_params)

    @property
    def index_nbytes(self) -> int:
        """Size of the serialised faiss index in bytes (about what it occupies in memory)."""
        with self._lock:
            return int(faiss.serialize_index(self._ensure_index()).size)

    @property
    def memory_bytes(self) -> int:
        """Bytes held in memory: the float16 descriptor buffer and the local feature buffers (their
        capacity; a loaded map's stay on disk until it grows) and, for a flat index, its float32
        copy (other index types: their code size is not counted here)."""
        with self._lock:
            held = sum(buffer.nbytes for buffer in (self._desc, self._feat_index, self._feat_keypoints,
                                                    self._feat_descriptors, self._feat_depth))
            if self._index is not None and self.is_exact:
                held += self._index.ntotal * self.dim * 4
            return int(held)

    @property
    def has_local_features(self) -> bool:
        """Whether any keyframe has local features stored (False for a map built without them)."""
        with self._lock:
            return self._with_features > 0

    @property
    def feature_index(self) -> np.ndarray:
        """(N, 3) int64 per keyframe row: start, count, flags of its local features (a copy;
        :mod:`qaa_vpr_ros.maps.features`)."""
        with self._lock:
            return np.array(self._packed().index)

    @property
    def cameras(self) -> dict[str, Intrinsics]:
        """Camera topic -> intrinsics and distortion (a copy)."""
        with self._lock:
            return dict(self._cameras)

    def set_camera(self, camera: str, intrinsics: Intrinsics) -> None:
        """Store the intrinsics of ``camera`` (a topic), replacing any before."""
        if not isinstance(camera, str) or not camera:
            raise MapError(f"camera must be a non-empty topic name, got {camera!r}")
        if not isinstance(intrinsics, Intrinsics):
            raise MapError(f"intrinsics of {camera} must be an Intrinsics, got {type(intrinsics).__name__}")
        with self._lock:
            self._cameras[camera] = intrinsics

    def local_features(self, keyframe_id: int) -> LocalFeatures | None:
        """The local features of the keyframe with this id (read-only views), None when none are
        stored for it (KeyError when the id is absent; MapError when the stored values are invalid)."""
        with self._lock:
            row = self._row_of_id[int(keyframe_id)]
            packed = self._packed()
            try:
                features = packed.features(row)
            except ValueError as err:
                raise MapError(f"{self._feature_source}: local features of keyframe {keyframe_id}: {err}") from err
        if features is not None:
            for array in (features.keypoints, features.descriptors, features.depth_mm):
                if array is not None and array.flags.writeable:
                    array.flags.writeable = False
        return features

    def _packed(self) -> PackedFeatures:
        """The feature table as views of the buffers (under the lock)."""
        index = self._feat_index.view()
        if len(index) < len(self._keyframes):  # no keyframe has features: the index was never filled
            index = np.zeros((len(self._keyframes), 3), np.int64)
        return PackedFeatures(index, self._feat_keypoints.view(), self._feat_descriptors.view(),
                              self._feat_depth.view())

    def subset(self, rows: Sequence[int] | np.ndarray) -> PlaceMap:
        """A new map of the keyframes at ``rows`` (kept in row order, ids unchanged) with its index
        rebuilt from their descriptors; map_id, sources, info, local features and cameras are copied."""
        with self._lock:
            rows = np.unique(np.asarray(rows, np.int64))
            if len(rows) and (rows[0] < 0 or rows[-1] >= len(self._keyframes)):
                raise MapError(f"rows must lie in 0..{len(self._keyframes) - 1}")
            kept = PlaceMap(self.dim, self.model_fingerprint, self.index_type, dict(self.index_params), self.map_frame,
                            map_id=self.map_id, _descriptors=np.array(self._desc.view()[rows]),
                            _keyframes=[self._keyframes[r] for r in rows],
                            _features=self._packed().rows(rows) if self._with_features else None)
            kept.sources, kept.info = list(self.sources), dict(self.info)
            kept._cameras, kept.feature_config = dict(self._cameras), dict(self.feature_config)
        if len(kept) and not kept.is_exact:  # a trained index is trained now; a flat one at first search
            with kept._lock:
                kept._ensure_index()
        return kept

    def keyframe(self, keyframe_id: int) -> Keyframe:
        """The keyframe with this id (KeyError when absent)."""
        with self._lock:
            return self._keyframes[self._row_of_id[int(keyframe_id)]]

    # --- mutation -----------------------------------------------------------------------------
    def add(self, descriptors: np.ndarray, keyframes: Sequence[Keyframe],
            features: Sequence[LocalFeatures | None] | None = None) -> None:
        """Append N keyframes with their (N, D) L2-normalised float32 descriptors and, optionally,
        their local features (one entry per keyframe, None for one without)."""
        descriptors = np.asarray(descriptors, dtype=np.float32)
        if descriptors.ndim != 2 or descriptors.shape[1] != self.dim:
            raise MapError(f"descriptors must have shape (N, {self.dim}), got {descriptors.shape}")
        if len(descriptors) != len(keyframes):
            raise MapError(f"{len(descriptors)} descriptors but {len(keyframes)} keyframes")
        if not np.all(np.isfinite(descriptors)):
            raise MapError("descriptors contain NaN or inf")
        if features is not None and len(features) != len(keyframes):
            raise MapError(f"{len(features)} local features entries but {len(keyframes)} keyframes")
        new_ids = [int(kf.id) for kf in keyframes]
        with self._lock:
            clashes = [i for i in new_ids if i in self._row_of_id]
            if clashes or len(set(new_ids)) != len(new_ids):
                raise MapError(f"keyframe ids already in the map or repeated: {sorted(set(clashes))[:5]}...")
            packed = None
            if features is not None or len(self._feat_index):
                try:
                    packed = pack_features(features if features is not None else [None] * len(keyframes),
                                           first=len(self._feat_keypoints))
                except TypeError as err:
                    raise MapError(str(err)) from err
                if len(self._feat_index) < len(self._keyframes):  # the rows before: without features
                    self._feat_index.append(np.zeros((len(self._keyframes), 3), np.int64))
            for offset, kf in enumerate(keyframes):
                self._row_of_id[int(kf.id)] = len(self._keyframes) + offset
            self._keyframes.extend(keyframes)
            self._ids = np.concatenate([self._ids, np.asarray(new_ids, np.int64)])
            stored = descriptors.astype(np.float16)
            self._desc.append(stored)
            if packed is not None:
                self._feat_index.append(packed.index)
                self._feat_keypoints.append(packed.keypoints)
                self._feat_descriptors.append(packed.descriptors)
                self._feat_depth.append(packed.depth_mm)
                self._with_features += int(np.count_nonzero(packed.index[:, 2] & FLAG_FEATURES))
            # The index holds exactly the stored (float16) values, so a rebuild reproduces it.
            in_sync = self._indexed == len(self._desc) - len(stored)
            if self._index is not None and self._index.is_trained and in_sync:
                self._index.add(stored.astype(np.float32))
                self._indexed = self._index.ntotal

    def rebuild_index(self, index_type: str | None = None, **params: Any) -> None:
        """Rebuild the index from the stored descriptors, optionally with another type/params."""
        with self._lock:
            if index_type is not None:
                self.index_params = check_index_params(index_type, params)
                self.index_type = index_type
            self._index = None
            self._indexed = 0
            self._ensure_index()

    def _ensure_index(self) -> faiss.Index:
        """Create/train the index when missing and add rows not yet indexed (under the lock)."""
        n = len(self._desc)
        if self._index is None:
            self._index, self.index_params = create_index(self.index_type, self.dim, self.index_params,
                                                          self._desc.view())
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
            **({"local_features": {**self.feature_config, "count": len(self._feat_keypoints)}}
               if self._with_features else {}),
            **({"cameras": {t: c.as_list() for t, c in sorted(self._cameras.items())}} if self._cameras else {}),
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
                    write_keyframes(tmp / KEYFRAMES_FILE, self._keyframes)
                    arrays = {DESCRIPTORS_FILE: self._desc}
                    if self._with_features:
                        arrays.update({FEATURES_INDEX_FILE: self._packed().index, FEATURES_KEYPOINTS_FILE:
                                       self._feat_keypoints, FEATURES_DESCRIPTORS_FILE: self._feat_descriptors,
                                       FEATURES_DEPTH_FILE: self._feat_depth})
                    for name, buffer in arrays.items():
                        view = buffer if isinstance(buffer, np.ndarray) else buffer.view()
                        with open(tmp / name, "wb") as f:
                            np.save(f, np.ascontiguousarray(view), allow_pickle=False)
                    manifest["files"] = {
                        name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                        for name in DATA_FILES + (FEATURE_FILES if self._with_features else ())
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
        feature_manifest = manifest.get("local_features")  # checked by read_manifest
        for name in DATA_FILES + (FEATURE_FILES if feature_manifest is not None else ()):
            path = folder / name
            expected = manifest["files"][name]
            size = path.lstat().st_size
            if size != expected.get("bytes", size):
                raise MapError(
                    f"{path} has {size} bytes, the manifest says {expected['bytes']}: "
                    "the map is truncated or was modified; rebuild or restore it"
                )
            if verify_checksums:
                if sha256_file(path) != expected["sha256"]:
                    raise MapError(
                        f"{path} does not match its sha256 in {folder / MANIFEST}: "
                        "the map is corrupt or was modified; rebuild or restore it"
                    )
        dim = manifest["descriptor_dim"]
        count = manifest["counts"]["keyframes"]
        check_npy_header(folder / DESCRIPTORS_FILE, (count, dim))
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
        keyframes = read_keyframes(folder / KEYFRAMES_FILE, limit=count + 1)
        if len(keyframes) != count:
            raise MapError(
                f"{folder / KEYFRAMES_FILE} has {len(keyframes)} keyframes, the manifest says {count}"
            )
        features = None
        if feature_manifest is not None:
            features = _load_features(folder, count, feature_manifest["count"], mmap)
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
                _features=features,
            )
        except MapError as err:
            raise MapError(f"{folder / MANIFEST}: {err}") from err
        if index is not None:
            apply_runtime_params(index, place_map.index_type, place_map.index_params)
        elif not place_map.is_exact:
            with place_map._lock:
                place_map._ensure_index()  # rebuilt (retrained) from the descriptors just checked
        place_map.sources = list(manifest.get("sources", []))
        place_map.info = dict(manifest.get("info", {}))
        place_map.created = manifest.get("created")
        place_map.map_id = manifest.get("map_id")  # checked by read_manifest; None in a format-1 map
        place_map._cameras = cameras_from_manifest(manifest, folder / MANIFEST)
        if feature_manifest is not None:
            place_map.feature_config = {k: v for k, v in feature_manifest.items() if k != "count"}
        place_map._feature_source = str(folder)
        return place_map


def _load_features(folder: Path, count: int, total: int, mmap: bool) -> PackedFeatures:
    """The four feature files of a map folder (sizes and checksums checked already): headers
    first, then the arrays (memory-mapped with ``mmap``), then the index rows' consistency."""
    layout = {FEATURES_INDEX_FILE: ((count, 3), "<i8"), FEATURES_KEYPOINTS_FILE: ((total, 2), "<f4"),
              FEATURES_DESCRIPTORS_FILE: ((total, DESCRIPTOR_BYTES), "|u1"), FEATURES_DEPTH_FILE: ((total,), "<u2")}
    arrays = {}
    for name, (shape, dtype) in layout.items():
        path = folder / name
        check_npy_header(path, shape, dtype)
        try:
            # The index is read whole (N x 24 bytes, checked row by row next); the rest stays on disk.
            mode = "r" if mmap and name != FEATURES_INDEX_FILE and total else None
            arrays[name] = np.load(path, mmap_mode=mode, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise MapError(f"{path} is not a readable .npy array: {err}") from err
    index = arrays[FEATURES_INDEX_FILE]
    problem = check_feature_index(index, total, str(folder / FEATURES_INDEX_FILE))
    if problem is not None:
        raise MapError(f"{problem}; the map is corrupt: rebuild or restore it")
    return PackedFeatures(index, arrays[FEATURES_KEYPOINTS_FILE], arrays[FEATURES_DESCRIPTORS_FILE],
                          arrays[FEATURES_DEPTH_FILE])
