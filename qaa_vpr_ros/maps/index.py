"""The faiss index of a map: index types and their parameters (checked, with limits), the
``index_factory`` description, training and runtime parameters. Inner product = cosine of the
L2-normalised descriptors."""
from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from qaa_vpr_ros.maps.errors import MapError

__all__ = ["INDEX_TYPES", "MAX_DIM", "MAX_TRAIN", "apply_runtime_params", "check_index_params", "create_index",
           "index_factory_string", "is_exact"]

INDEX_TYPES = ("flat", "ivfpq", "hnsw")
_INDEX_PARAMS = {
    "flat": {"pca_dim"},
    "ivfpq": {"pca_dim", "nlist", "m", "nbits", "nprobe"},
    "hnsw": {"pca_dim", "M", "ef_construction", "ef_search"},
}
MAX_TRAIN = 50_000  # vectors used to train PCA / IVF-PQ
MAX_DIM = 1 << 16  # largest descriptor dim a manifest may claim
# Largest value of each index parameter (a manifest from elsewhere must not size allocations).
_PARAM_MAX = {"pca_dim": MAX_DIM, "nlist": 1 << 20, "m": MAX_DIM, "nbits": 16, "nprobe": 1 << 20,
              "M": 512, "ef_construction": 1 << 16, "ef_search": 1 << 16}


def check_index_params(index_type: str, params: dict[str, Any]) -> dict[str, Any]:
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


def apply_runtime_params(index: faiss.Index, index_type: str, params: dict[str, Any]) -> None:
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


def is_exact(index_type: str, params: dict[str, Any]) -> bool:
    """Whether an index of this type and parameters is a flat (exact) one over the full descriptors."""
    return index_type == "flat" and "pca_dim" not in params


def create_index(
    index_type: str, dim: int, params: dict[str, Any], descriptors: np.ndarray
) -> tuple[faiss.Index, dict[str, Any]]:
    """A new, empty index and its resolved parameters; a non-exact one trained on ``descriptors``
    ((N, D) float16 rows, at most :data:`MAX_TRAIN` of them evenly spaced). Runtime parameters
    (nprobe, efSearch) are applied; nothing is added."""
    n = len(descriptors)
    if is_exact(index_type, params):
        index = faiss.IndexFlatIP(dim)
    else:
        if n == 0:
            raise MapError(f"a {index_type} index needs keyframes to train on; add some first")
        desc, params = index_factory_string(index_type, dim, n, params)
        index = faiss.index_factory(dim, desc, faiss.METRIC_INNER_PRODUCT)
        if index_type == "hnsw":
            _hnsw_of(index).efConstruction = params["ef_construction"]
        if index_type == "ivfpq":
            # 10 k-means rounds for the PQ codebooks (as faiss uses for the coarse
            # quantiser) instead of 25: training 2x faster, recall unchanged in our bench.
            faiss.downcast_index(faiss.extract_index_ivf(index)).pq.cp.niter = 10
        # Train on at most MAX_TRAIN evenly spaced rows: bounded time, deterministic.
        stride = max(1, -(-n // MAX_TRAIN))
        index.train(descriptors[::stride].astype(np.float32))
    apply_runtime_params(index, index_type, params)
    return index, params
