"""localize_node under ROS 2's real tooling: ``colcon build``, then ``ros2 launch qaa_vpr_ros
localize.launch.py`` in its own process group, driven the way a user does: images published,
outputs received, ``ros2 param set``, ``ros2 service call``, and Ctrl-C (SIGINT to the process
group, as a terminal sends it).

The tooling is a sourced ROS 2 installation or ROS 2's own launch packages installed from
../shared/ros2-launch (see test/ros2_tooling.py); the tests skip, saying why, without either.

Timing figures are the issue's: exit within 2 s of SIGINT/SIGTERM, a fatal start-up error exits
within 5 s. Shutdown is measured from the signal to launch's exit seen by this process, with
``LOAD_ALLOWANCE_S`` for a shared, loaded 2-core CI machine. A fatal error is measured from
launch's "process started" line to its "process has died" line: strictly within 5 s for errors
found before torch loads (missing/unreadable model or map); errors that need torch (no CUDA) or the
model itself (a map of another model) may add the time ``import torch, torchvision, timm`` takes
on this machine right now, measured in the same run.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from node_harness import Recorder, use_private_domain, wait_for
from rclpy.executors import SingleThreadedExecutor
from ros2_tooling import ToolingAbsent, colcon_build, ros2_environment, sourced
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, PointCloud2

pytestmark = [
    pytest.mark.ros, pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:module 'sre_(parse|constants)' is deprecated:DeprecationWarning"),
]

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "nordland_tiny"  # the bundled 0.7 MB model
SHUTDOWN_S = 2.0  # the bound: exit code 0 within 2 s of SIGINT/SIGTERM
FATAL_S = 5.0  # the bound: a fatal start-up error exits within 5 s
LOAD_ALLOWANCE_S = 1.0  # a loaded shared 2-core machine: scheduling of three processes (stated in the report)
NEEDS_TORCH = {"cuda-unavailable", "map-of-another-model"}  # errors only torch / the loaded model can tell
NODE = "/localize_node"
TRACEBACK = re.compile(r"Traceback|KeyboardInterrupt|RCLError|Exception")


@pytest.fixture(scope="module")
def ros2_env(tmp_path_factory: pytest.TempPathFactory):
    """The environment of a user who built the package with colcon and sourced it."""
    try:
        env, _origin = ros2_environment()
    except ToolingAbsent as err:
        pytest.skip(f"real-launch tests need ROS 2's launch tooling: {err}")
    install = colcon_build(tmp_path_factory.mktemp("ws"), env)
    env = sourced(install / "setup.bash", env)
    domain = use_private_domain()  # this process's client joins the same private domain
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROS_LOG_DIR=str(tmp_path_factory.mktemp("ros_log")), PYTHONUNBUFFERED="1")
    yield env
    # ros2 service call and friends may have started ros2cli's daemon for this domain: stop it.
    subprocess.run(["ros2", "daemon", "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def client(ros2_env: dict[str, str]):
    """A client node in this process (real rclpy) spun by one thread."""
    rclpy.init()
    node = rclpy.create_node("launch_test_client")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node
    executor.shutdown()
    thread.join(timeout=5.0)
    node.destroy_node()
    rclpy.shutdown()


class Launch:
    """``ros2 launch qaa_vpr_ros localize.launch.py ARGS`` in its own process group; every output
    line is kept with the monotonic time it arrived."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(["ros2", "launch", "qaa_vpr_ros", "localize.launch.py", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append((time.monotonic(), re.sub(r"\x1b\[[0-9;]*m", "", line.rstrip("\n"))))

    @property
    def output(self) -> str:
        with self._lock:
            return "\n".join(line for _, line in self.lines)

    def line_time(self, pattern: str) -> float | None:
        with self._lock:
            return next((t for t, line in self.lines if re.search(pattern, line)), None)

    def wait_line(self, pattern: str, timeout: float) -> float:
        return wait_for(lambda: self.line_time(pattern), timeout, f"{pattern!r} in the launch output:\n{self.output}")

    def signal_group(self, sig: int, timeout: float = 30.0) -> float:
        """Send ``sig`` to the whole process group (a terminal's Ctrl-C); seconds until launch exited."""
        sent = time.monotonic()
        os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=timeout)
        return time.monotonic() - sent

    def signal_node(self, sig: int, timeout: float = 30.0) -> float:
        """Send ``sig`` to the node process alone (a supervisor's SIGTERM; launch's own SIGTERM to
        the group terminates launch at once, by design); seconds until launch saw it exit."""
        pid = int(re.search(r"process started with pid \[(\d+)\]", self.output).group(1))
        sent = time.monotonic()
        os.kill(pid, sig)
        exited = self.wait_line(r"process has (finished cleanly|died)", timeout)
        return exited - sent

    def wait_exit(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5.0)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10.0)
        self._reader.join(timeout=5.0)


