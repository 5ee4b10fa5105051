"""Frame-synchronised traversals (Nordland style): ``ROOT/<traversal>/<frame image>``.

The same file name in two traversals shows the same place. Frames are ordered by natural sort of
the union of file names; a frame's index is its position in that order. ``frame_range`` selects a
part of the route as fractions ``[start, end)`` of that order, so a config can keep part of the route
aside for validation whatever the number of frames.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import DatasetFormatError, PlaceSet, RetrievalSet, list_images, natural_key


def _traversal_names(root: Path, traversals: Sequence[str] | None) -> list[str]:
    if not root.is_dir():
        raise DatasetFormatError(f"traversal root {root} does not exist")
    if traversals is None:
        traversals = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(traversals) < 1:
        raise DatasetFormatError(f"{root}: no traversal folders (expected ROOT/<traversal>/<frame image>)")
    for t in traversals:
        if not (root / t).is_dir():
            raise DatasetFormatError(f"traversal {t!r}: missing folder {root / t}")
    return list(traversals)


def check_frame_range(frame_range: Sequence[float]) -> tuple[float, float]:
    """Validate ``[start, end)`` fractions of the route, 0 <= start < end <= 1."""
    if len(frame_range) != 2:
        raise ValueError(f"frame_range must be [start, end] fractions, got {frame_range!r}")
    a, b = float(frame_range[0]), float(frame_range[1])
    if not 0.0 <= a < b <= 1.0:
        raise ValueError(f"frame_range must satisfy 0 <= start < end <= 1, got [{a}, {b}]")
    return a, b


def _frames(root: Path, traversals: Sequence[str], frame_range: Sequence[float]):
    """Per traversal: {file name: path}; the naturally sorted frame names inside the range."""
    files = {t: {p.name: p for p in list_images(root / t)} for t in traversals}
    for t, f in files.items():
        if not f:
            raise DatasetFormatError(f"traversal {t!r}: no images in {root / t}")
    names = sorted(set().union(*[set(f) for f in files.values()]), key=natural_key)
    a, b = check_frame_range(frame_range)
    lo, hi = int(np.floor(a * len(names))), int(np.floor(b * len(names)))
    return files, names[lo:hi]


def load_traversals(root: str | Path, traversals: Sequence[str] | None = None,
                    frame_range: Sequence[float] = (0.0, 1.0), frames_per_place: int = 1,
                    min_images_per_place: int = 2, name: str = "traversal") -> PlaceSet:
    """Training places: ``frames_per_place`` consecutive frames (non-overlapping) across all traversals."""
    root = Path(root)
    if frames_per_place < 1:
        raise ValueError(f"frames_per_place must be >= 1, got {frames_per_place}")
    traversals = _traversal_names(root, traversals)
    files, names = _frames(root, traversals, frame_range)
    paths: list[str] = []
    places: list[np.ndarray] = []
    for start in range(0, len(names) - frames_per_place + 1, frames_per_place):
        members = []
        for frame in names[start:start + frames_per_place]:
            for t in traversals:
                if frame in files[t]:
                    members.append(len(paths))
                    paths.append(str(files[t][frame]))
        if len(members) >= min_images_per_place:
            places.append(np.asarray(members, dtype=np.int64))
    return PlaceSet(name=name, paths=paths, places=places)


def load_traversal_retrieval(root: str | Path, database: str, query: str, frame_tolerance: int = 2,
                             frame_range: Sequence[float] = (0.0, 1.0), name: str | None = None) -> RetrievalSet:
    """Queries from traversal ``query`` against ``database``; positives within +-``frame_tolerance`` frames."""
    root = Path(root)
    if frame_tolerance < 0:
        raise ValueError(f"frame_tolerance must be >= 0 frames, got {frame_tolerance}")
    traversals = _traversal_names(root, [database, query])
    files, names = _frames(root, traversals, frame_range)
    index = {n: i for i, n in enumerate(names)}
    db_names = [n for n in names if n in files[database]]
    q_names = [n for n in names if n in files[query]]
    db_frames = np.asarray([index[n] for n in db_names], dtype=np.int64)
    positives = []
    for n in q_names:
        qi = index[n]
        positives.append(np.nonzero(np.abs(db_frames - qi) <= frame_tolerance)[0].astype(np.int64))
    return RetrievalSet(name=name or f"{root.name}_{query}_to_{database}",
                        database_paths=[str(files[database][n]) for n in db_names],
                        query_paths=[str(files[query][n]) for n in q_names], positives=positives,
                        database_keys=db_names, query_keys=q_names)
