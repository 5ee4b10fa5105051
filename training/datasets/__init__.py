"""Dataset loaders, one per on-disk format, behind two entry points.

Formats (the ``FORMAT`` in ``--dataset FORMAT:ROOT`` and ``format:`` in configs):

=============  ==========================================================  =========  ==========
format         layout                                                      training   evaluation
=============  ==========================================================  =========  ==========
gsv_cities     ``Dataframes/<City>.csv`` + ``Images/<City>/...jpg``        yes        no
msls           ``train_val/<city>/{query,database}/...``                   yes        val / test
utm            ``images/{train,val,test}/{database,queries}/@E@N@...@.jpg``  yes      yes
traversal      ``ROOT/<traversal>/<frame image>`` (Nordland)               yes        yes
images_csv     ``ROOT/images.csv`` (path,easting,northing[,heading,...])   yes        yes
=============  ==========================================================  =========  ==========
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from qaa_vpr_ros.paths import path_argument

from .base import DatasetFormatError, PlaceSet, RetrievalSet, load_image_rgb
from .gsv_cities import load_gsv_cities
from .images_csv import load_images_csv, load_images_csv_retrieval
from .msls import load_msls, load_msls_retrieval
from .traversal import load_traversal_retrieval, load_traversals
from .utm import load_utm, load_utm_retrieval

TRAIN_LOADERS = {
    "gsv_cities": load_gsv_cities,
    "msls": load_msls,
    "utm": load_utm,
    "traversal": load_traversals,
    "images_csv": load_images_csv,
}
RETRIEVAL_LOADERS = {
    "msls": load_msls_retrieval,
    "utm": load_utm_retrieval,
    "traversal": load_traversal_retrieval,
    "images_csv": load_images_csv_retrieval,
}

__all__ = [
    "DatasetFormatError", "PlaceSet", "RetrievalSet", "load_image_rgb", "build_place_set", "build_retrieval_set",
    "TRAIN_LOADERS", "RETRIEVAL_LOADERS",
]


def build_place_set(fmt: str, root: str | Path, min_images_per_place: int, name: str | None = None,
                    **options: Any) -> PlaceSet:
    """Training places of one dataset; ``options`` are the format loader's keyword arguments."""
    if fmt not in TRAIN_LOADERS:
        raise ValueError(f"unknown training dataset format {fmt!r}; choose one of {sorted(TRAIN_LOADERS)}")
    root = path_argument(str(root))  # ~ and environment variables expanded
    return TRAIN_LOADERS[fmt](root, min_images_per_place=min_images_per_place, name=name or fmt, **options)


def build_retrieval_set(fmt: str, root: str | Path, name: str | None = None, **options: Any) -> RetrievalSet:
    """Evaluation split of one dataset; ``options`` are the format loader's keyword arguments."""
    if fmt == "gsv_cities":
        raise DatasetFormatError("GSV-Cities is a training-only format; evaluate on msls, utm, traversal or "
                                 "images_csv")
    if fmt not in RETRIEVAL_LOADERS:
        raise ValueError(f"unknown evaluation dataset format {fmt!r}; choose one of {sorted(RETRIEVAL_LOADERS)}")
    root = path_argument(str(root))  # ~ and environment variables expanded
    return RETRIEVAL_LOADERS[fmt](root, name=name, **options)
