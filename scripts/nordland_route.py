"""What both demos share (below ``scripts/demo.py`` and ``scripts/demo_slam.py``): the Nordland
route's images, its topics, and the summer map built from a recorded drive."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "data" / "nordland_heldout"
CAMERA_TOPIC = "/camera/image_raw"
ODOM_TOPIC = "/odom"


def route_images(data: Path, season: str, places: int, first: int) -> list[np.ndarray]:
    """RGB uint8 images of ``places`` consecutive Nordland places from ``data/<season>/``."""
    images = []
    for place in range(first, first + places):
        path = data / season / f"images-{(place + 1) * 10:05d}.png"
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"demo: cannot read {path}: place {place} is not in {data} "
                             f"(check --data, --first-place and --places)")
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return images


def build_route_map(bag: Path, map_dir: Path, model_dir: Path, who: str) -> None:
    """``build_map`` on a drive recorded with CAMERA_TOPIC and ODOM_TOPIC: every frame a keyframe.
    Exits naming ``who`` when it fails."""
    from qaa_vpr_ros.map_tools.build import main as build_map_main

    code = build_map_main([str(bag), "-o", str(map_dir), "--model", str(model_dir), "--image-topics", CAMERA_TOPIC,
                           "--pose-topic", ODOM_TOPIC, "--min-distance", "0", "--min-rotation", "0",
                           "--overwrite", "--no-progress"])
    if code:
        raise SystemExit(f"{who}: build_map failed with exit code {code}")
