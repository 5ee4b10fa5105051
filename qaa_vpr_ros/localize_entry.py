"""Console script ``localize_node``: takes SIGINT/SIGTERM before anything heavy is imported.

Importing :mod:`qaa_vpr_ros.localize_node` (rclpy, message packages) takes about a second; a
Ctrl-C in that window would otherwise end the process with a ``KeyboardInterrupt`` traceback.
Here the signals only set an event, which :func:`qaa_vpr_ros.localize_node.main` then honours
(exit 0). Only the node module imports rclpy.
"""
from __future__ import annotations

import signal
import threading


def stop_on_signals() -> threading.Event:
    """An event that SIGINT and SIGTERM set, instead of raising KeyboardInterrupt or ending the
    process (main thread only). The nodes' spin loops check it, so a signal, or a second one
    (the terminal's SIGINT, then launch's), ends them cleanly and at a point of their choosing."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    return stop


def main() -> int:
    stop = stop_on_signals()
    from qaa_vpr_ros.localize_node import main as node_main

    return node_main(stop=stop)
