"""``pose_graph_node``: a small SLAM back end for our loop closures (rclpy edge of :mod:`qaa_vpr_ros.pose_graph`).

Subscribes to

- ``odom_topic`` (``nav_msgs/Odometry``): the robot's drifting odometry;
- ``loop_topic`` (``sensor_msgs/PointCloud2``): ``localize_node``'s ``~/loop_candidates`` table
  of :class:`~qaa_vpr_ros.decision.record.LoopClosureRecord` rows (accepted ones become edges).

and publishes, after each optimisation (at most every ``optimize_period_s``, when something new
arrived):

- ``~/path`` (``nav_msgs/Path``, frame ``map_frame``): the corrected trajectory (graph nodes);
- ``~/map_to_odom`` (``geometry_msgs/TransformStamped``): the correction ``map_frame`` ->
  odometry frame (also broadcast on ``/tf`` when ``tf2_ros`` is importable and ``publish_tf``);
- ``~/loop_closures`` (``sensor_msgs/PointCloud2``): the records in the graph, ``accepted`` = the
  edge is an inlier of the solution (outliers were switched off by the robust loss).
"""
from __future__ import annotations

import sys
import threading
from collections import deque
from dataclasses import replace
from typing import Any

import rclpy
from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from qaa_vpr_ros.ros.messages import (
    path_msg,
    records_cloud,
    records_from_cloud,
    stamp_of,
    transform_matrix,
    transform_msg,
)
from qaa_vpr_ros.ros.signals import stop_on_signals

__all__ = ["PoseGraphNode", "main", "records_cloud", "records_from_cloud"]

_PARAMETERS = {
    # name: (default, description)
    "odom_topic": ("/odom", "nav_msgs/Odometry input (the drifting odometry to correct)."),
    "loop_topic": ("/localize_node/loop_candidates", "Loop-closure records (localize_node's ~/loop_candidates)."),
    "map_frame": ("map", "Frame of the corrected path and parent of the map->odom correction."),
    "optimize_period_s": (1.0, "Smallest time between two optimisations (s)."),
    "node_spacing_m": (5.0, "A new graph node after this much odometry travel (m)."),
    "node_rotation_rad": (0.3, "... or this much rotation (rad)."),
    "odom_translation_noise": (0.05, "Odometry translation sigma per metre travelled "
                               "(calibrate against ground truth)."),
    "odom_rotation_noise": (0.01, "Odometry rotation sigma, rad per sqrt(metre) travelled."),
    "loss": ("gnc", "Robust loss on loop closures: gnc (truncated quadratic, GNC), cauchy or huber."),
    "publish_tf": (True, "Also broadcast map_frame -> odometry frame on /tf when tf2_ros is importable."),
}


