"""Every command and snippet in the docs runs as written (issue 14).

Collects each fenced ``bash``/``sh``/``console``/``python`` block of README.md, docs/*.md,
training/README.md and models/README.md and runs it, in document order, in one workspace that a
reader following the pages would have:

- the working directory is a copy of the repository root made of symlinks (so relative paths
  such as ``training/configs/...`` and ``../shared/data/...`` resolve against the documented
  base, the repository root, while outputs such as ``run1_map`` land in the workspace);
- ``HOME`` is a fresh folder holding the "user's own data" the pages name: ``~/models/QAA-8192``
  and ``~/models/qaa`` (a tiny random model saved with ``save_checkpoint``) and
  ``~/bags/mapping_run`` (a small rosbag2 written with test/bag_writer.py), so ``~`` paths run
  unchanged; ``run1/``, ``run2/`` (bags), ``model/`` and ``run2_map`` sit in the working directory;
- ``PATH`` starts with the console scripts of setup.py and a ``ros2`` that runs
  ``ros2 run qaa_vpr_ros EXE ARGS`` like ROS does (the same entry point) and refuses anything else.

Markers in the docs say what cannot run here and why (the grammar is in test/doc_blocks.py):
``<!-- doc-test: skip REASON -->``, ``<!-- doc-test: skip-command "TEXT" REASON -->``,
``<!-- doc-test: substitute "OLD" -> "NEW" REASON -->``, ``<!-- doc-test: prelude NAME -->``,
``<!-- doc-test: figure "TEXT" from: COMMAND -->`` (checked against COMMAND's output),
``<!-- doc-test: figure "TEXT" unchecked (REASON) from: COMMAND -->`` and
``<!-- doc-test: figures unchecked (REASON) from: COMMAND -->``. Skipped blocks and commands are
pytest skips / summary lines with their reason; every other block that fails fails its test.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import sys
from pathlib import Path

import doc_blocks
import pytest
from bag_writer import Camera, Drive, save_tiny_model, write_drive
from conftest import REPO_ROOT, SHARED_DATA, TINY_CONFIG
from doc_blocks import Block, Figure, MarkerError

HELDOUT = REPO_ROOT / "data" / "nordland_heldout"  # places 1920-2399, shipped with the repo
FIRST_PLACE = 1920
REPORT: list[str] = []  # printed by conftest's pytest_terminal_summary


def _collect() -> tuple[list[Block], list[Figure], list[str]]:
    blocks: list[Block] = []
    figures: list[Figure] = []
    errors: list[str] = []
    for path in doc_blocks.doc_paths(REPO_ROOT):
        try:
            b, f = doc_blocks.parse(path, REPO_ROOT)
        except MarkerError as err:
            errors.append(str(err))
            continue
        blocks += b
        figures += f
    return blocks, figures, errors


BLOCKS, FIGURES, MARKER_ERRORS = _collect()


def console_scripts() -> dict[str, str]:
    """name -> 'module:function' from setup.py's entry points."""
    text = (REPO_ROOT / "setup.py").read_text(encoding="utf-8")
    return dict(re.findall(r"'(\w+)\s*=\s*([\w.]+:\w+)'", text))


