"""Generic format for a user's own data: ``ROOT/images.csv`` with columns ``path,easting,northing``
and optional ``heading,timestamp,sequence``; paths are relative to ROOT, coordinates in metres (UTM
or any local metric frame). The map tools export into this format.

- Training: places by radius grouping (optionally split by heading bins).
- Evaluation: database = rows of the database sequence(s), queries = rows of the query sequence(s);
  positives lie within a radius.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import (
    DatasetFormatError,
    PlaceSet,
    RetrievalSet,
    confined_path,
    group_into_places,
    parse_float,
    positives_within_radius,
    radius_group_keys,
    read_csv_rows,
)

REQUIRED = ("path", "easting", "northing")


@dataclass
class ImagesTable:
    paths: list[str]
    xy: np.ndarray  # (N, 2) metres
    heading: np.ndarray | None  # (N,) degrees, None when the column is absent
    sequence: list[str]


def read_images_csv(root: str | Path) -> ImagesTable:
    """Parse and validate ``ROOT/images.csv``; errors name the file, row and column (or the image)."""
    root = Path(root)
    csv_path = root / "images.csv"
    rows = read_csv_rows(csv_path, REQUIRED)
    if not rows:
        raise DatasetFormatError(f"{csv_path}: no rows")
    has_heading = "heading" in rows[0]
    paths, xy, heading, sequence = [], [], [], []
    for i, row in enumerate(rows, start=1):
        rel = row["path"]
        if not rel:
            raise DatasetFormatError(f"{csv_path}: row {i}, column 'path' is empty")
        image = confined_path(root, rel, csv_path, i, "path")
        if not image.is_file():
            raise DatasetFormatError(f"{csv_path}: row {i}, column 'path': image {image} does not exist")
        paths.append(str(image))
        xy.append((parse_float(row["easting"], csv_path, i, "easting"),
                   parse_float(row["northing"], csv_path, i, "northing")))
        if has_heading:
            heading.append(parse_float(row["heading"], csv_path, i, "heading"))
        sequence.append(row.get("sequence", ""))
    return ImagesTable(paths=paths, xy=np.asarray(xy, dtype=np.float64),
                       heading=np.asarray(heading, dtype=np.float64) if has_heading else None, sequence=sequence)


def load_images_csv(root: str | Path, place_radius_m: float = 5.0, heading_bin_deg: float = 0.0,
                    min_images_per_place: int = 4, name: str = "images_csv") -> PlaceSet:
    """Training places: greedy radius grouping (``place_radius_m``), split by heading bins when the
    ``heading`` column exists and ``heading_bin_deg > 0``."""
    table = read_images_csv(root)
    if heading_bin_deg > 0 and table.heading is None:
        raise DatasetFormatError(f"{Path(root) / 'images.csv'}: heading_bin_deg={heading_bin_deg} needs a "
                                 "'heading' column; add it or set heading_bin_deg: 0")
    keys = radius_group_keys(table.xy, place_radius_m, table.heading, heading_bin_deg)
    return PlaceSet(name=name, paths=table.paths, places=group_into_places(keys, min_images_per_place))


def load_images_csv_retrieval(root: str | Path, database_sequences: Sequence[str] | None = None,
                              query_sequences: Sequence[str] | None = None, radius_m: float = 25.0,
                              name: str | None = None) -> RetrievalSet:
    """Retrieval split by the ``sequence`` column. Defaults: the first sequence (in file order) is the
    database, all others are queries."""
    table = read_images_csv(root)
    csv_path = Path(root) / "images.csv"
    order = list(dict.fromkeys(table.sequence))
    if database_sequences is None:
        if len(order) < 2:
            raise DatasetFormatError(f"{csv_path}: evaluation needs a 'sequence' column with at least two "
                                     "sequences (database and queries)")
        database_sequences = [order[0]]
    if query_sequences is None:
        query_sequences = [s for s in order if s not in database_sequences]
    for s in [*database_sequences, *query_sequences]:
        if s not in order:
            raise DatasetFormatError(f"{csv_path}: column 'sequence' has no value {s!r} (has {order})")
    db = [i for i, s in enumerate(table.sequence) if s in database_sequences]
    qs = [i for i, s in enumerate(table.sequence) if s in query_sequences]
    return RetrievalSet(name=name or Path(root).name, database_paths=[table.paths[i] for i in db],
                        query_paths=[table.paths[i] for i in qs],
                        positives=positives_within_radius(table.xy[db], table.xy[qs], radius_m),
                        database_keys=[str(Path(table.paths[i]).relative_to(root)) for i in db],
                        query_keys=[str(Path(table.paths[i]).relative_to(root)) for i in qs])
