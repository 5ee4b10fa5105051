"""``python -m qaa_vpr_ros.localize_node`` and the documented names of the node's module.

The node lives in :mod:`qaa_vpr_ros.ros.localize_node`, the process in :mod:`qaa_vpr_ros.ros.entry`.
"""
from __future__ import annotations

import sys

from qaa_vpr_ros.ros.entry import run as main
from qaa_vpr_ros.ros.localize_node import LOOP_CANDIDATE_DTYPE, LocalizeNode

__all__ = ["LOOP_CANDIDATE_DTYPE", "LocalizeNode", "main"]

if __name__ == "__main__":
    sys.exit(main())
