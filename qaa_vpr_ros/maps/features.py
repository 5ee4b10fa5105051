"""The local features of a map's keyframes as one packed table (four arrays, saved as four .npy files).

Per keyframe row, ``index[row] = (start, count, flags)``: its features are rows ``start ..
start+count`` of ``keypoints`` (F, 2) float32 pixels as detected, ``descriptors`` (F, 128) uint8
and ``depth_mm`` (F,) uint16 (0 = no depth). ``flags`` bit 0: features were extracted for the
keyframe (a keyframe without them, e.g. of a camera without intrinsics, has flags 0); bit 1: a
depth image came with it (:attr:`LocalFeatures.depth_mm` is not None). Rows lie in keyframe
order without overlapping. The build's chunk files and the map folder store the same four arrays.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qaa_vpr_ros.local_features import DESCRIPTOR_BYTES, FeatureConfig, LocalFeatures

__all__ = ["FLAG_DEPTH", "FLAG_FEATURES", "PackedFeatures", "check_feature_index", "feature_bytes",
           "feature_config_of", "pack_features"]

FLAG_FEATURES = 1
FLAG_DEPTH = 2


@dataclass(frozen=True)
class PackedFeatures:
    """The four arrays of the packed table (module docstring)."""

    index: np.ndarray  # (N, 3) int64: start, count, flags
    keypoints: np.ndarray  # (F, 2) float32
    descriptors: np.ndarray  # (F, 128) uint8
    depth_mm: np.ndarray  # (F,) uint16

    def features(self, row: int) -> LocalFeatures | None:
        """The features of keyframe ``row`` (views into the arrays), None when it has none.
        Raises ValueError when the stored values are invalid (non-finite keypoints)."""
        start, count, flags = (int(v) for v in self.index[row])
        if not flags & FLAG_FEATURES:
            return None
        end = start + count
        return LocalFeatures(self.keypoints[start:end], self.descriptors[start:end],
                             self.depth_mm[start:end] if flags & FLAG_DEPTH else None)

    def rows(self, rows: np.ndarray) -> PackedFeatures:
        """A new table of the keyframes at ``rows`` (in the order given), packed without gaps."""
        index = np.asarray(self.index)[np.asarray(rows, np.int64)]
        counts = index[:, 1]
        ends = np.cumsum(counts)
        starts = ends - counts
        # Feature rows to take: start_i + 0..count_i-1 for each kept keyframe i.
        take = np.repeat(index[:, 0] - starts, counts) + np.arange(int(ends[-1]) if len(ends) else 0)
        packed = np.column_stack([starts, counts, index[:, 2]]).astype(np.int64).reshape(-1, 3)
        return PackedFeatures(packed, np.asarray(self.keypoints)[take], np.asarray(self.descriptors)[take],
                              np.asarray(self.depth_mm)[take])

    @staticmethod
    def empty(rows: int = 0) -> PackedFeatures:
        return PackedFeatures(np.zeros((rows, 3), np.int64), np.zeros((0, 2), np.float32),
                              np.zeros((0, DESCRIPTOR_BYTES), np.uint8), np.zeros(0, np.uint16))


def feature_config_of(config: FeatureConfig) -> dict[str, Any]:
    """The manifest's ``local_features`` (without its count): how the features were detected."""
    return {"detector": "sift", "max_features": int(config.max_features),
            "contrast_threshold": float(config.contrast_threshold)}


def feature_bytes(index: np.ndarray) -> np.ndarray:
    """(N,) int64 bytes each keyframe's features hold (keypoints + descriptors + depth) from the
    (N, 3) index."""
    counts, flags = index[:, 1], index[:, 2]
    return counts * (8 + DESCRIPTOR_BYTES) + np.where(flags & FLAG_DEPTH, 2 * counts, 0)


def pack_features(features: Sequence[LocalFeatures | None], first: int = 0) -> PackedFeatures:
    """The table of ``features`` (one entry per keyframe row, None: none), feature rows numbered
    from ``first``. Raises TypeError for an entry that is neither LocalFeatures nor None."""
    index = np.zeros((len(features), 3), np.int64)
    kps, descs, depths = [], [], []
    start = first
    for row, item in enumerate(features):
        if item is None:
            index[row] = (start, 0, 0)
            continue
        if not isinstance(item, LocalFeatures):
            raise TypeError(f"features[{row}] is a {type(item).__name__}, not LocalFeatures or None")
        n = len(item)
        index[row] = (start, n, FLAG_FEATURES | (FLAG_DEPTH if item.depth_mm is not None else 0))
        kps.append(item.keypoints)
        descs.append(item.descriptors)
        depths.append(item.depth_mm if item.depth_mm is not None else np.zeros(n, np.uint16))
        start += n
    if not kps:
        none = PackedFeatures.empty()
        return PackedFeatures(index, none.keypoints, none.descriptors, none.depth_mm)
    return PackedFeatures(index, np.concatenate(kps).astype(np.float32, copy=False),
                          np.concatenate(descs).astype(np.uint8, copy=False),
                          np.concatenate(depths).astype(np.uint16, copy=False))


def check_feature_index(index: np.ndarray, total: int, what: str) -> str | None:
    """Why ``index`` (N, 3) is not a valid table over ``total`` feature rows, or None when it is:
    starts and counts non-negative, every keyframe's rows within ``total`` and after the previous
    keyframe's, flags only bits 0-1, a count or the depth bit only with bit 0. ``what`` names the file."""
    if index.ndim != 2 or index.shape[1] != 3:
        return f"{what} must hold (N, 3) rows, got {index.shape}"
    if not len(index):
        return None
    starts, counts, flags = index[:, 0], index[:, 1], index[:, 2]
    ends = starts + counts
    bad = np.flatnonzero((starts < 0) | (counts < 0) | (ends > total))
    if len(bad):
        r = int(bad[0])
        return (f"{what} row {r}: features {int(starts[r])}..{int(ends[r])} lie outside the {total} stored "
                "feature rows")
    bad = np.flatnonzero(starts[1:] < ends[:-1])
    if len(bad):
        r = int(bad[0]) + 1
        return f"{what} row {r}: starts at {int(starts[r])}, inside row {r - 1}'s features (up to {int(ends[r - 1])})"
    bad = np.flatnonzero((flags & ~np.int64(FLAG_FEATURES | FLAG_DEPTH)) != 0
                         | (((flags & FLAG_FEATURES) == 0) & ((counts > 0) | ((flags & FLAG_DEPTH) != 0))))
    if len(bad):
        r = int(bad[0])
        return f"{what} row {r}: flags {int(flags[r])} with count {int(counts[r])} are inconsistent"
    return None
