"""Camera extrinsics from TF or the camera_extrinsics parameter (qaa_vpr_ros.extrinsics), with a
small TF tree (test/tf_tree.py): the transform found is used; a failed lookup falls back, is
counted and warned at most once per window per camera; a wrong base_frame is named."""
from __future__ import annotations

import numpy as np
import pytest
from tf_tree import StaticTfTree

from qaa_vpr_ros.decision.record import pose_matrix
from qaa_vpr_ros.extrinsics import ExtrinsicsSource, tf_frames

T_BASE_REAR = pose_matrix((-0.4, 0.1, 0.9), (0.0, 0.0, 1.0, 0.0))  # looks backwards
T_REAR_OPTICAL = pose_matrix((0.0, 0.0, 0.0), (-0.5, 0.5, -0.5, 0.5))
T_BASE_FRONT = pose_matrix((0.3, 0.0, 0.8), (0.0, 0.0, 0.0, 1.0))
PARAMETER = pose_matrix((1.0, 2.0, 3.0), (0.0, 0.0, 0.0, 1.0))  # a camera_extrinsics entry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def robot_tree(base: str = "base_link") -> StaticTfTree:
    return StaticTfTree({"rear": (base, T_BASE_REAR), "rear_optical": ("rear", T_REAR_OPTICAL),
                         base: ("odom", np.eye(4))})


def test_a_transform_found_in_tf_is_used_before_the_camera_extrinsics_entry() -> None:
    tree = robot_tree()
    source = ExtrinsicsSource("base_link", {"/rear/image": PARAMETER}, tree)
    matrix, warning = source.lookup("/rear/image", "rear_optical")
    assert np.allclose(matrix, T_BASE_REAR @ T_REAR_OPTICAL) and warning == ""
    assert tree.calls == [("base_link", "rear_optical")]
    assert source.failures() == {}


def test_a_missing_transform_falls_back_is_counted_and_warned_once_per_camera_per_window() -> None:
    clock = FakeClock()
    source = ExtrinsicsSource("base_link", {"/rear/image": PARAMETER}, robot_tree(), warn_repeat_s=60.0,
                              clock=clock)
    default = pose_matrix((0.0, 0.0, 0.0), (-0.5, 0.5, -0.5, 0.5))
    warnings = {"/rear/image": [], "/left/image": []}
    for _ in range(5):
        clock.now += 10.0  # 50 s in all: inside one window
        for camera in warnings:
            matrix, warning = source.lookup(camera, "no_such_frame", default)
            assert np.allclose(matrix, PARAMETER if camera == "/rear/image" else default)  # the fallback
            if warning:
                warnings[camera].append(warning)
    assert [len(w) for w in warnings.values()] == [1, 1]  # once per camera
    (rear,) = warnings["/rear/image"]
    assert "'no_such_frame'" in rear and "'base_link'" in rear and "'/rear/image'" in rear
    assert '"no_such_frame" passed to lookupTransform argument source_frame does not exist' in rear
    assert "camera_extrinsics entry" in rear and "base_frame '" in rear and "not in the TF tree" not in rear
    assert "no entry" in warnings["/left/image"][0]
    failures = source.failures()
    assert {c: f.failures for c, f in failures.items()} == {"/rear/image": 5, "/left/image": 5}
    assert failures["/rear/image"].last_error.startswith("LookupException: ")
    assert not source.base_frame_missing()
    clock.now += 60.0  # the window has passed: warned again
    assert source.lookup("/rear/image", "no_such_frame")[1] != ""
    assert source.lookup("/rear/image", "no_such_frame")[1] == ""


def test_a_wrong_base_frame_is_named_with_its_parameter_and_the_frames_there_are() -> None:
    tree = robot_tree(base="base_footprint")  # the robot calls its base base_footprint
    source = ExtrinsicsSource("base_link", {}, tree, clock=FakeClock())
    matrix, warning = source.lookup("/rear/image", "rear_optical")
    assert np.allclose(matrix, np.eye(4))
    assert "base_frame 'base_link' is not in the TF tree" in warning
    assert "set the parameter base_frame" in warning
    assert "base_footprint, odom, rear, rear_optical" in warning  # what it could be
    assert source.base_frame_missing() and source.failures()["/rear/image"].base_frame_missing
    # The frame appears (published late): used, and no longer reported missing.
    tree.edges["base_link"] = ("base_footprint", np.eye(4))
    matrix, warning = source.lookup("/rear/image", "rear_optical")
    assert np.allclose(matrix, T_BASE_REAR @ T_REAR_OPTICAL) and warning == ""
    assert not source.base_frame_missing()


def test_an_empty_tf_tree_is_no_tf_yet_not_a_wrong_base_frame() -> None:
    source = ExtrinsicsSource("base_link", {}, StaticTfTree({}), clock=FakeClock())
    matrix, warning = source.lookup("/rear/image", "rear_optical")
    assert np.allclose(matrix, np.eye(4))
    assert "no TF transform from base_frame 'base_link' to frame_id 'rear_optical'" in warning
    assert '"base_link" passed to lookupTransform argument target_frame does not exist' in warning
    assert not source.base_frame_missing()


@pytest.mark.parametrize("listing, frames", [("[]", set()), ("", set()), ("not: [valid", set()),
                                             ("a: \n  parent: 'b'\n", {"a", "b"})])
def test_tf_frames_reads_tf2s_listing(listing: str, frames: set[str]) -> None:
    class Listing:
        def all_frames_as_yaml(self) -> str:
            return listing
    assert tf_frames(Listing()) == frames
