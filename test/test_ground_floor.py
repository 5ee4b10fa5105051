"""The ground floor: pose math, the parameter grammar and the model's preprocessing contract each
have one home that imports nothing above it, and the covariance model sits beside the record."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "qaa_vpr_ros"
POSES = PACKAGE / "poses.py"
POSE_MATH = {"pose_matrix", "matrix_quaternion", "quaternion_matrices", "quaternion_angle", "yaw_of", "rotation_angle",
             "rotation_vector", "transform_error", "slerp", "interpolate_pose"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, only_for_type_checking)`` of every import in ``path``, function-level ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for child in node.body for n in ast.walk(child))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, id(node) in typing_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((base, id(node) in typing_only))
    return out


def _python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((REPO / folder).rglob("*.py"))]


def test_nothing_in_model_imports_the_extractor_above_it():
    offenders = [f"{p.relative_to(REPO)} imports {m}" for p in _python_files("qaa_vpr_ros/model")
                 for m, _ in _imports(p) if m == "qaa_vpr_ros.extractor"]
    assert not offenders, offenders


def test_model_has_no_import_circle():
    # backbone <- vpr_model <- checkpoint: loading pretrained weights lives with the checkpoints.
    files = {_module_name(p): p for p in _python_files("qaa_vpr_ros/model")}
    graph = {m: {t for t, _ in _imports(p) if t in files and t != m} for m, p in files.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen)) for n in graph[start])

    circles = sorted(m for m in graph if reaches(m, m, set()))
    assert not circles, circles


@pytest.mark.parametrize("module", ["qaa_vpr_ros/poses.py", "qaa_vpr_ros/parameter_grammar.py",
                                    "qaa_vpr_ros/model/preprocessing.py"])
def test_a_ground_floor_module_imports_nothing_of_the_project(module):
    project = [m for m, _ in _imports(REPO / module) if m.split(".")[0] in ("qaa_vpr_ros", "training", "scripts")]
    assert not project, f"{module} imports {project}"


def test_the_covariance_model_does_not_import_the_record():
    # record.py re-exports the covariance names, so an import back (even for typing) would be a circle.
    back = [m for m, _ in _imports(PACKAGE / "decision" / "covariance.py") if m.startswith("qaa_vpr_ros")]
    assert not back, back


def test_pose_math_is_defined_once():
    homes: dict[str, list[str]] = {}
    for path in _python_files("qaa_vpr_ros", "scripts", "training", "bench"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and (node.name in POSE_MATH or "slerp" in node.name
                                                      or "quaternion" in node.name):
                homes.setdefault(node.name, []).append(str(path.relative_to(REPO)))
    elsewhere = {name: files for name, files in homes.items() if files != [str(POSES.relative_to(REPO))]}
    assert not elsewhere, elsewhere


def test_the_map_builder_and_the_node_interpolate_a_pose_to_the_same_bits():
    # A map keyframe (PoseTrack, from a bag) and a live query (PoseHistory, from odometry) taken at
    # the same stamp between the same two poses must get the same pose.
    from qaa_vpr_ros.decision.odometry import PoseHistory
    from qaa_vpr_ros.keyframes import PoseTrack

    rng = np.random.default_rng(0)
    differ = 0
    for k in range(300):
        q = rng.normal(size=(2, 4))
        if k % 2:  # nearly the same orientation (the normalised-lerp branch)
            q[1] = q[0] + rng.normal(size=4) * 1e-3
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        p = rng.normal(size=(2, 3)) * 10
        track = PoseTrack.from_samples([0, 10**9], p, q)
        history = PoseHistory()
        for i in range(2):
            history.add(float(i), (tuple(map(float, track.positions[i])), tuple(map(float, track.orientations[i]))),
                        "odom")
        stamp_ns = int(rng.integers(1, 10**9))
        built = track.interpolate(stamp_ns)
        live, _ = history.lookup(stamp_ns / 1e9, 1.0)
        assert math.dist(built[0], live[0]) < 1e-9 and abs(abs(np.dot(built[1], live[1])) - 1.0) < 1e-9
        differ += built != live
    assert differ == 0, f"{differ} of 300 poses differ"
