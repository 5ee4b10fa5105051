"""Spatial thinning: which keyframes of a growing database to keep so that its size stays capped.

Policy (the online database's cap, ``online_max_keyframes``; docs/NODE.md "Online database
memory"): when the database reaches the cap it is thinned to ``target`` keyframes (half the cap):

- the newest keyframes taken within ``recent_s`` seconds of the latest one are all kept (they are
  what sequence evidence and the recent-rival check look at), at most ``target // 2`` of them;
- the remaining places keep one keyframe per cell of a 3-D grid over the keyframe positions, the
  newest of each cell (it shows the place as it looks now); the cell size is the smallest that
  leaves at most their share of ``target``, so coverage of every place driven stays and only
  redundant views of the same place go;
- keyframes without a pose are thinned evenly in time (evenly spaced rows, newest included).

Memory then stays between ``target`` and the cap: flat over hours however long the robot drives.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["thin_rows"]


def _grid_keep(positions: np.ndarray, target: int) -> np.ndarray:
    """Indices into ``positions`` (N, 3): the last row of each occupied grid cell, for the smallest
    cell size (bisection) that occupies at most ``target`` cells."""
    n = len(positions)
    if n <= target:
        return np.arange(n)
    if target <= 0:
        return np.zeros(0, np.int64)

    def last_per_cell(cell: float) -> np.ndarray:
        keys = np.floor((positions - positions.min(axis=0)) / cell).astype(np.int64)
        # np.unique returns first occurrences: reverse so each cell's newest row comes first.
        _, first = np.unique(keys[::-1], axis=0, return_index=True)
        return np.sort(n - 1 - first)

    extent = float(np.max(np.ptp(positions, axis=0))) or 1.0
    lo, hi = extent * 1e-9, extent * 2.0  # one cell holds everything at hi
    best = last_per_cell(hi)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        kept = last_per_cell(mid)
        if len(kept) <= target:
            hi, best = mid, kept
        else:
            lo = mid
        if hi - lo <= 1e-6 * hi:
            break
    return best


def thin_rows(positions: np.ndarray, stamps: Sequence[float], target: int, recent_s: float = 0.0) -> np.ndarray:
    """Sorted row indices to keep (at most ``target``) of a database with (N, 3) ``positions``
    (NaN rows: no pose) and (N,) ``stamps`` in seconds, rows in insertion order; see the module
    docstring for the policy."""
    positions = np.asarray(positions, np.float64).reshape(-1, 3)
    stamps = np.asarray(stamps, np.float64)
    n = len(positions)
    if target < 1:
        raise ValueError(f"target must be >= 1, got {target}")
    if n <= target:
        return np.arange(n)
    recent = np.zeros(n, bool)
    if recent_s > 0 and n:
        recent = stamps >= np.nanmax(stamps) - recent_s
    recent_rows = np.flatnonzero(recent)[-(target // 2):] if recent.any() else np.zeros(0, np.int64)
    recent = np.zeros(n, bool)
    recent[recent_rows] = True
    older = np.flatnonzero(~recent)
    budget = target - len(recent_rows)
    posed = np.all(np.isfinite(positions[older]), axis=1)
    posed_rows, unposed_rows = older[posed], older[~posed]
    posed_budget = int(round(budget * len(posed_rows) / max(len(older), 1)))
    unposed_budget = budget - posed_budget
    keep = [recent_rows, posed_rows[_grid_keep(positions[posed_rows], posed_budget)]]
    if len(unposed_rows) and unposed_budget > 0:
        picks = np.round(np.linspace(0, len(unposed_rows) - 1, min(unposed_budget, len(unposed_rows))))
        keep.append(unposed_rows[picks.astype(np.int64)])
    return np.unique(np.concatenate(keep)).astype(np.int64)
