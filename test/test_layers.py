"""The layers of docs/ARCHITECTURE.md hold: the import-linter contract (.importlinter, run by
`make lint`) passes on the tree and fails on a planted upward import or cycle; only
qaa_vpr_ros/ros/ imports rclpy; the node module stays a thin adapter."""
from __future__ import annotations

import ast
import os
import re
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
    assert verdicts(result.stdout) == ALL_KEPT


def verdicts(output: str) -> dict[str, str]:
    """Contract name (up to its colon) -> KEPT / BROKEN, from lint-imports' summary lines."""
    found = (re.match(r"^(\S.*?) (KEPT|BROKEN)( \(.*\))?$", line.rstrip()) for line in output.splitlines())
    return {m.group(1).split(":")[0]: m.group(2) for m in found if m}


ALL_KEPT = {"Layers": "KEPT", "No import cycles, at any depth": "KEPT", "Ray is an optional extra": "KEPT"}


@pytest.mark.parametrize("module, line, layers, cycles, ray", [
    # the ground floor reaching up to the ROS edge (and so closing a circle through it)
    ("qaa_vpr_ros/poses.py", "import qaa_vpr_ros.ros.localize_node  # noqa", "BROKEN", "BROKEN", "KEPT"),
    # the map tools reaching into the ROS edge: siblings in one layer stay independent
    ("qaa_vpr_ros/map_tools/info.py", "import qaa_vpr_ros.ros.messages  # noqa", "BROKEN", "KEPT", "KEPT"),
    # a circle inside one layer: messages <-> the node
    ("qaa_vpr_ros/ros/messages.py", "import qaa_vpr_ros.ros.localize_node  # noqa", "KEPT", "BROKEN", "KEPT"),
    # Ray anywhere but the map tools' Ray pool
    ("scripts/bench_maps.py", "import ray  # noqa", "KEPT", "KEPT", "BROKEN"),
])
def test_a_planted_upward_import_or_cycle_breaks_the_contract(tree_copy: Path, module: str, line: str,
                                                              layers: str, cycles: str, ray: str) -> None:
    result = lint_imports(plant(tree_copy, module, line))
    assert result.returncode != 0
    assert verdicts(result.stdout) == {"Layers": layers, "No import cycles, at any depth": cycles,
                                       "Ray is an optional extra": ray}, result.stdout


def test_an_upward_import_inside_a_function_counts(tree_copy: Path) -> None:
    """How the old maps <-> decision circle hid: the store importing the decision in a function."""
    result = lint_imports(plant(tree_copy, "qaa_vpr_ros/maps/__init__.py",
                                "def _up():\n    from qaa_vpr_ros.decision import localizer  # noqa"))
    assert verdicts(result.stdout)["Layers"] == "BROKEN", result.stdout


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


def test_make_lint_runs_the_contract() -> None:
    make = (REPO / "Makefile").read_text(encoding="utf-8")
    lint = make[make.index("\nlint:"):].split("\n\n")[0]
    assert "lint-imports" in lint and "ruff check" in lint


def test_importing_the_node_loads_neither_torch_nor_faiss() -> None:
    """Ctrl-C during start-up must end the process within a second or two: the node module's own
    imports stay light; torch and faiss come with loading (test_launch_real times the exit)."""
    code = ("import sys; import qaa_vpr_ros.ros.localize_node; "
            "print([m for m in ('torch', 'faiss', 'timm') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
