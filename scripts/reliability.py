"""``make reliability``: fuzz + faults + soak, then one table.

1. Fuzz: ``test/test_fuzz.py`` with ``--fuzz-examples`` cases per target (random seeds).
2. Faults: ``test/test_faults.py`` with ``--kills`` kill -9 per target (save, checkpoint, merge,
   build_map + resume), a full tmpfs, the node's camera publisher restarting / going silent /
   clock jumps.
3. Soak: ``localize_node`` (its own process, the tiny test model, online loop closure on, the
   online database capped at ``--cap`` keyframes) under 4 cameras x 30 Hz with 1 s bursts at
   200 Hz every 10 s, odometry driving a 300 m loop, for ``--soak-s`` seconds. Measured: node RSS
   every second and its slope (MB/h) over the second half of the soak once the cap was reached, latency image stamp ->
   ``~/loop_candidates`` (p50/p99), and whether every published frame is accounted for in
   /diagnostics (received = processed + dropped + gated + bad, + at most one waiting per camera).

Prints one table; exit status 1 when anything failed. Bounded: about 8 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from scripts.node_harness import NodeProcess, rss_mb, use_private_domain

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def run_pytest(test: str, env: dict[str, str], marker: str, timeout: float) -> tuple[dict[str, int], int, int, str]:
    """(counts printed on the ``marker`` line, passed, failed, tail of the output)."""
    proc = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", test], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    counts = {}
    for line in out.splitlines():
        if line.startswith(marker):
            counts = json.loads(line[len(marker):])
    passed = sum(int(n) for n in re.findall(r"(\d+) passed", out))
    failed = sum(int(n) for n in re.findall(r"(\d+) (?:failed|error)", out))
    if proc.returncode not in (0, 1) and not failed:
        failed = 1
    return counts, passed, failed, out[-3000:]


# --- soak ----------------------------------------------------------------------------------------
def soak(seconds: float, cap: int, workdir: Path) -> dict:
    import torch

    sys.path.insert(0, str(REPO / "test"))
    from conftest import TINY_CONFIG

    from qaa_vpr_ros.model import build_model, save_checkpoint

    torch.manual_seed(0)
    model = save_checkpoint(build_model(TINY_CONFIG, image_size=(56, 56)).eval(), workdir / "tiny")
    use_private_domain()
    cameras = [f"/soak/cam{i}" for i in range(4)]
    params = {"model": str(model), "image_topics": cameras, "transport": "raw", "reliable": True, "qos_depth": 50,
              "odom_topic": "/soak/odom", "online_loop_closure": True, "online_max_keyframes": cap,
              "exclude_recent_s": 5.0, "diagnostics_period_s": 0.5, "torch_threads": 1}
    node_proc = NodeProcess("localize_node", params, name="soak_node", params_dir=workdir, log=workdir / "node.log",
                            env=os.environ.copy())
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, PointCloud2

    rclpy.init()
    node = rclpy.create_node("soak_driver")
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    pubs = [node.create_publisher(Image, t, qos) for t in cameras]
    odom_pub = node.create_publisher(Odometry, "/soak/odom", qos)
    latencies: list[float] = []
    diag: dict[str, dict[str, str]] = {}
    lock = threading.Lock()

    def on_candidates(msg: PointCloud2) -> None:
        now = time.time()
        with lock:
            latencies.append(now - (msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec))

    def on_diag(msg: DiagnosticArray) -> None:
        with lock:
            for s in msg.status:
                if s.name.startswith("/soak_node:"):
                    diag[s.name.split(": ", 1)[1]] = {kv.key: kv.value for kv in s.values}

    node.create_subscription(PointCloud2, "/soak_node/loop_candidates", on_candidates, 1000)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 64, 3), np.uint8).tobytes() for _ in range(64)]
    published = [0] * len(cameras)
    rss: list[tuple[float, float]] = []
    cap_reached_at = None
    try:
        deadline = time.time() + 120.0
        while time.time() < deadline and not (diag.get("localizer", {}).get("state") == "ready"
                                               and all(p.get_subscription_count() for p in pubs)):
            if node_proc.poll() is not None:
                raise RuntimeError(f"the node exited with {node_proc.poll()}; see {workdir / 'node.log'}")
            time.sleep(0.2)
        start = time.time()
        next_frame = start
        frame = 0
        last_rss = 0.0
        while time.time() - start < seconds:
            t = time.time() - start
            rate = 200.0 if (t % 10.0) < 1.0 else 30.0  # 1 s bursts at 200 Hz every 10 s
            now = time.time()
            stamp_sec, stamp_ns = int(now), int((now % 1) * 1e9)
            angle = 2 * math.pi * ((t * 5.0) % 300.0) / 300.0  # 5 m/s around a 300 m loop
            odom = Odometry()
            odom.header.stamp.sec, odom.header.stamp.nanosec, odom.header.frame_id = stamp_sec, stamp_ns, "odom"
            odom.pose.pose.position.x, odom.pose.pose.position.y = 47.7 * math.cos(angle), 47.7 * math.sin(angle)
            odom.pose.pose.orientation.w = 1.0
            odom_pub.publish(odom)
            for i, pub in enumerate(pubs):
                msg = Image(height=64, width=64, encoding="rgb8", is_bigendian=0, step=192,
                            data=frames[(frame + 7 * i) % len(frames)])
                msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = stamp_sec, stamp_ns, "cam"
                pub.publish(msg)
                published[i] += 1
            frame += 1
            if now - last_rss >= 1.0:
                last_rss = now
                rss.append((t, rss_mb(node_proc.pid)))
                with lock:
                    thinned = int(diag.get("localizer", {}).get("online_thinned", "0") or 0)
                if thinned and cap_reached_at is None:
                    cap_reached_at = t
            next_frame += 1.0 / rate
            time.sleep(max(0.0, next_frame - time.time()))
            if node_proc.poll() is not None:
                raise RuntimeError(f"the node died during the soak; see {workdir / 'node.log'}")
        time.sleep(3.0)  # let the last batch and two diagnostics arrive
        with lock:
            final = {k: dict(v) for k, v in diag.items()}
            lat = np.asarray(latencies) * 1000.0
    finally:
        alive = node_proc.poll() is None
        node_proc.stop(timeout=20)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    accounted = True
    per_camera = []
    for i, topic in enumerate(cameras):
        d = final.get(f"camera {topic}", {})
        received = int(d.get("received", 0))
        counted = sum(int(d.get(k, 0)) for k in ("processed", "dropped", "gated", "bad_messages"))
        ok = received == published[i] and 0 <= received - counted <= 1
        accounted &= ok
        per_camera.append({"topic": topic, "published": published[i], "received": received,
                           "processed": int(d.get("processed", 0)), "dropped": int(d.get("dropped", 0)),
                           "gated": int(d.get("gated", 0)), "bad": int(d.get("bad_messages", 0)), "ok": ok})
    # The slope over the second half of the soak, once the cap was reached (start-up growth excluded).
    after = [(t, m) for t, m in rss if cap_reached_at is not None and t >= max(cap_reached_at, seconds / 2)
             and math.isfinite(m)]
    slope = math.nan
    if len(after) >= 10:
        ts, ms = np.array(after).T
        slope = float(np.polyfit(ts / 3600.0, ms, 1)[0])
    loc = final.get("localizer", {})
    return {"seconds": seconds, "cap": cap, "alive": alive, "accounted": accounted, "cameras": per_camera,
            "cap_reached_s": cap_reached_at, "rss_start_mb": rss[0][1] if rss else math.nan,
            "rss_end_mb": rss[-1][1] if rss else math.nan, "slope_mb_per_h": slope,
            "online_keyframes": loc.get("online_keyframes"), "online_memory_mb": loc.get("online_memory_mb"),
            "online_thinned": loc.get("online_thinned"), "latency_p50_ms": float(np.percentile(lat, 50))
            if len(lat) else math.nan, "latency_p99_ms": float(np.percentile(lat, 99)) if len(lat) else math.nan,
            "queries": len(lat)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz-examples", type=int, default=150, help="fuzz cases per target (default 150)")
    parser.add_argument("--kills", type=int, default=3, help="kill -9 per fault target (default 3)")
    parser.add_argument("--soak-s", type=float, default=180.0, help="soak duration in seconds (default 180)")
    parser.add_argument("--cap", type=int, default=300, help="online_max_keyframes during the soak (default 300)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    started = time.time()
    fuzz, fuzz_pass, fuzz_fail, fuzz_out = run_pytest(
        "test/test_fuzz.py", {"QAA_FUZZ_EXAMPLES": str(args.fuzz_examples), "QAA_FUZZ_RANDOM": "1"}, "FUZZ_CASES ",
        timeout=900)
    faults, fault_pass, fault_fail, fault_out = run_pytest(
        "test/test_faults.py", {"QAA_FAULT_KILLS": str(args.kills)}, "FAULTS_INJECTED ", timeout=900)
    skipped = re.findall(r"SKIPPED \[\d+\] ([^\n]+)", fault_out)
    with tempfile.TemporaryDirectory(prefix="qaa_soak_") as tmp:
        try:
            soaked = soak(args.soak_s, args.cap, Path(tmp))
        except Exception as err:  # report, count as a failure
            soaked = {"error": f"{type(err).__name__}: {err}"}
    soak_fail = int("error" in soaked or not soaked.get("alive") or not soaked.get("accounted"))
    rows = [("fuzz: " + k, f"{v} cases", "") for k, v in sorted(fuzz.items())]
    rows.append(("fuzz (all targets)", f"{sum(fuzz.values())} cases", str(fuzz_fail)))
    rows += [("faults: " + k, f"{v} injected", "") for k, v in sorted(faults.items())]
    rows.append(("faults (all targets)", f"{sum(faults.values())} injected", str(fault_fail)))
    if "error" in soaked:
        rows.append(("soak", soaked["error"], "1"))
    else:
        cams = soaked["cameras"]
        rows.append((f"soak: 4 cameras x 30 Hz, 200 Hz bursts, {soaked['seconds']:.0f} s",
                     f"{sum(c['published'] for c in cams)} frames published, {sum(c['received'] for c in cams)} "
                     f"received, {sum(c['processed'] for c in cams)} processed, {sum(c['dropped'] for c in cams)} "
                     f"dropped (counted), {sum(c['gated'] for c in cams)} gated; every frame accounted for: "
                     f"{'yes' if soaked['accounted'] else 'NO'}", str(soak_fail)))
        at = soaked["cap_reached_s"]
        reached = f"reached at {at:.0f} s" if at is not None else "never reached"
        rows.append((f"soak: memory (cap {soaked['cap']} keyframes, {reached})",
                     f"slope after the cap {soaked['slope_mb_per_h']:+.1f} MB/h; RSS {soaked['rss_start_mb']:.0f} -> "
                     f"{soaked['rss_end_mb']:.0f} MB; online {soaked['online_keyframes']} keyframes, "
                     f"{soaked['online_memory_mb']} MB, {soaked['online_thinned']} thinned", ""))
        rows.append(("soak: latency image stamp -> ~/loop_candidates",
                     f"p50 {soaked['latency_p50_ms']:.0f} ms, p99 {soaked['latency_p99_ms']:.0f} ms "
                     f"({soaked['queries']} queries)", ""))
    failures = fuzz_fail + fault_fail + soak_fail
    width = max(len(r[0]) for r in rows)
    print(f"\nmake reliability ({time.time() - started:.0f} s)")
    print(f"| {'target':<{width}} | result | failures |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for name, result, fails in rows:
        print(f"| {name:<{width}} | {result} | {fails} |")
    print(f"| {'total':<{width}} | fuzz {fuzz_pass} tests passed, faults {fault_pass} passed | {failures} |")
    for reason in skipped:
        print(f"skipped: {reason}")
    if fuzz_fail:
        print(fuzz_out)
    if fault_fail:
        print(fault_out)
    if args.json:
        args.json.write_text(json.dumps({"fuzz": fuzz, "faults": faults, "soak": soaked, "failures": failures},
                                        indent=2, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
