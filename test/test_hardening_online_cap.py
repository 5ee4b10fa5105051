"""Review finding (issue 11): the online database grew without bound. It is capped
(``online_max_keyframes``) by spatial thinning, and its memory is reported."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qaa_vpr_ros.decision import LocalizeConfig, Localizer, Query
from qaa_vpr_ros.maps import Keyframe, PlaceMap
from qaa_vpr_ros.maps.thinning import thin_rows

DIM = 32


def test_thinning_keeps_coverage_of_every_place_and_the_recent_keyframes():
    # A 1 km loop driven 5 times, a keyframe every metre: 5000 rows, each place seen 5 times.
    t = np.arange(5000, dtype=float)
    angle = 2 * math.pi * (t % 1000) / 1000
    positions = np.stack([159 * np.cos(angle), 159 * np.sin(angle), np.zeros_like(t)], axis=1)
    keep = thin_rows(positions, t, target=1000, recent_s=30.0)
    assert 800 <= len(keep) <= 1000 and np.all(np.diff(keep) > 0)
    assert set(range(4970, 5000)) <= set(keep.tolist())  # the last 30 s stay
    # every place of the loop still has a kept keyframe within a few metres
    kept = positions[keep]
    gaps = np.min(np.linalg.norm(positions[:, None, :2] - kept[None, :, :2], axis=2), axis=1)
    assert gaps.max() < 5.0
    # the kept views are mostly from the latest laps (newest per cell)
    assert np.median(keep) > 3000


def test_thinning_without_poses_is_even_in_time():
    positions = np.full((100, 3), np.nan)
    keep = thin_rows(positions, np.arange(100.0), target=20)
    assert len(keep) <= 20 and keep[-1] == 99 and np.all(np.diff(keep) <= 6)


def test_subset_keeps_ids_and_search():
    x = np.random.default_rng(0).standard_normal((50, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = PlaceMap.create(DIM, "f")
    m.add(x, [Keyframe(id=100 + i, stamp_sec=i, stamp_nanosec=0, camera="c", frame_id="c") for i in range(50)])
    s = m.subset([3, 10, 42])
    assert s.ids.tolist() == [103, 110, 142]
    assert s.search(x[10], k=1).ids[0, 0] == 110


@pytest.mark.parametrize("with_pose", [True, False])
def test_online_database_stays_under_its_cap_and_memory_is_flat(with_pose):
    cap = 200
    cfg = LocalizeConfig.from_dict({"online_max_keyframes": cap, "exclude_recent_s": 5.0}).validate()
    loc = Localizer(cfg, DIM, "fp", online_frame="odom")
    rng = np.random.default_rng(1)
    sizes, memory = [], []
    for t in range(1500):
        d = rng.standard_normal(DIM).astype(np.float32)
        d /= np.linalg.norm(d)
        pose = ((float(t % 300), 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)) if with_pose else None
        (result,) = loc.process([Query("cam", 1000 + t, 0, "cam", pose=pose)], d[None])
        assert result.keyframe is not None
        sizes.append(len(loc.online_map))
        memory.append(loc.online_memory_bytes())
    assert max(sizes) <= cap and min(sizes[cap:]) >= cap // 2
    assert len(set(loc.online_map.ids.tolist())) == len(loc.online_map)  # ids never reused
    assert loc.online_thinned > 0
    # flat once the cap is reached: the largest memory of the last third is no more than the first
    third = len(memory) // 3
    assert max(memory[-third:]) <= max(memory[third:2 * third]) * 1.01
    assert len(loc.online_matcher.table) == len(loc.online_map)
    # Thinning (PlaceMap.subset) leaves the online map without a faiss copy: the decision searches
    # its own table. Stored: float16 (2 bytes a value) in a buffer of at most twice its rows.
    assert loc.online_map.memory_bytes <= 2 * len(loc.online_map) * DIM * 2
