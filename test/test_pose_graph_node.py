"""pose_graph_node over real rclpy: drifting odometry + loop-closure records in, corrected path out."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from node_harness import NodeProcess, Recorder, use_private_domain, wait_for

use_private_domain()
rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import TransformStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from nav_msgs.msg import Path as PathMsg  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from qaa_vpr_ros.decision.record import CovarianceModel, LoopClosureRecord, matrix_quaternion, pose_matrix  # noqa: E402
from qaa_vpr_ros.pose_graph_node import PoseGraphNode, records_cloud, records_from_cloud  # noqa: E402


def _yaw_pose(x, y, yaw):
    return pose_matrix((x, y, 0.0), (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)))


@pytest.fixture()
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def test_records_survive_the_pointcloud2_round_trip():
    record = LoopClosureRecord(1, 2, "/cam", 3, 4, 5, "summer", "map", match_position=(1.0, 2.0, 3.0),
                               query_position=(4.0, 5.0, 6.0), accepted=True, score=0.75, confidence=0.5,
                               sequence_score=0.5)
    assert records_from_cloud(records_cloud(Header(frame_id="map"), [record, record])) == [record, record]


def test_drift_is_corrected_and_a_wrong_map_match_is_an_outlier(ros):
    node = PoseGraphNode(parameter_overrides=[
        rclpy.parameter.Parameter("optimize_period_s", value=0.2),
        rclpy.parameter.Parameter("node_spacing_m", value=4.0)])
    client = rclpy.create_node("pose_graph_test_client")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        recorder = Recorder()
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        client.create_subscription(PathMsg, "/pose_graph_node/path", recorder.callback("path"), latched)
        client.create_subscription(TransformStamped, "/pose_graph_node/map_to_odom", recorder.callback("tf"), latched)
        client.create_subscription(PointCloud2, "/pose_graph_node/loop_closures", recorder.callback("loops"), latched)
        odom_pub = client.create_publisher(Odometry, "/odom", 200)
        loop_pub = client.create_publisher(PointCloud2, "/localize_node/loop_candidates", 50)
        wait_for(lambda: odom_pub.get_subscription_count() and loop_pub.get_subscription_count(), 10, "discovery")
        # Truth: straight along x at 5 m per step, turning 90 deg at step 40. Odometry: 5 % too long
        # and with a heading bias of 0.01 rad per step.
        truth, yaw, x, y = [], 0.0, 0.0, 0.0
        for i in range(80):
            truth.append(_yaw_pose(x, y, yaw))
            yaw += math.pi / 2 if i == 40 else 0.0
            x, y = x + 5 * math.cos(yaw), y + 5 * math.sin(yaw)
        odom = [truth[0]]
        for a, b in zip(truth, truth[1:], strict=False):
            d = np.linalg.inv(a) @ b
            d[:3, 3] *= 1.05
            odom.append(odom[-1] @ d @ _yaw_pose(0, 0, 0.01))
        for i, pose in enumerate(odom):
            msg = Odometry(header=Header(frame_id="odom"), child_frame_id="base_link")
            msg.header.stamp.sec = 100 + i
            msg.pose.pose.position.x, msg.pose.pose.position.y = float(pose[0, 3]), float(pose[1, 3])
            q = matrix_quaternion(pose[:3, :3])
            (msg.pose.pose.orientation.x, msg.pose.pose.orientation.y,
             msg.pose.pose.orientation.z, msg.pose.pose.orientation.w) = q
            odom_pub.publish(msg)
        cov = CovarianceModel(none=(9.0, 1.0, 1.0, 0.01, 0.01, 0.02)).covariance("none")
        records = []
        for i in list(range(0, 80, 8)) + [60]:
            match = truth[i] if i != 60 else truth[10]  # the last one is wrong
            records.append(LoopClosureRecord(
                100 + i, 0, "/cam", i, 50, 0, "summer_map", "map", match_position=tuple(match[:3, 3]),
                match_orientation=matrix_quaternion(match[:3, :3]), covariance=cov, score=0.9, confidence=1.0,
                accepted=True))
        loop_pub.publish(records_cloud(Header(frame_id="map"), records))

        def solved():
            loops = recorder.get("loops")
            return loops and len(records_from_cloud(loops[-1])) == len(records) and recorder.get("path")
        wait_for(solved, 20, "a solution with every loop closure")
        wait_for(lambda: len(recorder.get("path")[-1].poses) >= 80, 10, "a path over all odometry")
        time.sleep(0.5)  # the loop_closures message of that same optimisation follows the path
        in_graph = records_from_cloud(recorder.get("loops")[-1])
        assert {r.match_keyframe_id: r.accepted for r in in_graph} == {i: i != 60 for i in [*range(0, 80, 8), 60]}
        path = {p.header.stamp.sec: p.pose.position for p in recorder.get("path")[-1].poses}
        errors = [math.hypot(path[100 + i].x - truth[i][0, 3], path[100 + i].y - truth[i][1, 3]) for i in range(80)]
        odom_errors = [np.linalg.norm(odom[i][:2, 3] - truth[i][:2, 3]) for i in range(80)]
        assert max(odom_errors) > 30.0 and max(errors) < 0.15 * max(odom_errors)
        tf = recorder.get("tf")[-1]
        assert tf.header.frame_id == "map" and tf.child_frame_id == "odom"
        t = tf.transform
        correction = pose_matrix((t.translation.x, t.translation.y, t.translation.z),
                                 (t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w))
        end_error = np.linalg.norm((correction @ odom[-1])[:2, 3] - truth[-1][:2, 3])
        assert end_error < 0.2 * np.linalg.norm(odom[-1][:2, 3] - truth[-1][:2, 3])
    finally:
        executor.shutdown()
        node.destroy_node()
        client.destroy_node()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_the_console_script_stops_cleanly_on_a_signal(sig, tmp_path):
    """Ctrl-C (or launch's SIGTERM) ends pose_graph_node with exit 0 and no traceback."""
    import os
    import signal

    log = tmp_path / "pose_graph_node.log"
    proc = NodeProcess("pose_graph_node", {}, name=f"pg_{sig.lower()}", log=log, env=dict(os.environ))
    try:
        wait_for(lambda: "ready:" in log.read_text() or proc.poll() is not None, 60.0, "the node's start")
        assert proc.poll() is None, log.read_text()
        time.sleep(0.5)  # spinning (timer and subscriptions live)
        code = proc.stop(getattr(signal, sig), timeout=10.0)  # killed (-9) when it does not exit in time
    finally:
        proc.stop(signal.SIGKILL, timeout=10.0)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text, text
