"""Shared dataset containers, image reading and place grouping.

Every training loader returns a :class:`PlaceSet` (images grouped into places, each place with at
least K images); every evaluation loader returns a :class:`RetrievalSet` (database, queries and the
database positives of each query).
"""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


class DatasetFormatError(ValueError):
    """A dataset on disk does not follow its format; the message names the file or column."""


@dataclass
class PlaceSet:
    """Training images grouped into places.

    ``paths[i]`` is an image file; ``places[p]`` holds the indices (into ``paths``) of the images of
    place ``p``. Labels are local (0 .. num_places - 1); the joint sampler adds per-dataset offsets.
    """

    name: str
    paths: list[str]
    places: list[np.ndarray]

    @property
    def num_places(self) -> int:
        return len(self.places)

    @property
    def num_images(self) -> int:
        return len(self.paths)

    def __post_init__(self) -> None:
        if not self.places:
            raise DatasetFormatError(
                f"dataset {self.name!r}: no place has enough images; check the root folder and "
                "lower 'min_images_per_place' (K) or the grouping settings")


@dataclass
class RetrievalSet:
    """An evaluation split: database and query images, and the positives of every query.

    ``positives[q]`` holds the database indices that count as correct for query ``q`` (int64, may
    be empty for queries without ground truth). ``*_keys`` identify images in prediction files.
    """

    name: str
    database_paths: list[str]
    query_paths: list[str]
    positives: list[np.ndarray]
    database_keys: list[str] = field(default_factory=list)
    query_keys: list[str] = field(default_factory=list)
    has_ground_truth: bool = True

    def __post_init__(self) -> None:
        if not self.database_keys:
            self.database_keys = [Path(p).stem for p in self.database_paths]
        if not self.query_keys:
            self.query_keys = [Path(p).stem for p in self.query_paths]
        if len(self.positives) != len(self.query_paths):
            raise ValueError(f"{self.name}: {len(self.positives)} positive lists for "
                             f"{len(self.query_paths)} queries")
        if not self.database_paths:
            raise DatasetFormatError(f"dataset {self.name!r}: the database is empty")
        if not self.query_paths:
            raise DatasetFormatError(f"dataset {self.name!r}: there are no queries")


def load_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3); errors name the file."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DatasetFormatError(f"cannot read image {path}: {exc}") from exc


def natural_key(text: str) -> list:
    """Sort key that orders 'img2' before 'img10'."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, naturally sorted."""
    if not folder.is_dir():
        raise DatasetFormatError(f"missing folder {folder}")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