@pytest.fixture
def launch(ros2_env: dict[str, str]):
    started: list[Launch] = []

    def start(*args: str) -> Launch:
        started.append(Launch(ros2_env, *args))
        return started[-1]

    yield start
    for each in started:
        each.close()


NO_DAEMON = {("node", "list"), ("param", "get"), ("param", "set"), ("topic", "list")}


def ros2(env: dict[str, str], *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """A ``ros2`` CLI command, as a user types it (without ros2cli's background daemon, which
    would outlive the test; a generous discovery time for a loaded machine)."""
    extra = ["--no-daemon", "--spin-time", "5"] if tuple(args[:2]) in NO_DAEMON else []
    return subprocess.run(["ros2", *args[:2], *extra, *args[2:]], env=env, capture_output=True, text=True,
                          timeout=timeout)


def image_msg(rng: np.random.Generator, sec: int, nanosec: int = 0, size: tuple[int, int] = (120, 160)) -> Image:
    pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    msg = Image(height=size[0], width=size[1], encoding="rgb8", is_bigendian=0, step=size[1] * 3,
                data=pixels.tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = sec, nanosec, "camera"
    return msg


class Publisher:
    """Publishes camera images at ``rate_hz`` from a thread (stamps: wall time, or ``stamp()``)."""

    def __init__(self, client: Any, topic: str, rate_hz: float, stamp=None, size=(120, 160)) -> None:
        self.client = client
        self.pub = client.create_publisher(Image, topic, 10)
        self.rate_hz, self.size, self.count = rate_hz, size, 0
        self.stamp = stamp or (lambda: divmod(time.time_ns(), 1_000_000_000))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.wait(1.0 / self.rate_hz):
            sec, nanosec = self.stamp()
            self.pub.publish(image_msg(rng, int(sec), int(nanosec), self.size))
            self.count += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.client.destroy_publisher(self.pub)


def assert_clean_exit(run: Launch, code: int, seconds: float, sig_name: str) -> None:
    out = run.output
    assert code == 0, f"launch exited {code} after {sig_name}:\n{out}"
    assert "process has finished cleanly" in out, out
    assert not TRACEBACK.search(out), out
    assert not [line for line in out.splitlines() if "ERROR" in line], out
    assert seconds <= SHUTDOWN_S + LOAD_ALLOWANCE_S, f"exit took {seconds:.2f} s after {sig_name}:\n{out}"


def node_lines(run: Launch) -> list[str]:
    """Lines the node printed (launch prefixes them with [localize_node-N])."""
    return [line for line in run.output.splitlines() if re.match(r"\[localize_node-\d+\] ", line)]


# --- the launch file as a user sees it ---------------------------------------------------------
def test_show_args_documents_every_argument(ros2_env: dict[str, str]) -> None:
    out = ros2(ros2_env, "launch", "qaa_vpr_ros", "localize.launch.py", "--show-args")
    assert out.returncode == 0, out.stderr
    shown = dict(re.findall(r"^    '(\w+)':\n        (.+)", out.stdout, flags=re.M))
    from test_launch_colcon import ARGUMENTS

    assert set(shown) == set(ARGUMENTS), out.stdout
    assert all(len(text) > 20 for text in shown.values()), shown
    assert "(default: 'false')" in out.stdout.split("'respawn':", 1)[1].split("\n\n")[0]


def test_a_missing_params_file_is_refused_naming_it(ros2_env: dict[str, str], tmp_path: Path) -> None:
    out = ros2(ros2_env, "launch", "qaa_vpr_ros", "localize.launch.py", f"params_file:={tmp_path}/nope.yaml")
    assert out.returncode != 0
    assert f"params_file:='{tmp_path}/nope.yaml' does not exist" in out.stdout + out.stderr


def test_launch_publish_receive_param_set_service_call_then_ctrl_c(ros2_env, client, launch) -> None:
    rec = Recorder()
    client.create_subscription(PointCloud2, f"{NODE}/loop_candidates", rec.callback("candidates"), 50)
    odom = client.create_publisher(Odometry, "/robot/odom", 10)
    run = launch(f"model:={MODEL}", "device:=cpu", "image_topics:=[/robot/front/image_raw]",
                 "odom_topic:=/robot/odom", "min_score:=0.25", "log_level:=info")
    run.wait_line(r"ready: device cpu", 90.0)
    cam = Publisher(client, "/robot/front/image_raw", rate_hz=5.0)
    try:
        odom.publish(Odometry())
        wait_for(lambda: len(rec.get("candidates")) >= 3, 30.0, "~/loop_candidates for published images")

        # The launch arguments reached the node.
        got = ros2(ros2_env, "param", "get", NODE, "odom_topic")
        assert got.returncode == 0 and "/robot/odom" in got.stdout, got
        got = ros2(ros2_env, "param", "get", NODE, "min_score")
        assert "0.25" in got.stdout, got
        # ros2 param set: accepted in range, refused out of range with the reason.
        ok = ros2(ros2_env, "param", "set", NODE, "min_score", "0.9")
        assert "Set parameter successful" in ok.stdout, ok
        assert "0.9" in ros2(ros2_env, "param", "get", NODE, "min_score").stdout
        refused = ros2(ros2_env, "param", "set", NODE, "min_score", "5.0")
        assert re.search(r"Sett?i?n?g? parameter failed.*min_score.*range", refused.stdout + refused.stderr), refused
        assert "0.9" in ros2(ros2_env, "param", "get", NODE, "min_score").stdout
        # ros2 service call: the online database holds the processed frames; reset clears them.
        reply = ros2(ros2_env, "service", "call", f"{NODE}/reset", "std_srvs/srv/Trigger")
        assert reply.returncode == 0 and "success=True" in reply.stdout, reply
        assert re.search(r"cleared [1-9]\d* online keyframes", reply.stdout), reply.stdout
        nodes = ros2(ros2_env, "node", "list")
        assert NODE in nodes.stdout.split(), nodes
        # Ctrl-C while images keep coming (busy).
        seconds = run.signal_group(signal.SIGINT)
    finally:
        cam.stop()
    assert_clean_exit(run, run.wait_exit(10.0), seconds, "SIGINT")


@pytest.mark.parametrize("sig, busy", [
    (signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGINT, False), (signal.SIGINT, True),
    (signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGTERM, False)],
    ids=["sigint-idle-1", "sigint-busy-1", "sigint-idle-2", "sigint-busy-2", "sigint-busy-3",
         "sigterm-node-busy", "sigterm-node-idle"])
def test_ctrl_c_exits_0_quickly_without_traceback(ros2_env, client, launch, sig: int, busy: bool) -> None:
    """SIGINT to launch's process group (Ctrl-C in its terminal); SIGTERM to the node alone."""
    rec = Recorder()
    client.create_subscription(PointCloud2, f"{NODE}/loop_candidates", rec.callback("candidates"), 50)
    run = launch(f"model:={MODEL}", "device:=cpu", "image_topics:=[/busy/image_raw]")
    run.wait_line(r"ready: device cpu", 90.0)
    cam = None
    if busy:  # large frames at 30 Hz: decoding + inference in flight when the signal arrives
        cam = Publisher(client, "/busy/image_raw", rate_hz=30.0, size=(480, 640))
        wait_for(lambda: len(rec.get("candidates")) >= 5, 30.0, "the node processing frames")
    try:
        seconds = run.signal_group(sig) if sig == signal.SIGINT else run.signal_node(sig)
    finally:
        if cam is not None:
            cam.stop()
    assert_clean_exit(run, run.wait_exit(10.0), seconds, signal.Signals(sig).name)


@pytest.mark.parametrize("delay_s", [0.8, 2.5])
def test_ctrl_c_during_start_up_exits_0_without_traceback(launch, delay_s: float) -> None:
    """Imports (0.8 s after launch started the process) or model loading (2.5 s) in progress when
    Ctrl-C comes. (The first few hundred ms belong to the interpreter itself and the ROS wheels'
    start-up hook, before any code of this package runs.)"""
    run = launch(f"model:={MODEL}", "device:=cpu", "image_topics:=[/early/image_raw]")
    started = run.wait_line(r"process started with pid", 60.0)
    time.sleep(max(0.0, started + delay_s - time.monotonic()))
    seconds = run.signal_group(signal.SIGINT)
    assert_clean_exit(run, run.wait_exit(10.0), seconds, f"SIGINT {delay_s} s after start")


# --- fatal start-up errors -----------------------------------------------------------------
def _mismatched_map(folder: Path) -> Path:
    """A valid map of the right dimension built with another model (another fingerprint)."""
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.maps import Keyframe, PlaceMap
    from qaa_vpr_ros.model import load_model

    dim = DescriptorExtractor(load_model(MODEL), device="cpu").dim
    place_map = PlaceMap.create(dim, "0" * 64, map_frame="map")
    rng = np.random.default_rng(1)
    desc = rng.normal(size=(3, dim)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    place_map.add(desc, [Keyframe(id=i, stamp_sec=1_600_000_000 + i, stamp_nanosec=0, camera="/c", frame_id="c",
                                  position=(float(i), 0.0, 0.0), orientation=(0.0, 0.0, 0.0, 1.0))
                         for i in range(3)])
    place_map.save(folder / "other_model_map")
    return folder / "other_model_map"


def _corrupt_model(folder: Path) -> Path:
    target = folder / "corrupt_model"
    target.mkdir()
    (target / "config.json").write_text((MODEL / "config.json").read_text())
    (target / "model.safetensors").write_bytes(b"\x00not safetensors" * 64)
    return target


def _corrupt_map(folder: Path) -> Path:
    """A map folder whose manifest was cut short (a copy interrupted, a full disk)."""
    target = _mismatched_map(folder).rename(folder / "corrupt_map")
    manifest = target / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    return target


FATAL_CASES = {
    "missing-model": (lambda tmp: ["model:=/nonexistent/qaa_model"], ["/nonexistent/qaa_model", "does not exist",
                                                                      "set model:="]),
    "unreadable-model": (lambda tmp: [f"model:={_corrupt_model(tmp)}"], ["corrupt_model", "cannot be read",
                                                                        "model.safetensors", "set model:="]),
    "missing-map": (lambda tmp: [f"model:={MODEL}", "map:=/nonexistent/site_map"],
                    ["/nonexistent/site_map", "does not exist", "build_map", "map:=''"]),
    "unreadable-map": (lambda tmp: [f"model:={MODEL}", f"map:={_corrupt_map(tmp)}"],
                       ["corrupt_map", "cannot be read", "manifest.json", "build_map"]),
    "map-of-another-model": (lambda tmp: [f"model:={MODEL}", f"map:={_mismatched_map(tmp)}"],
                             ["other_model_map", "fingerprint", "rebuild the map"]),
    "cuda-unavailable": (lambda tmp: [f"model:={MODEL}", "device:=cuda"], ["device 'cuda'", "CUDA is not available",
                                                                           "device:=cpu"]),
}


@pytest.fixture(scope="module")
def import_seconds(ros2_env: dict[str, str]) -> float:
    """How long importing the inference stack takes on this machine now (the fatal-error allowance)."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch, torchvision, timm"], check=True, timeout=300)
    return time.monotonic() - start


@pytest.mark.parametrize("case", list(FATAL_CASES))
def test_fatal_start_up_error_exits_non_zero_within_5_s_with_one_clear_line(ros2_env, launch, tmp_path,
                                                                            import_seconds, case: str) -> None:
    if case == "cuda-unavailable":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here: device:=cuda is not an error")
    args, expected = FATAL_CASES[case]
    run = launch(*args(tmp_path), "device:=cpu" if case != "cuda-unavailable" else "log_level:=info",
                 "image_topics:=[/fatal/image_raw]")
    code = run.wait_exit(60.0)
    out = run.output
    started = run.line_time(r"process started with pid")
    died = run.line_time(r"process has died")
    assert started is not None and died is not None, out
    assert re.search(r"process has died \[pid \d+, exit code 1,", out), out
    bound = FATAL_S + (import_seconds if case in NEEDS_TORCH else 0.0)
    print(f"{case}: exit {died - started:.2f} s after the node started (bound {bound:.2f} s)")
    assert died - started <= bound, f"fatal error took {died - started:.2f} s (bound {bound:.2f} s):\n{out}"
    errors = [line for line in node_lines(run) if "ERROR" in line]
    assert len(errors) == 1, f"expected one ERROR line from the node:\n{out}"
    assert all(text in errors[0] for text in expected), errors[0]
    assert not TRACEBACK.search(out), out
    assert code == 0, out  # launch itself ends normally once its only process is gone


def test_respawn_restarts_the_node_after_a_fatal_error(launch) -> None:
    run = launch("model:=/nonexistent/qaa_model", "respawn:=true", "image_topics:=[/fatal/image_raw]")
    wait_for(lambda: len(re.findall(r"ERROR.*model '/nonexistent/qaa_model' does not exist", run.output)) >= 2,
             60.0, f"the node started again (respawn) and failed again:\n{run.output}")
    assert len(re.findall(r"process has died \[pid \d+, exit code 1,", run.output)) >= 1, run.output
    run.signal_group(signal.SIGINT)
    run.wait_exit(10.0)


# --- silent inputs ------------------------------------------------------------------------
def test_a_wrong_topic_warns_listing_the_topics_that_exist(ros2_env, client, launch, tmp_path) -> None:
    params = yaml.safe_load((REPO / "config/localize.yaml").read_text())
    # Long enough for DDS discovery of this process's topics on a loaded machine, short for a test.
    params["/**"]["ros__parameters"]["silent_warn_s"] = 4.0
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    real_cam = Publisher(client, "/real/camera/image_raw", rate_hz=2.0)
    odom = client.create_publisher(Odometry, "/real/odom", 10)
    try:
        run = launch(f"model:={MODEL}", "device:=cpu", f"params_file:={params_file}",
                     "image_topics:=[/wrong/camera/image_raw]", "odom_topic:=/wrong/odom")
        run.wait_line(r"WARN.*no image received on /wrong/camera/image_raw", 60.0)
        run.wait_line(r"WARN.*no odometry received on /wrong/odom", 30.0)
    finally:
        real_cam.stop()
    image_warn = next(line for line in node_lines(run) if "no image received on /wrong/camera/image_raw" in line)
    assert "(no publisher)" in image_warn
    assert "/real/camera/image_raw [sensor_msgs/msg/Image]" in image_warn
    assert "set image_topics:=" in image_warn
    odom_warn = next(line for line in node_lines(run) if "no odometry received on /wrong/odom" in line)
    assert "/real/odom [nav_msgs/msg/Odometry]" in odom_warn and "set odom_topic:=" in odom_warn
    del odom
    # Throttled: one WARN per topic within the repeat period, not one per second.
    time.sleep(3.0)
    assert sum("no image received on /wrong/camera/image_raw" in line for line in node_lines(run)) == 1
    seconds = run.signal_group(signal.SIGINT)
    assert_clean_exit(run, run.wait_exit(10.0), seconds, "SIGINT")


# --- time -----------------------------------------------------------------------------------
BAG_T0 = 1_600_000_000  # stamps of a recording made long ago (2020)


class SimClock:
    """What ``ros2 bag play --clock`` does: /clock advancing from BAG_T0, image stamps on that clock."""

    def __init__(self, client: Any) -> None:
        self.pub = client.create_publisher(Clock, "/clock", 10)
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> tuple[int, int]:
        return divmod(BAG_T0 * 1_000_000_000 + int((time.monotonic() - self.start) * 1e9), 1_000_000_000)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = self.now()
            self.pub.publish(msg)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def _camera_status(diag: list[DiagnosticArray], topic: str) -> tuple[Any, Any, dict[str, str]] | None:
    """(array, status, values) of the newest diagnostics of ``topic`` once it processed a frame."""
    for array in reversed(diag):
        for status in array.status:
            if status.name.endswith(f"camera {topic}"):
                values = {kv.key: kv.value for kv in status.values}
                if values.get("processed", "0") != "0":
                    return array, status, values
    return None


def test_use_sim_time_replay_measures_frame_age_on_the_sim_clock(ros2_env, client, launch) -> None:
    rec = Recorder()
    client.create_subscription(DiagnosticArray, "/diagnostics", rec.callback("diag"), 50)
    clock = SimClock(client)
    try:
        run = launch(f"model:={MODEL}", "device:=cpu", "image_topics:=[/replay/image_raw]", "use_sim_time:=true")
        run.wait_line(r"ready: device cpu", 90.0)
        cam = Publisher(client, "/replay/image_raw", rate_hz=5.0, stamp=clock.now)
        try:
            array, status, values = wait_for(lambda: _camera_status(rec.get("diag"), "/replay/image_raw"), 30.0,
                                             "diagnostics of a processed replayed frame")
        finally:
            cam.stop()
        assert values["clock"] == "sim time (/clock)"
        assert abs(array.header.stamp.sec - BAG_T0) < 600, "diagnostics are stamped on the sim clock"
        age = float(values["frame_age_ms"])
        # stamp -> processing on the bag's clock, not years; the node's sim time may trail a fresh
        # stamp by a /clock period (10 ms here) plus transport, hence a small negative age is allowed.
        assert -200.0 <= age < 10_000.0, values
        assert "differ" not in status.message and "behind" not in status.message, status.message
        seconds = run.signal_group(signal.SIGINT)
        assert_clean_exit(run, run.wait_exit(10.0), seconds, "SIGINT")
    finally:
        clock.stop()


def test_without_sim_time_bag_stamps_are_reported_as_another_clock(ros2_env, client, launch) -> None:
    rec = Recorder()
    client.create_subscription(DiagnosticArray, "/diagnostics", rec.callback("diag"), 50)
    run = launch(f"model:={MODEL}", "device:=cpu", "image_topics:=[/bag/image_raw]")
    run.wait_line(r"ready: device cpu", 90.0)
    cam = Publisher(client, "/bag/image_raw", rate_hz=5.0, stamp=lambda: (BAG_T0, 0))
    try:
        array, status, values = wait_for(lambda: _camera_status(rec.get("diag"), "/bag/image_raw"), 30.0,
                                         "diagnostics of a processed frame")
        run.wait_line(r"WARN.*image stamps are \d+ s behind the node's clock", 20.0)
    finally:
        cam.stop()
    assert values["clock"] == "system time"
    years = float(values["frame_age_ms"]) / 1000.0 / 86400.0 / 365.0
    assert years > 1.0, values  # honest number: stamp vs node clock ...
    assert "behind the node's clock" in status.message and "use_sim_time:=true" in status.message  # ... and why
    level = int.from_bytes(status.level, "little") if isinstance(status.level, bytes) else int(status.level)
    assert level == 0, "the frames are still processed: said in the message and the log, not an alarm"
    seconds = run.signal_group(signal.SIGINT)
    assert_clean_exit(run, run.wait_exit(10.0), seconds, "SIGINT")
