"""Packaging: colcon (and pip) build an install tree ROS 2 can use, the training code installs under
the package's own name, every Python dependency is declared for a robot install, and the launch
file declares its arguments. Running the launch file with ROS 2's real tooling: test_launch_real.py.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
import yaml
from ros2_tooling import colcon_build

from qaa_vpr_ros.decision import LocalizeConfig, parameter_table

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "localize.launch.py"
ARGUMENTS = ("map", "model", "params_file", "image_topics", "depth_topics", "camera_intrinsics", "device", "namespace",
             "odom_topic", "min_score", "min_confidence", "use_sim_time", "log_level", "respawn")
EXECUTABLES = ("localize_node", "pose_graph_node", "build_map", "merge_maps", "map_info", "eval_map", "export_map")
TRAINING = "qaa_vpr_ros_training"
# pip name -> rosdep key where the key is not simply python3-<pip name> (rosdistro's rosdep/python.yaml).
ROSDEP_KEYS = {"pillow": "python3-pil", "opencv-python-headless": "python3-opencv", "pyyaml": "python3-yaml",
               "timm": "python3-timm-pip"}


@pytest.fixture(scope="module")
def install_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """colcon build of a copy of the repository; returns the package's install prefix."""
    if not Path(sys.executable).with_name("colcon").exists():
        pytest.skip(f"{Path(sys.executable).with_name('colcon')} absent (colcon-core is in requirements-dev.txt)")
    return colcon_build(tmp_path_factory.mktemp("ws")) / "qaa_vpr_ros"


@pytest.mark.slow
def test_colcon_install_tree_has_index_share_and_executables(install_tree: Path) -> None:
    assert (install_tree / "share/ament_index/resource_index/packages/qaa_vpr_ros").is_file()
    share = install_tree / "share/qaa_vpr_ros"
    assert (share / "package.xml").read_text() == (REPO / "package.xml").read_text()
    assert (share / "launch/localize.launch.py").read_text() == LAUNCH_FILE.read_text()
    assert (share / "config/localize.yaml").read_text() == (REPO / "config/localize.yaml").read_text()
    for name in EXECUTABLES:
        exe = install_tree / "lib/qaa_vpr_ros" / name
        assert exe.is_file() and os.access(exe, os.X_OK), f"missing executable {exe}"
    (entry_points,) = install_tree.glob("lib/python3*/site-packages/qaa_vpr_ros-*.egg-info/entry_points.txt")
    assert "localize_node = qaa_vpr_ros.ros.entry:main" in entry_points.read_text()


@pytest.mark.slow
def test_colcon_installed_modules_come_from_the_install_tree(install_tree: Path) -> None:
    site = next(install_tree.glob("lib/python3*/site-packages"))
    code = ("import importlib.util as u; "
            "print(u.find_spec('qaa_vpr_ros.localize_node').origin); "
            "print(u.find_spec('qaa_vpr_ros.decision').origin); "
            f"print(u.find_spec('{TRAINING}.train').origin)")
    code = f"import sys; sys.path.insert(0, {str(site)!r}); {code}"
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    origins = out.stdout.split()
    assert len(origins) == 3 and all(o.startswith(str(site)) for o in origins), origins


