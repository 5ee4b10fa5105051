"""End-to-end demo: map a summer drive, then localize the winter drive with the live ROS 2 node.

1. Records the summer route as a real rosbag2 (MCAP) with a camera and odometry (rosbags writer).
2. Builds a map from it with ``build_map`` (the product's map builder).
3. Starts ``localize_node`` (real rclpy over Fast DDS, private domain) on that map, publishes the
   winter route's images into it and collects ``~/place_match``.
4. The node runs with its default parameters (config/localize.yaml) plus the odometry topic: it
   publishes a place match only when the sequence evidence is confident. Prints the precision
   (accepted matches within +-2 frames of the true place) and recall (correct accepted matches
   per winter frame) and writes a PNG of the matches.

``--replay`` replaces step 3's live node by its decision code run offline on the same map and
winter frames (:func:`qaa_vpr_ros.decision.replay.replay_map_queries`, the node's parameters, one
frame at a time with its odometry pose): the same figures in seconds, no DDS. The doc test checks
the README's figures with it (see :func:`replay_localize` for when the live run can differ).

Then the SLAM part (``scripts/demo_slam.py``; ``--no-slam`` or ``--replay`` skip it) and the RGB-D
relocalization part (``scripts/demo_rgbd.py``, on the TUM RGB-D frames shipped in
``data/tum_fr1_rpy_mini``, in-process; ``--no-rgbd`` skips it).

Default: held-out Nordland places shipped in ``data/nordland_heldout`` (places 1920-2399, which the
bundled model never saw) and the model bundled in ``models/nordland_tiny`` (trained with
``training/configs/nordland_cpu.yaml`` on places 0-1919); a random tiny model is used, and said
so, when that folder is missing. Nothing outside the repository is read unless ``--data`` says so.

    python -m scripts.demo --out demo_out [--model DIR] [--places 120] [--data DIR] [--replay] [--no-rgbd]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np

from qaa_vpr_ros.paths import expand_path, path_argument
from scripts.nordland_route import CAMERA_TOPIC, DEFAULT_DATA, ODOM_TOPIC, REPO, build_route_map, route_images

BUNDLED_MODEL = REPO / "models" / "nordland_tiny"
FRAME_SPACING_M = 10.0  # one Nordland frame every 10 video frames, ~10 m apart
START_NS = 1_700_000_000 * 10**9
TOLERANCE_FRAMES = 2
# localize_node's parameters in the demo (besides model and map): its defaults plus these.
NODE_PARAMETERS = {"image_topics": [CAMERA_TOPIC], "transport": "raw", "reliable": True,
                   "online_loop_closure": False, "odom_topic": ODOM_TOPIC, "device": "auto"}


def write_route_bag(path: Path, images: list[np.ndarray]) -> None:
    """A rosbag2 (MCAP) of the drive: sensor_msgs/Image at 2 Hz and nav_msgs/Odometry at 20 Hz."""
    from qaa_vpr_ros.bag_writer import BagWriter, image_message, odometry_message

    period_ns = 500_000_000
    with BagWriter(path, "mcap") as bag:
        bag.add_topic(CAMERA_TOPIC, "sensor_msgs/msg/Image")
        bag.add_topic(ODOM_TOPIC, "nav_msgs/msg/Odometry")
        end_ns = START_NS + len(images) * period_ns
        for stamp_ns in range(START_NS - period_ns, end_ns + period_ns, 50_000_000):
            x = (stamp_ns - START_NS) / period_ns * FRAME_SPACING_M
            bag.write(ODOM_TOPIC, stamp_ns, odometry_message(stamp_ns, (x, 0.0, 0.0), frame_id="map"))
        for i, image in enumerate(images):
            stamp_ns = START_NS + i * period_ns
            bag.write(CAMERA_TOPIC, stamp_ns, image_message(image, stamp_ns, "camera"))


def demo_model(out: Path, requested: str | None) -> tuple[Path, str]:
    """The model folder to use and how it was chosen."""
    if requested:
        return Path(requested), f"given: {requested}"
    if (BUNDLED_MODEL / "model.safetensors").is_file():
        return BUNDLED_MODEL, f"bundled: {BUNDLED_MODEL.relative_to(REPO)} (trained on other Nordland places)"
    import torch

    from qaa_vpr_ros.model import build_model, save_checkpoint

    torch.manual_seed(0)
    config = {
        "backbone_arch": "vit_small_patch14_dinov2",
        "backbone_config": {"num_trainable_blocks": 2, "norm_layer": True, "embed_dim": 96, "depth": 4,
                            "num_heads": 4, "img_size": 56},
        "agg_arch": "QAA",
        "agg_config": {"num_queries": 32, "num_clusters": 16, "cluster_dim": 32,
                       "feature_nheads": 4, "score_nheads": 4},
    }
    folder = save_checkpoint(build_model(config, image_size=(56, 112)), out / "random_model")
    return folder, "RANDOM tiny model (no bundled model found): expect chance-level recall"


def run_node_and_localize(map_dir: Path, model_dir: Path, images: list[np.ndarray], timeout_s: float) -> dict:
    """Start localize_node with the default parameters plus odometry, publish ``images`` in order
    (each with its odometry pose, FRAME_SPACING_M apart), return {query index: matched x (m)} of
    the accepted matches."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(150, 220)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from nav_msgs.msg import Odometry
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, PointCloud2

    from scripts.node_harness import NodeProcess

    node_proc = NodeProcess("localize_node", {"model": str(model_dir), "map": str(map_dir), **NODE_PARAMETERS})
    rclpy.init()
    client = rclpy.create_node("qaa_vpr_demo")
    matches: dict[int, float] = {}
    answered: set[int] = set()  # every processed query gets ~/loop_candidates, accepted or not
    stamp_to_index: dict[tuple[int, int], int] = {}

    def on_match(msg: PoseWithCovarianceStamped) -> None:
        index = stamp_to_index.get((msg.header.stamp.sec, msg.header.stamp.nanosec))
        if index is not None:
            matches[index] = msg.pose.pose.position.x

    def on_candidates(msg: PointCloud2) -> None:
        index = stamp_to_index.get((msg.header.stamp.sec, msg.header.stamp.nanosec))
        if index is not None:
            answered.add(index)

    client.create_subscription(PoseWithCovarianceStamped, "/localize_node/place_match", on_match, 50)
    client.create_subscription(PointCloud2, "/localize_node/loop_candidates", on_candidates, 50)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    publisher = client.create_publisher(Image, CAMERA_TOPIC, reliable)
    odom_publisher = client.create_publisher(Odometry, ODOM_TOPIC, reliable)
    try:
        deadline = time.monotonic() + timeout_s
        while (publisher.get_subscription_count() == 0 or odom_publisher.get_subscription_count() == 0
               or client.count_publishers("/localize_node/place_match") == 0):
            if node_proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"demo: localize_node did not come up (exit code {node_proc.poll()})")
            rclpy.spin_once(client, timeout_sec=0.1)
        time.sleep(1.0)  # let discovery settle both ways
        for index, image in enumerate(images):
            msg = Image(height=image.shape[0], width=image.shape[1], encoding="rgb8", step=image.shape[1] * 3)
            # Stamped now, as a live camera's frames are (the node's clock is the system time).
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
            msg.header.frame_id = "camera"
            msg.data = image.tobytes()
            stamp_to_index[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = index
            odom = Odometry()
            odom.header.stamp = msg.header.stamp
            odom.header.frame_id, odom.child_frame_id = "odom", "base_link"
            odom.pose.pose.position.x = index * FRAME_SPACING_M  # the winter drive's own odometry
            odom.pose.pose.orientation.w = 1.0
            odom_publisher.publish(odom)
            rclpy.spin_once(client, timeout_sec=0.01)
            publisher.publish(msg)
            # One frame at a time, as a camera at the node's pace: wait for its answer (bounded).
            wait_until = time.monotonic() + 5.0
            while index not in answered and time.monotonic() < wait_until:
                rclpy.spin_once(client, timeout_sec=0.02)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            rclpy.spin_once(client, timeout_sec=0.05)
    finally:
        client.destroy_node()
        rclpy.try_shutdown()
        node_proc.stop(timeout=15)
    return matches


def replay_localize(map_dir: Path, model_dir: Path, images: list[np.ndarray]) -> dict[int, float]:
    """What :func:`run_node_and_localize` returns, decided offline by the node's own code.

    The node's steps for each frame, without DDS: its parameters (``NODE_PARAMETERS``, the
    defaults otherwise), the map loaded as the node loads it, the descriptor of one frame at a
    time (the demo waits for each answer, so every batch holds one frame), its odometry pose
    (published at the image's stamp, so the node's lookup gives it exactly), and
    :class:`~qaa_vpr_ros.decision.Localizer` through
    :func:`~qaa_vpr_ros.decision.replay.replay_map_queries`. The live run can only differ when a
    frame goes unanswered (no answer within 5 s, a frame dropped by DDS, its odometry later than
    ``odom_max_age_s``: fewer or unaligned queries) or when ``device: auto`` takes a GPU (other
    float rounding of the descriptors)."""
    from qaa_vpr_ros.decision import LocalizeConfig, Query
    from qaa_vpr_ros.decision.replay import replay_map_queries
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.maps import PlaceMap
    from qaa_vpr_ros.model import load_model

    config = LocalizeConfig.from_dict({"model": str(model_dir), "map": str(map_dir), **NODE_PARAMETERS}).validate()
    extractor = DescriptorExtractor(load_model(config.model, device="cpu"), device=config.device)
    reference = PlaceMap.load(config.map, expected_fingerprint=extractor.fingerprint)
    queries = []
    for index in range(len(images)):
        sec, nanosec = divmod(START_NS + index * 500_000_000, 10**9)
        pose = ((index * FRAME_SPACING_M, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))
        queries.append(Query(CAMERA_TOPIC, sec, nanosec, "camera", pose, "odom"))
    descriptors = np.concatenate([extractor.extract([image], "rgb") for image in images])
    channels = replay_map_queries(config, reference, queries, descriptors, extractor.dim)
    return {index: float(channel.best.keyframe.position[0]) for index, channel in enumerate(channels)
            if channel.best is not None and channel.best.keyframe.has_pose}


def plot(path: Path, matches: dict[int, float], places: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot([0, places - 1], [0, places - 1], color="0.8", lw=1, label="ground truth")
    queries = sorted(matches)
    matched = [matches[q] / FRAME_SPACING_M for q in queries]
    for correct, colour, label in ((True, "tab:green", f"correct (+-{TOLERANCE_FRAMES} frames)"),
                                   (False, "tab:red", "wrong")):
        points = [(q, m) for q, m in zip(queries, matched, strict=True) if (abs(m - q) <= TOLERANCE_FRAMES) == correct]
        ax.scatter([q for q, _ in points], [m for _, m in points], s=8, color=colour, label=label)
    ax.set_xlabel("winter query frame")
    ax.set_ylabel("matched summer map frame (from ~/place_match pose)")
    ax.set_title("qaa_vpr_ros demo: winter localized against a summer map")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", type=path_argument, help="folder for the bag, map and plot")
    parser.add_argument("--model", type=path_argument, help="model folder (default: the bundled Nordland model)")
    parser.add_argument("--places", type=int, default=150, help="places on the route")
    parser.add_argument("--first-place", type=int, default=2040,
                        help="first Nordland place (the bundled model trained on places < 1920 only)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the node")
    parser.add_argument("--no-slam", action="store_true",
                        help="skip the SLAM part (scripts/demo_slam.py: loop closures into a pose graph)")
    parser.add_argument("--replay", action="store_true",
                        help="decide offline with the node's decision code instead of the live node "
                             "(the same figures in seconds; implies --no-slam)")
    parser.add_argument("--no-rgbd", action="store_true",
                        help="skip the RGB-D relocalization part (scripts/demo_rgbd.py: a room mapped, then "
                             "relocalized with metric poses)")
    parser.add_argument("--data", type=expand_path, default=DEFAULT_DATA,
                        help="Nordland folder with summer/ and winter/ images-XXXXX.png "
                             "(default: the held-out places shipped in data/nordland_heldout)")
    args = parser.parse_args(argv)
    data = args.data.expanduser()
    if not (data / "summer").is_dir() or not (data / "winter").is_dir():
        raise SystemExit(f"demo: {data} has no summer/ and winter/ folders of Nordland images "
                         f"(see data/nordland_heldout/README.md)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir, how = demo_model(out, args.model)
    print(f"[1/4] model: {how}")
    summer = route_images(data, "summer", args.places, args.first_place)
    winter = route_images(data, "winter", args.places, args.first_place)
    bag = out / "summer_drive"
    if bag.exists():
        import shutil

        shutil.rmtree(bag)
    write_route_bag(bag, summer)
    print(f"[2/4] recorded {len(summer)} summer frames + odometry into {bag} (rosbag2, MCAP)")
    map_dir = out / "summer_map"
    build_route_map(bag, map_dir, model_dir, "demo")
    print(f"[3/4] built map {map_dir}")
    if args.replay:
        print("[4/4] localizing the winter drive with localize_node's decision, replayed offline ...")
        matches = replay_localize(map_dir, model_dir, winter)
    else:
        print("[4/4] localizing the winter drive with localize_node ...")
        matches = run_node_and_localize(map_dir, model_dir, winter, args.timeout)
    correct = sum(abs(x / FRAME_SPACING_M - q) <= TOLERANCE_FRAMES for q, x in matches.items())
    plot(out / "matches.png", matches, len(winter))
    print(f"\naccepted place matches: {len(matches)}/{len(winter)} winter frames (default parameters)")
    print(f"precision {correct / max(len(matches), 1):.3f}, recall {correct / len(winter):.3f} "
          f"(precision: accepted matches within +-{TOLERANCE_FRAMES} frames of the true place; "
          f"recall: correct accepted matches per winter frame)")
    print(f"(a random match would be right with probability ~{(2 * TOLERANCE_FRAMES + 1) / len(winter):.3f})")
    print(f"plot: {out / 'matches.png'}")
    codes = [0 if matches else 1]
    if not (args.no_slam or args.replay):
        from scripts.demo_slam import main as slam_main

        print("\n[SLAM] our loop closures in a pose graph: the drift of a second session removed "
              "(scripts/demo_slam.py)")
        codes.append(slam_main(["--out", str(out / "slam"), "--model", str(model_dir), "--data", str(data)]))
    if not args.no_rgbd:
        from scripts.demo_rgbd import main as rgbd_main

        print("\n[RGB-D] a room mapped, then relocalized with metric poses (scripts/demo_rgbd.py)")
        codes.append(rgbd_main(["--out", str(out / "rgbd"), "--model", str(model_dir)]))
    return 0 if not any(codes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
