"""Writes ``report.md`` and the PNG figures of ``make bench`` from ``bench.run``'s results."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qaa_vpr_ros.atomic import atomic_write_text, save_figure

GOAL_MS, GOAL_RECALL, GOAL_BYTES = 2.0, 0.99, 1.5e9


def _machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    load = results.get("overall_load", {})
    return (f"{m['host']}: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; "
            f"other processes used {100 * load.get('others_share', float('nan')):.0f} % of the CPU during the run")


def _figure(results: dict[str, Any], title: str, ncols: int = 1, width: float = 6.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4.2), squeeze=False)
    fig.suptitle(f"{title}\n{_machine_line(results)}", fontsize=9)
    return fig, list(axes[0])


def _load_note(results: dict[str, Any], name: str) -> str:
    load = results["load"].get(name)
    if not load:
        return ""
    return (f"*Load: {load['wall_s']:.0f} s; other processes used {100 * load['others_share']:.0f} % of the "
            f"{load['cores']} cores meanwhile (load average {load['loadavg_start']:.1f} -> "
            f"{load['loadavg_end']:.1f}).*")


def _heads(results: dict[str, Any], out: Path, lines: list[str]) -> None:
    section = results["sections"].get("heads")
    if not section:
        return
    rows = section["rows"]
    lines += ["## Aggregators on the same DINOv2-B tokens (322 x 322, batch 1)", "",
              "| head | params | GFLOPs/img | GFLOPs vs QAA | descriptor bytes (fp32) | ms/call | latency vs QAA |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['params']:,} | {r['gflops']:.3f} | {r['gflops_vs_qaa']:.2f}x | "
                     f"{r['descriptor_bytes']:,} | {r['ms']:.1f} | {r['ms_vs_qaa']:.2f}x |")
    by_name = {r["name"]: r for r in rows}
    if "BoQ" in by_name:
        ratio = by_name["BoQ"]["gflops"] / by_name["QAA"]["gflops"]
        lines += ["", f"QAA's aggregator is **{ratio:.2f}x cheaper in GFLOPs than BoQ's** "
                  f"({by_name['QAA']['gflops']:.2f} vs {by_name['BoQ']['gflops']:.2f}; goal >= 3x: "
                  f"{'met' if ratio >= 3 else 'NOT met'})."]
    lines += ["", _load_note(results, "heads"), "", "![heads](heads.png)", ""]
    fig, (ax_flops, ax_ms) = _figure(results, "Aggregators on DINOv2-B tokens at 322x322, ratio to QAA (same run)", 2)
    names = [r["name"] for r in rows]
    ax_flops.bar(names, [r["gflops_vs_qaa"] for r in rows], color="tab:blue")
    ax_flops.set_ylabel("GFLOPs per image / QAA's")
    ax_ms.bar(names, [r["ms_vs_qaa"] for r in rows], color="tab:orange")
    ax_ms.set_ylabel("CPU latency / QAA's")
    for ax in (ax_flops, ax_ms):
        ax.axhline(1.0, color="k", lw=0.8)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    save_figure(fig, out / "heads.png")


def _extraction(results: dict[str, Any], out: Path, lines: list[str]) -> None:
    section = results["sections"].get("extraction")
    ort = results["sections"].get("onnxruntime")
    if not section and not ort:
        return
    lines += ["## Extraction: DINOv2-B/14 + QAA-8192 (random weights) on this CPU", ""]
    if section:
        lines += ["| input | full model img/s | backbone alone img/s | full / backbone |", "|---|---:|---:|---:|"]
        for size, r in section.items():
            lines.append(f"| {size}x{size}, batch {r['batch']} | {r['full_img_s']:.2f} | {r['backbone_img_s']:.2f} | "
                         f"{r['ratio']:.3f} |")
        lines += ["", _load_note(results, "extraction"), ""]
    if ort:
        lines += [f"**ONNX Runtime backend** (CPU execution provider) on the node's path (DescriptorExtractor, "
                  f"uint8 480x640 frame, batch 1, 322x322): torch {ort['torch_ms']:.0f} ms, onnxruntime "
                  f"{ort['onnxruntime_ms']:.0f} ms per image -> onnxruntime runs at **"
                  f"{ort['speed_ratio_ort_vs_torch']:.2f}x torch's speed**; descriptors differ by at most "
                  f"**{ort['max_abs_diff']:.1e}** (max abs, 4 frames; L2-normalised 8192-d). Export took "
                  f"{ort['export_s']:.0f} s.", "", _load_note(results, "onnxruntime"), ""]
    lines += ["![extraction](extraction.png)", ""]
    fig, (ax,) = _figure(results, "Extraction speed as a ratio to its same-run baseline")
    labels, values = [], []
    for size, r in (section or {}).items():
        labels.append(f"full / backbone\n{size}x{size}")
        values.append(r["ratio"])
    if ort:
        labels.append("onnxruntime / torch\n(speed, 322x322)")
        values.append(ort["speed_ratio_ort_vs_torch"])
    ax.bar(labels, values, color=["tab:blue"] * (len(values) - (1 if ort else 0)) + (["tab:green"] if ort else []))
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("images/s ratio")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom")
    save_figure(fig, out / "extraction.png")


def _search(results: dict[str, Any], out: Path, lines: list[str]) -> None:
    section = results["sections"].get("search")
    if not section:
        return
    rows = sorted(section["rows"], key=lambda r: r["n"])  # stable: each size keeps its measuring order
    lines += ["## Map search (synthetic revisit queries, 1024-d)", "",
              f"Goal: <= {GOAL_MS:g} ms per query, recall@1 >= {GOAL_RECALL} of exact search, index <= "
              f"{GOAL_BYTES / 1e9:.1f} GB. Ratio: the cslam NumPy loop's latency / this index's (same N, same run).",
              "", "| N | index | build s | ms/query (median) | vs cslam loop | R@1 vs exact | index MB | goal |",
              "|---:|---|---:|---:|---:|---:|---:|---|"]
    cslam = {r["n"]: r["ms_median"] for r in rows if r["index"] == "cslam numpy"}
    for r in rows:
        speedup = cslam.get(r["n"], float("nan")) / r["ms_median"]
        met = (r["ms_median"] <= GOAL_MS, r["recall_at_1_vs_exact"] >= GOAL_RECALL, r["index_bytes"] <= GOAL_BYTES)
        verdict = "met" if all(met) else "missed: " + ", ".join(
            what for what, ok in zip(("time", "recall", "memory"), met, strict=True) if not ok)
        lines.append(f"| {r['n']:,} | {r['index']} | {r.get('build_s', 0):.1f} | {r['ms_median']:.3f} | "
                     f"{speedup:.0f}x | {r['recall_at_1_vs_exact']:.3f} | {r['index_bytes'] / 1e6:.0f} | {verdict} |")
    lines += [""] + [f"- {note}" for note in section.get("notes", [])]
    lines += ["- ivfpq = the map's IVF-PQ at PlaceMap's defaults; ivfpq+sq8 = its shortlist re-ranked "
              "with 8-bit scalar-quantised vectors, 1 byte/dim (nprobeP: P inverted lists probed; kK: shortlist "
              "K x 5; measured with faiss directly, not yet a "
              "build_map index type). Memory counts the index only; a map also keeps its float16 "
              "descriptors on disk, memory-mapped.", "", _load_note(results, "search"), "",
              "![search](search.png)", ""]
    fig, (ax_ms, ax_ratio) = _figure(results, "Map search, 1024-d: latency and speed-up over the cslam NumPy loop", 2)
    for name in sorted({r["index"] for r in rows}):
        pts = sorted((r["n"], r["ms_median"], cslam.get(r["n"], float("nan")) / r["ms_median"]) for r in rows
                     if r["index"] == name)
        ax_ms.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        if name != "cslam numpy":
            ax_ratio.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=name)
    ax_ms.axhline(GOAL_MS, color="r", ls="--", lw=0.8, label="goal 2 ms")
    for ax, label in ((ax_ms, "ms per query"), (ax_ratio, "cslam loop ms / index ms")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("map size N")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    save_figure(fig, out / "search.png")


def _node(results: dict[str, Any], out: Path, lines: list[str]) -> None:
    node = results["sections"].get("node")
    build = results["sections"].get("build")
    ray_build = results["sections"].get("ray_build")
    if not node and not build and not ray_build:
        return
    lines += ["## The node and map building", ""]
    if node:
        lines += ["End to end over DDS (publish an rgb8 320x240 image on each camera topic, wait for every "
                  "`~/loop_candidates`) vs the bare extractor + map search on the same frames in a process "
                  "without ROS, interleaved; ViT-S/14 + QAA at 224x224, 1000-keyframe map:", "",
                  "| cameras | bare model + search (median ms) | node over DDS (median ms) | node / bare |",
                  "|---:|---:|---:|---:|"]
        for cams, r in node.items():
            lines.append(f"| {cams} | {r['bare_ms_median']:.1f} | {r['node_ms_median']:.1f} | {r['ratio']:.2f} |")
        lines += ["", _load_note(results, "node"), ""]
    if build:
        lines += [f"Map building from a bag ({build['frames']} JPEG 640x480 frames + odometry, ViT-S/14 at "
                  f"224x224, best of {build['repeats']}): build_map {build['build_img_s']:.2f} img/s vs the bare "
                  f"extractor {build['bare_img_s']:.2f} img/s on the already decoded frames -> **ratio "
                  f"{build['ratio']:.3f}** (target >= 0.9); the pipeline alone (instant model) "
                  f"{build['pipeline_only_img_s']:.0f} img/s.", "", _load_note(results, "build"), ""]
    if ray_build and "ratio" in ray_build:
        lines += [f"build_map --ray on a local Ray instance ({ray_build['bags']} bags x {ray_build['frames']} frames, "
                  f"chunks of {ray_build['chunk_size']}, {ray_build['cpus_per_task']} CPU and torch thread per task) "
                  f"vs the one-process build of the same bags: {ray_build['ray_img_s']:.2f} vs "
                  f"{ray_build['single_img_s']:.2f} img/s -> **ratio {ray_build['ratio']:.3f}**; Ray's start-up "
                  f"(`ray.init`) {ray_build['ray_startup_s']:.1f} s, outside the Ray build's time (the workers' "
                  "own start, importing torch and loading the model, is inside it).", "",
                  _load_note(results, "ray_build"), ""]
    elif ray_build:
        lines += [f"build_map --ray: skipped ({ray_build.get('skipped')}).", ""]
    lines += ["![node](node.png)", ""]
    fig, (ax,) = _figure(results, "Node and build_map as a ratio to the bare model (same run)")
    labels, values = [], []
    for cams, r in (node or {}).items():
        labels.append(f"node / bare\n{cams} camera(s)")
        values.append(r["ratio"])
    if build:
        labels.append("build_map / bare\nextractor (speed)")
        values.append(build["ratio"])
    if ray_build and "ratio" in ray_build:
        labels.append("build_map --ray /\none process (speed)")
        values.append(ray_build["ratio"])
    ax.bar(labels, values, color="tab:purple")
    ax.axhline(1.0, color="k", lw=0.8)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom")
    ax.set_yscale("log")
    save_figure(fig, out / "node.png")


def _local_features(results: dict[str, Any], lines: list[str]) -> None:
    section = results["sections"].get("local_features")
    if not section:
        return
    lines += ["## Local features for geometric verification (SIFT + depth, TUM fr1/rpy)", ""]
    if "skipped" in section:
        lines += [f"Skipped: {section['skipped']}.", ""]
        return
    lines += [f"{section['frames']} real Kinect frames ({section['image']}, at most {section['max_features']} SIFT "
              f"features, {section['features_mean']:.0f} on average, {100 * section['keypoints_with_depth']:.0f} % "
              "of them with depth), CPU:", "",
              "| OpenCV threads | ms per frame (median) | p90 | vs the DINOv2-B + QAA descriptor (same run) |",
              "|---|---:|---:|---:|"]
    for label, key, ratio in (("1", "1_thread", "ratio_1_thread_vs_descriptor"),
                              (f"default ({section['opencv_default_threads']})", "default_threads",
                               "ratio_default_vs_descriptor")):
        versus = (f"{section[ratio]:.3f}x its {section['descriptor_ms']:.0f} ms" if ratio in section
                  else "not measured in this run")
        lines.append(f"| {label} | {section[f'ms_{key}_median']:.1f} | {section[f'ms_{key}_p90']:.1f} | {versus} |")
    budget = 100_000
    verdict = "met" if section["bytes_max"] <= budget else "NOT met"
    lines += ["", "Feature bytes per keyframe (keypoints + descriptors + depth): "
              f"**{section['bytes_mean'] / 1e3:.1f} kB mean, {section['bytes_max'] / 1e3:.1f} kB max** "
              f"(budget {budget / 1e3:.0f} kB at 640x480: {verdict}).", "",
              _load_note(results, "local_features"), ""]


def _versus_descriptor(section: dict[str, Any], ratio: float | None) -> str:
    """``ratio`` of a figure to the DINOv2-B + QAA descriptor's time, or why there is none."""
    if ratio is None or "descriptor_ms" not in section:
        return "not measured in this run"
    return f"{ratio:.3f}x its {section['descriptor_ms']:.0f} ms"


