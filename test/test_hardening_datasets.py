"""Review finding (issue 11): paths in images.csv stay inside the dataset root, and a bad one is a
clear error naming the file, row and column (it used to be followed, or a bare ValueError)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.datasets import DatasetFormatError, build_place_set, build_retrieval_set


def _dataset(tmp_path: Path, first_path: str) -> Path:
    root = tmp_path / "robot"
    lines = ["path,easting,northing,sequence"]
    for k, seq in enumerate(("a", "a", "b", "b")):
        rel = f"img{k}.png"
        (root).mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(root / rel)
        lines.append(f"{first_path if k == 0 else rel},{k},0,{seq}")
    (root / "images.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("kind", ["absolute", "parent"])
def test_images_csv_paths_outside_the_root_are_named_errors(tmp_path, kind):
    outside = tmp_path / "secret.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
    path = str(outside) if kind == "absolute" else "../secret.png"
    root = _dataset(tmp_path, path)
    with pytest.raises(DatasetFormatError, match=r"images.csv: row 1, column 'path'.*relative to"):
        build_retrieval_set("images_csv", root, radius_m=5.0)
    with pytest.raises(DatasetFormatError, match=r"images.csv: row 1, column 'path'"):
        build_place_set("images_csv", root, min_images_per_place=1)


def test_msls_keys_cannot_leave_the_images_folder(tmp_path):
    from training.datasets.base import confined_path

    with pytest.raises(DatasetFormatError, match=r"x.csv: row 4, column 'key'"):
        confined_path(tmp_path, "../../etc/passwd", Path("x.csv"), 4, "key")
    assert confined_path(tmp_path, "a/b.png", Path("x.csv"), 1, "path") == tmp_path / "a" / "b.png"
