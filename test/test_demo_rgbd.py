"""The RGB-D part of ``make demo`` (``scripts/demo_rgbd.py``) and its shipped data
(``data/tum_fr1_rpy_mini``, made by ``scripts/make_tum_mini.py``): real TUM fr1/rpy frames at half
resolution, intrinsics moved to the new pixel grid, and the relocalization it shows."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from qaa_vpr_ros.bags import open_bag
from qaa_vpr_ros.local_features import Intrinsics
from scripts.demo_rgbd import BUNDLED_MODEL, DEFAULT_DATA, relocalize
from scripts.make_tum_mini import downsample_depth, make_mini
from scripts.tum_rgbd import (
    INFO_TOPIC,
    REPO,
    TUM_FR1_INTRINSICS,
    TUM_FR1_RPY,
    downsampled_intrinsics,
    load_tum,
    write_tum_bag,
)


def test_shipped_data_is_the_documented_subset() -> None:
    mini = load_tum(DEFAULT_DATA)
    assert len(mini) == 70
    assert mini.rgb(10).shape == (240, 320, 3)
    assert mini.depth_png(10).shape == (240, 320) and 0.3 < np.nanmedian(mini.depth_m(10)) < 5.0
    assert mini.intrinsics == downsampled_intrinsics(TUM_FR1_INTRINSICS, 2)
    mini.camera_pose([f.rgb_stamp_ns for f in mini.frames])  # the ground truth spans every frame
    size = sum(f.stat().st_size for f in DEFAULT_DATA.rglob("*") if f.is_file())
    assert size < 4.2e6, f"{DEFAULT_DATA} holds {size / 1e6:.1f} MB; the repository takes a few MB"
    readme = (DEFAULT_DATA / "README.md").read_text()
    for needed in ("CC BY 4.0", "Sturm", "IROS 2012", "320 x 240", "every 10th", "make_tum_mini", "258.65"):
        assert needed in readme, needed


def test_downsampled_intrinsics_project_onto_the_shrunk_image() -> None:
    """A point's image (a small blob at its projection, pixel centres at integer coordinates)
    shrunk 2x by block means lies where the downsampled intrinsics project the point."""
    k = TUM_FR1_INTRINSICS
    small = downsampled_intrinsics(k, 2)
    assert small.distortion == k.distortion
    ys, xs = np.mgrid[0:480, 0:640].astype(np.float64)
    for point in ((0.1, -0.05, 1.0), (-0.3, 0.2, 2.0)):
        u, v = k.fx * point[0] / point[2] + k.cx, k.fy * point[1] / point[2] + k.cy
        blob = np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * 3.0 ** 2))
        shrunk = cv2.resize(blob, (320, 240), interpolation=cv2.INTER_AREA)
        sy, sx = np.mgrid[0:240, 0:320]
        centroid = np.array([(shrunk * sx).sum(), (shrunk * sy).sum()]) / shrunk.sum()
        projected = np.array([small.fx * point[0] / point[2] + small.cx, small.fy * point[1] / point[2] + small.cy])
        assert np.abs(centroid - projected).max() < 0.02, (centroid, projected)
    with pytest.raises(ValueError, match="factor"):
        downsampled_intrinsics(k, 0)


def test_depth_blocks_across_an_edge_have_no_depth() -> None:
    depth = np.zeros((4, 6), np.uint16)
    depth[:2, :2] = [[5000, 5010], [4995, 5005]]  # one surface, 1 m
    depth[:2, 2:4] = [[5000, 5000], [9000, 9000]]  # an edge: 1 m in front of 1.8 m
    depth[:2, 4:6] = [[0, 7000], [0, 0]]  # one valid value
    small = downsample_depth(depth, 2)
    assert small.shape == (2, 3) and small.dtype == np.uint16
    assert small[0, 0] in (5000, 5005)  # a value of the block, the one nearest its mean (5002.5)
    assert small[0, 1] == 0  # no invented surface at 1.4 m
    assert small[0, 2] == 7000
    assert np.all(small[1] == 0)  # no depth at all


def test_a_folders_intrinsics_go_into_its_recordings(tmp_path) -> None:
    mini = load_tum(DEFAULT_DATA)
    bag = write_tum_bag(tmp_path / "bag", mini, [0, 1])
    with open_bag(bag.path) as recording:
        infos = [recording.deserialize(raw, t) for _, t, _, raw in recording.messages([INFO_TOPIC])]
    assert len(infos) == 2
    assert (infos[0].width, infos[0].height) == (320, 240)
    assert Intrinsics.from_camera_info(infos[0].k, infos[0].d) == mini.intrinsics


def test_a_malformed_intrinsics_file_is_named(tmp_path) -> None:
    folder = tmp_path / "tum"
    folder.mkdir()
    for name in ("rgb", "depth", "associations.txt", "groundtruth.txt"):
        (folder / name).symlink_to(DEFAULT_DATA / name)
    (folder / "intrinsics.txt").write_text("258.65 258.25 159.05 127.4 0.2624 -0.9531 -0.0054 0.0026\n")
    with pytest.raises(ValueError, match="intrinsics.txt line 1: expected 9 fields"):
        load_tum(folder)
    (folder / "intrinsics.txt").write_text("0 0 159.05 127.4 0 0 0 0 0\n")
    with pytest.raises(ValueError, match="intrinsics.txt line 1: .*focal lengths"):
        load_tum(folder)
    (folder / "intrinsics.txt").unlink()
    assert load_tum(folder).intrinsics == TUM_FR1_INTRINSICS  # none: TUM's freiburg1 calibration


def test_the_script_regenerates_the_shipped_data(tmp_path) -> None:
    if not (TUM_FR1_RPY / "associations.txt").is_file():
        pytest.skip(f"shared test data absent: {TUM_FR1_RPY} (developers' machines only)")
    out = tmp_path / "mini"
    out.mkdir()
    shutil.copy(DEFAULT_DATA / "README.md", out / "README.md")
    assert make_mini(TUM_FR1_RPY, out, step=2, factor=2, jpeg_quality=90) == 70
    made = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert made == sorted(p.relative_to(DEFAULT_DATA) for p in DEFAULT_DATA.rglob("*") if p.is_file())
    for name in made:
        assert (out / name).read_bytes() == (DEFAULT_DATA / name).read_bytes(), name


@pytest.mark.slow
def test_the_demo_relocalizes_at_the_issue_bars(tmp_path, capsys) -> None:
    """The issue's TUM acceptance bars, on the shipped half-resolution frames: accepted place
    matches within 3 cm / 2 deg in the median, none off by more than 10 cm or 5 deg, right within 3
    frames of the first frame that sees a mapped view; online loop closures, none wrong."""
    sequence = load_tum(DEFAULT_DATA)
    assert sequence.folder.resolve().is_relative_to(REPO)  # nothing from ../shared
    result = relocalize(sequence, tmp_path, BUNDLED_MODEL)
    assert len(result.errors) >= 20, result.summary()
    pos = np.array([e[0] for e in result.errors.values()])
    rot = np.array([e[1] for e in result.errors.values()])
    assert np.median(pos) <= 0.03 and np.median(rot) <= 2.0, result.summary()
    assert not np.any((pos > 0.10) | (rot > 5.0)), result.summary()
    assert all(source == "geometry" for *_, source in result.errors.values())  # the query's own pose
    assert result.first_right_after_seen is not None and 0 <= result.first_right_after_seen <= 3, result.summary()
    assert result.online and all(e_t <= 0.10 and e_r <= 5.0 for e_t, e_r in result.online), result.online
    printed = capsys.readouterr().out
    assert "mapping the first 25" in printed and "data/tum_fr1_rpy_mini" in printed
