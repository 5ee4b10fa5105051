"""The one harness for running the nodes from scripts and tests.

- :class:`NodeProcess`: ``localize_node`` or ``pose_graph_node`` in its own process (``python -m
  qaa_vpr_ros.<module> --ros-args ...``), parameters given inline or through a params file, its
  output to a log file or inherited; stopped by a signal, killed when it does not exit in time.
- :class:`Spinner` / :func:`spinning`: nodes of this process spun on a daemon thread.
- :class:`Recorder`: received messages per topic; :func:`wait_for`: poll with a named timeout.
- :func:`use_private_domain`: a per-process DDS domain, localhost discovery only.

Used by the demos, the benchmarks, ``scripts/reliability.py`` and the tests. rclpy is imported only
where a node of this process is spun (:class:`Spinner`), so a script that only starts nodes does
not load it here.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import yaml

REPO = Path(__file__).resolve().parents[1]
NODE_MODULES = ("localize_node", "pose_graph_node")


def use_private_domain() -> int:
    """A per-process DDS domain in 100..199, localhost discovery only. Call before rclpy.init."""
    domain = 100 + os.getpid() % 100
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return domain


def ros_args(params: dict[str, Any]) -> list[str]:
    """``--ros-args -p name:=value ...`` for ``params`` (lists and booleans as YAML, via JSON)."""
    out = ["--ros-args"]
    for key, value in params.items():
        out += ["-p", f"{key}:={json.dumps(value) if isinstance(value, (list, bool)) else value}"]
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux /proc); NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class NodeProcess:
    """A node of this package in its own process.

    ``module``: "localize_node" or "pose_graph_node"; ``params``: its parameters. With
    ``params_dir`` they go into ``<params_dir>/<name>.yaml`` (``--params-file``, for all nodes:
    ``/**``), otherwise inline (``-p``). ``name`` renames the node (``-r __node:=name``); ``log``:
    a file for its stdout and stderr (None: inherited); ``cwd`` and ``env`` as for subprocess
    (``env`` None: this process's environment).
    """

    def __init__(self, module: str, params: dict[str, Any], *, name: str | None = None,
                 params_dir: Path | None = None, log: Path | None = None, cwd: Path | None = REPO,
                 env: dict[str, str] | None = None) -> None:
        if module not in NODE_MODULES:
            raise ValueError(f"NodeProcess: module must be one of {NODE_MODULES}, not {module!r}")
        self.module, self.name = module, name or module
        command = [sys.executable, "-m", f"qaa_vpr_ros.{module}"]
        if params_dir is not None:
            params_file = Path(params_dir) / f"{self.name}.yaml"
            params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
            command += ["--ros-args", *(["-r", f"__node:={name}"] if name else []), "--params-file", str(params_file)]
        else:
            command += ros_args(params) + (["-r", f"__node:={name}"] if name else [])
        self.command = command
        self.log: IO[str] | None = open(log, "w") if log is not None else None  # noqa: SIM115 - closed in stop()
        output = {"stdout": self.log, "stderr": subprocess.STDOUT} if self.log is not None else {}
        self.proc = subprocess.Popen(command, cwd=cwd, env=env, **output)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        """Its exit code, or None while it runs."""
        return self.proc.poll()

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` (SIGINT: rclpy's clean shutdown, as Ctrl-C; SIGTERM: as launch does)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Its exit code; killed when it has not exited within ``timeout`` s. Closes the log."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.log is not None:
            self.log.close()
        return self.proc.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal it and wait (see :meth:`wait`)."""
        self.send_signal(sig)
        return self.wait(timeout)


def stop_all(nodes: Iterable[NodeProcess], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Signal every node first, then wait for each (they shut down side by side)."""
    nodes = list(nodes)
    for node in nodes:
        node.send_signal(sig)
    for node in nodes:
        node.wait(timeout)


class Spinner:
    """``nodes`` spun by one MultiThreadedExecutor on a daemon thread; :meth:`close` stops the
    executor and destroys the nodes (rclpy.init/shutdown stay with the caller)."""

    def __init__(self, *nodes: Any, threads: int = 4) -> None:
        from rclpy.executors import MultiThreadedExecutor

        self.nodes = nodes
        self.executor = MultiThreadedExecutor(num_threads=threads)
        for node in nodes:
            self.executor.add_node(node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.1)

    def close(self) -> None:
        # The spin loop ends before the executor shuts down: shutting it down under a running
        # spin() destroys its guard condition while a callback may still trigger it (rclpy
        # raised InvalidHandle in the spin thread, a PytestUnhandledThreadExceptionWarning).
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=5.0)
        for node in self.nodes:
            node.destroy_node()


@contextlib.contextmanager
def spinning(*nodes: Any) -> Iterator[Spinner]:
    """:class:`Spinner` as a context: the nodes spin inside the block and are destroyed after it."""
    spinner = Spinner(*nodes)
    try:
        yield spinner
    finally:
        spinner.close()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until truthy; raise AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Recorder:
    """Thread-safe lists of received messages per topic."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: dict[str, list[Any]] = {}

    def callback(self, topic: str) -> Callable[[Any], None]:
        self.messages.setdefault(topic, [])

        def store(msg: Any) -> None:
            with self.lock:
                self.messages[topic].append(msg)
        return store

    def get(self, topic: str) -> list[Any]:
        with self.lock:
            return list(self.messages.get(topic, []))
