"""Dataset loaders of every format: tiny datasets written by fixtures, and their error messages."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.datasets import DatasetFormatError, build_place_set, build_retrieval_set, load_image_rgb


def _write_image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 12, 3), value % 256, np.uint8)).save(path)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


# ----------------------------------------------------------------------------- GSV-Cities
GSV_COLUMNS = ["place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid"]


def _gsv_name(row: list) -> str:
    place_id, year, month, deg, city, lat, lon, pano = row
    return f"{city}_{place_id % 10**5:07d}_{year:04d}_{month:02d}_{deg:03d}_{lat!r}_{lon!r}_{pano}.jpg"


@pytest.fixture
def gsv_root(tmp_path: Path) -> Path:
    root = tmp_path / "gsv"
    for city, code in (("London", "London"), ("Boston", "Boston")):
        rows = []
        for place in (0, 1, 2):
            count = 3 if place == 2 else 4  # place 2 has fewer than K=4 images: dropped
            for j in range(count):
                lat, lon = 51.5 + place * 1e-3, -0.12 + j * 1e-4
                rows.append([place, 2015 + j, 1 + j, 10 * j, code, lat, lon, f"p{place}x{j}"])
        _write_csv(root / "Dataframes" / f"{city}.csv", GSV_COLUMNS, rows)
        for i, row in enumerate(rows):
            _write_image(root / "Images" / city / _gsv_name(row), i)
    return root


def test_gsv_cities_places_unique_across_cities_and_small_places_dropped(gsv_root: Path) -> None:
    ps = build_place_set("gsv_cities", gsv_root, min_images_per_place=4)
    # place ids 0 and 1 exist in both cities: four distinct places; place 2 (3 images) dropped in both
    assert ps.num_places == 4
    for images in ps.places:
        assert len(images) == 4
        names = {Path(ps.paths[i]).name for i in images}
        cities = {Path(ps.paths[i]).parent.name for i in images}
        place_ids = {int(n.split("_")[1]) for n in names}
        assert len(cities) == 1 and len(place_ids) == 1


def test_gsv_cities_missing_image_is_named(gsv_root: Path) -> None:
    victim = sorted((gsv_root / "Images" / "Boston").iterdir())[0]
    victim.unlink()
    with pytest.raises(DatasetFormatError, match=f"Boston.csv: row 1 names image .*{re.escape(victim.name)}"):
        build_place_set("gsv_cities", gsv_root, min_images_per_place=4)


def test_gsv_cities_missing_column_is_named(gsv_root: Path) -> None:
    _write_csv(gsv_root / "Dataframes" / "London.csv", [c for c in GSV_COLUMNS if c != "northdeg"], [])
    with pytest.raises(DatasetFormatError, match="London.csv: missing column.*northdeg"):
        build_place_set("gsv_cities", gsv_root, min_images_per_place=4)


def test_gsv_cities_is_training_only(gsv_root: Path) -> None:
    with pytest.raises(DatasetFormatError, match="training-only"):
        build_retrieval_set("gsv_cities", gsv_root)


# ----------------------------------------------------------------------------- MSLS
def _msls_side(city_dir: Path, side: str, entries: list[tuple[str, float, float, bool, float]]) -> None:
    d = city_dir / side
    _write_csv(d / "postprocessed.csv", ["", "key", "easting", "northing", "night"],
               [[i, k, e, n, False] for i, (k, e, n, _, _) in enumerate(entries)])
    _write_csv(d / "raw.csv", ["", "key", "lon", "lat", "ca", "pano"],
               [[i, k, 0.0, 0.0, ca, pano] for i, (k, _, _, pano, ca) in enumerate(entries)])
    for i, (k, *_rest) in enumerate(entries):
        _write_image(d / "images" / f"{k}.jpg", i)


@pytest.fixture
def msls_root(tmp_path: Path) -> Path:
    root = tmp_path / "msls"
    # training city: two places (cells) seen from query and database, one panorama
    _msls_side(root / "train_val" / "boston", "query",
               [("bq0", 1000.0, 2000.0, False, 90.0), ("bq1", 1001.0, 2001.0, False, 95.0),
                ("bq2", 1500.0, 2000.0, False, 90.0), ("bq3", 1501.0, 2002.0, False, 91.0)])
    _msls_side(root / "train_val" / "boston", "database",
               [("bd0", 1002.0, 2002.0, False, 92.0), ("bd1", 1003.0, 2003.0, False, 93.0),
                ("bd2", 1502.0, 2003.0, False, 92.0), ("bd3", 1503.0, 2001.0, False, 93.0),
                ("bd4", 1004.0, 2004.0, True, 90.0)])
    # validation city cph: q0 has database images within 25 m, q1 has none, q2 is a panorama
    _msls_side(root / "train_val" / "cph", "query",
               [("q0", 0.0, 0.0, False, 0.0), ("q1", 500.0, 500.0, False, 0.0), ("q2", 1.0, 0.0, True, 0.0)])
    _msls_side(root / "train_val" / "cph", "database",
               [("d0", 10.0, 0.0, False, 0.0), ("d1", 30.0, 0.0, False, 0.0), ("d2", 0.0, 20.0, False, 0.0),
                ("d3", 2.0, 0.0, True, 0.0)])
    return root


def test_msls_training_places_exclude_val_cities_and_panoramas(msls_root: Path) -> None:
    ps = build_place_set("msls", msls_root, min_images_per_place=4, cell_m=10.0, heading_bin_deg=30.0)
    assert ps.num_places == 2
    keys = sorted(sorted(Path(ps.paths[i]).stem for i in p) for p in ps.places)
    assert keys == [["bd0", "bd1", "bq0", "bq1"], ["bd2", "bd3", "bq2", "bq3"]]


def test_msls_val_protocol_positives_within_25m(msls_root: Path) -> None:
    rs = build_retrieval_set("msls", msls_root, split="val", cities=["cph"])
    assert rs.query_keys == ["q0"]  # q1 has no positive, q2 is a panorama
    assert rs.database_keys == ["d0", "d1", "d2"]  # the panorama d3 is not in the database
    assert rs.positives[0].tolist() == [0, 2]  # d0 at 10 m, d2 at 20 m; d1 at 30 m is too far


def test_msls_missing_column_and_key_are_named(msls_root: Path) -> None:
    raw = msls_root / "train_val" / "cph" / "query" / "raw.csv"
    _write_csv(raw, ["", "key", "lon", "lat", "ca", "pano"], [[0, "q0", 0, 0, 0, False]])
    with pytest.raises(DatasetFormatError, match="query/postprocessed.csv: row 2: key 'q1' is missing"):
        build_retrieval_set("msls", msls_root, split="val", cities=["cph"])
    _write_csv(raw, ["", "key", "lon"], [])
    with pytest.raises(DatasetFormatError, match="raw.csv: missing column.*pano"):
        build_retrieval_set("msls", msls_root, split="val", cities=["cph"])


# ----------------------------------------------------------------------------- @UTM@ format
def _utm_name(east: float, north: float, heading: str = "") -> str:
    return f"@{east:.2f}@{north:.2f}@10@S@37.7@-122.4@pano@0@{heading}@0@0@@.jpg"


@pytest.fixture
def utm_root(tmp_path: Path) -> Path:
    root = tmp_path / "sfxl"
    train = root / "images" / "train"
    i = 0
    for east, north, heading in ((100.0, 200.0, 10), (103.0, 202.0, 20), (101.0, 205.0, 5), (108.0, 209.0, 25),
                                 (104.0, 201.0, 200), (102.0, 206.0, 210), (105.0, 204.0, 220), (106.0, 203.0, 215),
                                 (500.0, 500.0, 0)):
        _write_image(train / _utm_name(east, north, str(heading)), i)
        i += 1
    for sub, pts in (("database", ((0.0, 0.0), (20.0, 0.0), (40.0, 0.0))), ("queries", ((1.0, 1.0), (100.0, 100.0)))):
        for east, north in pts:
            _write_image(root / "images" / "test" / sub / _utm_name(east, north), i)
            i += 1
    return root


def test_utm_training_places_are_cells_times_heading_bins(utm_root: Path) -> None:
    ps = build_place_set("utm", utm_root, min_images_per_place=4, cell_m=10.0, heading_bin_deg=30.0)
    # all but one image in one 10 m cell; heading bin 0-30 holds 4 images, bin 180-210 one and
    # bin 210-240 three (both dropped, K=4), the lone far image is dropped
    groups = sorted(sorted(int(float(Path(ps.paths[i]).name.split("@")[9])) for i in p) for p in ps.places)
    assert groups == [[5, 10, 20, 25]]
    ps_no_heading = build_place_set("utm", utm_root, min_images_per_place=4, cell_m=10.0, heading_bin_deg=0)
    assert ps_no_heading.num_places == 1 and len(ps_no_heading.places[0]) == 8


def test_utm_retrieval_positives_within_radius(utm_root: Path) -> None:
    rs = build_retrieval_set("utm", utm_root, split="test", radius_m=25.0)
    assert len(rs.database_paths) == 3 and len(rs.query_paths) == 2
    assert rs.positives[0].tolist() == [0, 1] and rs.positives[1].tolist() == []


def test_utm_bad_file_name_and_missing_heading_are_named(utm_root: Path) -> None:
    _write_image(utm_root / "images" / "test" / "queries" / "@abc@1@.jpg", 1)
    with pytest.raises(DatasetFormatError, match=r"@abc@1@\.jpg: UTM east/north"):
        build_retrieval_set("utm", utm_root, split="test")
    _write_image(utm_root / "images" / "train" / _utm_name(1.0, 2.0), 1)
    with pytest.raises(DatasetFormatError, match="no heading field.*heading_bin_deg: 0"):
        build_place_set("utm", utm_root, min_images_per_place=4, heading_bin_deg=30.0)


# ----------------------------------------------------------------------------- traversals
@pytest.fixture
def traversal_root(tmp_path: Path) -> Path:
    root = tmp_path / "nordland"
    for t, offset in (("summer", 0), ("winter", 100)):
        for frame in range(1, 21):
            if t == "winter" and frame == 7:
                continue  # a frame missing from one traversal
            _write_image(root / t / f"images-{frame * 10:05d}.png", frame + offset)
    return root


def test_traversal_places_and_frame_range(traversal_root: Path) -> None:
    ps = build_place_set("traversal", traversal_root, min_images_per_place=2, frames_per_place=1,
                         traversals=["summer", "winter"], frame_range=[0.0, 0.5])
    assert ps.num_places == 9  # frames 10..100, frame 70 has one image only
    for p in ps.places:
        names = {Path(ps.paths[i]).name for i in p}
        travs = {Path(ps.paths[i]).parent.name for i in p}
        assert len(names) == 1 and travs == {"summer", "winter"}
    ps4 = build_place_set("traversal", traversal_root, min_images_per_place=4, frames_per_place=2,
                          frame_range=[0.5, 1.0])
    assert ps4.num_places == 5 and all(len(p) == 4 for p in ps4.places)


def test_traversal_retrieval_frame_tolerance(traversal_root: Path) -> None:
    rs = build_retrieval_set("traversal", traversal_root, database="summer", query="winter", frame_tolerance=2)
    assert len(rs.database_paths) == 20 and len(rs.query_paths) == 19
    q = rs.query_keys.index("images-00100.png")  # frame index 9
    assert rs.positives[q].tolist() == [7, 8, 9, 10, 11]
    rs_part = build_retrieval_set("traversal", traversal_root, database="summer", query="winter", frame_tolerance=0,
                                  frame_range=[0.75, 1.0])
    assert rs_part.query_keys[0] == "images-00160.png" and rs_part.positives[0].tolist() == [0]


def test_traversal_errors_name_the_folder(traversal_root: Path) -> None:
    with pytest.raises(DatasetFormatError, match="traversal 'autumn': missing folder"):
        build_retrieval_set("traversal", traversal_root, database="summer", query="autumn")
    with pytest.raises(ValueError, match="frame_range"):
        build_place_set("traversal", traversal_root, min_images_per_place=2, frame_range=[0.6, 0.2])


# ----------------------------------------------------------------------------- generic images.csv
@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    root = tmp_path / "robot"
    rows = []
    for seq, dx in (("run1", 0.0), ("run2", 0.5)):
        for k in range(3):  # three places 50 m apart, each seen twice per run
            for j in range(2):
                rel = f"{seq}/img_{k}_{j}.png"
                _write_image(root / rel, 10 * k + j)
                rows.append([rel, 50.0 * k + dx + j, 7.0, 90.0, 100 * k + j, seq])
    _write_csv(root / "images.csv", ["path", "easting", "northing", "heading", "timestamp", "sequence"], rows)
    return root


def test_images_csv_radius_grouping(csv_root: Path) -> None:
    ps = build_place_set("images_csv", csv_root, min_images_per_place=4, place_radius_m=5.0)
    assert ps.num_places == 3
    place_of_images = [{Path(ps.paths[i]).name.split("_")[1] for i in p} for p in ps.places]
    assert all(len(p) == 4 for p in ps.places)
    assert sorted(place_of_images, key=sorted) == [{"0"}, {"1"}, {"2"}]


def test_images_csv_retrieval_by_sequence(csv_root: Path) -> None:
    rs = build_retrieval_set("images_csv", csv_root, radius_m=10.0)
    assert len(rs.database_paths) == 6 and len(rs.query_paths) == 6
    assert all(rs.positives[q].tolist() == [2 * (q // 2), 2 * (q // 2) + 1] for q in range(6))


def test_images_csv_errors_name_row_and_column(csv_root: Path) -> None:
    text = (csv_root / "images.csv").read_text().replace("run1/img_1_0.png,50.0", "run1/img_1_0.png,fifty")
    (csv_root / "images.csv").write_text(text)
    with pytest.raises(DatasetFormatError, match=r"images.csv: row 3, column 'easting': 'fifty'"):
        build_place_set("images_csv", csv_root, min_images_per_place=4)
    (csv_root / "images.csv").write_text("path,easting\nx.png,1\n")
    with pytest.raises(DatasetFormatError, match="missing column.*northing"):
        build_place_set("images_csv", csv_root, min_images_per_place=4)
    (csv_root / "images.csv").write_text("path,easting,northing\nnope.png,1,2\n")
    with pytest.raises(DatasetFormatError, match=r"row 1, column 'path': image .*nope.png does not exist"):
        build_place_set("images_csv", csv_root, min_images_per_place=1)


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DatasetFormatError, match="broken.png"):
        load_image_rgb(bad)
