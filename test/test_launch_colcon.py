"""Packaging: colcon builds an install tree ROS 2 can use; the launch file declares its arguments.

`launch`/`launch_ros` are not installable here, so the launch file is checked twice: statically
(ast: every argument declared, with a description) and by running it against small stand-ins of
the launch API that record what it asks for (the parameter overrides it passes to the node).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from qaa_vpr_ros.decision import LocalizeConfig, parameter_table

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "localize.launch.py"
ARGUMENTS = ("map", "model", "params_file", "image_topics", "device", "namespace", "use_sim_time")
EXECUTABLES = ("localize_node", "build_map", "merge_maps", "map_info", "eval_map", "export_map")


@pytest.fixture(scope="module")
def install_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """colcon build of a copy of the repository; returns the package's install prefix."""
    colcon = Path(sys.executable).with_name("colcon")
    if not colcon.exists():
        pytest.skip(f"{colcon} absent (colcon-core is in requirements-dev.txt)")
    ws = tmp_path_factory.mktemp("ws")
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "install", "log",
                                    ".pytest_cache", ".ruff_cache", "runs", "outputs", "demo_out")
    shutil.copytree(REPO, ws / "src" / "qaa_vpr_ros", ignore=ignore)
    env = dict(os.environ, PATH=f"{colcon.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        [str(colcon), "--log-base", str(ws / "log"), "build", "--base-paths", str(ws / "src"),
         "--build-base", str(ws / "build"), "--install-base", str(ws / "install")],
        cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"colcon build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return ws / "install" / "qaa_vpr_ros"


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
    assert "localize_node = qaa_vpr_ros.localize_node:main" in entry_points.read_text()


@pytest.mark.slow
def test_colcon_installed_modules_come_from_the_install_tree(install_tree: Path) -> None:
    site = next(install_tree.glob("lib/python3*/site-packages"))
    code = ("import importlib.util as u; "
            "print(u.find_spec('qaa_vpr_ros.localize_node').origin); "
            "print(u.find_spec('qaa_vpr_ros.decision.parameters').origin)")
    code = f"import sys; sys.path.insert(0, {str(site)!r}); {code}"
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    origins = out.stdout.split()
    assert len(origins) == 2 and all(o.startswith(str(site)) for o in origins), origins


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


def _fake_launch_modules(recorded: dict) -> dict[str, types.ModuleType]:
    """Minimal stand-ins for launch / launch_ros / ament_index_python recording the calls."""

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs
            recorded.setdefault(type(self).__name__, []).append(self)

    class LaunchConfiguration(Recorder):
        def perform(self, context):
            return context[self.args[0]]

    names = {
        "launch": {"LaunchDescription": type("LaunchDescription", (Recorder,), {})},
        "launch.actions": {n: type(n, (Recorder,), {}) for n in ("DeclareLaunchArgument", "OpaqueFunction")},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": type("Node", (Recorder,), {})},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": lambda pkg: f"/opt/share/{pkg}"},
    }
    modules = {}
    for name, attrs in names.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        modules[name] = mod
    return modules


def _run_launch(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]):
    recorded: dict = {}
    for name, mod in _fake_launch_modules(recorded).items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("localize_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate_launch_description()
    defaults = {d.args[0]: d.kwargs["default_value"] for d in recorded["DeclareLaunchArgument"]}
    assert defaults["params_file"] == "/opt/share/qaa_vpr_ros/config/localize.yaml"
    context = {**defaults, **values}
    (opaque,) = recorded["OpaqueFunction"]
    (node,) = opaque.kwargs["function"](context)
    return node.kwargs


def test_launch_passes_params_file_and_only_given_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    params = str(REPO / "config/localize.yaml")
    node = _run_launch(monkeypatch, {"params_file": params, "map": "/maps/a", "model": "/models/m",
                                     "image_topics": "[/front/image_raw, /rear/image_raw/compressed]",
                                     "namespace": "robot1", "use_sim_time": "true"})
    assert node["package"] == "qaa_vpr_ros" and node["executable"] == "localize_node"
    assert node["name"] == "localize_node" and node["namespace"] == "robot1"
    file_arg, overrides = node["parameters"]
    assert file_arg == params
    assert overrides == {"use_sim_time": True, "map": "/maps/a", "model": "/models/m",
                         "image_topics": ["/front/image_raw", "/rear/image_raw/compressed"]}
    # Comma-separated form and no overrides at all.
    node = _run_launch(monkeypatch, {"params_file": params, "image_topics": "/a, /b", "device": "cpu"})
    assert node["parameters"][1] == {"use_sim_time": False, "device": "cpu", "image_topics": ["/a", "/b"]}


def test_launch_refuses_a_missing_params_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="params_file"):
        _run_launch(monkeypatch, {"params_file": str(tmp_path / "nope.yaml")})


def test_config_file_lists_every_parameter_with_its_default() -> None:
    data = yaml.safe_load((REPO / "config/localize.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    table = {row.name: row.default for row in parameter_table()}
    assert params == table
    assert LocalizeConfig.from_dict(params).problems() == []
