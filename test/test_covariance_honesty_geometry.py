"""The covariance of geometric transforms is honest on the data it serves (issue 22 point 4).

TUM RGB-D fr1/rpy (real Kinect, motion-capture ground truth): each of the frames 50-138 against
the map frame (0-49) whose viewing direction is nearest by ground truth, verified from local
features as the node does. Per axis, the published standard deviation (root of the covariance's
diagonal) must lie within [0.5, 2] x the RMS error, over at least 30 verified pairs:

- ``geometry`` (PnP both ways on depth): translation x, y, z and rotation about x, y, z;
- ``geometry_rotation`` (no depth: essential matrix or pure rotation): rotation about x, y, z
  (its translation is the sequence alignment's or identity, with their covariance: judged on
  Nordland by ``test_covariance_honesty.py``).

The end-to-end check through ``ros2 launch`` (records as a back end receives them, in the base
frames) is ``test_rgbd_relocalization.py``.
"""
from __future__ import annotations

import numpy as np
import pytest

from qaa_vpr_ros.local_features import LocalFeatures, extract_local_features
from qaa_vpr_ros.poses import rotation_vector
from qaa_vpr_ros.verification import verify_features
from scripts import tum_rgbd

pytestmark = pytest.mark.skipif(not tum_rgbd.TUM_FR1_RPY.is_dir(),
                                reason=f"real RGB-D data absent: {tum_rgbd.TUM_FR1_RPY} (../shared/data)")


@pytest.fixture(scope="module")
def pairs():
    """(query features, map features, T_match_query truth in the optical frames) per query."""
    tum = tum_rgbd.load_tum()
    poses = tum.camera_pose([f.rgb_stamp_ns for f in tum.frames])
    features = {}

    def feats(i: int) -> LocalFeatures:
        if i not in features:
            features[i] = extract_local_features(tum.rgb(i), tum.depth_m(i))
        return features[i]

    out = []
    for q in range(50, len(tum)):
        m = int(np.argmax(poses[:50, :3, 2] @ poses[q, :3, 2]))  # the nearest viewing direction
        out.append((feats(q), feats(m), np.linalg.inv(poses[m]) @ poses[q]))
    return out


def _ratios(errors: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    return np.sqrt((sigmas ** 2).mean(0)) / np.sqrt((errors ** 2).mean(0))


def test_geometry_pnp_covariance_is_honest_per_axis(pairs):
    k = tum_rgbd.TUM_FR1_INTRINSICS
    errors, sigmas = [], []
    for query, match, truth in pairs:
        v = verify_features(query, k, match, k)
        if not v.metric:
            continue
        errors.append(np.concatenate([v.translation - truth[:3, 3],
                                      rotation_vector(v.rotation @ truth[:3, :3].T)]))  # left error, as published
        sigmas.append(np.sqrt(np.diag(v.covariance)))
    assert len(errors) >= 30, len(errors)
    ratio = _ratios(np.array(errors), np.array(sigmas))
    print(f"\ngeometry: {len(errors)} pairs, sigma / RMS error (x y z rx ry rz) {np.round(ratio, 2)}")
    assert np.all((ratio >= 0.5) & (ratio <= 2.0)), f"sigma / RMS error (x y z rx ry rz): {np.round(ratio, 2)}"


def test_geometry_rotation_covariance_is_honest_per_axis(pairs):
    k = tum_rgbd.TUM_FR1_INTRINSICS
    errors, sigmas = [], []
    for query, match, truth in pairs:
        without_depth = [LocalFeatures(f.keypoints, f.descriptors) for f in (query, match)]
        v = verify_features(without_depth[0], k, without_depth[1], k)
        if not v.accepted:
            continue
        assert not v.metric and v.model in ("essential", "rotation")
        errors.append(rotation_vector(v.rotation @ truth[:3, :3].T))
        sigmas.append(np.sqrt(np.diag(v.covariance)[3:]))
    assert len(errors) >= 30, len(errors)
    ratio = _ratios(np.array(errors), np.array(sigmas))
    print(f"\ngeometry_rotation: {len(errors)} pairs, sigma / RMS error (rx ry rz) {np.round(ratio, 2)}")
    assert np.all((ratio >= 0.5) & (ratio <= 2.0)), f"sigma / RMS error (rx ry rz): {np.round(ratio, 2)}"
