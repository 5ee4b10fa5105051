"""localize_node's camera extrinsics from TF (real rclpy, private domain), with a small TF tree
handed to the node (``LocalizeNode(tf_buffer=...)``, test/tf_tree.py; tf2_ros is not installable
here): a transform found is used for the records, a missing one falls back to camera_extrinsics,
is counted in /diagnostics and logged once per camera, and a wrong base_frame is named."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from node_harness import wait_for
from rcl_interfaces.msg import Log
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

# The node fixtures (private domain, tiny model, distinct Nordland route, harness) are shared.
from test_node_localize import (  # noqa: F401  (pytest fixtures)
    MIN_SCORE,
    SHORT_SEQUENCES,
    SPACING_M,
    T0,
    extractor,
    harness,
    model_dir,
    publish_and_wait,
    raw_msg,
    ros,
    route,
)
from tf_tree import StaticTfTree

from qaa_vpr_ros.decision.record import pose_matrix, records_from_table
from qaa_vpr_ros.maps import Keyframe, PlaceMap

pytestmark = [
    pytest.mark.ros, pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:module 'sre_(parse|constants)' is deprecated:DeprecationWarning"),
]

COUNT = 6
T_BASE_FRONT = pose_matrix((0.3, 0.0, 0.8), (0.0, 0.0, 0.0, 1.0))  # the mapping camera
T_BASE_REAR = pose_matrix((-0.4, 0.1, 0.9), (0.0, 0.0, 1.0, 0.0))  # the query camera, looking back
T_BASE_LEFT = pose_matrix((0.0, 0.3, 0.9), (0.0, 0.0, 0.7071067811865476, 0.7071067811865476))
REAR_PARAMETER = "0 0 0 0 0 0.7071067811865476 0.7071067811865476"  # camera_extrinsics: differs from TF


@pytest.fixture(scope="module")
def front_map(tmp_path_factory, extractor, route) -> Path:  # noqa: F811
    """Keyframe i at x = 10 i m, seen by camera /mapping/front (frame_id "front")."""
    place_map = PlaceMap.create(extractor.dim, extractor.fingerprint, map_frame="map")
    keyframes = [Keyframe(id=i, stamp_sec=T0 + i, stamp_nanosec=0, camera="/mapping/front", frame_id="front",
                          position=(SPACING_M * i, 0.0, 0.0), orientation=(0.0, 0.0, 0.0, 1.0))
                 for i in range(COUNT)]
    place_map.add(route.descriptors[:COUNT], keyframes)
    folder = tmp_path_factory.mktemp("maps") / "front_map"
    place_map.save(folder)
    return folder


class RosoutWarnings:
    """The WARN lines /rosout carries from one node."""

    def __init__(self, client, node_name: str) -> None:
        self.node_name = node_name
        self._lock = threading.Lock()
        self.lines: list[str] = []
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
        client.create_subscription(Log, "/rosout", self._on_log, qos)

    def _on_log(self, msg: Log) -> None:
        level = int.from_bytes(msg.level, "little") if isinstance(msg.level, bytes) else int(msg.level)
        if msg.name == self.node_name and level == Log.WARN:
            with self._lock:
                self.lines.append(msg.msg)

    def containing(self, text: str) -> list[str]:
        with self._lock:
            return [line for line in self.lines if text in line]


def image(route, i: int, sec: int, frame_id: str) -> Image:  # noqa: F811
    msg = raw_msg(route.images[i], sec)
    msg.header.frame_id = frame_id
    return msg


def start(harness, name: str, topics: list[str], front_map: Path, model_dir: Path, tree: StaticTfTree,  # noqa: F811
          **params):
    h = harness(name, {"image_topics": topics, "transport": "raw", "model": str(model_dir), "map": str(front_map),
                       "min_score": MIN_SCORE, **SHORT_SEQUENCES, "online_loop_closure": False, "reliable": True,
                       "diagnostics_period_s": 0.2, **params}, tf_buffer=tree)
    warnings = RosoutWarnings(h.client, name)
    pubs = [h.client.create_publisher(Image, topic, 10) for topic in topics]
    h.wait_ready()
    wait_for(lambda: all(p.get_subscription_count() for p in pubs), 10.0, "image subscriptions")
    return h, pubs, warnings


def test_a_transform_found_in_tf_gives_the_records_extrinsics(harness, model_dir, front_map, route) -> None:  # noqa: F811
    tree = StaticTfTree({"rear_optical": ("base_link", T_BASE_REAR), "front": ("base_link", T_BASE_FRONT)})
    h, (pub,), _ = start(harness, "tf_found", ["/tf_found/rear"], front_map, model_dir, tree,
                         camera_extrinsics=f"/tf_found/rear {REAR_PARAMETER}")
    for i in range(3):
        (rows,) = publish_and_wait(h, pub, image(route, i, T0 + 100 + i, "rear_optical"), T0 + 100 + i)
        for r in records_from_table(rows):
            assert (r.camera, r.match_camera) == ("/tf_found/rear", "/mapping/front")
            # T_match_query = T_base_front * T_base_rear^-1, both from TF (not the parameter's rear).
            assert np.allclose(r.relative_matrix, T_BASE_FRONT @ np.linalg.inv(T_BASE_REAR), atol=1e-9)
    assert {("base_link", "rear_optical"), ("base_link", "front")} <= set(tree.calls)
    wait_for(lambda: h.diag("localizer").get("queries") == "3", 5.0, "diagnostics after 3 queries")
    assert h.diag("localizer")["tf_lookup_failures"] == "0"
    assert h.diag("camera /tf_found/rear")["tf_lookup_failures"] == "0"


def test_a_missing_transform_is_counted_in_diagnostics_and_logged_once_per_camera(
        harness, model_dir, front_map, route) -> None:  # noqa: F811
    # The tree has the map camera's frame but neither query camera's: they fall back.
    tree = StaticTfTree({"front": ("base_link", T_BASE_FRONT)})
    h, pubs, warnings = start(harness, "tf_missing", ["/tf_missing/rear", "/tf_missing/left"], front_map,
                              model_dir, tree, camera_extrinsics=f"/tf_missing/rear {REAR_PARAMETER}")
    fallback = {"/tf_missing/rear": pose_matrix((0, 0, 0), [float(v) for v in REAR_PARAMETER.split()[3:]]),
                "/tf_missing/left": np.eye(4)}  # no camera_extrinsics entry: identity
    frames = {"/tf_missing/rear": "rear_optical", "/tf_missing/left": "left_optical"}
    for i in range(3):
        for k, (pub, topic) in enumerate(zip(pubs, frames, strict=True)):
            sec = T0 + 200 + 10 * i + k
            (rows,) = publish_and_wait(h, pub, image(route, i, sec, frames[topic]), sec)
            for r in records_from_table(rows):
                assert np.allclose(r.relative_matrix, T_BASE_FRONT @ np.linalg.inv(fallback[topic]), atol=1e-9)
    for topic in frames:
        wait_for(lambda topic=topic: h.diag(f"camera {topic}").get("tf_lookup_failures") == "3", 5.0,
                 f"{topic}'s 3 failed TF lookups in /diagnostics")
        assert '"' + frames[topic] + '" passed to lookupTransform' in h.diag(f"camera {topic}")["tf_last_error"]
    localizer = h.diag("localizer")
    assert localizer["tf_lookup_failures"] == "6"
    assert localizer["tf_lookup_failures_by_camera"] == "/tf_missing/left: 3; /tf_missing/rear: 3"
    for topic in frames:
        wait_for(lambda topic=topic: warnings.containing(f"camera '{topic}'"), 5.0, f"{topic}'s warning on /rosout")
    time.sleep(0.5)  # any further warning would have arrived by now
    for topic, frame in frames.items():
        (line,) = warnings.containing(f"camera '{topic}'")  # once per camera, not once per frame
        assert f"no TF transform from base_frame 'base_link' to frame_id '{frame}'" in line
    assert warnings.containing("camera_extrinsics entry") == warnings.containing("camera '/tf_missing/rear'")


def test_a_wrong_base_frame_is_named_in_the_log_and_diagnostics(harness, model_dir, front_map, route) -> None:  # noqa: F811
    # The robot's base is base_footprint; base_frame is left at its default, base_link.
    tree = StaticTfTree({"rear_optical": ("base_footprint", T_BASE_REAR),
                         "front": ("base_footprint", T_BASE_FRONT)})
    h, (pub,), warnings = start(harness, "tf_base", ["/tf_base/rear"], front_map, model_dir, tree)
    for i in range(2):
        publish_and_wait(h, pub, image(route, i, T0 + 300 + i, "rear_optical"), T0 + 300 + i)
    lines = wait_for(lambda: warnings.containing("base_frame 'base_link' is not in the TF tree"), 5.0,
                     "the wrong base_frame named on /rosout")
    assert all("set the parameter base_frame" in line and "base_footprint" in line for line in lines)
    wait_for(lambda: h.diag("localizer").get("level") == 1, 5.0, "the localizer's WARN")
    assert "base_frame 'base_link' is not in the TF tree" in h.diag("localizer")["message"]
