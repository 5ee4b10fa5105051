"""Mapillary Street-Level Sequences.

Layout: ``train_val/<city>/{query,database}/{postprocessed.csv, raw.csv, images/<key>.jpg}``.

- Training: every non-panorama image of the training cities (all but the validation cities), grouped
  into places by UTM cells x compass-angle bins (as for the ``@UTM@`` format).
- Validation (the standard protocol): non-panorama queries of the validation cities (``cph``, ``sf``)
  that have a database image within 25 m, against all non-panorama database images of those cities;
  when a ``subtask_index.csv`` exists, only frames of the chosen subtask (``all``) are kept.
- Test (challenge): ``test/<city>/{query,database}/images`` (no coordinates) for the prediction file.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
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
    read_csv_rows,
    utm_cell_keys,
)

VAL_CITIES = ("cph", "sf")


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def _read_side(city_dir: Path, side: str, subtask: str | None, need_coordinates: bool = True) -> dict:
    """Keys, image paths, UTM and compass angle of one city side (query or database), panoramas removed."""
    side_dir = city_dir / side
    images_dir = side_dir / "images"
    if not images_dir.is_dir():
        raise DatasetFormatError(f"MSLS: missing folder {images_dir}")
    if not need_coordinates and not (side_dir / "postprocessed.csv").is_file():
        keys = sorted(p.stem for p in images_dir.glob("*.jpg"))
        return {"keys": keys, "paths": [str(images_dir / f"{k}.jpg") for k in keys],
                "xy": np.zeros((len(keys), 2)), "heading": None}
    post_path = side_dir / "postprocessed.csv"
    raw_path = side_dir / "raw.csv"
    post = read_csv_rows(post_path, ("key", "easting", "northing"))
    raw = read_csv_rows(raw_path, ("key", "pano"))
    raw_by_key = {r["key"]: (j, r) for j, r in enumerate(raw, start=1)}
    keep = None
    sub_path = side_dir / "subtask_index.csv"
    if subtask is not None and sub_path.is_file():
        sub_rows = read_csv_rows(sub_path, ("key", subtask))
        keep = {r["key"] for r in sub_rows if _truthy(r[subtask])}
    keys, paths, xy, heading = [], [], [], []
    for i, row in enumerate(post, start=1):
        key = row["key"]
        if key not in raw_by_key:
            raise DatasetFormatError(f"{post_path}: row {i}: key {key!r} is missing from {raw_path}")
        raw_number, raw_row = raw_by_key[key]
        if _truthy(raw_row["pano"]) or (keep is not None and key not in keep):
            continue
        image = confined_path(images_dir, f"{key}.jpg", post_path, i, "key")
        if not image.is_file():
            raise DatasetFormatError(f"{post_path}: row {i}: image {image} does not exist")
        keys.append(key)
        paths.append(str(image))
        xy.append((parse_float(row["easting"], post_path, i, "easting"),
                   parse_float(row["northing"], post_path, i, "northing")))
        ca = raw_row.get("ca", "")
        heading.append(parse_float(ca, raw_path, raw_number, "ca") if ca else np.nan)
    return {"keys": keys, "paths": paths, "xy": np.asarray(xy, dtype=np.float64).reshape(-1, 2),
            "heading": np.asarray(heading, dtype=np.float64)}


def _cities(root: Path, subdir: str, cities: Sequence[str] | None, exclude: Sequence[str]) -> list[str]:
    base = root / subdir
    if not base.is_dir():
        raise DatasetFormatError(f"MSLS root {root}: missing folder {subdir!r} "
                                 f"(expected {subdir}/<city>/{{query,database}}/...)")
    if cities is None:
        cities = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name not in exclude)
    for city in cities:
        if not (base / city).is_dir():
            raise DatasetFormatError(f"MSLS: missing city folder {base / city}")
    if not cities:
        raise DatasetFormatError(f"MSLS: no city folders under {base}")
    return list(cities)


def load_msls(root: str | Path, cities: Sequence[str] | None = None, cell_m: float = 10.0,
              heading_bin_deg: float = 30.0, min_images_per_place: int = 4, name: str = "msls") -> PlaceSet:
    """MSLS training set: places = ``cell_m`` UTM cells x ``heading_bin_deg`` compass bins.

    ``cities``: default every ``train_val`` city except the validation cities.
    """
    root = Path(root)
    paths: list[str] = []
    keys: list[tuple] = []
    for city in _cities(root, "train_val", cities, VAL_CITIES):
        for side in ("query", "database"):
            data = _read_side(root / "train_val" / city, side, subtask=None)
            heading = data["heading"]
            use_heading = heading is not None and len(heading) and not np.isnan(heading).any()
            cell = utm_cell_keys(data["xy"][:, 0], data["xy"][:, 1], heading if use_heading else None,
                                 cell_m, heading_bin_deg)
            paths.extend(data["paths"])
            keys.extend((city, *c) for c in cell)
    return PlaceSet(name=name, paths=paths, places=group_into_places(keys, min_images_per_place))


def load_msls_retrieval(root: str | Path, split: str = "val", cities: Sequence[str] | None = None,
                        radius_m: float = 25.0, subtask: str = "all", name: str | None = None) -> RetrievalSet:
    """MSLS evaluation split. ``split="val"``: ``train_val/{cph,sf}`` with positives within ``radius_m``;
    ``split="test"``: the challenge's ``test/<city>`` folders (no ground truth; for prediction files).
    """
    root = Path(root)
    if split not in ("val", "test"):
        raise ValueError(f"MSLS split must be 'val' or 'test', got {split!r}")
    subdir = "train_val" if split == "val" else "test"
    if cities is None and split == "val":
        present = [c for c in VAL_CITIES if (root / subdir / c).is_dir()]
        if present and len(present) < len(VAL_CITIES):
            warnings.warn(f"MSLS val: only {present} of the standard validation cities {list(VAL_CITIES)} exist "
                          f"under {root / subdir}; the recalls are not comparable to the standard protocol",
                          stacklevel=2)
        cities = present or list(VAL_CITIES)
    cities = _cities(root, subdir, cities, ())
    db_paths, q_paths, db_keys, q_keys, positives = [], [], [], [], []
    for city in cities:
        city_dir = root / subdir / city
        q = _read_side(city_dir, "query", subtask, need_coordinates=split == "val")
        d = _read_side(city_dir, "database", subtask, need_coordinates=split == "val")
        if split == "val":
            pos = positives_within_radius(d["xy"], q["xy"], radius_m)
            with_pos = [i for i, p in enumerate(pos) if len(p)]
            positives.extend(pos[i] + len(db_paths) for i in with_pos)
            q_paths.extend(q["paths"][i] for i in with_pos)
            q_keys.extend(q["keys"][i] for i in with_pos)
        else:
            q_paths.extend(q["paths"])
            q_keys.extend(q["keys"])
            positives.extend(np.zeros(0, dtype=np.int64) for _ in q["paths"])
        db_paths.extend(d["paths"])
        db_keys.extend(d["keys"])
    return RetrievalSet(name=name or f"msls_{split}", database_paths=db_paths, query_paths=q_paths,
                        positives=positives, database_keys=db_keys, query_keys=q_keys,
                        has_ground_truth=split == "val")
