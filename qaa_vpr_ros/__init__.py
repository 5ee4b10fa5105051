"""qaa_vpr_ros: visual place recognition with Query-based Adaptive Aggregation (QAA) for ROS 2.

Everything in this package except :mod:`qaa_vpr_ros.localize_node` imports without ROS.
"""

__version__ = "0.1.0"
