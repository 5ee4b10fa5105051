"""Benchmark localize_node end to end (real rclpy over Fast DDS, the node in its own process).

Part 1, overhead: for each frame, the bare pipeline (``DescriptorExtractor.extract`` +
``PlaceMap.search`` on the decoded frame, plus the brute-force search of the earlier frames that
the node's online database does, in a helper process without ROS, timed there) and the node
(publish a nav_msgs/Odometry and a sensor_msgs/Image, wait for its ``~/loop_candidates``, which it
publishes for every query whatever the decision) run back to back, so both see the same machine
load; both are separate processes started the same way, both idle between frames. Whichever runs
second finds the CPU as the other left it (caches, memory): on a 2-core VM the node's extra time
per frame was 3-9 ms larger in the steps where it ran second than where it ran first, so by
default the order alternates (``--order``) and the extra time is also printed for each order. The node runs
its default decision: sequences aligned by odometry (the drive follows the map's keyframes,
``--spacing`` m apart, so after ``sequence_keyframes`` frames the matches are accepted and the
along-track offset is computed) and online loop closure (``--no-online``, ``--no-odometry``: without).
The odometry at a frame's stamp is published ``--odom-lead-ms`` (10) before the frame, outside the
timed window: on a robot it arrives well before the frame (exposure, readout, the camera driver).
Published at the same instant (``--odom-lead-ms 0``), the node's executor was still handling it
when the frame arrived and the node's extra time per frame was ~2 ms larger.
With ``--overhead-cameras N`` one frame goes to each of N camera topics at once and the node's time
runs until all N answered; the bare pipeline extracts the N frames as one batch. Prints the
median/p90 of each and the
ratio node / bare (target: overhead <= 10 %, i.e. ratio <= 1.10).

Part 2, load: 4 cameras x 30 Hz into a fresh node (prebuilt map + online loop closure) for
``--duration`` seconds: processed rate, dropped frames, p50/p99 latency (image stamp -> its
``~/loop_candidates`` received), and the node's RSS over time.

    .venv/bin/python -m scripts.bench_node                       # ViT-S/14 at 224 x 224, 120 s load
    .venv/bin/python -m scripts.bench_node --arch tiny --duration 30   # a quick smoke run

Models are randomly initialised (no weights are downloaded); speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from scripts.node_harness import NodeProcess

REPO = Path(__file__).resolve().parents[1]
NORDLAND = REPO.parent / "shared" / "data" / "nordland64x32" / "summer"
ARCHS = {
    "tiny": {"backbone_arch": "vit_small_patch14_dinov2",
             "backbone_config": {"embed_dim": 32, "depth": 2, "num_heads": 2},
             "agg_arch": "QAA", "agg_config": {"num_channels": 32, "num_queries": 8, "num_clusters": 4,
                                               "cluster_dim": 8, "feature_nheads": 2, "score_nheads": 2}},
    "small": {"backbone_arch": "vit_small_patch14_dinov2", "backbone_config": {}, "agg_arch": "QAA",
              "agg_config": {}},
    "base": {"backbone_arch": "vit_base_patch14_dinov2", "backbone_config": {}, "agg_arch": "QAA",
             "agg_config": {}},
}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def load_frames(count: int, width: int, height: int) -> list[np.ndarray]:
    """``count`` RGB frames of width x height: Nordland frames upscaled (or noise without the data)."""
    files = sorted(NORDLAND.glob("images-*.png"))[:: max(1, 2400 // max(count, 1))][:count]
    if len(files) < count:
        print(f"note: {NORDLAND} absent; using random frames", file=sys.stderr)
        rng = np.random.default_rng(0)
        return [rng.integers(0, 255, (height, width, 3), np.uint8) for _ in range(count)]
    return [cv2.resize(cv2.imread(str(f))[:, :, ::-1], (width, height), interpolation=cv2.INTER_LINEAR)
            for f in files]


def start_node(name: str, params: dict, workdir: Path) -> NodeProcess:
    """localize_node in a subprocess, configured through a params file in ``workdir``, logging there."""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return NodeProcess("localize_node", params, name=name, params_dir=workdir, log=workdir / f"{name}.log",
                       cwd=None, env=env)


def bare_worker(workdir: Path, device: str, torch_threads: int, online: bool) -> int:
    """Serve "frame index" lines on stdin with "milliseconds" lines: extract + search, no ROS.
    ``online``: also the node's online-database search (similarities to every earlier descriptor)."""

    def serve() -> None:
        from qaa_vpr_ros.extractor import DescriptorExtractor
        from qaa_vpr_ros.maps import PlaceMap
        from qaa_vpr_ros.model import load_model

        if torch_threads > 0:  # as the node does with its torch_threads parameter
            import torch

            torch.set_num_threads(torch_threads)
        extractor = DescriptorExtractor(load_model(workdir / "model"), device=device)
        place_map = PlaceMap.load(workdir / "map", expected_fingerprint=extractor.fingerprint)
        frames = np.load(workdir / "frames.npy", allow_pickle=False)
        earlier = np.zeros((64, extractor.dim), np.float32)  # grown by doubling, as the node's table
        count = 0
        print("ready", flush=True)
        for line in sys.stdin:
            batch = [frames[int(i)] for i in line.split(",")]
            t0 = time.perf_counter()
            desc = extractor.extract(batch, "rgb")
            place_map.search(desc, 5)
            if online:
                for d in desc:
                    np.argsort(-(earlier[:count] @ d))[:40]
                    if count == len(earlier):
                        earlier = np.concatenate([earlier, np.zeros_like(earlier)])
                    earlier[count] = d
                    count += 1
            print(f"{1000 * (time.perf_counter() - t0):.4f}", flush=True)

    # Exactly like the node: torch is imported, the model loaded and run in one non-main thread.
    # (Which thread first used torch changes its CPU threading: under load on a 2-core box,
    # running in a thread other than the one that imported torch was several times faster.)
    worker = threading.Thread(target=serve)
    worker.start()
    worker.join()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="small")
    parser.add_argument("--image-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--camera-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"),
                        help="published image size (rgb8)")
    parser.add_argument("--frames", type=int, default=40,
                        help="frames timed in part 1 (the node accepts matches from about the 10th, when its "
                             "sequences have sequence_min_support queries)")
    parser.add_argument("--map-size", type=int, default=1000, help="keyframes in the map (frames + random)")
    parser.add_argument("--spacing", type=float, default=10.0, help="metres between map keyframes and frames")
    parser.add_argument("--odometry", action=argparse.BooleanOptionalAction, default=True,
                        help="part 1 publishes odometry along the map's keyframes")
    parser.add_argument("--odom-lead-ms", type=float, default=10.0,
                        help="part 1: the odometry is published this long before the frame (outside the timed "
                             "window), as a robot's odometry at a frame's stamp arrives before the frame itself "
                             "(exposure, readout, driver); 0: both at once, the node handling the odometry as "
                             "the frame arrives")
    parser.add_argument("--online", action=argparse.BooleanOptionalAction, default=True,
                        help="part 1 with online loop closure (the node's default)")
    parser.add_argument("--cameras", type=int, default=4, help="cameras in part 2")
    parser.add_argument("--overhead-cameras", type=int, default=1,
                        help="cameras in part 1: each step sends one frame to each at once")
    parser.add_argument("--rate", type=float, default=30.0, help="Hz per camera in part 2")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of part 2 (0: skip)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", type=int, default=0, help="the node's torch_threads (0: default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--order", choices=("alternate", "bare-first", "node-first"), default="alternate",
                        help="part 1: which of the two runs first in each step (alternate: bare on even steps, "
                             "the node on odd ones; whichever runs second finds the CPU after the other)")
    parser.add_argument("--verbose", action="store_true", help="print each frame of part 1")
    parser.add_argument("--bare-worker", type=Path, help=argparse.SUPPRESS)  # internal: part 1's baseline
    args = parser.parse_args(argv)
    if args.bare_worker:
        return bare_worker(args.bare_worker, args.device, args.torch_threads, args.online)

    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    import torch
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, PointCloud2

    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.maps import Keyframe, PlaceMap
    from qaa_vpr_ros.model import build_model, load_model, save_checkpoint

    workdir = Path(tempfile.mkdtemp(prefix="bench_node_"))
    torch.manual_seed(0)
    model_dir = save_checkpoint(build_model(ARCHS[args.arch], image_size=tuple(args.image_size)).eval(),
                                workdir / "model")
    extractor = DescriptorExtractor(load_model(model_dir), device=args.device)
    frames = load_frames(args.frames, *args.camera_size)
    desc = extractor.extract(frames, "rgb")
    rng = np.random.default_rng(0)
    filler = rng.standard_normal((max(args.map_size - len(frames), 0), extractor.dim)).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    all_desc = np.concatenate([desc, filler])
    place_map = PlaceMap.create(extractor.dim, extractor.fingerprint)
    place_map.add(all_desc, [Keyframe(id=i, stamp_sec=1000 + i, stamp_nanosec=0, camera="bench", frame_id="cam",
                                      position=(args.spacing * i, 0.0, 0.0)) for i in range(len(all_desc))])
    place_map.save(workdir / "map")
    np.save(workdir / "frames.npy", np.stack(frames), allow_pickle=False)
    print(f"model {args.arch} at {args.image_size}, descriptor dim {extractor.dim}, device {extractor.device}, "
          f"torch_threads {args.torch_threads or 'default'}, map {len(place_map)} keyframes, "
          f"camera {args.camera_size[0]}x{args.camera_size[1]} rgb8; part 1: odometry {args.odometry} "
          f"(sent {args.odom_lead_ms:g} ms before each frame), online loop closure {args.online}, "
          f"order {args.order}")

    rclpy.init()
    client = rclpy.create_node("bench_client")
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    threading.Thread(target=executor.spin, daemon=True).start()
    lock = threading.Lock()
    # stamp -> perf_counter at the receipt of each of its tables (one per database: map, then online)
    received: dict[tuple[int, int], list[float]] = {}
    diag: dict[str, dict[str, str]] = {}

    arrived = threading.Event()  # part 1 waits on it: no polling that would steal the node's CPU

    def on_match(msg: PointCloud2) -> None:
        now = time.perf_counter()
        with lock:
            received.setdefault((msg.header.stamp.sec, msg.header.stamp.nanosec), []).append(now)
        arrived.set()

    def on_diag(msg: DiagnosticArray) -> None:
        with lock:
            for s in msg.status:
                diag[s.name] = {kv.key: kv.value for kv in s.values} | {"message": s.message}

    client.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    # The node's defaults (image QoS and decision included; every frame answers on ~/loop_candidates)
    # but for the files it needs, the device and the thread count under test.
    base_params = {"model": str(model_dir), "map": str(workdir / "map"), "device": args.device,
                   "torch_threads": args.torch_threads}

    def wait_ready(name: str, node: NodeProcess) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with lock:
                state = diag.get(f"/{name}: localizer", {}).get("state")
            if state == "ready":
                return
            if state == "error" or node.poll() is not None:
                raise SystemExit(f"{name} failed: {diag.get(f'/{name}: localizer')}; log in {node.log.name}")
            time.sleep(0.1)
        raise SystemExit(f"{name} not ready after 300 s; log in {node.log.name}")

    def image_msg(frame: np.ndarray, topic_frame: str = "camera") -> Image:
        msg = Image(height=frame.shape[0], width=frame.shape[1], encoding="rgb8", is_bigendian=0,
                    step=frame.shape[1] * 3, data=frame.tobytes())
        msg.header.frame_id = topic_frame
        return msg

    results: dict = {"arch": args.arch, "image_size": list(args.image_size), "camera_size": list(args.camera_size),
                     "device": str(extractor.device), "map_keyframes": len(place_map)}

    # --- part 1: overhead ------------------------------------------------------------------------
    name = "bench_overhead"
    cams = args.overhead_cameras
    overhead_topics = [f"/bench/overhead{c}" for c in range(cams)]
    overhead_params = {"image_topics": overhead_topics, "online_loop_closure": args.online}
    if cams > 1:
        # Several 230 kB images published at once by one process lose fragments in Fast DDS's
        # default transports: with the default best-effort QoS those frames never arrive and the
        # step would wait forever; reliable QoS repairs them, at its 3 s heartbeat (a stall).
        overhead_params["reliable"] = True
    if args.odometry:
        overhead_params["odom_topic"] = "/bench/odom"
    node = start_node(name, base_params | overhead_params, workdir)
    overhead_pubs = [client.create_publisher(Image, t, 10) for t in overhead_topics]
    odom_pub = client.create_publisher(Odometry, "/bench/odom", 50)
    client.create_subscription(PointCloud2, f"/{name}/loop_candidates", on_match, 50)
    wait_ready(name, node)
    while any(p.get_subscription_count() == 0 for p in overhead_pubs) or (
            args.odometry and odom_pub.get_subscription_count() == 0):
        time.sleep(0.05)
    bare_proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.bench_node", "--bare-worker", str(workdir), "--device", args.device,
         "--torch-threads", str(args.torch_threads), "--online" if args.online else "--no-online"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"))
    while bare_proc.stdout.readline().strip() != "ready":
        if bare_proc.poll() is not None:
            raise SystemExit("the bare-pipeline helper process failed to start")
    bare_ms, node_ms, first_ms = [], [], []
    node_first_steps: list[bool] = []  # per timed step: whether the node ran before the bare pipeline
    per_frame_tables = 2 if args.online else 1  # ~/loop_candidates: the map's, then the online database's

    def run_bare(step: list[int]) -> float:
        """The bare pipeline on the step's frames: its own timing, in seconds."""
        bare_proc.stdin.write(",".join(map(str, step)) + "\n")
        return float(bare_proc.stdout.readline()) / 1000.0

    def run_node(i: int, step: list[int]) -> tuple[float, list[list[float]]]:
        """Publish the step's odometry and frames; wait for every table. (publish time, arrivals per camera)"""
        step_msgs = [image_msg(frames[k]) for k in step]
        for c, msg in enumerate(step_msgs):
            msg.header.stamp.sec, msg.header.stamp.nanosec = 2000 + i, c
        if args.odometry:  # the pose at the frames' stamps, sent first (the node waits for it otherwise):
            for nanosec in (0, 1_000_000):  # at camera 0's stamp and just after the last camera's
                odom = Odometry()
                odom.header.frame_id, odom.child_frame_id = "odom", "base_link"
                odom.header.stamp.sec, odom.header.stamp.nanosec = 2000 + i, nanosec
                odom.pose.pose.position.x = args.spacing * max(i - 1, 0)
                odom.pose.pose.orientation.w = 1.0
                odom_pub.publish(odom)
            time.sleep(args.odom_lead_ms / 1000.0)  # before t0: a robot's odometry precedes its frames
        t0 = time.perf_counter()
        for pub, msg in zip(overhead_pubs, step_msgs, strict=True):
            pub.publish(msg)
        deadline = t0 + 120
        while time.perf_counter() < deadline:
            arrived.clear()  # before the check: a table arriving after it still wakes the wait below
            with lock:
                arrivals = [received.get((2000 + i, c), []) for c in range(cams)]
            if all(len(a) >= per_frame_tables for a in arrivals):
                return t0, arrivals
            arrived.wait(timeout=1.0)
        raise SystemExit(f"no loop_candidates for step {i} within 120 s; log in {node.log.name}")

    for i in range(len(frames) + 1):  # the first pair warms both up
        step = [(max(i - 1, 0) + 5 * c) % len(frames) for c in range(cams)]
        node_first = args.order == "node-first" or (args.order == "alternate" and i % 2 == 1)
        if node_first:
            t0, arrivals = run_node(i, step)
            bare = run_bare(step)
        else:
            bare = run_bare(step)
            t0, arrivals = run_node(i, step)
        got = max(a[-1] for a in arrivals)
        if i > 0:
            bare_ms.append(1000 * bare)
            node_ms.append(1000 * (got - t0))
            node_first_steps.append(node_first)
            first_ms.append(1000 * (max(a[0] for a in arrivals) - t0))
            if args.verbose:
                with lock:
                    inf = diag.get(f"/{name}: localizer", {}).get("inference_ms")
                print(f"  frame {i}: bare {1000 * bare:.1f} ms, node {1000 * (got - t0):.1f} ms "
                      f"(node inference at the last diagnostics: {inf} ms)", flush=True)
    time.sleep(1.5)  # one more /diagnostics: the accepted count covers every frame
    with lock:
        accepted = diag.get(f"/{name}: localizer", {}).get("accepted_matches", "?")
    node.stop(timeout=20)
    bare_proc.stdin.close()
    bare_proc.wait(timeout=30)
    ratio = statistics.median(node_ms) / statistics.median(bare_ms)
    pair_ratios = [n / b for n, b in zip(node_ms, bare_ms, strict=True)]
    print(f"\n[overhead] {len(bare_ms)} steps of {cams} camera(s), interleaved; the node accepted {accepted} "
          f"map matches")
    print(f"  bare extract+search  median {statistics.median(bare_ms):8.2f} ms   p90 {percentile(bare_ms, 90):8.2f} ms")
    print(f"  node publish->match  median {statistics.median(node_ms):8.2f} ms   p90 {percentile(node_ms, 90):8.2f} ms"
          f"   (every ~/loop_candidates of the frame{'s' if cams > 1 else ''} received)")
    if args.online:
        print(f"  node publish->first  median {statistics.median(first_ms):8.2f} ms   p90 "
              f"{percentile(first_ms, 90):8.2f} ms   (the map's answer; the online database's follows)")
    print(f"  ratio node/bare: median-of-medians {ratio:.3f}, median per-frame {statistics.median(pair_ratios):.3f}"
          f"  (overhead {100 * (ratio - 1):+.1f} %, target <= +10 %)")
    extra = statistics.median([n - b for n, b in zip(node_ms, bare_ms, strict=True)])
    print(f"  median per-frame node - bare: {extra:+.2f} ms (DDS transport, decoding, deciding, publishing)")
    for label, first in (("ran first", True), ("ran second", False)):
        diffs = [n - b for n, b, f in zip(node_ms, bare_ms, node_first_steps, strict=True) if f == first]
        if diffs:
            print(f"    steps where the node {label}: {len(diffs)}, "
                  f"median node - bare {statistics.median(diffs):+.2f} ms")
    results["overhead"] = {"frames": len(bare_ms), "cameras": cams, "bare_ms_median": statistics.median(bare_ms),
                           "node_ms_median": statistics.median(node_ms), "ratio": ratio,
                           "node_first_ms_median": statistics.median(first_ms),
                           "ratio_per_frame_median": statistics.median(pair_ratios),
                           "node_minus_bare_ms_median": extra, "accepted_matches": accepted,
                           "odometry": args.odometry, "odom_lead_ms": args.odom_lead_ms,
                           "online_loop_closure": args.online, "order": args.order}

    # --- part 2: N cameras at R Hz ---------------------------------------------------------------
    if args.duration > 0:
        name = "bench_load"
        topics = [f"/bench/cam{c}" for c in range(args.cameras)]
        node = start_node(name, base_params | {"image_topics": topics, "online_loop_closure": True,
                                                "exclude_recent_s": 30.0}, workdir)
        pubs = [client.create_publisher(Image, t, 10) for t in topics]
        with lock:
            received.clear()
        client.create_subscription(PointCloud2, f"/{name}/loop_candidates", on_match, 200)
        wait_ready(name, node)
        while any(p.get_subscription_count() == 0 for p in pubs):
            time.sleep(0.05)
        cam_msgs = [[image_msg(frames[(c * 7 + k) % len(frames)]) for k in range(len(frames))]
                    for c in range(args.cameras)]
        sent: dict[tuple[int, int], float] = {}
        rss: list[tuple[float, float, str]] = []
        period = 1.0 / args.rate
        start = time.perf_counter()
        tick, next_sample = 0, 0.0
        while (elapsed := time.perf_counter() - start) < args.duration:
            stamp_ns = time.time_ns()
            for c, p in enumerate(pubs):
                msg = cam_msgs[c][tick % len(frames)]
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns + c, 1_000_000_000)
                sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.perf_counter()
                p.publish(msg)
            if elapsed >= next_sample:
                with lock:
                    online = diag.get(f"/{name}: localizer", {}).get("online_keyframes", "?")
                rss.append((elapsed, node.rss_mb(), online))
                next_sample += 10.0
            tick += 1
            time.sleep(max(0.0, start + tick * period - time.perf_counter()))
        publish_s = time.perf_counter() - start
        time.sleep(5.0)  # let the last batch finish and diagnostics refresh
        rss.append((time.perf_counter() - start, node.rss_mb(),
                    diag.get(f"/{name}: localizer", {}).get("online_keyframes", "?")))
        with lock:
            latencies = [1000 * (received[s][-1] - t) for s, t in sent.items() if s in received]
            cams = {t: dict(diag.get(f"/{name}: camera {t}", {})) for t in topics}
            loc = dict(diag.get(f"/{name}: localizer", {}))
        node.stop(timeout=20)
        published = len(sent)
        processed = len(latencies)
        dropped = sum(int(c.get("dropped", 0)) for c in cams.values())
        print(f"\n[load] {args.cameras} cameras x {args.rate:g} Hz for {publish_s:.0f} s "
              f"(published {published}, {published / publish_s:.1f} msg/s achieved)")
        print(f"  processed {processed} ({processed / publish_s:.2f} frames/s), dropped by the node {dropped} "
              f"(one-slot buffers), not delivered/unaccounted {published - processed - dropped}")
        print(f"  latency stamp->loop_candidates  p50 {percentile(latencies, 50):.0f} ms  "
              f"p99 {percentile(latencies, 99):.0f} ms  max {max(latencies, default=float('nan')):.0f} ms")
        print(f"  node: inference {loc.get('inference_ms')} ms/batch (batch {loc.get('batch_size')}), "
              f"search {loc.get('search_ms')} ms, online keyframes {loc.get('online_keyframes')}")
        print("  node RSS over time:  " + "  ".join(f"{t:.0f}s {m:.0f}MB ({k} kf)" for t, m, k in rss))
        results["load"] = {"cameras": args.cameras, "rate_hz": args.rate, "seconds": publish_s,
                           "published": published, "processed": processed, "dropped": dropped,
                           "processed_fps": processed / publish_s,
                           "latency_ms_p50": percentile(latencies, 50),
                           "latency_ms_p99": percentile(latencies, 99), "rss_mb": rss,
                           "per_camera": cams, "localizer": loc}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    executor.shutdown()
    client.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
