"""The ``localize_node`` process: signals first, then ROS, the node and its spin loop.

:func:`main` (the console script) takes SIGINT/SIGTERM before anything heavy is imported:
importing rclpy, the message packages and torch takes seconds, and a Ctrl-C in that window
would otherwise end the process with a ``KeyboardInterrupt`` traceback. Here the signals only
set an event, which :func:`run` honours (exit 0). This module imports nothing of ROS at its
import time.
"""
from __future__ import annotations

import os
import sys
import threading

from qaa_vpr_ros.ros.signals import stop_on_signals

__all__ = ["main", "run"]

_SPIN_PERIOD_S = 0.1
_SHUTDOWN_WORKER_S = 1.0  # an in-flight batch may finish within this, else it is dropped
_SHUTDOWN_EXECUTOR_S = 0.3


def main() -> int:
    """Console script ``localize_node``."""
    return run(stop=stop_on_signals())


def run(args: list[str] | None = None, stop: threading.Event | None = None) -> int:
    """The ``localize_node`` process (``ros2 run qaa_vpr_ros localize_node --ros-args ...``).

    Exit codes: 0 after SIGINT/SIGTERM (within about a second, idle or busy, no traceback);
    1 after a fatal start-up error (model, map, device: one ERROR line naming it and the fix);
    2 for invalid parameters. A non-zero code lets launch's ``respawn``/``on_exit`` act. Ends the
    process itself (``os._exit``) once ROS is shut down: call it as a program, not as a function.
    ``stop``: set by SIGINT/SIGTERM handlers installed earlier (:func:`main` installs them before
    importing ROS); None: installed here (main thread), or none.
    """
    if stop is None:
        # Our own handlers instead of rclpy's: no KeyboardInterrupt can surface mid-shutdown.
        on_main = threading.current_thread() is threading.main_thread()
        stop = stop_on_signals() if on_main else threading.Event()
    if stop.is_set():  # stopped before anything started
        return 0
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from qaa_vpr_ros.decision import ConfigError
    from qaa_vpr_ros.ros.localize_node import LocalizeNode

    if stop.is_set():  # stopped while ROS and the node were being imported: nothing started yet
        return 0
    # Fast DDS publishes asynchronously by default: publish() queues the sample and a flow
    # controller thread sends it, which on a busy CPU held each ~/loop_candidates table back by
    # about 1 ms (up to 4 ms). Our messages are small (a table of <= top_k rows of 826 bytes), so
    # send them from the publishing thread. Only rmw_fastrtps reads this; the user's own setting wins.
    os.environ.setdefault("RMW_FASTRTPS_PUBLICATION_MODE", "SYNCHRONOUS")
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = LocalizeNode(freeze_gc=True)
    except ConfigError as err:
        print(f"localize_node: invalid parameters: {err}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    # One thread runs the (short) callbacks; inference has its own thread. Single-threaded, no
    # callback is still in flight when the executor shuts down (rclpy's MultiThreadedExecutor
    # destroys its guard condition before joining its pool, and a late callback then fails).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        # spin_once returns at least every _SPIN_PERIOD_S so a signal is acted on promptly.
        while not stop.is_set() and node.fatal_error is None and rclpy.ok():
            executor.spin_once(timeout_sec=_SPIN_PERIOD_S)
    except ExternalShutdownException:
        pass
    finally:
        node.stop_worker(timeout=_SHUTDOWN_WORKER_S)  # a batch still running then is dropped, unpublished
        executor.shutdown(timeout_sec=_SHUTDOWN_EXECUTOR_S)
        node.destroy_node()
        rclpy.try_shutdown()
    code = 1 if node.fatal_error is not None else 0
    # ROS is shut down in order above. Python's own teardown after that (torch's and timm's module
    # state, the inference thread if a batch outlived _SHUTDOWN_WORKER_S) took 2.5-4 s on a loaded
    # 2-core machine, beyond the 2 s a supervisor or launch should wait: end the process here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
