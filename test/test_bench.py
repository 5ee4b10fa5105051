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


def _verification_section(descriptor_ms: float | None) -> dict:
    rows = [{"view": "nearest", "depth": "depth", "outcome": "verified", "count": 59, "ms_median": 22.3,
             "ms_p90": 57.4},
            {"view": "nearest", "depth": "no_depth", "outcome": "verified", "count": 43, "ms_median": 18.0,
             "ms_p90": 30.0},
            {"view": "unrelated", "depth": "depth", "outcome": "ransac", "count": 86, "ms_median": 45.0,
             "ms_p90": 81.8},
            {"view": "unrelated", "depth": "depth", "outcome": "before_ransac", "count": 359, "ms_median": 6.1,
             "ms_p90": 11.8}]
    section = {"queries": 89, "map_frames": 50, "image": "640x480", "max_features": 700, "pnp_iterations": 1000,
               "min_inliers": 30, "verified_both_ways": 59, "unrelated_per_query": 5, "nearest_deg_median": 3.0,
               "unrelated_deg_min": 46.0, "unrelated_deg_max": 78.0, "rows": rows}
    if descriptor_ms:
        section["descriptor_ms"] = descriptor_ms
        for row in rows:
            row["ratio_vs_descriptor"] = row["ms_median"] / descriptor_ms
    return section


@pytest.mark.parametrize("descriptor_ms", [400.0, None])
def test_report_states_the_verification_time_per_candidate(tmp_path, descriptor_ms) -> None:
    results = _results(8.0, 1.0)
    results["sections"]["verification"] = _verification_section(descriptor_ms)
    write_report(results, tmp_path)
    lines = (tmp_path / "report.md").read_text().splitlines()
    verified = next(line for line in lines if line.startswith("| nearest view | both (PnP both ways) | verified |"))
    assert verified.startswith("| nearest view | both (PnP both ways) | verified | 59 | 22.3 | 57.4 |")
    assert verified.endswith(f"| {22.3 / 400:.3f}x its 400 ms |" if descriptor_ms else "| not measured in this run |")
    ransac = next(line for line in lines
                  if line.startswith("| unrelated view | both (PnP both ways) | rejected after RANSAC"))
    assert "| 86 | 45.0 | 81.8 |" in ransac
    summary = next(line for line in lines if line.startswith("Per candidate (median):"))
    assert "(PnP both ways) **22.3 ms**" in summary and "(essential matrix) **18.0 ms**" in summary
    assert "reaches RANSAC (with depth) **45.0 ms**" in summary


@pytest.mark.parametrize(("descriptor_ms", "step"), [(400.0, 1), (None, 2)])
def test_report_states_the_node_overhead_of_verification(tmp_path, descriptor_ms, step) -> None:
    results = _results(8.0, 1.0)
    parts = {"inference_ms_median": 10.0, "features_ms_median": 100.0, "search_ms_median": 190.0}
    section = {"frames": 89 // step, "step": step, "map_keyframes": 50, "model": "models/nordland_tiny",
               "processed_on": 89 // step, "processed_off": 89 // step,
               "on": {"ms_median": 350.0, "ms_p90": 900.0, **parts},
               "off": {"ms_median": 14.0, "ms_p90": 100.0, **parts, "features_ms_median": 0.0,
                       "search_ms_median": 2.0},
               "ratio_median": 350.0 / 14.0, "ratio_p90": 9.0, "overhead_ms_median": 336.0,
               "verified": 162, "verified_pnp": 162, "rejected": 346, "geometry_place_matches": 55,
               "online_keyframes": 89 // step}
    if descriptor_ms:
        section |= {"descriptor_ms": descriptor_ms, "overhead_vs_descriptor": 336.0 / descriptor_ms}
    results["sections"]["node_verification"] = section
    write_report(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    lines = report.splitlines()
    on = next(line for line in lines if line.startswith("| true |"))
    assert on == "| true | 350.0 | 900.0 | 10.0 | 100.0 | 190.0 |"
    assert next(line for line in lines if line.startswith("| false |")).startswith("| false | 14.0 | 100.0 |")
    assert "On / off: **25.00x** (median), 9.00x (p90): **+336 ms per frame** (median); " in report
    assert "that overhead is " + (f"{336 / 400:.3f}x its 400 ms." if descriptor_ms else "not measured in this run.") \
        in report
    assert ("every frame" if step == 1 else "1 frame in 2 (--quick)") in report


@pytest.mark.parametrize("name", ["verification", "node_verification"])
def test_report_says_why_a_tum_section_was_skipped(tmp_path, name) -> None:
    results = _results(8.0, 1.0)
    results["sections"][name] = {"skipped": "TUM RGB-D data absent: /nowhere"}
    write_report(results, tmp_path)
    assert "Skipped: TUM RGB-D data absent: /nowhere." in (tmp_path / "report.md").read_text()


def test_report_names_the_cpu_of_each_combined_run(tmp_path) -> None:
    results = _results(8.0, 1.0)
    results["runs"] = [{"command": "make bench", "total_s": 1000.0, "others_share": 0.8, "sections": ["heads"]},
                       {"command": "python -m bench.run --complete bench/results.json --only search",
                        "cpu": "Intel(R) Xeon(R) Processor", "total_s": 100.0, "others_share": 0.5,
                        "sections": ["search"]}]
    write_report(results, tmp_path)
    runs = [line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("- `")]
    assert runs[0].startswith("- `make bench`: 1000 s, sections heads;")  # an older run: no CPU recorded
    assert runs[1].startswith("- `python -m bench.run --complete bench/results.json --only search` on "
                              "Intel(R) Xeon(R) Processor: 100 s, sections search;")
