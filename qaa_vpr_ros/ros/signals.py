"""SIGINT/SIGTERM as an event the nodes' spin loops check (no rclpy here: imported first)."""
from __future__ import annotations

import signal
import threading

__all__ = ["stop_on_signals"]


def stop_on_signals() -> threading.Event:
    """An event that SIGINT and SIGTERM set, instead of raising KeyboardInterrupt or ending the
    process (main thread only). The nodes' spin loops check it, so a signal, or a second one
    (the terminal's SIGINT, then launch's), ends them cleanly and at a point of their choosing."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    return stop
