"""Helpers for the localize_node tests: a private DDS domain, a route of Nordland frames, a tiny
model saved as a checkpoint, and a test node that publishes images and records every output.

Imported by test/test_node_*.py only (after they set ROS_DOMAIN_ID); not a test module itself.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def use_private_domain() -> int:
    """A per-process DDS domain in 100..199, localhost discovery only. Call before rclpy.init."""
    domain = 100 + os.getpid() % 100
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return domain


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


class Spinner:
    """``nodes`` spun by one MultiThreadedExecutor on a daemon thread; :meth:`close` stops the
    executor and destroys the nodes (rclpy.init/shutdown stay with the caller)."""

    def __init__(self, *nodes: Any, threads: int = 4) -> None:
        from rclpy.executors import MultiThreadedExecutor

        self.nodes = nodes
        self.executor = MultiThreadedExecutor(num_threads=threads)
        for node in nodes:
            self.executor.add_node(node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.1)

    def close(self) -> None:
        # The spin loop ends before the executor shuts down: shutting it down under a running
        # spin() destroys its guard condition while a callback may still trigger it (rclpy
        # raised InvalidHandle in the spin thread, a PytestUnhandledThreadExceptionWarning).
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=5.0)
        for node in self.nodes:
            node.destroy_node()


@contextlib.contextmanager
def spinning(*nodes: Any) -> Iterator[Spinner]:
    """:class:`Spinner` as a context: the nodes spin inside the block and are destroyed after it."""
    spinner = Spinner(*nodes)
    try:
        yield spinner
    finally:
        spinner.close()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until truthy; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Recorder:
    """Thread-safe lists of received messages per topic."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: dict[str, list[Any]] = {}

    def callback(self, topic: str) -> Callable[[Any], None]:
        self.messages.setdefault(topic, [])

        def store(msg: Any) -> None:
            with self.lock:
                self.messages[topic].append(msg)
        return store

    def get(self, topic: str) -> list[Any]:
        with self.lock:
            return list(self.messages.get(topic, []))
