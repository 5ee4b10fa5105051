"""localize_node's loop-closure outputs as real consumers see them (real rclpy, private domain):
the ~/loop_candidates records, a Nav2-style ``initialpose`` consumer (and ``~/localization_status``:
initialpose on the first relocalization, after being lost, or for a correction, never every match)
and a LIO-SAM-style ``[t_current, t_previous]`` consumer, checked against the ground truth the
test built (map poses, camera extrinsics, stamps)."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
from node_harness import wait_for
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray

# The node fixtures (private domain, tiny model, distinct Nordland route, harness) are shared.
from test_node_localize import (  # noqa: F401  (pytest fixtures)
    MIN_SCORE,
    SHORT_SEQUENCES,
    SPACING_M,
    T0,
    extractor,
    harness,
    model_dir,
    odom_msg,
    publish_and_wait,
    raw_msg,
    ros,
    route,
)

from qaa_vpr_ros.decision.record import pose_matrix, records_from_table
from qaa_vpr_ros.maps import Keyframe, PlaceMap, read_manifest

pytestmark = [
    pytest.mark.ros, pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:module 'sre_(parse|constants)' is deprecated:DeprecationWarning"),
]

HEADING = 0.6  # the mapped route runs along this yaw (rad) in the map frame
ORIGIN = (500.0, -200.0)
COUNT = 10
OK, WARN = 0, 1  # diagnostic_msgs/DiagnosticStatus levels


def _yaw(q) -> float:
    return math.atan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z))


@pytest.fixture(scope="module")
def heading_map(tmp_path_factory, extractor, route) -> Path:  # noqa: F811
    """Keyframe i at ORIGIN + 10 i m along HEADING, facing HEADING, seen by camera /mapping/front."""
    place_map = PlaceMap.create(extractor.dim, extractor.fingerprint, map_frame="map")
    keyframes = [Keyframe(id=i, stamp_sec=T0 + i, stamp_nanosec=0, camera="/mapping/front", frame_id="front",
                          position=(ORIGIN[0] + SPACING_M * i * math.cos(HEADING),
                                    ORIGIN[1] + SPACING_M * i * math.sin(HEADING), 0.0),
                          orientation=(0.0, 0.0, math.sin(HEADING / 2), math.cos(HEADING / 2)))
                 for i in range(COUNT)]
    place_map.add(route.descriptors[:COUNT], keyframes)
    folder = tmp_path_factory.mktemp("maps") / "heading_map"
    place_map.save(folder)
    return folder


def test_initialpose_consumer_gets_the_robot_pose_in_the_map_frame(harness, model_dir, heading_map,  # noqa: F811
                                                                    route) -> None:  # noqa: F811
    # The query camera looks backwards (yaw pi on the robot): seeing what the mapping front camera
    # saw means the robot faces the other way. The map camera has no extrinsics entry: identity.
    h = harness("adapt_map", {
        "image_topics": ["/adapt_map/rear"], "transport": "raw", "model": str(model_dir),
        "map": str(heading_map), "min_score": MIN_SCORE, **SHORT_SEQUENCES, "online_loop_closure": False,
        "reliable": True, "initialpose_topic": "/initialpose", "covariance_base": [4.0, 1.0, 0.5, 0.01, 0.01, 0.02],
        "camera_extrinsics": "/adapt_map/rear 0 0 0 0 0 1 0"})
    poses: list[PoseWithCovarianceStamped] = []
    h.client.create_subscription(PoseWithCovarianceStamped, "/initialpose", poses.append, 50)
    pub = h.client.create_publisher(type(raw_msg(route.images[0], 0)), "/adapt_map/rear", 10)
    h.wait_ready()
    wait_for(lambda: pub.get_subscription_count(), 10.0, "matching")
    accepted = []
    map_id = read_manifest(heading_map)["map_id"]  # the session a record names: the map's id, not its folder
    assert map_id.startswith("heading_map-")
    for i in range(COUNT):
        sec = T0 + 1000 + i
        (rows,) = publish_and_wait(h, pub, raw_msg(route.images[i], sec), sec)
        (best,) = [r for r in records_from_table(rows) if r.rank == 0]
        assert (best.match_session, best.match_frame, best.camera) == (map_id, "map", "/adapt_map/rear")
        assert best.match_camera == "/mapping/front" and best.transform_source == "none"
        assert (best.query_stamp_sec, best.match_keyframe_id, best.match_stamp_sec) == (sec, i, T0 + i)
        # T_match_query = T_base_front * T_base_rear^-1: a half turn about z.
        assert np.allclose(best.relative_matrix, pose_matrix((0, 0, 0), (0, 0, 1, 0)), atol=1e-9)
        if best.accepted:
            accepted.append((sec, i, best))
    assert len(accepted) >= COUNT - 4

    # Without odometry each accepted pose is compared with the last published one: 10 m apart here,
    # every one is a correction above initialpose_min_correction_m.
    wait_for(lambda: len(poses) >= len(accepted), 5.0, "initialpose messages")
    assert [p.header.stamp.sec for p in poses] == [sec for sec, _, _ in accepted]
    rotation = np.array([[math.cos(HEADING), -math.sin(HEADING)], [math.sin(HEADING), math.cos(HEADING)]])
    for msg, (_, i, record) in zip(poses, accepted, strict=True):
        assert msg.header.frame_id == "map"
        p = msg.pose.pose.position
        truth = (ORIGIN[0] + SPACING_M * i * math.cos(HEADING), ORIGIN[1] + SPACING_M * i * math.sin(HEADING))
        assert (p.x, p.y) == pytest.approx(truth)
        yaw_error = (_yaw(msg.pose.pose.orientation) - (HEADING + math.pi) + math.pi) % (2 * math.pi) - math.pi
        assert abs(yaw_error) < 1e-6
        # The record's covariance (in the matched keyframe's frame, x along track) rotated into the map.
        cov = np.asarray(msg.pose.covariance).reshape(6, 6)
        local = record.covariance_matrix
        assert local[0, 0] / local[1, 1] == pytest.approx(4.0)  # covariance_base's shape, confidence-scaled
        assert cov[:2, :2] == pytest.approx(rotation @ local[:2, :2] @ rotation.T)
        assert cov[5, 5] == pytest.approx(local[5, 5]) and cov[0, 1] != pytest.approx(0.0)


def _status(msg: DiagnosticStatus) -> dict[str, str]:
    values = {kv.key: kv.value for kv in msg.values}
    level = int.from_bytes(msg.level, "little") if isinstance(msg.level, bytes) else int(msg.level)
    return {**values, "level": level, "message": msg.message, "name": msg.name}


def test_initialpose_only_on_relocalization_and_localization_status_says_localized_then_lost(
        harness, model_dir, heading_map, route) -> None:  # noqa: F811
    # The odometry agrees with the map (odom = the map frame moved to ORIGIN and turned by HEADING):
    # after the first relocalization there is nothing to correct, so initialpose is published once,
    # however many matches follow; then frames of unmapped places for longer than lost_after_s.
    h = harness("state_map", {
        "image_topics": ["/state_map/front"], "transport": "raw", "odom_topic": "/state_map/odom",
        "model": str(model_dir), "map": str(heading_map), "min_score": MIN_SCORE, **SHORT_SEQUENCES,
        "online_loop_closure": False, "reliable": True, "initialpose_topic": "/state_map/initialpose",
        "sequence_length_m": 2 * SPACING_M, "lost_after_s": 3.0, "diagnostics_period_s": 0.2})
    poses: list[PoseWithCovarianceStamped] = []
    h.client.create_subscription(PoseWithCovarianceStamped, "/state_map/initialpose", poses.append, 50)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    statuses: list[DiagnosticStatus] = []
    h.client.create_subscription(DiagnosticStatus, "/state_map/localization_status", statuses.append, latched)
    image_pub = h.client.create_publisher(type(raw_msg(route.images[0], 0)), "/state_map/front", 10)
    odom_pub = h.client.create_publisher(type(odom_msg(0, 0.0, 0.0)), "/state_map/odom", 10)
    h.wait_ready()
    wait_for(lambda: image_pub.get_subscription_count() and odom_pub.get_subscription_count(), 10.0, "matching")
    first = wait_for(lambda: statuses and _status(statuses[-1]), 5.0, "~/localization_status before any image")
    assert (first["state"], first["level"], first["name"]) == ("lost", WARN, "/state_map: localization")
    assert "never localized" in first["message"]

    def drive(step: int, place: int, sec: int) -> bool:
        odom_pub.publish(odom_msg(sec, SPACING_M * step, 0.0))
        wait_for(lambda: h.node.poses.lookup(sec, 0.01), 5.0, "odometry to arrive")
        (rows,) = publish_and_wait(h, image_pub, raw_msg(route.images[place], sec), sec)
        (best,) = [r for r in records_from_table(rows) if r.rank == 0]
        return best.accepted

    t = T0 + 3000
    accepted = [t + i for i in range(COUNT) if drive(i, i, t + i)]
    assert len(accepted) >= COUNT - 4
    wait_for(lambda: any(_status(m)["state"] == "localized" for m in statuses), 5.0, "localized")
    localized = next(_status(m) for m in statuses if _status(m)["state"] == "localized")
    assert (int(localized["since_sec"]), localized["level"]) == (accepted[0], OK)
    assert localized["message"].startswith(f"localized since {accepted[0]}.000")

    # Places beyond the map (never accepted: MIN_SCORE passes only a frame's own image) for 6 s.
    for k in range(6):
        assert not drive(COUNT + k, COUNT + k, t + COUNT + k)
    lost_since = accepted[-1] + 3  # the last match + lost_after_s
    wait_for(lambda: _status(statuses[-1])["state"] == "lost", 5.0, "lost")
    lost = _status(statuses[-1])
    assert (int(lost["since_sec"]), int(lost["since_nanosec"]), lost["level"]) == (lost_since, 0, WARN)
    assert float(lost["last_match_stamp"]) == accepted[-1]
    wait_for(lambda: h.diag("localizer").get("localization") == "lost", 5.0, "the state in /diagnostics")
    # Latched: a late subscriber hears the current state at once.
    late: list[DiagnosticStatus] = []
    h.client.create_subscription(DiagnosticStatus, "/state_map/localization_status", late.append, latched)
    assert _status(wait_for(lambda: late and late[-1], 5.0, "the latched status"))["state"] == "lost"

    time.sleep(0.5)  # any initialpose still on its way
    assert [p.header.stamp.sec for p in poses] == [accepted[0]], "initialpose on more than the first relocalization"
    assert poses[0].header.frame_id == "map"
    assert (poses[0].pose.pose.position.x, poses[0].pose.pose.position.y) == pytest.approx(
        (ORIGIN[0] + SPACING_M * (accepted[0] - t) * math.cos(HEADING),
         ORIGIN[1] + SPACING_M * (accepted[0] - t) * math.sin(HEADING)), abs=0.5)

    # Back on the mapped route (a second pass): the first match after being lost publishes again.
    start = t + COUNT + 6
    again = [start + k for k in range(5) if drive(COUNT + 6 + k, k, start + k)]
    assert again, "no match on the second pass"
    wait_for(lambda: len(poses) >= 2, 5.0, "initialpose after being lost")
    wait_for(lambda: _status(statuses[-1])["state"] == "localized", 5.0, "localized again")
    assert int(_status(statuses[-1])["since_sec"]) == again[0]
    time.sleep(0.5)
    assert [p.header.stamp.sec for p in poses] == [accepted[0], again[0]]


def test_lio_sam_consumer_gets_the_stamp_pair_of_each_online_loop_closure(harness, model_dir, route) -> None:  # noqa: F811
    h = harness("adapt_online", {
        "image_topics": ["/adapt_online/image"], "transport": "raw", "odom_topic": "/adapt_online/odom",
        "model": str(model_dir), "min_score": MIN_SCORE, "exclude_recent_s": 5.0, **SHORT_SEQUENCES,
        "sequence_length_m": 2 * SPACING_M, "loop_min_travel_m": 50.0, "reliable": True,
        "lio_sam_topic": "/lio_loop/loop_closure_detection"})
    pairs: list[Float64MultiArray] = []
    h.client.create_subscription(Float64MultiArray, "/lio_loop/loop_closure_detection", pairs.append, 50)
    image_pub = h.client.create_publisher(type(raw_msg(route.images[0], 0)), "/adapt_online/image", 10)
    odom_pub = h.client.create_publisher(type(odom_msg(0, 0.0, 0.0)), "/adapt_online/odom", 10)
    h.wait_ready()
    wait_for(lambda: image_pub.get_subscription_count() and odom_pub.get_subscription_count(), 10.0, "matching")
    out, back = 10, 6  # drive places 0..9, then come back over places 0..5
    drive = [(i, SPACING_M * i, 0.0) for i in range(out)] + [(k, SPACING_M * k, 2.0) for k in range(back)]
    expected = []
    for step, (place, x, y) in enumerate(drive):
        sec = T0 + step
        odom_pub.publish(odom_msg(sec, x, y))
        wait_for(lambda sec=sec: h.node.poses.lookup(sec, 0.01), 5.0, "odometry to arrive")
        (rows,) = publish_and_wait(h, image_pub, raw_msg(route.images[place], sec), sec)
        for r in records_from_table(rows):
            assert (r.match_session, r.match_frame, r.query_frame) == ("online", "odom", "odom")
            assert r.query_keyframe_id == step  # the query's own id in the online database
            if r.accepted:
                assert r.query_position == pytest.approx((x, y, 0.0))  # its odometry pose
                expected.append([float(sec), float(T0 + place)])
    assert expected, "no online loop closure accepted on the revisit"  # how many is test_node_localize's
    wait_for(lambda: len(pairs) >= len(expected), 5.0, "LIO-SAM loop closure messages")
    assert [list(m.data) for m in pairs] == expected  # [t_current, t_previous] of the ground truth
