"""GSV-Cities: ``Dataframes/<City>.csv`` + ``Images/<City>/<city>_<place>_<year>_<month>_<deg>_<lat>_<lon>_<pano>.jpg``.

Training only. Place ids are made unique across cities; places with fewer than K images are dropped.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .base import DatasetFormatError, PlaceSet, group_into_places, parse_float, parse_int, read_csv_rows

COLUMNS = ("place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid")


def gsv_image_name(row: dict[str, str], csv_path: Path, row_number: int) -> str:
    """File name of one dataframe row, as GSV-Cities writes it (lat/lon as Python float text)."""
    place_id = parse_int(row["place_id"], csv_path, row_number, "place_id")
    year = parse_int(row["year"], csv_path, row_number, "year")
    month = parse_int(row["month"], csv_path, row_number, "month")
    northdeg = parse_int(row["northdeg"], csv_path, row_number, "northdeg")
    lat = parse_float(row["lat"], csv_path, row_number, "lat")
    lon = parse_float(row["lon"], csv_path, row_number, "lon")
    return (f"{row['city_id']}_{place_id % 10**5:07d}_{year:04d}_{month:02d}_{northdeg:03d}_"
            f"{lat!r}_{lon!r}_{row['panoid']}.jpg")


def load_gsv_cities(root: str | Path, cities: Sequence[str] | None = None, min_images_per_place: int = 4,
                    name: str = "gsv_cities") -> PlaceSet:
    """Load GSV-Cities for training.

    ``cities``: dataframe stems (e.g. ``["London", "Boston"]``); all ``Dataframes/*.csv`` when None.
    Raises :class:`DatasetFormatError` naming the CSV, row/column, or the missing image file.
    """
    root = Path(root)
    frames_dir = root / "Dataframes"
    if not frames_dir.is_dir():
        raise DatasetFormatError(f"GSV-Cities root {root}: missing folder 'Dataframes' (expected "
                                 "Dataframes/<City>.csv and Images/<City>/...)")
    if cities is None:
        cities = sorted(p.stem for p in frames_dir.glob("*.csv"))
        if not cities:
            raise DatasetFormatError(f"{frames_dir}: no <City>.csv dataframes")
    paths: list[str] = []
    keys: list[tuple[str, int]] = []
    for city in cities:
        csv_path = frames_dir / f"{city}.csv"
        rows = read_csv_rows(csv_path, COLUMNS)
        image_dir = root / "Images" / city
        if not image_dir.is_dir():
            raise DatasetFormatError(f"GSV-Cities: missing image folder {image_dir} for {csv_path}")
        present = set(os.listdir(image_dir))
        for i, row in enumerate(rows, start=1):
            fname = gsv_image_name(row, csv_path, i)
            if fname not in present:
                raise DatasetFormatError(f"{csv_path}: row {i} names image {image_dir / fname}, which does not exist")
            paths.append(str(image_dir / fname))
            keys.append((city, parse_int(row["place_id"], csv_path, i, "place_id")))
    places = group_into_places(keys, min_images_per_place)
    return PlaceSet(name=name, paths=paths, places=places)

