"""Ctrl-C check for localize_node under the real `ros2 launch` (docs/NODE.md, "Exit behaviour").

Runs ``ros2 launch qaa_vpr_ros localize.launch.py`` N times with the bundled model, alternately
idle and busy (640x480 images at 30 Hz from a helper process), sends SIGINT to launch's process
group as a terminal does, and counts the runs that exit 0 with "process has finished cleanly", no
traceback or error line, within 2 s. Needs a colcon install of the package and ROS 2's launch
tooling (a ROS 2 installation, or ``make ros2-launch``), both sourced:

    source .ros2-launch/env.sh && source <ws>/install/setup.bash
    ROS_DOMAIN_ID=182 .venv/bin/python scripts/sigint_runs.py 20
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

MODEL = Path(__file__).resolve().parents[1] / "models" / "nordland_tiny"
SHUTDOWN_S = 2.0
PUBLISHER = """
import time
import numpy as np
import rclpy
from sensor_msgs.msg import Image
rclpy.init()
pub = rclpy.create_node("sigint_runs_camera").create_publisher(Image, "/sigint_runs/image", 10)
data = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8).tobytes()
while True:
    msg = Image(height=480, width=640, encoding="rgb8", step=1920, data=data)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
    pub.publish(msg)
    time.sleep(1 / 30)
"""
PROBLEM = re.compile(r"Traceback|KeyboardInterrupt|RCLError|ERROR|exception")


def one_run(busy: bool) -> tuple[bool, float, str]:
    """(clean, seconds from SIGINT to launch's exit, launch output)."""
    launch = subprocess.Popen(
        ["ros2", "launch", "qaa_vpr_ros", "localize.launch.py", f"model:={MODEL}", "device:=cpu",
         "image_topics:=[/sigint_runs/image]"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(line.rstrip() for line in launch.stdout), daemon=True).start()
    deadline = time.monotonic() + 120.0
    while not any("ready:" in line for line in list(lines)) and time.monotonic() < deadline:
        time.sleep(0.05)
    camera = subprocess.Popen([sys.executable, "-c", PUBLISHER]) if busy else None
    if camera is not None:
        time.sleep(5.0)  # the node is processing frames
    sent = time.monotonic()
    os.killpg(launch.pid, signal.SIGINT)
    code = launch.wait(timeout=60.0)
    seconds = time.monotonic() - sent
    if camera is not None:
        camera.kill()
        camera.wait()
    time.sleep(0.3)  # the reader thread takes the last lines
    out = "\n".join(lines)
    clean = code == 0 and "process has finished cleanly" in out and not PROBLEM.search(out)
    return clean and seconds <= SHUTDOWN_S, seconds, out


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    good, worst = 0, 0.0
    for i in range(runs):
        busy = i % 2 == 1
        ok, seconds, out = one_run(busy)
        good += ok
        worst = max(worst, seconds)
        print(f"run {i + 1:2d} {'busy' if busy else 'idle'}: {'clean' if ok else 'NOT CLEAN'}, "
              f"launch gone {seconds:.2f} s after SIGINT", flush=True)
        if not ok:
            print(out)
    print(f"{good} of {runs} runs exit 0 without traceback or error line within {SHUTDOWN_S} s; slowest {worst:.2f} s")
    return 0 if good == runs else 1


if __name__ == "__main__":
    sys.exit(main())
