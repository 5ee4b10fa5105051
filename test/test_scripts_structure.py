"""scripts/ and bench/ (issue 21, point 5): no import circle among them, no private name of the
package imported by them, and one home each for the bag writer, the node harness and the bench
runner. Read from the source with ``ast``: nothing is imported or run."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("scripts", "bench")


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import in ``path``, at any depth (functions included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [alias.name for alias in node.names]))
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for package in PACKAGES for p in (REPO / package).glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for module, names in _imports(path):
            edges.update(target for target in [module, *(f"{module}.{n}" for n in names)] if target in modules)
        graph[name] = edges - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_scripts_and_bench_import_without_a_circle() -> None:
    graph = _graph()
    assert "scripts.demo" in graph and "bench.run" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_a_planted_circle() -> None:
    graph = _graph()
    graph["scripts.node_harness"] = graph["scripts.node_harness"] | {"scripts.demo"}
    graph["scripts.demo"] = graph["scripts.demo"] | {"scripts.node_harness"}
    assert _cycle(graph) is not None


def test_scripts_and_bench_use_only_public_names_of_the_package() -> None:
    private = []
    for package in PACKAGES:
        for path in sorted((REPO / package).glob("*.py")):
            for module, names in _imports(path):
                if module.startswith("qaa_vpr_ros"):
                    private += [f"{path.relative_to(REPO)}: {module}.{n}" for n in names if n.startswith("_")]
    assert not private


def _files_using(pattern: str) -> list[str]:
    """Python files of the package, scripts, bench and tests (this one aside) matching the regex."""
    roots = [REPO / "qaa_vpr_ros", REPO / "scripts", REPO / "bench", REPO / "test"]
    return sorted(str(p.relative_to(REPO)) for root in roots for p in root.rglob("*.py")
                  if p.name != "test_scripts_structure.py" and re.search(pattern, p.read_text()))


def test_one_home_for_the_bag_writer_the_node_harness_and_the_bench_runner() -> None:
    # rosbags' Writer is used in one module; every recording goes through it.
    assert _files_using(r"from rosbags\.rosbag2 import .*\bWriter\b") == ["qaa_vpr_ros/bag_writer.py"]
    assert _files_using(r"(?<!Bag)Writer\(") == ["qaa_vpr_ros/bag_writer.py"]
    # The nodes are started as processes in one module.
    assert _files_using(r"qaa_vpr_ros\.\{module\}") == ["scripts/node_harness.py"]
    assert _files_using(r"\"qaa_vpr_ros\.(localize|pose_graph)_node\"") == []
    assert _files_using(r"class Spinner\b") == ["scripts/node_harness.py"]
    # One runner of budgeted sections, both bench modes through it.
    assert _files_using(r"traceback\.format_exc") == ["bench/runner.py"]
    assert "bench.run --gpu" in (REPO / "bench" / "gpu.sh").read_text()
