"""localize_node with real rclpy over Fast DDS (a private domain): place matches against a map,
online loop closure, consistency, bad messages, diagnostics, services and parameters.

The node runs in-process on an executor thread (node_harness.Spinner); a
second node publishes images/odometry and records the outputs.
"""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from node_harness import Recorder, Spinner, distinct_route, use_private_domain, wait_for
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from qaa_vpr_ros.decision import ConfigError, LocalizeConfig
from qaa_vpr_ros.extractor import DescriptorExtractor
from qaa_vpr_ros.localize_node import LOOP_CANDIDATE_DTYPE, LocalizeNode
from qaa_vpr_ros.maps import Keyframe, PlaceMap
from qaa_vpr_ros.model import load_model, save_checkpoint

pytestmark = [
    pytest.mark.ros, pytest.mark.slow,
    # rclpy's type-description support imports lark, which imports the deprecated sre_* modules.
    pytest.mark.filterwarnings("ignore:module 'sre_(parse|constants)' is deprecated:DeprecationWarning"),
]

ROUTE_LEN = 16
DEFAULT_BASE = LocalizeConfig().covariance_base
SPACING_M = 10.0
T0 = 1_700_000_000
# Route frames are chosen with mutual similarity < 0.98, so only a frame's own image passes this.
MIN_SCORE = 0.995
# Sequences of 3 queries; the random tiny model's descriptors of different frames are up to 0.98
# alike, so a right match stands out by a few hundredths (tests/test_decision_nordland.py checks
# the real defaults on the bundled model).
SHORT_SEQUENCES = {"sequence_keyframes": 3, "sequence_min_support": 3, "min_confidence": 0.005,
                   "loop_min_confidence": 0.005}


@pytest.fixture(scope="module")
def ros():
    use_private_domain()  # before rclpy.init: a private domain, localhost discovery only
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest tiny model (seed 0), saved as a checkpoint folder for the node's ``model``."""
    import torch
    from conftest import TINY_CONFIG

    from qaa_vpr_ros.model import build_model

    torch.manual_seed(0)
    model = build_model(TINY_CONFIG, image_size=(56, 56)).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def extractor(model_dir: Path) -> DescriptorExtractor:
    return DescriptorExtractor(load_model(model_dir), device="cpu")


@pytest.fixture(scope="module")
def route(extractor: DescriptorExtractor):
    from conftest import NORDLAND

    if not (NORDLAND / "summer").is_dir():
        pytest.skip(f"shared test data absent: {NORDLAND} (../shared/data absent)")
    return distinct_route(extractor, NORDLAND / "summer", ROUTE_LEN)


@pytest.fixture(scope="module")
def map_dir(tmp_path_factory: pytest.TempPathFactory, extractor: DescriptorExtractor, route) -> Path:
    """A map of the first ROUTE_LEN route frames, keyframe i at x = 10 i m, stamp T0 + i."""
    place_map = PlaceMap.create(extractor.dim, extractor.fingerprint, map_frame="map")
    keyframes = [Keyframe(id=i, stamp_sec=T0 + i, stamp_nanosec=0, camera="/mapping/image", frame_id="cam",
                          position=(SPACING_M * i, 0.0, 0.0), orientation=(0.0, 0.0, 0.0, 1.0))
                 for i in range(ROUTE_LEN)]
    place_map.add(route.descriptors[:ROUTE_LEN], keyframes)
    folder = tmp_path_factory.mktemp("maps") / "route"
    place_map.save(folder)
    return folder


