"""make bench's pieces: the cslam peer baseline searches exactly; the report states each goal from
the figures it is given and writes its PNGs (speed itself is measured by `make bench`, not here)."""
from __future__ import annotations

import numpy as np
import pytest

from bench.report import write_report
from bench.run import cslam_search


def test_cslam_baseline_finds_the_exact_nearest_neighbours() -> None:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((500, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    for query in data[:20] + 0.01 * rng.standard_normal((20, 16)).astype(np.float32):
        expected = np.argsort(-(data @ query))[:5]  # unit vectors: max inner product = min L2
        assert list(cslam_search(data, query, 5)) == list(expected)


def _results(boq_gflops: float, ivf_ms: float) -> dict:
    load = {"wall_s": 1.0, "others_share": 0.5, "loadavg_start": 1.0, "loadavg_end": 2.0, "cores": 2}
    heads = [{"name": name, "params": 1, "gflops": g, "dim": 8, "descriptor_bytes": 32, "ms": 1.0,
              "gflops_vs_qaa": g / 2.0, "ms_vs_qaa": 1.0} for name, g in (("QAA", 2.0), ("BoQ", boq_gflops))]
    search = [{"n": 1000, "dim": 4, "index": "flat", "build_s": 0.0, "ms_median": 3.0, "recall_at_1_vs_exact": 1.0,
               "index_bytes": 16000},
              {"n": 1000, "dim": 4, "index": "ivfpq", "build_s": 1.0, "ms_median": ivf_ms,
               "recall_at_1_vs_exact": 0.995, "index_bytes": 1000},
              {"n": 1000, "dim": 4, "index": "cslam numpy", "build_s": 0.0, "ms_median": 30.0,
               "recall_at_1_vs_exact": 1.0, "index_bytes": 16000}]
    return {"machine": {"host": "h", "cpu": "c", "cores": 2, "torch": "t"}, "overall_load": load,
            "command": "make bench", "total_s": 1.0, "errors": {}, "skipped": {"node": "budget spent"},
            "load": {"heads": load, "search": load},
            "sections": {"heads": {"rows": heads}, "search": {"rows": search, "notes": ["a note"]}}}


@pytest.mark.parametrize(("boq_gflops", "ivf_ms", "boq_verdict", "ivf_verdict"),
                         [(8.0, 1.0, "met", "met"), (5.0, 2.5, "NOT met", "missed: time")])
def test_report_states_the_goals_from_the_figures(tmp_path, boq_gflops, ivf_ms, boq_verdict, ivf_verdict) -> None:
    write_report(_results(boq_gflops, ivf_ms), tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert f"{boq_gflops / 2:.2f}x cheaper in GFLOPs than BoQ's" in report
    assert f"goal >= 3x: {boq_verdict}" in report
    ivf_line = next(line for line in report.splitlines() if line.startswith("| 1,000 | ivfpq |"))
    assert ivf_line.endswith(f"| {ivf_verdict} |") and f"| {30.0 / ivf_ms:.0f}x |" in ivf_line
    assert "missed: time" in next(line for line in report.splitlines() if line.startswith("| 1,000 | flat |"))
    assert "- node: skipped: budget spent" in report and "- a note" in report
    for png in ("heads.png", "search.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("bytes_max", "verdict", "descriptor_ms"),
                         [(96_600, "met", 400.0), (120_000, "NOT met", None)])
def test_report_states_the_local_feature_budget_and_ratio(tmp_path, bytes_max, verdict, descriptor_ms) -> None:
    results = _results(8.0, 1.0)
    section = {"frames": 139, "image": "640x480", "max_features": 700, "opencv_default_threads": 2,
               "ms_1_thread_median": 80.0, "ms_1_thread_p90": 95.0, "ms_default_threads_median": 50.0,
               "ms_default_threads_p90": 60.0, "bytes_mean": 83_200.0, "bytes_max": bytes_max,
               "features_mean": 603.0, "keypoints_with_depth": 0.83}
    if descriptor_ms:
        section |= {"descriptor_ms": descriptor_ms, "ratio_1_thread_vs_descriptor": 80.0 / descriptor_ms,
                    "ratio_default_vs_descriptor": 50.0 / descriptor_ms}
    results["sections"]["local_features"] = section
    write_report(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    one_thread = next(line for line in report.splitlines() if line.startswith("| 1 |"))
    assert one_thread.startswith("| 1 | 80.0 | 95.0 |")
    assert ("0.200x its 400 ms" if descriptor_ms else "not measured in this run") in one_thread
    assert f"83.2 kB mean, {bytes_max / 1e3:.1f} kB max** (budget 100 kB at 640x480: {verdict})" in report