@pytest.mark.slow
def test_training_installs_under_the_package_name_not_as_top_level_training(install_tree: Path) -> None:
    site = next(install_tree.glob("lib/python3*/site-packages"))
    assert not (site / "training").exists(), "a top-level 'training' package collides in site-packages"
    installed = {p.relative_to(site / TRAINING).as_posix() for p in (site / TRAINING).rglob("*")
                 if p.suffix in (".py", ".yaml")}
    in_checkout = {p.relative_to(REPO / "training").as_posix() for p in (REPO / "training").rglob("*")
                   if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts}
    assert installed == in_checkout
    # The installed package imports as itself (relative imports inside), from anywhere.
    code = (f"import sys; sys.path.insert(0, {str(site)!r}); import {TRAINING}.train as t, {TRAINING}.datasets as d; "
            "print(t.__file__); print(d.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    assert all(line.startswith(str(site / TRAINING)) for line in out.stdout.split()), out.stdout


@pytest.mark.slow
def test_pip_wheel_holds_the_training_namespace_and_no_top_level_training(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "install",
                                                             "log", ".ros2-launch", "data", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("qaa_vpr_ros-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"{TRAINING}/train.py" in names and f"{TRAINING}/datasets/__init__.py" in names
    assert any(n.startswith(f"{TRAINING}/configs/") and n.endswith(".yaml") for n in names)
    assert not [n for n in names if n.startswith("training/")]


@pytest.mark.slow
def test_training_still_runs_from_a_checkout_as_training() -> None:
    out = subprocess.run([sys.executable, "-m", "training.train", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--config" in out.stdout


def _install_requires() -> list[str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [ast.literal_eval(e) for e in node.value.elts]
    raise AssertionError("setup.py has no install_requires")


def _readme_pip_line() -> list[str]:
    """The requirement specs on the one `pip install` line of the README's robot install."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Install on a robot", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("pip install ")]
    assert len(lines) == 1, f"the robot install needs exactly one pip line, found {lines}"
    return re.findall(r'"([^"]+)"', lines[0])


def test_every_install_requirement_is_in_package_xml_or_on_the_readme_pip_line() -> None:
    depends = {e.text for e in ET.parse(REPO / "package.xml").getroot() if e.tag in ("exec_depend", "depend")}
    pip_line = _readme_pip_line()
    pip_names = {re.split(r"[<>=!~ ]", spec, maxsplit=1)[0].lower() for spec in pip_line}
    missing = []
    for spec in _install_requires():
        name = re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0].lower()
        key = ROSDEP_KEYS.get(name, f"python3-{name}")
        in_xml, on_line = key in depends, name in pip_names
        if in_xml == on_line:  # neither (missing) or both (two installers fighting over one package)
            missing.append(f"{spec}: package.xml {key} {in_xml}, README pip line {on_line}")
        if on_line:
            assert spec in pip_line, f"README pip line has another version range than setup.py for {spec}"
    assert not missing, missing
    # ... and package.xml declares no Python dependency that setup.py does not have.
    keys = {ROSDEP_KEYS.get(n, f"python3-{n}") for n in
            (re.split(r"[<>=!~ \[]", s, maxsplit=1)[0].lower() for s in _install_requires())}
    extra = {d for d in depends if d.startswith("python3-") and d not in keys and d != "python3-pytest"}
    assert not extra, f"package.xml python dependencies not in setup.py install_requires: {extra}"


def _declared_arguments(tree: ast.AST) -> dict[str, dict[str, ast.expr]]:
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            name = node.args[0].value if node.args else None
            found[name] = {kw.arg: kw.value for kw in node.keywords}
    return found


def test_launch_file_declares_every_argument_with_a_description() -> None:
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    declared = _declared_arguments(tree)
    assert set(declared) == set(ARGUMENTS)
    for name, kwargs in declared.items():
        assert "description" in kwargs and "default_value" in kwargs, name
        text = "".join(c.value for c in ast.walk(kwargs["description"]) if isinstance(c, ast.Constant))
        assert len(text) > 20, f"argument {name} has no real description"
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions


def test_parameter_launch_arguments_name_real_parameters() -> None:
    table = {row.name for row in parameter_table()}
    launch_only = {"params_file", "namespace", "use_sim_time", "log_level", "respawn"}
    assert set(ARGUMENTS) - launch_only <= table, set(ARGUMENTS) - launch_only - table


def test_config_file_lists_every_parameter_with_its_default() -> None:
    data = yaml.safe_load((REPO / "config/localize.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    table = {row.name: row.default for row in parameter_table()}
    assert params == table
    assert LocalizeConfig.from_dict(params).problems() == []