def read_csv_rows(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV file with a header; raises naming the file and the missing columns."""
    if not path.is_file():
        raise DatasetFormatError(f"missing file {path}")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetFormatError(
                    f"{path}: missing column(s) {', '.join(missing)} (header is {', '.join(header) or 'empty'})")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DatasetFormatError(f"{path}: not a UTF-8 CSV file ({err})") from err
    return [{(k or "").strip(): (v if isinstance(v, str) else "").strip() for k, v in row.items()} for row in rows]


def confined_path(root: Path, rel: str, path: Path, row: int, column: str) -> Path:
    """``root / rel`` for a path read from an index file, which must stay inside ``root``: relative,
    no ``..``, no NUL. Errors name the index file, row and column."""
    parts = Path(rel).parts
    if not rel or "\0" in rel or Path(rel).is_absolute() or ".." in parts:
        raise DatasetFormatError(f"{path}: row {row}, column {column!r}: {rel!r} must be a path relative to "
                                 f"the dataset root {root} (no absolute paths, no '..')")
    return root / rel


def parse_float(value: str, path: Path, row: int, column: str) -> float:
    """Parse one CSV cell as a finite float; errors name file, row (1-based data row) and column."""
    try:
        out = float(value)
    except ValueError:
        raise DatasetFormatError(f"{path}: row {row}, column {column!r}: {value!r} is not a number") from None
    if not math.isfinite(out):
        raise DatasetFormatError(f"{path}: row {row}, column {column!r}: {value!r} is not finite")
    return out


def parse_int(value: str, path: Path, row: int, column: str) -> int:
    """Parse one CSV cell as an integer; errors name file, row and column."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        as_float = float(value)
    except ValueError:
        as_float = math.nan
    if not as_float.is_integer():
        raise DatasetFormatError(f"{path}: row {row}, column {column!r}: {value!r} is not an integer")
    return int(as_float)


def group_into_places(keys: Sequence, min_images: int) -> list[np.ndarray]:
    """Group image indices by a hashable place key; drop places with fewer than ``min_images``.

    Places are ordered by first appearance, so the result is deterministic.
    """
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return [np.asarray(v, dtype=np.int64) for v in groups.values() if len(v) >= min_images]


def utm_cell_keys(easting: np.ndarray, northing: np.ndarray, heading: np.ndarray | None,
                  cell_m: float, heading_bin_deg: float) -> list[tuple[int, int, int]]:
    """CosPlace-style place keys: UTM cells of ``cell_m`` metres x heading bins of ``heading_bin_deg``.

    ``heading`` in degrees (any range; wrapped to [0, 360)); ``heading_bin_deg <= 0`` or ``heading
    is None`` ignores headings.
    """
    if cell_m <= 0:
        raise ValueError(f"cell_m must be > 0 metres, got {cell_m}")
    ce = np.floor(np.asarray(easting, dtype=np.float64) / cell_m).astype(np.int64)
    cn = np.floor(np.asarray(northing, dtype=np.float64) / cell_m).astype(np.int64)
    if heading is None or heading_bin_deg <= 0:
        ch = np.zeros_like(ce)
    else:
        ch = np.floor(np.mod(np.asarray(heading, dtype=np.float64), 360.0) / heading_bin_deg).astype(np.int64)
    return list(zip(ce.tolist(), cn.tolist(), ch.tolist(), strict=True))


def radius_group_keys(xy: np.ndarray, radius_m: float, heading: np.ndarray | None = None,
                      heading_bin_deg: float = 0.0) -> list[int]:
    """Greedy radius grouping: each image joins the first place centre within ``radius_m``
    (same heading bin when headings are used), otherwise it founds a new place. Returns a place id
    per image. ``xy``: (N, 2) metres, processed in row order.
    """
    if radius_m <= 0:
        raise ValueError(f"radius must be > 0 metres, got {radius_m}")
    xy = np.asarray(xy, dtype=np.float64)
    hb = (np.zeros(len(xy), dtype=np.int64) if heading is None or heading_bin_deg <= 0
          else np.floor(np.mod(heading, 360.0) / heading_bin_deg).astype(np.int64))
    grid: dict[tuple[int, int, int], list[int]] = {}  # coarse cell -> place ids founded there
    centres: list[np.ndarray] = []
    out: list[int] = []
    for i in range(len(xy)):
        cx, cy = (int(v) for v in np.floor(xy[i] / radius_m))
        found = -1
        best = radius_m
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for pid in grid.get((cx + dx, cy + dy, int(hb[i])), ()):
                    dist = float(np.hypot(*(xy[i] - centres[pid])))
                    if dist <= best:
                        best, found = dist, pid
        if found < 0:
            found = len(centres)
            centres.append(xy[i].copy())
            grid.setdefault((cx, cy, int(hb[i])), []).append(found)
        out.append(found)
    return out


def positives_within_radius(database_xy: np.ndarray, query_xy: np.ndarray, radius_m: float) -> list[np.ndarray]:
    """Database indices within ``radius_m`` metres (Euclidean, UTM) of each query, ascending."""
    import faiss

    db = np.asarray(database_xy, dtype=np.float64).reshape(-1, 2)
    qs = np.asarray(query_xy, dtype=np.float64).reshape(-1, 2)
    # Centre the coordinates so float32 keeps centimetre precision on UTM magnitudes.
    origin = db.mean(axis=0, keepdims=True) if len(db) else np.zeros((1, 2))
    db = np.ascontiguousarray(db - origin, dtype=np.float32)
    qs = np.ascontiguousarray(qs - origin, dtype=np.float32)
    index = faiss.IndexFlatL2(2)
    index.add(db)
    lims, _, ids = index.range_search(qs, float(radius_m) ** 2)
    return [np.sort(ids[lims[q]:lims[q + 1]].astype(np.int64)) for q in range(len(qs))]
