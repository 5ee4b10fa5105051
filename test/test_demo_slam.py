"""The SLAM demo's drive (places 1920-2399): live localize_node + pose_graph_node over DDS, two rosbag2
sessions, evo ATE. Acceptance: ATE with our loop closures <= 0.2 x odometry alone, and not one
wrong loop closure accepted into the graph."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from scripts import demo_slam

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "nordland_heldout"
MODEL = REPO / "models" / "nordland_tiny"

pytestmark = [pytest.mark.ros, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:module 'sre_(parse|constants)' is deprecated:DeprecationWarning")]


def test_route_has_turns_and_the_odometry_drifts_reproducibly():
    truth = demo_slam.route(200)
    yaws = [math.atan2(p[1, 0], p[0, 0]) for p in truth]
    assert max(yaws) - min(yaws) > math.radians(90)  # turns, not a straight line
    steps = [np.linalg.norm(b[:3, 3] - a[:3, 3]) for a, b in zip(truth, truth[1:], strict=False)]
    assert np.allclose(steps, demo_slam.SPACING_M)
    a = demo_slam.drifting_odometry(truth, seed=3, heading_walk_rad=0.02, scale_error=0.05)
    b = demo_slam.drifting_odometry(truth, seed=3, heading_walk_rad=0.02, scale_error=0.05)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # seeded
    odom_steps = [np.linalg.norm(q[:3, 3] - p[:3, 3]) for p, q in zip(a, a[1:], strict=False)]
    assert np.allclose(odom_steps, 1.05 * demo_slam.SPACING_M)  # the scale error
    end_error = np.linalg.norm((np.linalg.inv(a[0]) @ a[-1])[:2, 3] - (np.linalg.inv(truth[0]) @ truth[-1])[:2, 3])
    assert end_error > 50.0  # and the heading walk makes it drift


@pytest.mark.skipif(not (DATA / "winter").is_dir() or not (MODEL / "model.safetensors").is_file(),
                    reason=f"demo data {DATA} or bundled model {MODEL} absent")
def test_loop_closures_remove_the_drift_on_the_demo_drive(tmp_path, capfd):
    # The demo's own drive: places 1920-2399 (held out from the model's training), 400 evaluation
    # places, 80 calibration places, its drift. Shorter routes (180 places at double drift, 260 at
    # the demo's drift) gave ATE ratios of 0.13-0.24 from run to run (the live pose graph
    # re-optimises on a timer), too close to the bound to be a test; the full drive gave 0.12-0.14.
    summary = demo_slam.run(tmp_path, MODEL, DATA, map_first=1920, calibration=80, places=400, seed=7,
                            heading_walk_rad=0.01, scale_error=0.03)
    assert summary["ate_odometry_m"] > 15.0
    assert summary["ate_ratio"] <= 0.2, summary
    assert summary["wrong_in_graph"] == 0, summary
    assert summary["inliers_in_graph"] >= 0.5 * summary["loop_closures_published"]
    assert summary["answered"] >= 0.95 * summary["images"]
    assert (tmp_path / "slam.png").stat().st_size > 10_000
    report = (tmp_path / "report.md").read_text()
    assert f"{summary['ate_corrected_m']:.2f} m" in report and "slam.png" in report
    assert json.loads((tmp_path / "summary.json").read_text())["wrong_in_graph"] == 0
    # The recording is played on its own time (/clock, use_sim_time), as `ros2 bag play --clock`:
    # the nodes (child processes, their output captured here) see no clock mismatch.
    out, err = capfd.readouterr()
    assert "node's clock" not in out + err and "ready:" in out + err