VERIFICATION_DEPTH = {"depth": "both (PnP both ways)", "no_depth": "none (essential matrix)"}
VERIFICATION_OUTCOME = {"verified": "verified", "rejected": "rejected",
                        "ransac": "rejected after RANSAC (no consistent model)",
                        "before_ransac": "rejected before RANSAC (too few matches)",
                        "accepted": "ACCEPTED (wrongly)"}


def _verification(results: dict[str, Any], lines: list[str]) -> None:
    section = results["sections"].get("verification")
    if not section:
        return
    lines += ["## Geometric verification per candidate (`verify_features`, TUM fr1/rpy)", ""]
    if "skipped" in section:
        lines += [f"Skipped: {section['skipped']}.", ""]
        return
    lines += [f"{section['queries']} real Kinect query frames (50-138, {section['image']}, at most "
              f"{section['max_features']} SIFT features) against map frames 0-49: each query's nearest map view "
              f"by the ground truth ({section['nearest_deg_median']:.0f} deg apart in the median: the candidates meant "
              f"to verify) and its {section['unrelated_per_query']} farthest ({section['unrelated_deg_min']:.0f}-"
              f"{section['unrelated_deg_max']:.0f} deg: unrelated views, which RANSAC runs on up to its "
              f"{section['pnp_iterations']}-iteration cap when they pass the ratio test with >= "
              f"{section['min_inliers']} matches); with depth on both sides and with it left out. CPU, OpenCV's "
              "default threads, ms per candidate:", "",
              "| candidate | depth | outcome | candidates | ms (median) | p90 | vs the DINOv2-B + QAA descriptor "
              "(same run) |", "|---|---|---|---:|---:|---:|---:|"]
    for r in section["rows"]:
        view = "nearest view" if r["view"] == "nearest" else "unrelated view"
        lines.append(f"| {view} | {VERIFICATION_DEPTH[r['depth']]} | {VERIFICATION_OUTCOME[r['outcome']]} | "
                     f"{r['count']} | {r['ms_median']:.1f} | {r['ms_p90']:.1f} | "
                     f"{_versus_descriptor(section, r.get('ratio_vs_descriptor'))} |")
    by_key = {(r["view"], r["depth"], r["outcome"]): r for r in section["rows"]}
    summary = []
    for key, what in ((("nearest", "depth", "verified"), "a verifying candidate with depth (PnP both ways)"),
                      (("nearest", "no_depth", "verified"), "one without depth (essential matrix)"),
                      (("unrelated", "depth", "ransac"), "an unrelated one that reaches RANSAC (with depth)")):
        if key in by_key:
            summary.append(f"{what} **{by_key[key]['ms_median']:.1f} ms**")
    if summary:
        lines += ["", "Per candidate (median): " + "; ".join(summary) + f". {section['verified_both_ways']} of the "
                  "nearest views verified by PnP both ways."]
    lines += ["", _load_note(results, "verification"), ""]


