"""``python -m qaa_vpr_ros.pose_graph_node`` and the documented names of the node's module.

The node lives in :mod:`qaa_vpr_ros.ros.pose_graph_node`, the record table's conversion in
:mod:`qaa_vpr_ros.ros.messages`.
"""
from __future__ import annotations

import sys

from qaa_vpr_ros.ros.messages import records_cloud, records_from_cloud
from qaa_vpr_ros.ros.pose_graph_node import PoseGraphNode, main

__all__ = ["PoseGraphNode", "main", "records_cloud", "records_from_cloud"]

if __name__ == "__main__":
    sys.exit(main())