def _write_executable(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(working directory, environment) of the reader; see the module docstring."""
    if not (HELDOUT / "summer").is_dir():
        pytest.skip(f"demo images absent: {HELDOUT}")
    top = tmp_path_factory.mktemp("docs")
    repo, home, bindir = top / "repo", top / "home", top / "bin"
    for folder in (repo, home, bindir):
        folder.mkdir()
    for entry in REPO_ROOT.iterdir():
        if entry.name != ".git":
            (repo / entry.name).symlink_to(entry)
    if SHARED_DATA.is_dir():
        (top / "shared").symlink_to(SHARED_DATA.parent)

    python = sys.executable
    for name, target in console_scripts().items():
        module, function = target.split(":")
        _write_executable(bindir / name, f"#!{python}\nimport sys\nsys.argv[0] = {name!r}\n"
                                         f"from {module} import {function}\nsys.exit({function}())\n")
    names = " ".join(sorted(console_scripts()))
    _write_executable(bindir / "ros2", f"""#!/bin/bash
# doc test: `ros2 run qaa_vpr_ros EXE ARGS` runs the package's console script EXE, as ROS does.
if [ "$1" = run ] && [ "$2" = qaa_vpr_ros ] && [[ " {names} " == *" $3 "* ]]; then
    exe="$3"; shift 3; exec "{bindir}/$exe" "$@"
fi
echo "doc test: only 'ros2 run qaa_vpr_ros <{names.replace(' ', '|')}>' runs here; mark this block" >&2
exit 2
""")

    for folder in (home / "models" / "QAA-8192", home / "models" / "qaa", repo / "model"):
        save_tiny_model(folder, TINY_CONFIG)
    two_cameras = [Camera("/front/image_raw"), Camera("/rear/image_raw/compressed", compressed="jpeg")]
    write_drive(repo / "run1", HELDOUT, Drive(cameras=two_cameras, num_frames=10, first_place=FIRST_PLACE))
    winter = [Camera(c.topic, season="winter", compressed=c.compressed) for c in two_cameras]
    write_drive(repo / "run2", HELDOUT, Drive(cameras=winter, num_frames=10, first_place=FIRST_PLACE))
    (home / "bags").mkdir()
    write_drive(home / "bags" / "mapping_run", HELDOUT,
                Drive(cameras=[Camera("/front/image_raw")], num_frames=10, first_place=FIRST_PLACE))
    from qaa_vpr_ros.map_tools.build import main as build_main

    assert build_main([str(repo / "run2"), "--model", str(repo / "model"), "--pose-topic", "/odom",
                       "-o", str(repo / "run2_map")]) == 0

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROS_", "RMW_", "PYTEST"))}
    env.update({
        "HOME": str(home),
        "PATH": f"{bindir}{os.pathsep}{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO_ROOT),
        "ROS_DOMAIN_ID": str(70 + os.getpid() % 30),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "DOC_TEST_REPO": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
    })
    yield repo, env
    shutil.rmtree(top, ignore_errors=True)


def test_doc_markers_parse() -> None:
    """Every doc-test marker is understood and stands where it applies."""
    assert not MARKER_ERRORS, "\n".join(MARKER_ERRORS)


def _needs_shared_data(code: str) -> bool:
    """The block reads ../shared/data itself or through a config file of this repository it names."""
    if "../shared/data" in code:
        return True
    configs = (REPO_ROOT / word for word in code.split() if word.endswith((".yaml", ".yml")))
    return any(path.is_file() and "shared/data" in path.read_text() for path in configs)


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block_runs_as_written(block: Block, workspace) -> None:
    cwd, env = workspace
    if block.skip:
        REPORT.append(f"skip  {block.id} [{block.language}]: {block.skip}")
        pytest.skip(f"{block.id}: {block.skip}")
    if _needs_shared_data(block.code) and not SHARED_DATA.is_dir():
        REPORT.append(f"skip  {block.id} [{block.language}]: shared test data absent ({SHARED_DATA})")
        pytest.skip(f"{block.id}: shared test data absent ({SHARED_DATA})")
    outcome = doc_blocks.run_block(block, cwd, env, sys.executable)
    for command, why in outcome.skipped:
        REPORT.append(f"skip  {block.id} `{_short(command)}`: {why}")
    for command in outcome.ran:
        REPORT.append(f"{'FAIL' if outcome.error else 'ran '}  {block.id} `{_short(command)}`")
    assert outcome.error is None, outcome.error
    if not outcome.ran:
        pytest.skip(f"{block.id}: every command skipped: " + "; ".join(why for _, why in outcome.skipped))


@pytest.mark.slow
@pytest.mark.parametrize("figure", FIGURES, ids=[f.id for f in FIGURES])
def test_doc_figure_matches_its_command(figure: Figure, workspace) -> None:
    cwd, env = workspace
    what = figure.text if figure.text is not None else f"{figure.count} figures"
    if figure.unchecked:
        REPORT.append(f"unchecked figure {figure.id} {what!r} ({figure.unchecked}) from `{figure.command}`")
        pytest.skip(f"{figure.id}: {what} unchecked ({figure.unchecked}); from `{figure.command}`")
    if "../shared/data" in figure.command and not SHARED_DATA.is_dir():
        pytest.skip(f"{figure.id}: shared test data absent ({SHARED_DATA})")
    error = doc_blocks.check_figure(figure, cwd, env)
    REPORT.append(f"{'FAIL' if error else 'checked'} figure {figure.id} {what!r} from `{figure.command}`")
    assert error is None, error


def _short(command: str, limit: int = 110) -> str:
    return command if len(command) <= limit else command[:limit - 3] + "..."


# --- the doc test itself ---------------------------------------------------------------------------
def _markdown(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    return path


def _python_api_block(readme: Path) -> Block:
    blocks, _ = doc_blocks.parse(readme, readme.parent)
    return next(b for b in blocks if b.language == "python" and "load_model(" in b.code)


def test_breaking_the_readme_python_example_fails_the_doc_test(tmp_path: Path) -> None:
    home = tmp_path / "home"
    save_tiny_model(home / "models" / "QAA-8192", TINY_CONFIG)
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO_ROOT))
    readme = tmp_path / "README.md"
    readme.write_text((REPO_ROOT / "README.md").read_text(encoding="utf-8"), encoding="utf-8")
    assert doc_blocks.run_block(_python_api_block(readme), tmp_path, env, sys.executable).error is None

    text = readme.read_text(encoding="utf-8")
    readme.write_text(text.replace('encodings="rgb")', 'encoding="rgb")'), encoding="utf-8")
    outcome = doc_blocks.run_block(_python_api_block(readme), tmp_path, env, sys.executable)
    assert outcome.error is not None and "encoding" in outcome.error


def test_a_failing_shell_command_fails_and_a_marked_one_is_skipped_with_its_reason(tmp_path: Path) -> None:
    env = dict(os.environ)
    page = _markdown(tmp_path, "# t\n\n```bash\ntrue\nfalse   # broken\necho after > after.txt\n```\n\n"
                               '<!-- doc-test: skip-command "false" needs a robot -->\n```sh\ntrue\nfalse\n```\n')
    broken, marked = doc_blocks.parse(page, tmp_path)[0]
    outcome = doc_blocks.run_block(broken, tmp_path, env, sys.executable)
    assert outcome.error is not None and "exit status 1" in outcome.error
    assert not (tmp_path / "after.txt").exists()  # the block stops at the first failure
    outcome = doc_blocks.run_block(marked, tmp_path, env, sys.executable)
    assert outcome.error is None
    assert outcome.ran == ["true"] and outcome.skipped == [("false", "needs a robot")]


def test_substitutions_apply_and_must_match(tmp_path: Path) -> None:
    page = _markdown(tmp_path, '<!-- doc-test: substitute "--steps 1800" -> "--steps 2" shortened -->\n'
                               "```console\n$ echo --steps 1800 > out.txt\n--steps 1800\n```\n")
    [block], _ = doc_blocks.parse(page, tmp_path)
    assert doc_blocks.run_block(block, tmp_path, dict(os.environ), sys.executable).error is None
    assert (tmp_path / "out.txt").read_text().strip() == "--steps 2"
    block.code = "$ echo nothing to replace\n"
    assert "does not occur" in doc_blocks.run_block(block, tmp_path, dict(os.environ), sys.executable).error


@pytest.mark.parametrize("text, culprit", [
    ("<!-- doc-test: skipp typo -->\n```bash\ntrue\n```\n", "unknown doc-test directive 'skipp'"),
    ("<!-- doc-test: skip -->\n```bash\ntrue\n```\n", "'skip' needs a reason"),
    ("<!-- doc-test: skip gpu -->\n\nSome prose.\n```bash\ntrue\n```\n", "not directly above a code fence"),
    ("<!-- doc-test: prelude nope -->\n```python\npass\n```\n", "unknown prelude 'nope'"),
    ('<!-- doc-test: figure "0.42" from: echo 0.42 -->\nRecall is 0.43.\n', "'0.42' is not quoted"),
    ("<!-- doc-test: figures unchecked (slow) from: make x -->\nNo numbers here.\n", "quotes no number"),
], ids=["unknown-directive", "skip-without-reason", "not-above-a-fence", "unknown-prelude", "figure-not-quoted",
        "figures-without-numbers"])
def test_markers_that_do_not_fit_are_errors(tmp_path: Path, text: str, culprit: str) -> None:
    with pytest.raises(MarkerError, match=re.escape(culprit)):
        doc_blocks.parse(_markdown(tmp_path, text), tmp_path)


def test_figures_are_compared_at_the_quoted_precision(tmp_path: Path) -> None:
    assert doc_blocks.figure_matches("19.4 %", "R@1 19.44 R@5 41.39")
    assert doc_blocks.figure_matches("19.4 %", "recall@1: 0.1944")
    assert doc_blocks.figure_matches("5,072,833", "parameters: 5072833")
    assert not doc_blocks.figure_matches("0.33", "recall 0.3449")
    page = _markdown(tmp_path, '<!-- doc-test: figure "0.33" from: echo recall 0.3449 -->\nRecall 0.33.\n')
    _, [figure] = doc_blocks.parse(page, tmp_path)
    assert "prints" in doc_blocks.check_figure(figure, tmp_path, dict(os.environ))
    figure.command = "echo recall 0.3301"
    assert doc_blocks.check_figure(figure, tmp_path, dict(os.environ)) is None


def test_a_figure_with_several_numbers_must_be_printed_as_written() -> None:
    quoted = "precision 1.000, recall 0.680"
    assert doc_blocks.figure_matches(quoted, "accepted 102/150\nprecision 1.000, recall 0.680 (precision: ...)")
    assert doc_blocks.figure_matches(quoted, "precision 1.000,\n  recall 0.680")  # white space runs are one
    assert not doc_blocks.figure_matches(quoted, "precision 0.680, recall 1.000")  # each number beside its name
    assert not doc_blocks.figure_matches(quoted, "precision 1.000, recall 0.6801")


def test_figures_from_one_command_share_one_run(tmp_path: Path) -> None:
    page = _markdown(tmp_path, '<!-- doc-test: figure "3.8 m" from: echo run >> runs.txt; echo 3.8 7.5 -->\n'
                               '<!-- doc-test: figure "7.5 m" from: echo run >> runs.txt; echo 3.8 7.5 -->\n'
                               "RMS 3.8 m vs 7.5 m.\n")
    _, figures = doc_blocks.parse(page, tmp_path)
    assert [doc_blocks.check_figure(f, tmp_path, dict(os.environ)) for f in figures] == [None, None]
    assert (tmp_path / "runs.txt").read_text().splitlines() == ["run"]