def _node_verification(results: dict[str, Any], lines: list[str]) -> None:
    section = results["sections"].get("node_verification")
    if not section:
        return
    lines += ["## The node's per-frame overhead of verification (`FramePipeline.process`, TUM fr1/rpy)", ""]
    if "skipped" in section:
        lines += [f"Skipped: {section['skipped']}.", ""]
        return
    frames = "every frame" if section["step"] == 1 else f"1 frame in {section['step']} (--quick)"
    lines += [f"{section['frames']} query frames (50-138, {frames}) against a map of frames 0-"
              f"{section['map_keyframes'] - 1} built in-process ({section['map_keyframes']} keyframes, "
              f"`{section['model']}` descriptors, SIFT + depth, the camera's intrinsics), online loop closure on, "
              "depth paired, odometry the ground truth; what the node runs per frame (decode, descriptor, local "
              "features, decision, verification, records), one pipeline with `verify_geometry` true and one with "
              "false taking each frame in turn, CPU:", "",
              "| verify_geometry | ms per frame (median) | p90 | descriptor (median ms) | SIFT (median ms) | "
              "decision + verification (median ms) |", "|---|---:|---:|---:|---:|---:|"]
    for label, key in (("true", "on"), ("false", "off")):
        r = section[key]
        lines.append(f"| {label} | {r['ms_median']:.1f} | {r['ms_p90']:.1f} | {r['inference_ms_median']:.1f} | "
                     f"{r['features_ms_median']:.1f} | {r['search_ms_median']:.1f} |")
    per_frame = (section["verified"] + section["rejected"]) / max(section["processed_on"], 1)
    lines += ["", f"On / off: **{section['ratio_median']:.2f}x** (median), {section['ratio_p90']:.2f}x (p90): "
              f"**+{section['overhead_ms_median']:.0f} ms per frame** (median); against the DINOv2-B + QAA "
              "descriptor (322x322, batch 1, same run) that overhead is "
              f"{_versus_descriptor(section, section.get('overhead_vs_descriptor'))}. The bundled model is tiny (its "
              "descriptor column above), so the on / off ratio is that of the cheapest node; the added "
              "milliseconds are what carries over to a release model. "
              f"{section['verified']} candidates verified ({section['verified_pnp']} by PnP), {section['rejected']} "
              f"rejected ({per_frame:.1f} verifications per frame, map and online); "
              f"{section['geometry_place_matches']} place matches from geometry; {section['online_keyframes']} "
              "online keyframes at the end.", "",
              _load_note(results, "node_verification"), ""]


