"""The node's keyframe gate takes a new keyframe when the view changes (issue 23 point 1).

A handheld camera that stands (odometry without motion) but turns: with motion gating on, the
travel and rotation rules alone keep the first frame only; with the view rule
(``min_view_overlap``) every frame that shares too few features with the camera's last keyframe
becomes one. Real frames of TUM fr1/rpy, the node's own pipeline (``FramePipeline``), its gate.
"""
from __future__ import annotations

import numpy as np
import pytest

from qaa_vpr_ros.bag_writer import image_message
from qaa_vpr_ros.decision import LocalizeConfig, Localizer
from qaa_vpr_ros.decision.verifier import CandidateVerifier
from qaa_vpr_ros.extrinsics import ExtrinsicsSource
from qaa_vpr_ros.keyframes import view_changed
from qaa_vpr_ros.local_features import extract_local_features
from qaa_vpr_ros.pipeline import Frame, FramePipeline
from scripts import tum_rgbd

pytestmark = pytest.mark.skipif(not tum_rgbd.TUM_FR1_RPY.is_dir(),
                                reason=f"real RGB-D data absent: {tum_rgbd.TUM_FR1_RPY} (../shared/data)")
FRAMES = range(0, 24, 2)  # every other frame of the first 24: the camera turns, the odometry stands


@pytest.fixture(scope="module")
def extractor():
    from pathlib import Path

    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.model import load_model

    return DescriptorExtractor(load_model(Path(__file__).resolve().parents[1] / "models" / "nordland_tiny"),
                               device="cpu", batch_size=4)


def _processed(extractor, tum, min_view_overlap: float) -> list[int]:
    cfg = LocalizeConfig(image_topics=["/cam"], odom_topic="/odom", min_translation_m=1.0, min_rotation_rad=1.0,
                         min_view_overlap=min_view_overlap, online_loop_closure=False).validate()
    verifier = CandidateVerifier(cfg)
    verifier.set_intrinsics("/cam", tum_rgbd.TUM_FR1_INTRINSICS)
    pipeline = FramePipeline(cfg, ExtrinsicsSource("base_link", {}, None), verifier)
    pipeline.attach(extractor, Localizer(cfg, extractor.dim, extractor.fingerprint))
    still = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))
    processed = []
    for i in FRAMES:
        stamp_ns = tum.frames[i].rgb_stamp_ns
        for offset in (-0.01, 0.01):  # odometry on both sides of the image: a camera standing still
            pipeline.add_odometry(stamp_ns * 1e-9 + offset, still, "odom")
        sec, nanosec = divmod(stamp_ns, 1_000_000_000)
        out = pipeline.process([Frame("/cam", sec, nanosec, "cam", image_message(tum.rgb(i), stamp_ns, "cam"))])
        if out.outcomes[0].status == "processed":
            processed.append(i)
    return processed


def test_a_turning_camera_that_stands_still_gets_keyframes_by_view_change(extractor) -> None:
    tum = tum_rgbd.load_tum()
    assert _processed(extractor, tum, 0.0) == [FRAMES[0]]  # motion rules alone: the first frame only
    taken = _processed(extractor, tum, 0.10)
    assert len(taken) >= 3, taken
    # Exactly the frames whose view changed: less than 10 % of their features match the last keyframe's.
    features = {i: extract_local_features(tum.rgb(i)) for i in FRAMES}
    expected, last = [FRAMES[0]], FRAMES[0]
    for i in FRAMES[1:]:
        if view_changed(features[i], features[last], 0.10):
            expected.append(i)
            last = i
    assert taken == expected
    assert np.all(np.diff(taken) > 0)
