"""Review findings on the node (issue 11): repeated batch failures turn diagnostics ERROR (they
were only logged while diagnostics said OK); max_image_pixels cannot be raised at run time."""
from __future__ import annotations

import numpy as np
import pytest
from node_harness import wait_for
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from test_node_localize import Harness, harness, model_dir, raw_msg, ros  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.ros, pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:module 'sre_(parse|constants)' is deprecated:DeprecationWarning"),
]


def test_repeated_batch_failures_turn_diagnostics_error_and_recover(harness, model_dir):  # noqa: F811
    h: Harness = harness("loc_fail", {"model": str(model_dir), "image_topics": ["/loc_fail/cam"],
                                      "transport": "raw", "diagnostics_period_s": 0.1})
    h.wait_ready()
    pub = h.client.create_publisher(Image, "/loc_fail/cam", 10)
    image = np.random.default_rng(0).integers(0, 255, (56, 56, 3), np.uint8)
    real_extract = h.node.extractor.extract

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    h.node.extractor.extract = broken
    sec = 1000
    def error_reported():
        nonlocal sec
        sec += 1
        pub.publish(raw_msg(image, sec))
        return h.diag("localizer").get("level") == 2
    wait_for(error_reported, 30.0, "diagnostics ERROR after repeated batch failures")
    message = h.diag("localizer")["message"]
    assert "batches failed" in message and "illegal memory access" in message
    h.node.extractor.extract = real_extract

    def recovered():
        nonlocal sec
        sec += 1
        pub.publish(raw_msg(image, sec))
        return h.diag("localizer").get("level") == 0
    wait_for(recovered, 30.0, "diagnostics OK again after a batch succeeded")


def test_max_image_pixels_is_start_up_only(harness, model_dir):  # noqa: F811
    h: Harness = harness("loc_pixels", {"image_topics": ["/loc_pixels/cam"], "transport": "raw"})
    result = h.node.set_parameters([Parameter("max_image_pixels", value=1_000_000_000)])[0]
    assert not result.successful
    assert h.node.config.max_image_pixels != 1_000_000_000


def test_diagnostics_report_online_memory_and_the_cap_holds(harness, model_dir):  # noqa: F811
    h: Harness = harness("loc_cap", {"model": str(model_dir), "image_topics": ["/loc_cap/cam"], "transport": "raw",
                                     "diagnostics_period_s": 0.1, "online_max_keyframes": 6,
                                     "exclude_recent_s": 0.0})
    h.wait_ready()
    pub = h.client.create_publisher(Image, "/loc_cap/cam", 10)
    rng = np.random.default_rng(0)
    sec = 2000

    def thinned():
        nonlocal sec
        sec += 1
        pub.publish(raw_msg(rng.integers(0, 255, (56, 56, 3), np.uint8), sec))
        d = h.diag("localizer")
        return int(d.get("online_thinned", 0)) > 0 and d
    d = wait_for(thinned, 30.0, "the online database thinned at its cap")
    assert int(d["online_keyframes"]) <= 6 and float(d["online_memory_mb"]) > 0
