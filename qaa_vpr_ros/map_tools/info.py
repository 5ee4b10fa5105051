"""map_info: a place map's summary (counts, extent, cameras, model, index) and a PNG of its keyframes.

Example::

    map_info campus_map --plot campus_map.png
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qaa_vpr_ros.atomic import save_figure
from qaa_vpr_ros.maps import MapError, PlaceMap, read_manifest
from qaa_vpr_ros.paths import path_argument

__all__ = ["main", "map_summary", "plot_keyframes"]


def map_summary(place_map: PlaceMap, folder: str | Path | None = None) -> dict[str, Any]:
    """Counts, time span, spatial extent and path length per camera, model and index of a map."""
    keyframes = place_map.keyframes
    cameras: dict[str, Any] = {}
    for camera in sorted({kf.camera for kf in keyframes}):
        own = [kf for kf in keyframes if kf.camera == camera]
        path_length = 0.0
        for source in {kf.source for kf in own}:  # travel within each recording, not between them
            track = np.array([kf.position for kf in own if kf.source == source and kf.has_pose]).reshape(-1, 3)
            path_length += float(np.linalg.norm(np.diff(track, axis=0), axis=1).sum()) if len(track) > 1 else 0.0
        cameras[camera] = {
            "keyframes": len(own),
            "with_pose": sum(kf.has_pose for kf in own),
            "frame_ids": sorted({kf.frame_id for kf in own}),
            "path_length_m": path_length,
        }
    positions = np.array([kf.position for kf in keyframes if kf.has_pose], np.float64).reshape(-1, 3)
    stamps = [kf.stamp for kf in keyframes]
    summary: dict[str, Any] = {
        "folder": str(folder) if folder is not None else None,
        "map_id": place_map.map_id,  # None: a format-1 map (records name it by its folder)
        "keyframes": len(place_map),
        "cameras": cameras,
        "sources": [
            {"name": s.get("name"), "sha256": s.get("sha256"), "keyframes": sum(kf.source == s.get("name")
                                                                                for kf in keyframes)}
            for s in place_map.sources
        ],
        "time_span": [min(stamps), max(stamps)] if stamps else None,
        "map_frame": place_map.map_frame,
        "utm_zones": sorted({kf.utm_zone for kf in keyframes if kf.utm_zone}),
        "extent": (
            {"min": positions.min(axis=0).tolist(), "max": positions.max(axis=0).tolist(),
             "size_m": (positions.max(axis=0) - positions.min(axis=0)).tolist()}
            if len(positions) else None
        ),
        "model_fingerprint": place_map.model_fingerprint,
        "descriptor_dim": place_map.dim,
        "index": {"type": place_map.index_type, "params": place_map.index_params},
        "local_features": _feature_summary(place_map),
        "intrinsics": {topic: c.as_list() for topic, c in sorted(place_map.cameras.items())},
    }
    if folder is not None:
        manifest = read_manifest(folder)
        summary["format_version"] = manifest["format_version"]
        summary["created"] = manifest.get("created")
        summary["tool_version"] = manifest.get("tool_version")
        summary["bytes"] = {name: entry.get("bytes") for name, entry in manifest["files"].items()}
    return summary


def _feature_summary(place_map: PlaceMap) -> dict[str, Any]:
    """Keyframes with local features, with depth, and the bytes their features hold per keyframe."""
    from qaa_vpr_ros.maps.features import FLAG_DEPTH, FLAG_FEATURES, feature_bytes

    index = place_map.feature_index
    with_features = (index[:, 2] & FLAG_FEATURES) != 0
    sizes = feature_bytes(index)[with_features]
    return {
        "keyframes_with_features": int(with_features.sum()),
        "keyframes_with_depth": int(((index[:, 2] & FLAG_DEPTH) != 0).sum()),
        "features": int(index[:, 1].sum()),
        "mean_bytes_per_keyframe": float(sizes.mean()) if len(sizes) else 0.0,
        "max_bytes_per_keyframe": int(sizes.max()) if len(sizes) else 0,
        "config": dict(place_map.feature_config) if place_map.has_local_features else None,
    }


def plot_keyframes(place_map: PlaceMap, path: str | Path, title: str | None = None) -> None:
    """PNG of keyframe positions (x/easting vs y/northing), one colour per camera, with headings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qaa_vpr_ros.poses import yaw_of

    fig, ax = plt.subplots(figsize=(7, 7), dpi=110)
    keyframes = [kf for kf in place_map.keyframes if kf.has_pose]
    for camera in sorted({kf.camera for kf in keyframes}):
        own = [kf for kf in keyframes if kf.camera == camera]
        xy = np.array([kf.position[:2] for kf in own])
        yaw = np.array([yaw_of(kf.orientation) for kf in own])
        ax.plot(xy[:, 0], xy[:, 1], ".", markersize=4, label=f"{camera} ({len(own)})")
        step = max(1, len(own) // 500)  # a readable number of heading arrows
        ax.quiver(xy[::step, 0], xy[::step, 1], np.cos(yaw[::step]), np.sin(yaw[::step]), angles="xy",
                  width=0.002, alpha=0.4)
    zone = next((kf.utm_zone for kf in keyframes if kf.utm_zone), None)
    unit = f"UTM {zone}" if zone else place_map.map_frame
    ax.set_xlabel(f"x / easting [m] ({unit})")
    ax.set_ylabel(f"y / northing [m] ({unit})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"{len(place_map)} keyframes")
    if keyframes:
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no keyframe has a pose", ha="center", va="center", transform=ax.transAxes)
    save_figure(fig, path)


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"map {summary['folder']}: {summary['keyframes']} keyframes, frame {summary['map_frame']!r}"]
    lines.append(f"  map_id {summary['map_id']!r}" if summary.get("map_id") is not None
                 else "  no map_id (format 1): loop-closure records name it by its folder")
    if summary.get("created"):
        lines.append(f"  created {summary['created']} with qaa_vpr_ros {summary.get('tool_version')}, "
                     f"format {summary.get('format_version')}")
    lines.append(f"  model {summary['model_fingerprint'][:16]}…, descriptors {summary['descriptor_dim']}-d")
    params = ", ".join(f"{k}={v}" for k, v in sorted(summary["index"]["params"].items()))
    lines.append(f"  index {summary['index']['type']}" + (f" ({params})" if params else ""))
    for camera, c in summary["cameras"].items():
        lines.append(f"  camera {camera}: {c['keyframes']} keyframes ({c['with_pose']} with pose), "
                     f"path {c['path_length_m']:.1f} m, frame_id {', '.join(c['frame_ids'])}")
    if summary["time_span"]:
        start, end = summary["time_span"]
        lines.append(f"  time span {end - start:.1f} s (stamps {start:.3f} .. {end:.3f})")
    if summary["extent"]:
        size = summary["extent"]["size_m"]
        lines.append(f"  extent {size[0]:.1f} x {size[1]:.1f} x {size[2]:.1f} m from "
                     f"({', '.join(f'{v:.1f}' for v in summary['extent']['min'])})"
                     + (f", UTM zone {', '.join(summary['utm_zones'])}" if summary["utm_zones"] else ""))
    features = summary.get("local_features")
    if features and features["keyframes_with_features"]:
        config = features["config"]
        lines.append(f"  local features ({config['detector']}, at most {config['max_features']} per keyframe): "
                     f"{features['keyframes_with_features']} keyframes with features, "
                     f"{features['keyframes_with_depth']} with depth; "
                     f"{features['mean_bytes_per_keyframe'] / 1e3:.1f} kB per keyframe on average, "
                     f"{features['max_bytes_per_keyframe'] / 1e3:.1f} kB at most")
    elif features is not None:
        lines.append("  no local features: matches against this map are not verified geometrically")
    for camera, values in (summary.get("intrinsics") or {}).items():
        fx, fy, cx, cy, *distortion = values
        lines.append(f"  intrinsics {camera}: fx {fx:g} fy {fy:g} cx {cx:g} cy {cy:g}"
                     + (f", distortion {' '.join(f'{v:g}' for v in distortion)}" if distortion else ", no distortion"))
    for s in summary["sources"]:
        lines.append(f"  source {s['name']}: {s['keyframes']} keyframes, sha256 {str(s['sha256'])[:12]}…")
    if summary.get("bytes"):
        total = sum(v or 0 for v in summary["bytes"].values())
        lines.append(f"  size on disk {total / 1e6:.2f} MB")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="map_info", description=__doc__.split("\n\n")[0])
    parser.add_argument("map", type=path_argument, help="map folder")
    parser.add_argument("--plot", type=path_argument,
                        help="write a PNG of the keyframe positions here (default: <map>.keyframes.png)")
    parser.add_argument("--no-plot", action="store_true", help="no PNG")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-verify", action="store_true", help="skip the checksum verification")
    args = parser.parse_args(argv)
    try:
        place_map = PlaceMap.load(args.map, verify_checksums=not args.no_verify)
        summary = map_summary(place_map, args.map)
    except MapError as err:
        print(f"map_info: error: {err}", file=sys.stderr)
        return 1
    plot = None
    if not args.no_plot:
        plot = Path(args.plot) if args.plot else Path(str(Path(args.map)).rstrip("/") + ".keyframes.png")
        plot_keyframes(place_map, plot, title=f"{Path(args.map).name}: {len(place_map)} keyframes")
        summary["plot"] = str(plot)
    if args.json:
        print(json.dumps(summary, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    else:
        print(format_summary(summary))
        if plot is not None:
            print(f"  keyframe plot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