class Harness:
    """The node under test + a client node, spun by one MultiThreadedExecutor thread."""

    def __init__(self, name: str, params: dict[str, Any], **node_kwargs: Any) -> None:
        self.name = name
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        self.node = LocalizeNode(name, parameter_overrides=overrides, **node_kwargs)
        self.client = rclpy.create_node(f"{name}_client")
        self.rec = Recorder()
        sub = self.client.create_subscription
        sub(PoseWithCovarianceStamped, f"/{name}/place_match", self.rec.callback("place_match"), 50)
        sub(PointCloud2, f"/{name}/loop_candidates", self.rec.callback("loop_candidates"), 50)
        sub(PathMsg, f"/{name}/loop_closure", self.rec.callback("loop_closure"), 50)
        sub(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.diagnostics: dict[str, dict[str, Any]] = {}
        self._diag_lock = threading.Lock()
        self._spinner = Spinner(self.node, self.client)
        self.executor = self._spinner.executor  # tests add their own nodes (test_faults)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        with self._diag_lock:
            for status in msg.status:
                if status.name.startswith(f"/{self.name}:"):
                    entry = {kv.key: kv.value for kv in status.values}
                    entry["level"] = int.from_bytes(status.level, "little") if isinstance(
                        status.level, bytes) else int(status.level)
                    entry["message"] = status.message
                    self.diagnostics[status.name.split(": ", 1)[1]] = entry

    def diag(self, component: str) -> dict[str, Any]:
        with self._diag_lock:
            return dict(self.diagnostics.get(component, {}))

    def wait_ready(self) -> None:
        wait_for(lambda: self.diag("localizer").get("state") == "ready", 20.0, f"{self.name} ready")

    def call(self, srv_type: Any, service: str, request: Any) -> Any:
        client = self.client.create_client(srv_type, service)
        assert client.wait_for_service(timeout_sec=10.0), f"service {service} not available"
        future = client.call_async(request)
        return wait_for(lambda: future.done() and future, 20.0, f"response of {service}").result()

    def close(self) -> None:
        self._spinner.close()


@pytest.fixture
def harness(ros):
    made: list[Harness] = []

    def make(name: str, params: dict[str, Any], **node_kwargs: Any) -> Harness:
        made.append(Harness(name, params, **node_kwargs))
        return made[-1]

    yield make
    for h in made:
        h.close()


def raw_msg(image: np.ndarray, sec: int, encoding: str = "rgb8") -> Image:
    msg = Image(height=image.shape[0], width=image.shape[1], encoding=encoding, is_bigendian=0,
                step=image.shape[1] * 3, data=image.tobytes())
    msg.header.stamp.sec, msg.header.frame_id = sec, "camera"
    return msg


def png_msg(rgb: np.ndarray, sec: int) -> CompressedImage:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    msg = CompressedImage(format="png", data=buf.tobytes())
    msg.header.stamp.sec, msg.header.frame_id = sec, "camera"
    return msg


def table(msg: PointCloud2) -> np.ndarray:
    """The ~/loop_candidates consumer: one structured row per candidate."""
    assert [f.name for f in msg.fields] == list(LOOP_CANDIDATE_DTYPE.names)
    return np.frombuffer(bytes(msg.data), dtype=LOOP_CANDIDATE_DTYPE)


def publish_and_wait(h: Harness, pub: Any, msg: Any, sec: int, timeout: float = 10.0) -> list[np.ndarray]:
    """Publish one frame; return the ~/loop_candidates tables of its stamp once it was processed."""
    def done():
        return [table(m) for m in h.rec.get("loop_candidates") if m.header.stamp.sec == sec]

    pub.publish(msg)
    return wait_for(done, timeout, f"loop candidates for stamp {sec}")


def test_place_matches_against_a_map_from_two_cameras_raw_and_compressed(harness, model_dir, map_dir,
                                                                        route) -> None:
    h = harness("loc_map", {
        "image_topics": ["/loc_map/cam_a/image_raw", "/loc_map/cam_b/image_raw/compressed"],
        "model": str(model_dir), "map": str(map_dir), "min_score": MIN_SCORE, **SHORT_SEQUENCES,
        "online_loop_closure": False,
        "reliable": True, "diagnostics_period_s": 0.2})
    raw_pub = h.client.create_publisher(Image, "/loc_map/cam_a/image_raw", 10)
    png_pub = h.client.create_publisher(CompressedImage, "/loc_map/cam_b/image_raw/compressed", 10)
    h.wait_ready()
    wait_for(lambda: h.diag("camera /loc_map/cam_a/image_raw").get("transport") == "raw", 10.0,
             "transport auto to find the raw camera's type in the graph")
    assert h.diag("camera /loc_map/cam_b/image_raw/compressed")["transport"] == "compressed"
    wait_for(lambda: raw_pub.get_subscription_count() and png_pub.get_subscription_count(), 10.0, "matching")
    map_id = json.loads((map_dir / "manifest.json").read_text())["map_id"]

    for i in range(ROUTE_LEN):
        sec = T0 + 1000 + i
        msg = raw_msg(route.images[i], sec) if i % 2 == 0 else png_msg(route.images[i], sec)
        (rows,) = publish_and_wait(h, raw_pub if i % 2 == 0 else png_pub, msg, sec)
        assert set(rows["match_session"]) == {map_id.encode()}  # the map's id, not its folder's name
        assert rows["match_keyframe_id"][0] == i, \
            f"query {route.names[i]} matched map keyframe {rows['match_keyframe_id'][0]}"
        assert rows["score"][0] >= MIN_SCORE and np.all(rows["score"][1:] < MIN_SCORE)
        assert rows["match_position"][0, 0] == pytest.approx(SPACING_M * i)
        assert list(rows["rank"]) == list(range(len(rows)))
        # No odometry: each camera's sequence follows keyframe order (time steps); cam_a's third
        # query (i = 4) is the first with a sequence of 3, cam_b's (i = 5) the next.
        assert bool(rows["accepted"][0]) == (i >= 4)
        assert (rows["sequence_support"][0], rows["accepted"][0]) != (3, 0)

    matches = wait_for(lambda: len(h.rec.get("place_match")) >= ROUTE_LEN - 4 and h.rec.get("place_match"),
                       5.0, "place matches")
    assert [m.header.stamp.sec - T0 - 1000 for m in matches] == list(range(4, ROUTE_LEN))
    for m in matches:
        i = m.header.stamp.sec - T0 - 1000
        assert m.header.frame_id == "map"
        assert m.pose.pose.position.x == pytest.approx(SPACING_M * i)
        cov = np.asarray(m.pose.covariance).reshape(6, 6)
        # the default covariance_base, widened at most 10x by the confidence
        assert np.all(np.diag(cov) > 0) and np.all(np.diag(cov)[:3] <= 10.0 * np.array(DEFAULT_BASE[:3]) + 1e-6)

    # A single look-alike: an exact image of place 3 in the middle of places ~15 is not accepted.
    sec = T0 + 1000 + ROUTE_LEN
    (rows,) = publish_and_wait(h, raw_pub, raw_msg(route.images[3], sec), sec)
    twin = rows[rows["match_keyframe_id"] == 3]  # the frame alone matches place 3 perfectly, not its sequence
    assert np.all(twin["sequence_score"] < MIN_SCORE)
    assert not rows["accepted"].any()
    assert not [m for m in h.rec.get("place_match") if m.header.stamp.sec == sec]

    diag = wait_for(lambda: (d := h.diag("localizer")) and int(d["queries"]) == ROUTE_LEN + 1 and d, 5.0,
                    "diagnostics counting every query")
    assert diag["map_keyframes"] == str(ROUTE_LEN) and diag["device"] == "cpu"
    assert float(diag["last_match_score"]) >= MIN_SCORE
    cam_a = h.diag("camera /loc_map/cam_a/image_raw")
    assert int(cam_a["processed"]) == ROUTE_LEN // 2 + 1 and cam_a["level"] == 0

    # Map keyframes are latched on ~/markers: a late transient-local subscriber still gets them.
    got: list[MarkerArray] = []
    # depth >= 2: the keyframes and the latest candidate markers come from two latched publishers.
    latched = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    h.client.create_subscription(MarkerArray, "/loc_map/markers", got.append, latched)
    wait_for(lambda: any(m.ns == "map_keyframes" for a in got for m in a.markers), 5.0,
             "latched keyframe markers")
    (marker,) = [m for a in got for m in a.markers if m.ns == "map_keyframes"]
    assert [p.x for p in marker.points] == pytest.approx([SPACING_M * i for i in range(ROUTE_LEN)])


def odom_msg(sec: int, x: float, y: float) -> Odometry:
    msg = Odometry()
    msg.header.stamp.sec, msg.header.frame_id, msg.child_frame_id = sec, "odom", "base_link"
    msg.pose.pose.position.x, msg.pose.pose.position.y = x, y
    msg.pose.pose.orientation.w = 1.0
    return msg


def test_online_loop_closure_when_the_route_comes_back_to_its_start(harness, model_dir, extractor, route,
                                                                     tmp_path: Path) -> None:
    h = harness("loc_online", {
        "image_topics": ["/loc_online/image"], "transport": "raw", "odom_topic": "/loc_online/odom",
        "model": str(model_dir), "min_score": MIN_SCORE, "exclude_recent_s": 5.0, **SHORT_SEQUENCES,
        "sequence_length_m": 2 * SPACING_M, "loop_min_travel_m": 50.0, "reliable": True,
        "save_map_folder": str(tmp_path / "online_map"), "diagnostics_period_s": 0.2})
    image_pub = h.client.create_publisher(Image, "/loc_online/image", 10)
    odom_pub = h.client.create_publisher(Odometry, "/loc_online/odom", 10)
    h.wait_ready()
    wait_for(lambda: image_pub.get_subscription_count() and odom_pub.get_subscription_count(), 10.0, "matching")
    out, back = 10, 6  # drive places 0..9, then come back to places 0..5 (odometry drifted 2 m in y)
    drive = [(i, SPACING_M * i, 0.0) for i in range(out)] + [(k, SPACING_M * k, 2.0) for k in range(back)]
    for step, (place, x, y) in enumerate(drive):
        sec = T0 + step
        odom_pub.publish(odom_msg(sec, x, y))
        wait_for(lambda sec=sec: h.node.poses.lookup(sec, 0.01), 5.0, "odometry to arrive")
        (rows,) = publish_and_wait(h, image_pub, raw_msg(route.images[place], sec), sec)
        if step < out:  # first pass: nothing but itself looks like this place, and itself is not in yet
            assert not rows["accepted"].any()
        else:
            k = step - out
            assert rows["match_keyframe_id"][0] == place and rows["match_stamp_sec"][0] == T0 + place
            assert bool(rows["accepted"][0]) == (k >= 2), f"revisit {k}"

    closures = wait_for(lambda: len(h.rec.get("loop_closure")) >= back - 2 and h.rec.get("loop_closure"),
                        5.0, "loop closures")
    assert len(closures) == back - 2
    for path, k in zip(closures, range(2, back), strict=True):
        query, matched = path.poses  # exactly two poses
        assert query.header.stamp.sec == T0 + out + k and query.header.frame_id == "odom"
        assert (query.pose.position.x, query.pose.position.y) == pytest.approx((SPACING_M * k, 2.0))
        assert matched.header.stamp.sec == T0 + k and matched.header.frame_id == "odom"
        assert (matched.pose.position.x, matched.pose.position.y) == pytest.approx((SPACING_M * k, 0.0))
    # Online only: ~/place_match reports the same accepted revisits, in the odometry frame.
    matches = h.rec.get("place_match")
    assert [m.header.stamp.sec for m in matches] == [T0 + out + k for k in range(2, back)]
    assert all(m.header.frame_id == "odom" for m in matches)

    saved = h.call(Trigger, "/loc_online/save_map", Trigger.Request())
    assert saved.success, saved.message
    online_map = PlaceMap.load(tmp_path / "online_map", expected_fingerprint=extractor.fingerprint)
    assert len(online_map) == len(drive) and online_map.map_frame == "odom"
    hit = online_map.search(route.descriptors[4:5], 1)
    assert hit.keyframes[0][0].stamp_sec == T0 + 4  # first pass of place 4 (revisit 4 is a later twin)
    # The saved session has an id of its own (never "online", which names own-session matches),
    # the same at every save of this session.
    assert online_map.map_id.startswith("online_map-") and f"(map_id {online_map.map_id!r})" in saved.message
    assert h.call(Trigger, "/loc_online/save_map", Trigger.Request()).success
    assert PlaceMap.load(tmp_path / "online_map").map_id == online_map.map_id
    reset = h.call(Trigger, "/loc_online/reset", Trigger.Request())
    assert reset.success, reset.message
    wait_for(lambda: h.diag("localizer").get("online_keyframes") == "0", 5.0, "online database cleared")


def test_an_old_map_in_a_folder_called_online_gives_map_records_not_own_session_ones(harness, model_dir, map_dir,
                                                                                    route, tmp_path: Path) -> None:
    folder = tmp_path / "online"  # a format-1 map (no map_id) in a folder whose name records reserve
    shutil.copytree(map_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("map_id", None)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    h = harness("loc_old", {
        "image_topics": ["/loc_old/image"], "transport": "raw", "model": str(model_dir), "map": str(folder),
        "min_score": MIN_SCORE, **SHORT_SEQUENCES, "online_loop_closure": False, "reliable": True,
        "diagnostics_period_s": 0.2})
    image_pub = h.client.create_publisher(Image, "/loc_old/image", 10)
    h.wait_ready()
    wait_for(lambda: image_pub.get_subscription_count(), 10.0, "matching")
    (rows,) = publish_and_wait(h, image_pub, raw_msg(route.images[2], T0 + 2000), T0 + 2000)
    assert rows["match_keyframe_id"][0] == 2 and set(rows["match_frame"]) == {b"map"}
    assert set(rows["match_session"]) == {b"map:online"}


def test_bad_messages_are_counted_and_the_node_keeps_running(harness, model_dir, route) -> None:
    h = harness("loc_bad", {"image_topics": ["/loc_bad/image", "/loc_bad/image/compressed"],
                            "model": str(model_dir), "diagnostics_period_s": 0.1})
    raw_pub = h.client.create_publisher(Image, "/loc_bad/image", 10)
    jpeg_pub = h.client.create_publisher(CompressedImage, "/loc_bad/image/compressed", 10)
    h.wait_ready()
    wait_for(lambda: raw_pub.get_subscription_count() and jpeg_pub.get_subscription_count(), 10.0, "matching")
    good = route.images[0]
    unknown = raw_msg(good, T0, encoding="rgb8_but_not_really")
    short = raw_msg(good, T0 + 1)
    short.data = good.tobytes()[: good.nbytes // 2]
    huge = Image(height=100_000, width=100_000, encoding="rgb8", step=300_000, data=b"\0" * 64)
    jpeg = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 definitely not a JPEG" * 8)

    def bad(topic: str) -> int:
        return int(h.diag(f"camera {topic}").get("bad_messages", -1))

    for n, msg in enumerate((unknown, short, huge), start=1):
        raw_pub.publish(msg)
        wait_for(lambda n=n: bad("/loc_bad/image") == n, 10.0, f"bad message {n} counted")
    jpeg_pub.publish(jpeg)
    wait_for(lambda: bad("/loc_bad/image/compressed") == 1, 10.0, "the undecodable JPEG counted")
    assert "JPEG" in h.diag("camera /loc_bad/image/compressed")["last_bad_message"].upper()
    assert h.diag("camera /loc_bad/image")["last_bad_message"]

    (rows,) = publish_and_wait(h, raw_pub, raw_msg(good, T0 + 10), T0 + 10)  # still running
    assert len(rows) == 0  # first frame: the online database was empty
    (rows,) = publish_and_wait(h, jpeg_pub, png_msg(route.images[1], T0 + 11), T0 + 11)
    assert len(rows) == 0  # the first frame is in the database now, but far too recent to be a loop
    assert h.node.localizer is not None and len(h.node.localizer.online_map) == 2
    diag = h.diag("localizer")
    assert diag["bad_messages_total"] == "4" and diag["level"] == 0


def test_parameters_out_of_range_are_refused_with_a_reason(harness) -> None:
    h = harness("loc_params", {"image_topics": ["/loc_params/image"], "model": "/nonexistent/model",
                               "silent_warn_s": 0.5, "diagnostics_period_s": 0.1})
    service = "/loc_params/set_parameters"

    def set_params(**values: Any) -> list[Any]:
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        return h.call(SetParameters, service, request).results

    (r,) = set_params(min_score=2.0)
    assert not r.successful and "min_score" in r.reason and "range" in r.reason
    (r,) = set_params(sequence_keyframes=5)  # fewer than sequence_min_support (10)
    assert not r.successful and "sequence_keyframes" in r.reason and "sequence_min_support" in r.reason
    (r,) = set_params(model="/other/model")
    assert not r.successful and "read-only" in r.reason
    (r,) = set_params(top_k="five")
    assert not r.successful and "type" in r.reason.lower()
    (r,) = set_params(covariance_base=[1.0, 1.0, 1.0])
    assert not r.successful and "covariance_base" in r.reason
    r1, r2 = set_params(sequence_min_support=4, sequence_keyframes=8)
    assert r1.successful and r2.successful
    assert h.node.get_parameter("sequence_keyframes").value == 8 and h.node.config.sequence_min_support == 4

    # The model failed to load: ERROR naming it; the silent camera: WARN. The node keeps serving.
    wait_for(lambda: h.diag("localizer").get("level") == 2, 10.0, "ERROR for the missing model")
    assert "/nonexistent/model" in h.diag("localizer")["message"]
    wait_for(lambda: h.diag("camera /loc_params/image").get("level") == 1, 10.0, "WARN for a silent camera")
    assert "no image received" in h.diag("camera /loc_params/image")["message"]


@pytest.mark.parametrize("name, value, culprit", [
    ("device", "tpu", "device"), ("min_score", 5.0, "min_score"), ("transport", "udp", "transport"),
    ("image_topics", [" , "], "image_topics")])
def test_invalid_start_up_parameters_stop_the_node_with_a_reason(ros, name: str, value: Any, culprit: str) -> None:
    with pytest.raises(ConfigError, match=culprit):
        LocalizeNode("loc_refused", parameter_overrides=[Parameter(name, value=value)])


def test_comma_separated_image_topics_give_one_camera_each(ros) -> None:
    node = LocalizeNode("loc_commas", parameter_overrides=[
        Parameter("image_topics", value=["/a/image, /b/image/compressed"]), Parameter("model", value="")])
    try:
        assert list(node.cameras) == ["/a/image", "/b/image/compressed"]
        assert node.cameras["/b/image/compressed"].compressed is True
    finally:
        node.destroy_node()


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_gc_exempts_what_was_loaded_from_the_garbage_collector(ros, model_dir, freeze: bool) -> None:
    """main() runs the node with freeze_gc: the model and everything else loaded before ``ready``
    leave the generations a full collection traverses (~170 ms for a ViT-S node); without it,
    nothing is frozen (the process's owner decides)."""
    import gc

    gc.unfreeze()
    node = LocalizeNode("loc_gc", freeze_gc=freeze, parameter_overrides=[Parameter("model", value=str(model_dir))])
    try:
        wait_for(lambda: node.state != "loading", 60.0, "loc_gc loaded")
        assert node.state == "ready", node.state_message
        tracked = {id(o) for o in gc.get_objects()}  # generations 0-2: not the frozen ones
        loaded = [node.extractor, node.localizer, node.localizer.online_matcher]
        assert all((id(o) in tracked) != freeze for o in loaded)
        assert (gc.get_freeze_count() > 10_000) == freeze
    finally:
        node.destroy_node()
        gc.unfreeze()
