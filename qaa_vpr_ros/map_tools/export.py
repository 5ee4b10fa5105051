"""export_map: a map's keyframe images + ``images.csv`` in the training subpackage's generic format.

The map stores descriptors, not pixels, so the images are read again from the source bags (found
by the paths in the manifest, or given with ``--bags``; each is checked against its sha256).
Output: ``ROOT/images.csv`` with columns ``path,easting,northing,heading,timestamp,sequence``
(paths relative to ROOT; easting/northing = the keyframe's x/y in the map frame; heading in
degrees clockwise from +y/north, written only when the map has orientations; sequence =
``<bag>:<camera>``) and the images under ``ROOT/images/``. Train on it with the ``images_csv``
dataset format.

A map with local features also gets them beside each image: ``<image>.npz`` (same name, ``.npz``
for the image suffix) holding ``keypoints`` (K, 2) float32 pixels as detected (still distorted),
``descriptors`` (K, 128) uint8 SIFT and, when a depth image came with the keyframe, ``depth_mm``
(K,) uint16 millimetres (0 = none); plain arrays, ``np.load(path, allow_pickle=False)`` reads them.
``ROOT/cameras.json`` holds each camera's intrinsics: ``{topic: {"fx", "fy", "cx", "cy",
"distortion": [k1, k2, p1, p2, k3...]}}``.

Example::

    export_map campus_map -o campus_dataset
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from qaa_vpr_ros.atomic import atomic_folder
from qaa_vpr_ros.bags import BagError, bag_sha256, iter_image_messages, open_bag, resolve_bag
from qaa_vpr_ros.image_conversion import ImageDecodeError, image_from_msg
from qaa_vpr_ros.maps import Keyframe, MapError, PlaceMap
from qaa_vpr_ros.paths import expand_path, path_argument
from qaa_vpr_ros.poses import yaw_of

__all__ = ["ExportResult", "export_map", "main"]

CSV_COLUMNS = ("path", "easting", "northing", "heading", "timestamp", "sequence")


@dataclass
class ExportResult:
    root: Path
    written: int
    without_pose: int  # keyframes skipped: no position to write
    not_found: int  # keyframes whose image was not in the bag (or did not decode)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip("/")) or "camera"


def _recorded_bag(name: str, source: dict) -> Path:
    """The bag a map's manifest names, opened only if it is a rosbag of regular files whose sha256
    is the recorded one: a map from elsewhere cannot make us read devices, FIFOs or other files."""
    recorded, expected = source.get("path"), source.get("sha256")
    if not isinstance(recorded, str) or not recorded or not Path(recorded).exists():
        raise BagError(f"source bag {name!r} of the map is not at {recorded!r}; pass it with --bags")
    path = resolve_bag(recorded)
    files = [p for p in path.iterdir()] if path.is_dir() else [path]
    for file in files:
        if file.is_symlink() or not stat.S_ISREG(file.lstat().st_mode):
            if path.is_dir() and file.is_dir():
                continue
            raise BagError(f"source bag {name!r} at {file} is not a regular file; pass the bag with --bags")
    if not isinstance(expected, str) or bag_sha256(path) != expected:
        raise BagError(f"{path}, named by the map as source bag {name!r}, is not the bag the map was built "
                       "from (sha256 missing or different); pass the bag with --bags")
    return path


def _is_export_folder(folder: Path) -> bool:
    """An earlier export (images.csv + images/ only): the one kind of folder an export replaces."""
    names = {p.name for p in folder.iterdir()}
    return "images.csv" in names and names <= {"images.csv", "images", "cameras.json"}


def _compass_heading_deg(q: Sequence[float]) -> float:
    """ROS yaw (counter-clockwise from +x/east) -> heading clockwise from +y/north, in [0, 360)."""
    return (90.0 - math.degrees(yaw_of(q))) % 360.0


def export_map(
    place_map: PlaceMap,
    output: str | Path,
    bags: Sequence[str | Path] | None = None,
    image_format: str = "png",
    check_hashes: bool = True,
) -> ExportResult:
    """Write ``output`` (atomically) from ``place_map``'s keyframes; see the module docstring."""
    output = expand_path(output)
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image format must be png or jpg, got {image_format!r}")
    sources = {s.get("name"): s for s in place_map.sources}
    bag_paths: dict[str, Path] = {}
    for bag in bags or []:
        path = resolve_bag(bag)
        bag_paths[path.name] = path
    wanted: dict[str, dict[tuple[str, int], Keyframe]] = {}
    without_pose = 0
    for kf in place_map.keyframes:
        if not kf.has_pose:
            without_pose += 1
            continue
        wanted.setdefault(kf.source, {})[(kf.camera, kf.stamp_ns)] = kf
    for name in wanted:
        if name not in bag_paths:
            bag_paths[name] = _recorded_bag(name, sources.get(name, {}))
            continue  # checked against its sha256 by _recorded_bag, whatever check_hashes says
        expected = sources.get(name, {}).get("sha256")
        if check_hashes and expected and bag_sha256(bag_paths[name]) != expected:
            raise BagError(f"bag {bag_paths[name]} is not the one the map was built from (sha256 differs)")

    has_orientation = any(kf.orientation != (0.0, 0.0, 0.0, 1.0) for kf in place_map.keyframes)
    rows: list[tuple[int, list[str]]] = []
    with atomic_folder(output, replaces=_is_export_folder) as root:
        os.chmod(root, 0o755)
        for name, keyframes in wanted.items():
            cameras = sorted({camera for camera, _ in keyframes})
            with open_bag(bag_paths[name]) as bag:
                for image_msg in iter_image_messages(bag, cameras):
                    kf = keyframes.pop((image_msg.topic, image_msg.stamp_ns), None)
                    if kf is None:
                        continue
                    try:
                        pixels, encoding = image_from_msg(image_msg.msg)
                    except ImageDecodeError:
                        keyframes[(image_msg.topic, image_msg.stamp_ns)] = kf  # counted as not found
                        continue
                    rel = Path("images") / _safe(name) / _safe(kf.camera) / f"{kf.id:08d}.{image_format}"
                    (root / rel.parent).mkdir(parents=True, exist_ok=True)
                    bgr = _to_bgr(pixels, encoding)
                    if not cv2.imwrite(str(root / rel), bgr):
                        raise OSError(f"could not write {root / rel}")
                    features = place_map.local_features(kf.id)
                    if features is not None:
                        arrays = {"keypoints": features.keypoints, "descriptors": features.descriptors}
                        if features.depth_mm is not None:
                            arrays["depth_mm"] = features.depth_mm
                        with open(root / rel.with_suffix(".npz"), "wb") as f:
                            np.savez_compressed(f, **arrays)
                    row = [rel.as_posix(), f"{kf.position[0]:.3f}", f"{kf.position[1]:.3f}",
                           f"{_compass_heading_deg(kf.orientation):.2f}" if has_orientation else "",
                           f"{kf.stamp:.9f}", f"{name}:{kf.camera}"]
                    rows.append((kf.id, row))
        rows.sort(key=lambda r: r[0])
        cameras = place_map.cameras
        if cameras:
            text = json.dumps({topic: {"fx": c.fx, "fy": c.fy, "cx": c.cx, "cy": c.cy,
                                       "distortion": list(c.distortion)} for topic, c in sorted(cameras.items())},
                              indent=2)
            (root / "cameras.json").write_text(text + "\n", encoding="utf-8")
        columns = list(CSV_COLUMNS) if has_orientation else [c for c in CSV_COLUMNS if c != "heading"]
        with open(root / "images.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for _, row in rows:
                writer.writerow(row if has_orientation else row[:3] + row[4:])
    not_found = sum(len(v) for v in wanted.values())
    return ExportResult(Path(output), len(rows), without_pose, not_found)


def _to_bgr(pixels: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "rgb":
        return np.ascontiguousarray(pixels[:, :, ::-1])
    return pixels  # bgr, or mono (written as grayscale)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export_map", description=__doc__.split("\n\n")[0])
    parser.add_argument("map", type=path_argument, help="map folder")
    parser.add_argument("-o", "--output", required=True, type=path_argument,
                        help="dataset root to write (images.csv + images/)")
    parser.add_argument("--bags", nargs="+", type=path_argument,
                        help="source bags, when they moved since the map was built")
    parser.add_argument("--format", choices=["png", "jpg"], default="png", help="image file format")
    parser.add_argument("--no-hash-check", action="store_true", help="do not check the bags' sha256")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    try:
        if Path(args.output).exists() and not args.overwrite:
            raise MapError(f"output {args.output} exists; pass --overwrite to replace it")
        result = export_map(PlaceMap.load(args.map), args.output, args.bags, args.format, not args.no_hash_check)
    except (MapError, BagError, ValueError, OSError) as err:
        print(f"export_map: error: {err}", file=sys.stderr)
        return 1
    print(f"exported {result.written} keyframes to {result.root}/images.csv"
          + (f"; skipped {result.without_pose} without pose" if result.without_pose else "")
          + (f"; {result.not_found} images not found in the bags" if result.not_found else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
