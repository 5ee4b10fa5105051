"""The layers of docs/ARCHITECTURE.md hold: the import-linter contract (.importlinter, run by
`make lint`) passes on the tree and fails on a planted upward import or cycle; only
qaa_vpr_ros/ros/ imports rclpy; the node module stays a thin adapter."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("qaa_vpr_ros", "training", "scripts", "bench")
ROS_MODULES = ("rclpy", "builtin_interfaces", "diagnostic_msgs", "geometry_msgs", "nav_msgs", "rcl_interfaces",
               "sensor_msgs", "std_msgs", "std_srvs", "visualization_msgs", "tf2_ros", "rosgraph_msgs")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip(f"{lint} not installed (make setup installs import-linter from requirements-dev.txt)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(lint), "--config", str(root / ".importlinter"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """The packages and the contract, copied (no tests, data or models)."""
    root = tmp_path_factory.mktemp("tree")
    for name in PACKAGES:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.png", "*.md"))
    shutil.copy(REPO / ".importlinter", root / ".importlinter")
    return root


def plant(root: Path, module: str, line: str) -> Path:
    copy = root.parent / f"{root.name}-planted-{module.replace('/', '_')}"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(root, copy)
    path = copy / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    return copy


def test_the_tree_keeps_its_layers_and_has_no_cycles(tree_copy: Path) -> None:
    result = lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    # the ground floor reaching up to the ROS edge
    ("qaa_vpr_ros/poses.py", "import qaa_vpr_ros.ros.localize_node  # noqa", "Layers"),
    # the store reaching up to the decision, inside a function (how the old circle looked)
    ("qaa_vpr_ros/maps/__init__.py", "def _up():\n    from qaa_vpr_ros.decision import localizer  # noqa", "Layers"),
    # a circle inside one layer: messages <-> the node
    ("qaa_vpr_ros/ros/messages.py", "import qaa_vpr_ros.ros.localize_node  # noqa", "No import cycles"),
])
def test_a_planted_upward_import_or_cycle_breaks_the_contract(tree_copy: Path, module: str, line: str,
                                                              broken: str) -> None:
    result = lint_imports(plant(tree_copy, module, line))
    assert result.returncode != 0
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout, result.stdout


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_ros_package_imports_rclpy_and_message_packages() -> None:
    outside = {}
    for package in ("qaa_vpr_ros", "training"):
        for path in sorted((REPO / package).rglob("*.py")):
            if (REPO / "qaa_vpr_ros" / "ros") in path.parents:
                continue
            found = _imports(path) & set(ROS_MODULES)
            if found:
                outside[str(path.relative_to(REPO))] = sorted(found)
    assert outside == {}, "move ROS code into qaa_vpr_ros/ros/"
    assert "rclpy" in _imports(REPO / "qaa_vpr_ros" / "ros" / "localize_node.py")  # the check can see one


def test_the_node_module_is_a_thin_adapter() -> None:
    lines = (REPO / "qaa_vpr_ros" / "ros" / "localize_node.py").read_text(encoding="utf-8").count("\n")
    assert lines <= 400, f"qaa_vpr_ros/ros/localize_node.py has {lines} lines: move work into qaa_vpr_ros/pipeline.py"


def test_the_console_entry_installs_signal_handlers_before_any_heavy_import() -> None:
    code = ("import sys; import qaa_vpr_ros.ros.entry; "
            "heavy = [m for m in ('rclpy', 'torch', 'numpy', 'sensor_msgs') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
