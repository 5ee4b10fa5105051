"""The ``@UTM_east@UTM_north@...@.jpg`` format of the public benchmark downloaders.

Pitts30k/250k, SF-XL, Tokyo 24/7, St Lucia, SVOX, AmsterTime ... : ``images/{train,val,test}/{database,queries}``.
File names: ``@east@north@zone_number@zone_letter@lat@lon@pano_id@tile_num@heading@pitch@roll@...@.jpg``
(fields may be empty except east/north). Training places are UTM cells of M metres x heading bins,
as CosPlace forms its classes; evaluation positives lie within a radius (25 m).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import (
    IMAGE_SUFFIXES,
    DatasetFormatError,
    PlaceSet,
    RetrievalSet,
    group_into_places,
    natural_key,
    positives_within_radius,
    utm_cell_keys,
)

HEADING_FIELD = 9  # index in name.split("@"): '', east, north, zone, letter, lat, lon, pano, tile, heading


def parse_utm_name(path: Path) -> tuple[float, float, float | None]:
    """(easting, northing, heading or None) from an ``@``-format file name; errors name the file."""
    fields = path.name.split("@")
    if len(fields) < 4 or fields[0] != "":
        raise DatasetFormatError(f"{path}: not an @UTM_east@UTM_north@...@ file name")
    try:
        east, north = float(fields[1]), float(fields[2])
    except ValueError:
        raise DatasetFormatError(
            f"{path}: UTM east/north fields {fields[1]!r}, {fields[2]!r} are not numbers") from None
    heading = None
    if len(fields) > HEADING_FIELD and fields[HEADING_FIELD].strip():
        try:
            heading = float(fields[HEADING_FIELD])
        except ValueError:
            raise DatasetFormatError(f"{path}: heading field {fields[HEADING_FIELD]!r} is not a number") from None
    return east, north, heading


def _scan(folder: Path) -> tuple[list[Path], np.ndarray, list[float | None]]:
    if not folder.is_dir():
        raise DatasetFormatError(f"missing folder {folder}")
    files = sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: natural_key(str(p.relative_to(folder))))
    if not files:
        raise DatasetFormatError(f"{folder}: no images")
    parsed = [parse_utm_name(p) for p in files]
    xy = np.asarray([(e, n) for e, n, _ in parsed], dtype=np.float64).reshape(-1, 2)
    return files, xy, [h for _, _, h in parsed]


def load_utm(root: str | Path, split: str = "train", cell_m: float = 10.0, heading_bin_deg: float = 30.0,
             min_images_per_place: int = 4, folder: str | None = None, name: str = "utm") -> PlaceSet:
    """Training places from every image under ``ROOT/images/<split>`` (or ``ROOT/<folder>``), recursively.

    Places: ``cell_m`` metre UTM cells x ``heading_bin_deg`` heading bins (0 disables headings). A
    file without a heading raises unless headings are disabled. ``folder`` suits SF-XL's
    ``processed/train`` layout.
    """
    folder = Path(root) / folder if folder else Path(root) / "images" / split
    files, xy, headings = _scan(Path(folder))
    heading = None
    if heading_bin_deg > 0:
        missing = [f for f, h in zip(files, headings, strict=True) if h is None]
        if missing:
            raise DatasetFormatError(f"{missing[0]}: no heading field (field {HEADING_FIELD}); set "
                                     "heading_bin_deg: 0 to form places from UTM cells only")
        heading = np.asarray(headings, dtype=np.float64)
    keys = utm_cell_keys(xy[:, 0], xy[:, 1], heading, cell_m, heading_bin_deg)
    return PlaceSet(name=name, paths=[str(f) for f in files], places=group_into_places(keys, min_images_per_place))


def load_utm_retrieval(root: str | Path, split: str = "test", radius_m: float = 25.0,
                       name: str | None = None) -> RetrievalSet:
    """``ROOT/images/<split>/{database,queries}`` with positives within ``radius_m`` metres."""
    base = Path(root) / "images" / split
    db_files, db_xy, _ = _scan(base / "database")
    q_files, q_xy, _ = _scan(base / "queries")
    return RetrievalSet(name=name or f"{Path(root).name}_{split}", database_paths=[str(p) for p in db_files],
                        query_paths=[str(p) for p in q_files],
                        positives=positives_within_radius(db_xy, q_xy, radius_m))
