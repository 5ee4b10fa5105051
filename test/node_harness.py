"""Helpers for the node tests: the project's node harness (``scripts/node_harness.py``: a private
DDS domain, spinning, recording, waiting, node processes) and a route of distinct Nordland frames.

Imported by test/test_node_*.py and others (after they set ROS_DOMAIN_ID); not a test module itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scripts.node_harness import NodeProcess, Recorder, Spinner, spinning, stop_all, use_private_domain, wait_for

__all__ = ["NodeProcess", "Recorder", "Route", "Spinner", "distinct_route", "spinning", "stop_all",
           "use_private_domain", "wait_for"]


@dataclass
class Route:
    """Distinct-looking route frames (RGB uint8) with their descriptors from the test model."""

    images: list[np.ndarray]
    names: list[str]
    descriptors: np.ndarray  # (N, D) float32


def distinct_route(extractor: Any, folder: Path, count: int, max_similarity: float = 0.98) -> Route:
    """The first ``count`` frames along the route (every 3rd image) whose descriptors have a
    similarity below ``max_similarity`` to every frame kept before them.

    A random tiny model maps many Nordland frames to nearly identical descriptors; keeping only
    distinct ones makes "the same image is its own best match" a sharp, testable statement.
    """
    files = sorted(folder.glob("images-*.png"))[::3]
    images, names, desc = [], [], []
    for start in range(0, len(files), 64):
        chunk = [cv2.imread(str(f), cv2.IMREAD_COLOR)[:, :, ::-1].copy() for f in files[start:start + 64]]
        d = extractor.extract(chunk, "rgb")
        for f, img, vec in zip(files[start:start + 64], chunk, d, strict=True):
            if all(float(vec @ other) < max_similarity for other in desc):
                images.append(img)
                names.append(f.name)
                desc.append(vec)
                if len(images) == count:
                    return Route(images, names, np.stack(desc))
    raise AssertionError(f"only {len(images)} distinct frames in {folder}; lower max_similarity")
