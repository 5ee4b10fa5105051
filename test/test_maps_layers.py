"""The map store below the decision, the map tools above both (issue 21, point 4): every import between
``qaa_vpr_ros/maps/``, ``qaa_vpr_ros/decision/`` and ``qaa_vpr_ros/map_tools/`` runs downward.
Read from the source with ``ast`` (imports inside functions included): nothing is imported or run."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "qaa_vpr_ros"
# What sits above the store: the decision, the map tools and the ROS edge.
ABOVE_THE_STORE = tuple(f"qaa_vpr_ros.{name}" for name in ("decision", "map_tools", "ros", "localize_node",
                                                            "localize_entry", "pose_graph_node"))


def _module_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path`` at any depth; ``from a import b`` gives ``a.b``
    too (b may be a module); relative imports are made absolute (packages counted from ``root``)."""
    module = _module_of(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            out += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def upward_imports(folder: Path, above: tuple[str, ...], root: Path = REPO) -> list[str]:
    """``file:line module`` of every import in ``folder``'s modules that reaches into ``above``."""
    return sorted(
        f"{path.relative_to(root)}:{line} {module}"
        for path in folder.rglob("*.py")
        for line, module in imported_modules(path, root)
        if any(module == name or module.startswith(name + ".") for name in above)
    )


def test_imports_run_downward_from_the_tools_through_the_decision_to_the_store() -> None:
    assert upward_imports(PACKAGE / "maps", ABOVE_THE_STORE) == [], (
        "qaa_vpr_ros/maps/ is the store below the decision and the map tools; move the importing code "
        "to qaa_vpr_ros/map_tools/ (a tool) or pass the value in")
    above_the_decision = tuple(name for name in ABOVE_THE_STORE if name != "qaa_vpr_ros.decision")
    assert upward_imports(PACKAGE / "decision", above_the_decision) == [], "the decision imports only the store"


def test_the_store_holds_no_tool() -> None:
    """The tools (anything with a command line) live in map_tools/, the store only in maps/."""
    with_cli = sorted(p.name for p in (PACKAGE / "maps").glob("*.py")
                      if p.name == "__main__.py" or "argparse" in {m for _, m in imported_modules(p)})
    assert with_cli == []
    assert {p.stem for p in (PACKAGE / "map_tools").glob("*.py")} >= {"build", "merge", "info", "evaluate",
                                                                        "export", "__main__"}


@pytest.mark.parametrize("planted", [
    "from qaa_vpr_ros.decision.replay import pr_curve\n",
    "def f():\n    from qaa_vpr_ros.map_tools import build\n",
    "def f():\n    import qaa_vpr_ros.decision\n",
    "from ..decision import replay\n",
])
def test_the_scan_finds_a_planted_upward_import(tmp_path: Path, planted: str) -> None:
    store = tmp_path / "qaa_vpr_ros" / "maps"
    store.mkdir(parents=True)
    (store / "__init__.py").write_text("")
    (store / "place_map.py").write_text("import numpy as np\n" + planted)
    found = upward_imports(store, ABOVE_THE_STORE, root=tmp_path)
    assert len(found) >= 1 and all(f.startswith("qaa_vpr_ros/maps/place_map.py:") for f in found)
