"""What CI installs is pinned: every line of requirements-dev.txt is an exact pin (pip included),
the lock agrees with it, and setup.py's ranges admit what we test (OpenCV 4.x and 5.x)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def requirement_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each requirement in a pip requirements file (comments and blanks out)."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split(" #", 1)[0].strip()
        if text and not text.startswith("#"):
            out.append((number, text))
    return out


def unpinned(path: Path) -> list[str]:
    """The lines of ``path`` that are not one exact ``name==version`` pin, each with the reason."""
    bad = []
    for number, text in requirement_lines(path):
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            bad.append(f"{path.name}:{number}: {text!r} is not a requirement ({exc})")
            continue
        specs = list(req.specifier)
        if req.url or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            bad.append(f"{path.name}:{number}: {text!r} is not an exact pin (name==version)")
    return bad


def pins(path: Path) -> dict[str, str]:
    return {canonicalize_name(Requirement(t).name): next(iter(Requirement(t).specifier)).version
            for _, t in requirement_lines(path)}


@pytest.mark.parametrize("name", ["requirements-dev.txt", "requirements-opencv-other.txt"])
def test_every_requirement_is_an_exact_pin(name: str) -> None:
    assert unpinned(REPO / name) == []


def test_pip_itself_is_pinned() -> None:
    assert "pip" in pins(REPO / "requirements-dev.txt"), "pin pip itself: the Makefile installs it first"


@pytest.mark.parametrize("line, ok", [
    ("numpy==2.4.6", True), ("opencv-python-headless", False), ("numpy>=1.26,<3", False),
    ("torch==2.*", False), ("pyyaml>=6", False), ("ruff ==0.17.6  # linter", True),
    ("numpy==1.0; python_version < '3.12'", True)])
def test_the_pin_check_tells_an_exact_pin_from_a_range(tmp_path, line, ok) -> None:
    (tmp_path / "r.txt").write_text(f"# comment\n\n{line}\n")
    assert (unpinned(tmp_path / "r.txt") == []) is ok


def test_the_lock_pins_everything_and_agrees_with_the_dev_pins() -> None:
    assert unpinned(REPO / "requirements-lock.txt") == []
    lock, dev = pins(REPO / "requirements-lock.txt"), pins(REPO / "requirements-dev.txt")
    differ = {name: (version, lock.get(name)) for name, version in dev.items()
              if name not in {"pip", "setuptools", "wheel"} and lock.get(name) != version}
    assert differ == {}, "requirements-dev.txt pin vs requirements-lock.txt (regenerate the lock)"


def test_makefile_installs_pinned_pip_and_the_lock() -> None:
    make = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "--upgrade pip" not in make
    assert re.search(r"grep -E '\^pip==' requirements-dev.txt", make)
    assert "-c requirements-lock.txt" in make


def _install_requires() -> list[str]:
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [ast.literal_eval(e) for e in node.value.elts]
    raise AssertionError("setup.py has no install_requires")


def test_setup_keeps_ranges_and_admits_both_opencv_majors() -> None:
    reqs = {canonicalize_name(Requirement(r).name): Requirement(r) for r in _install_requires()}
    assert all(not any(s.operator == "==" for s in r.specifier) for r in reqs.values()), "setup.py keeps ranges"
    opencv = reqs["opencv-python-headless"].specifier
    assert opencv.contains("4.14.0.94") and opencv.contains("5.1.0.95"), opencv