def write_report(results: dict[str, Any], out: Path) -> None:
    load = results.get("overall_load", {})
    lines = ["# make bench report", "",
             f"Machine: {_machine_line(results)}. Command: `{results['command']}`; total {results['total_s']:.0f} s "
             f"(load average {load.get('loadavg_start', float('nan')):.1f} at the start, "
             f"{load.get('loadavg_end', float('nan')):.1f} at the end). Every figure is a ratio to a baseline "
             "measured in this same run; absolute times on a shared CPU are only indicative. Weights are "
             "random (speed does not depend on them).", ""]
    runs = results.get("runs", [])
    if len(runs) > 1:
        lines += [f"This report combines {len(runs)} runs (the first spent its budget on a loaded machine; a "
                  "section measured twice is reported from the later run):", ""]
        # A run records its CPU (older runs did not): a later run may be on another machine.
        lines += [f"- `{run['command']}`{' on ' + run['cpu'] if run.get('cpu') else ''}: {run['total_s']:.0f} s, "
                  f"sections {', '.join(run['sections']) or 'none'}; "
                  f"other processes used {100 * run['others_share']:.0f} % of the CPU" for run in runs]
        lines.append("")
    _heads(results, out, lines)
    _extraction(results, out, lines)
    _search(results, out, lines)
    _node(results, out, lines)
    _local_features(results, lines)
    _verification(results, lines)
    _node_verification(results, lines)
    if results["errors"] or results["skipped"]:
        lines += ["## Not measured in this run", ""]
        lines += [f"- {name}: FAILED: {error}" for name, error in results["errors"].items()]
        lines += [f"- {name}: skipped: {why}" for name, why in results["skipped"].items()]
        lines.append("")
    lines += ["GPU figures: `bench/gpu.sh` (see its summary.md on a lent GPU machine).", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=str))
