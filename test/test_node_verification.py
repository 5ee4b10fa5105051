"""localize_node with verify_geometry: an OpenCV error inside verification rejects that loop
closure with its reason, is counted in /diagnostics, and every other answer of the batch is
still published (real rclpy over Fast DDS, in-process node)."""
from __future__ import annotations

import cv2
import pytest
from nav_msgs.msg import Odometry
from node_harness import wait_for
from sensor_msgs.msg import Image
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
    table,
)

pytestmark = [
    pytest.mark.ros, pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:module 'sre_(parse|constants)' is deprecated:DeprecationWarning"),
]


def test_an_opencv_error_in_verification_rejects_the_loop_closure_and_the_batch_is_still_published(
        harness, model_dir, route, monkeypatch) -> None:  # noqa: F811
    a, b = "/loc_cv/a/image", "/loc_cv/b/image"
    h = harness("loc_cv", {
        "image_topics": [a, b], "transport": "raw", "odom_topic": "/loc_cv/odom", "model": str(model_dir),
        "min_score": MIN_SCORE, "exclude_recent_s": 5.0, **SHORT_SEQUENCES, "sequence_length_m": 2 * SPACING_M,
        "loop_min_travel_m": 50.0, "reliable": True, "diagnostics_period_s": 0.1, "verify_geometry": True,
        "camera_intrinsics": f"{a} 60 60 32 16; {b} 60 60 32 16"})
    image_pub = h.client.create_publisher(Image, a, 10)
    odom_pub = h.client.create_publisher(Odometry, "/loc_cv/odom", 10)
    h.wait_ready()
    wait_for(lambda: image_pub.get_subscription_count() and odom_pub.get_subscription_count(), 10.0, "matching")

    def drive(sec: int, x: float, y: float) -> None:
        odom_pub.publish(odom_msg(sec, x, y))
        wait_for(lambda: h.node.poses.lookup(sec, 0.01), 5.0, "odometry to arrive")

    # Camera a drives places 0..9, then comes back to places 0 and 1 (as test_node_localize's
    # online test: the revisit of place 2 is then an accepted online loop closure).
    out = 10
    steps = [(i, SPACING_M * i, 0.0) for i in range(out)] + [(k, SPACING_M * k, 2.0) for k in range(2)]
    for step, (place, x, y) in enumerate(steps):
        drive(T0 + step, x, y)
        publish_and_wait(h, image_pub, raw_msg(route.images[place], T0 + step), T0 + step)

    def broken(*args, **kwargs):
        raise cv2.error("OpenCV(test) forced: (-215:Assertion failed) in function 'solvePoly'")

    from qaa_vpr_ros.decision import verifier

    monkeypatch.setattr(verifier, "verify_features", broken)  # an OpenCV assertion inside verification
    sec = T0 + len(steps)
    drive(sec, 2 * SPACING_M, 2.0)
    # One batch, deterministically: the revisit of place 2 (verified: the OpenCV error) first, then
    # camera b's frame of an unrelated place. The batch must not raise, and both answers go out.
    batch = [(h.node.cameras[a], raw_msg(route.images[2], sec)), (h.node.cameras[b], raw_msg(route.images[12], sec))]
    h.node._process(batch)
    def answers():  # ~/loop_candidates of that stamp: one message per query of the batch
        return [table(m) for m in h.rec.get("loop_candidates") if m.header.stamp.sec == sec]

    tables = wait_for(lambda: len(answers()) == 2 and answers(), 10.0, "both answers of the batch")
    (revisit,) = [t for t in tables if len(t) and t["camera"][0] == a.encode()]
    assert revisit["match_keyframe_id"][0] == 2
    assert not revisit["accepted"].any()  # the OpenCV error rejected it: no loop closure from it
    assert not [p for p in h.rec.get("loop_closure") if p.poses[0].header.stamp.sec == sec]
    # Every candidate verified in that batch met the error (the revisit's candidates and nearest
    # keyframes, camera b's too): each is a counted rejection of that class, none verified.
    diag = wait_for(lambda: int((d := h.diag("localizer")).get("verify_rejected_opencv_error", 0)) >= 1 and d,
                    10.0, "the OpenCV error counted in /diagnostics")
    assert diag["verify_rejected"] == diag["verify_rejected_opencv_error"] and diag["verify_verified"] == "0"
    assert diag["failed_batches"] == "0" and diag["level"] == 0