class PoseGraphNode(Node):
    """ROS edge of :class:`~qaa_vpr_ros.pose_graph.PoseGraph`."""

    def __init__(self, node_name: str = "pose_graph_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        # Imported here: importing this module needs no gtsam.
        from qaa_vpr_ros.pose_graph import PoseGraph, PoseGraphConfig

        self._new_graph = PoseGraph
        for name, (default, description) in _PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=description))
        p = {name: self.get_parameter(name).value for name in _PARAMETERS}
        self.map_frame = p["map_frame"]
        self.graph = PoseGraph(PoseGraphConfig(
            node_spacing_m=float(p["node_spacing_m"]), node_rotation_rad=float(p["node_rotation_rad"]),
            odom_translation_noise=float(p["odom_translation_noise"]),
            odom_rotation_noise=float(p["odom_rotation_noise"]), loss=p["loss"]))
        self._lock = threading.Lock()  # guards the inbox only; the graph belongs to the timer
        self._inbox: deque = deque()
        self._odom_frame = "odom"
        self._last_odom_stamp = None
        self.rejected_frames = 0
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.path_pub = self.create_publisher(PathMsg, "~/path", latched)
        self.correction_pub = self.create_publisher(TransformStamped, "~/map_to_odom", latched)
        self.loops_pub = self.create_publisher(PointCloud2, "~/loop_closures", latched)
        self._tf = None
        if p["publish_tf"]:
            try:
                from tf2_ros import TransformBroadcaster
            except ImportError:
                self.get_logger().info("tf2_ros is not importable: map->odom only on ~/map_to_odom")
            else:
                self._tf = TransformBroadcaster(self)
        inputs = ReentrantCallbackGroup()
        self.create_subscription(Odometry, p["odom_topic"], self._on_odom, 1000, callback_group=inputs)
        self.create_subscription(PointCloud2, p["loop_topic"], self._on_records, 1000, callback_group=inputs)
        # On the steady clock: with use_sim_time a ROS-time timer stops while a replay is paused.
        self.create_timer(float(p["optimize_period_s"]), self._optimize,
                          callback_group=MutuallyExclusiveCallbackGroup(),
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(f"ready: odometry {p['odom_topic']}, loop closures {p['loop_topic']}, "
                               f"robust loss {p['loss']}")

    # Callbacks only queue: the optimisation (timer, its own callback group) may take a while and
    # must not make DDS drop odometry or records meanwhile.
    def _on_odom(self, msg: Odometry) -> None:
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        with self._lock:
            self._inbox.append(("odom", stamp, msg.header.frame_id, transform_matrix(msg.pose.pose)))

    def _on_records(self, msg: PointCloud2) -> None:
        try:
            records = records_from_cloud(msg)
        except ValueError as err:
            self.get_logger().error(f"{self.get_parameter('loop_topic').value}: {err}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self._inbox.extend(("record", r) for r in records if r.accepted)

    def _drain(self) -> bool:
        """Apply queued odometry and records to the graph (timer thread only); True if any."""
        with self._lock:
            items, self._inbox = self._inbox, deque()
        for item in items:
            if item[0] == "odom":
                _, stamp, frame, pose = item
                self._odom_frame = frame or self._odom_frame
                if self._last_odom_stamp is not None and stamp < self._last_odom_stamp:
                    self.get_logger().warning(f"odometry time went back ({self._last_odom_stamp} -> {stamp}): "
                                              "starting a new graph")
                    self.graph = self._new_graph(self.graph.config)
                self._last_odom_stamp = stamp
                self.graph.add_odometry(stamp, pose)
                continue
            record = item[1]
            expected = self._odom_frame if record.is_online else self.map_frame
            if record.match_frame != expected:
                self.rejected_frames += 1
                self.get_logger().warning(
                    f"loop closure in frame {record.match_frame!r} (session {record.match_session!r}) "
                    f"ignored: expected {expected!r} (map_frame parameter / odometry frame)",
                    throttle_duration_sec=5.0)
                continue
            self.graph.add_loop_closure(record)
        return bool(items)

    def _optimize(self) -> None:
        if not self._drain() or self.graph.node_count == 0:
            return
        self.graph.optimize()
        path = self.graph.corrected_path()
        correction = self.graph.map_to_odom()
        edges = [(e.record, e.inlier) for e in self.graph.edges]
        odom_frame = self._odom_frame
        if not self.context.ok():  # shutting down (Ctrl-C) while this optimisation ran
            return
        now = self.get_clock().now().to_msg()
        self.path_pub.publish(path_msg(now, self.map_frame, path))
        tf = transform_msg(stamp_of(path[-1][0]), self.map_frame, odom_frame, correction)
        self.correction_pub.publish(tf)
        if self._tf is not None:
            self._tf.sendTransform(tf)
        self.loops_pub.publish(records_cloud(Header(stamp=now, frame_id=self.map_frame),
                                             [replace(r, accepted=inlier) for r, inlier in edges]))


def main(args: list[str] | None = None) -> int:
    """Console script ``pose_graph_node`` (``ros2 run qaa_vpr_ros pose_graph_node --ros-args ...``).

    Exit codes: 0 after SIGINT/SIGTERM (no traceback, also mid-optimisation), 2 for invalid
    parameters. As in localize_node, the signals only set an event that the spin loop checks.
    """
    stop = stop_on_signals() if threading.current_thread() is threading.main_thread() else threading.Event()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = PoseGraphNode()
    except ValueError as err:
        print(f"pose_graph_node: invalid parameters: {err}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    # Two threads: the optimisation (its own callback group) must not hold up the inputs.
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.2)
    except ExternalShutdownException:
        pass
    finally:
        executor.shutdown(timeout_sec=5.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
