"""Collect the fenced shell and Python blocks of the docs and run them as written (see test_docs.py).

Markers are HTML comment lines, invisible on GitHub but plain in the source, of the form
``<!-- doc-test: DIRECTIVE -->``. Directives that change how a fenced block runs sit on the
lines directly above its opening fence; figure directives sit directly above the paragraph or
table that quotes the figure.

``skip REASON``
    The block is not run; the reason (what it needs, and which test covers it) is listed.
``skip-command "TEXT" REASON``
    In a shell block, each command (a line with its ``\\`` continuations) containing TEXT is not
    run; the rest of the block is.
``substitute "OLD" -> "NEW" REASON``
    OLD (which must occur in the block) is replaced by NEW before running: a user's own data
    path, or a shortened run of a long command. Shell blocks see the workspace variables
    (``$DOC_TEST_REPO``, ...) in NEW.
``prelude NAME``
    A Python snippet that lives inside a user's program (a subscriber callback) runs after the
    named prelude of ``PRELUDES`` (a real rclpy node, the message types it uses).
``figure "TEXT" from: COMMAND``
    TEXT, quoted in the next lines, must be what COMMAND prints (its number compared at the
    quoted precision; ``19.4 %`` also matches a printed ``0.194``; a TEXT with several numbers,
    such as ``precision 1.000, recall 0.680``, must be printed as written). COMMAND runs in under a
    minute; figures from one command share one run of it.
``figure "TEXT" unchecked (REASON) from: COMMAND`` and ``figures unchecked (REASON) from: COMMAND``
    Figures (one, or every number of the next paragraph or table) that COMMAND produced but that
    take too long to recompute here; counted and listed, not run.

An unknown directive, a marker that is not followed by what it refers to, or a substitution
whose OLD text is not in the block is an error, so markers cannot silently rot. Blocks run in
document order in one workspace (see test_docs.py), like a reader following the pages.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DOC_FILES = ("README.md", "docs/*.md", "training/README.md", "models/README.md")
LANGUAGES = {"bash": "shell", "sh": "shell", "shell": "shell", "console": "console", "python": "python",
             "py": "python"}
MARKER = re.compile(r"^<!--\s*doc-test:\s*(?P<body>.*?)\s*-->\s*$")
QUOTED = r'"((?:[^"\\]|\\.)*)"'
BLOCK_TIMEOUT_S = 150
FIGURE_TIMEOUT_S = 60

# Python preludes for snippets that live inside a user's node (marker ``prelude NAME``).
PRELUDES = {
    "rclpy_node": '''\
import rclpy
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from nav_msgs.msg import Path
from sensor_msgs.msg import PointCloud2

rclpy.init()
node = rclpy.create_node("doc_test_consumer")
initial_pose_pub = node.create_publisher(PoseWithCovarianceStamped, "/initialpose", 1)


class _PoseGraph:
    """Stands in for the reader's pose-graph back end: records the edges it is given."""

    def __init__(self):
        self.edges = []

    def add_loop_edge(self, stamp_a, stamp_b, same_session):
        self.edges.append((stamp_a, stamp_b, same_session))


graph = _PoseGraph()
''',
    "hydra": '''\
# doc test: pose_graph_tools_msgs is not on PyPI; its two messages with the fields of their .msg
# definitions (MIT-SPARK/pose_graph_tools, pose_graph_tools_msgs/msg/PoseGraph{,Edge}.msg), which
# the snippet uses in place of its import line (a substitute marker above it in docs/NODE.md).
import types
from dataclasses import dataclass, field

import numpy as np
from geometry_msgs.msg import Pose
from std_msgs.msg import Header


@dataclass
class PoseGraphEdge:
    LOOPCLOSE = 1
    header: Header = field(default_factory=Header)
    key_from: int = 0
    key_to: int = 0
    robot_from: int = 0
    robot_to: int = 0
    type: int = 0
    pose: Pose = field(default_factory=Pose)
    covariance: list = field(default_factory=lambda: [0.0] * 36)


@dataclass
class PoseGraph:
    header: Header = field(default_factory=Header)
    nodes: list = field(default_factory=list)
    edges: list = field(default_factory=list)


hydra_published = []
hydra_pub = types.SimpleNamespace(publish=hydra_published.append)
''',
}
PRELUDE_EPILOGUES = {
    "rclpy_node": '''
# doc test: each callback the snippet defined gets one message of its type, as its subscription would.
import numpy as _np
from geometry_msgs.msg import PoseStamped as _PoseStamped

if "on_match" in globals():
    _match = PoseWithCovarianceStamped()
    _match.pose.covariance[0] = 1.0
    on_match(_match)
if "on_candidates" in globals():
    from qaa_vpr_ros.localize_node import LOOP_CANDIDATE_DTYPE as _DTYPE

    _rows = _np.zeros(2, dtype=_DTYPE)
    _rows["accepted"], _rows["score"] = [1, 0], [0.9, 0.4]
    on_candidates(PointCloud2(height=1, width=2, point_step=_DTYPE.itemsize, row_step=2 * _DTYPE.itemsize,
                              data=_rows.tobytes()))
if "on_loop" in globals():
    on_loop(Path(poses=[_PoseStamped(), _PoseStamped()]))
    assert len(graph.edges) == 1, graph.edges
node.destroy_node()
rclpy.shutdown()
''',
    "hydra": '''
# doc test: Hydra's contract (MIT-SPARK/Hydra, src/backend/external_loop_closure_receiver.cpp): an
# edge's key_from / key_to are nanosecond stamps (Hydra takes its agent nodes nearest them, robot_from /
# robot_to name the robot), and its pose is to_T_from. One accepted online loop closure in, checked.
from qaa_vpr_ros.decision.record import LoopClosureRecord as _Record
from qaa_vpr_ros.decision.record import matrix_quaternion as _quaternion
from qaa_vpr_ros.decision.record import pose_matrix as _pose_matrix

_match = _pose_matrix((10.0, 2.0, 0.0), (0.0, 0.0, 0.3826834, 0.9238795))  # odometry poses of the two
_query = _pose_matrix((13.0, 1.0, 0.5), (0.0, 0.0, 0.5, 0.8660254))
_relative = np.linalg.inv(_match) @ _query  # T_match_query, as the node computes it
_record = _Record(query_stamp_sec=1_700_000_100, query_stamp_nanosec=123_456_789, camera="/cam",
                  match_keyframe_id=3, match_stamp_sec=1_700_000_000, match_stamp_nanosec=987_654_321,
                  match_session="online", match_frame="odom",
                  relative_translation=tuple(float(v) for v in _relative[:3, 3]),
                  relative_rotation=_quaternion(_relative[:3, :3]), accepted=True)
to_hydra(_record)
((_edge,),) = [g.edges for g in hydra_published]
_nodes = {1_700_000_100_123_456_789: _query, 1_700_000_000_987_654_321: _match}  # Hydra's nodes by stamp (ns)
assert _edge.type == PoseGraphEdge.LOOPCLOSE, _edge.type
assert {_edge.key_from, _edge.key_to} == set(_nodes), (_edge.key_from, _edge.key_to)
assert _edge.robot_from == _edge.robot_to, (_edge.robot_from, _edge.robot_to)
_p, _q = _edge.pose.position, _edge.pose.orientation
_to_T_from = np.linalg.inv(_nodes[_edge.key_to]) @ _nodes[_edge.key_from]
assert np.allclose(_pose_matrix((_p.x, _p.y, _p.z), (_q.x, _q.y, _q.z, _q.w)), _to_T_from, atol=1e-6), \\
    "the edge's pose is not to_T_from"
''',
}


class MarkerError(ValueError):
    """A doc-test marker that cannot be understood or does not fit where it stands."""


@dataclass
class Block:
    path: str  # relative to the docs root
    line: int  # 1-based line of the opening fence
    language: str  # shell | console | python
    code: str
    skip: str | None = None
    skip_commands: list[tuple[str, str]] = field(default_factory=list)
    substitutions: list[tuple[str, str, str]] = field(default_factory=list)
    prelude: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class Figure:
    path: str
    line: int
    text: str | None  # None: every number of the next paragraph/table
    command: str
    unchecked: str | None  # the reason, or None when the test recomputes it
    count: int = 1

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class Outcome:
    """What running one block did: the commands run and skipped, or why it failed."""

    block: Block
    ran: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (command, reason)
    error: str | None = None


def doc_paths(root: Path) -> list[Path]:
    paths: list[Path] = []
    for pattern in DOC_FILES:
        paths.extend(sorted(root.glob(pattern)))
    return paths


def _unescape(text: str) -> str:
    """Marker strings: ``\\n`` is a newline, a backslash before any other character keeps it."""
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def parse(path: Path, root: Path) -> tuple[list[Block], list[Figure]]:
    """The runnable blocks and the figure markers of one markdown file."""
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    figures: list[Figure] = []
    pending: list[tuple[int, str]] = []  # block markers waiting for their fence
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line)
        if marker:
            body = marker.group("body")
            if body.startswith("figure"):
                figures.append(_parse_figure(body, rel, i + 1, lines, i + 1))
            else:
                pending.append((i + 1, body))
            i += 1
            continue
        fence = re.match(r"^(\s*)```+\s*([\w+-]*)", line)
        if fence:
            indent, lang = fence.group(1), fence.group(2).lower()
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith("```"):
                end += 1
            if end == len(lines):
                raise MarkerError(f"{rel}:{i + 1}: code fence never closed")
            body_lines = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:end]]
            if lang in LANGUAGES:
                block = Block(rel, i + 1, LANGUAGES[lang], "\n".join(body_lines) + "\n")
                for marker_line, directive in pending:
                    _apply(block, directive, f"{rel}:{marker_line}")
                blocks.append(block)
            elif pending:
                raise MarkerError(f"{rel}:{pending[0][0]}: marker above a ```{lang} block, which is never run")
            pending = []
            i = end + 1
            continue
        if pending:
            raise MarkerError(f"{rel}:{pending[0][0]}: marker {pending[0][1]!r} is not directly above a code fence")
        i += 1
    if pending:
        raise MarkerError(f"{rel}:{pending[0][0]}: marker {pending[0][1]!r} at the end of the file")
    return blocks, figures


def _apply(block: Block, directive: str, where: str) -> None:
    word, _, rest = directive.partition(" ")
    rest = rest.strip()
    if word == "skip":
        if not rest:
            raise MarkerError(f"{where}: 'skip' needs a reason")
        block.skip = rest
    elif word == "skip-command":
        m = re.fullmatch(QUOTED + r"\s+(.+)", rest)
        if not m:
            raise MarkerError(f'{where}: expected skip-command "TEXT" REASON, got {rest!r}')
        block.skip_commands.append((_unescape(m.group(1)), m.group(2)))
    elif word == "substitute":
        m = re.fullmatch(QUOTED + r"\s*->\s*" + QUOTED + r"\s+(.+)", rest)
        if not m:
            raise MarkerError(f'{where}: expected substitute "OLD" -> "NEW" REASON, got {rest!r}')
        block.substitutions.append((_unescape(m.group(1)), _unescape(m.group(2)), m.group(3)))
    elif word == "prelude":
        if rest not in PRELUDES:
            raise MarkerError(f"{where}: unknown prelude {rest!r} (known: {', '.join(PRELUDES)})")
        block.prelude = rest
    else:
        raise MarkerError(f"{where}: unknown doc-test directive {word!r}")


def _parse_figure(body: str, rel: str, line: int, lines: list[str], start: int) -> Figure:
    where = f"{rel}:{line}"
    m = re.fullmatch(r"figure\s+" + QUOTED + r"\s+(?:unchecked\s+\((?P<why>[^)]+)\)\s+)?from:\s*(?P<cmd>.+)", body)
    if m:
        text = _unescape(m.group(1))
        following = _next_paragraph(lines, start)
        if text not in following:
            raise MarkerError(f"{where}: figure {text!r} is not quoted in the paragraph below the marker")
        return Figure(rel, line, text, m.group("cmd").strip(), m.group("why"))
    m = re.fullmatch(r"figures\s+unchecked\s+\((?P<why>[^)]+)\)\s+from:\s*(?P<cmd>.+)", body)
    if m:
        numbers = re.findall(r"(?<![\w.])\d[\d,]*(?:\.\d+)?", _next_paragraph(lines, start))
        if not numbers:
            raise MarkerError(f"{where}: 'figures unchecked' but the paragraph below quotes no number")
        return Figure(rel, line, None, m.group("cmd").strip(), m.group("why"), count=len(numbers))
    raise MarkerError(f'{where}: expected figure "TEXT" [unchecked (REASON)] from: COMMAND, '
                      f"or figures unchecked (REASON) from: COMMAND; got {body!r}")


def _next_paragraph(lines: list[str], start: int) -> str:
    """The paragraph or table after line index ``start`` (markers and leading blanks skipped)."""
    i = start
    while i < len(lines) and (not lines[i].strip() or MARKER.match(lines[i])):
        i += 1
    out = []
    while i < len(lines) and lines[i].strip():
        out.append(lines[i])
        i += 1
    return "\n".join(out)


# --- running -------------------------------------------------------------------------------------
def shell_commands(code: str) -> list[str]:
    """Logical commands of a shell block: continuation lines joined, comment-only lines dropped."""
    commands, current = [], ""
    for raw in code.splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        current += raw
        if raw.rstrip().endswith("\\"):
            current += "\n"
            continue
        commands.append(current)
        current = ""
    if current:
        commands.append(current)
    return commands


def console_commands(code: str) -> list[str]:
    """Commands of a console block: ``$ `` lines (and their continuations); output lines dropped."""
    commands, current = [], None
    for raw in code.splitlines():
        if current is not None and current.rstrip().endswith("\\"):
            current += "\n" + raw.lstrip("> ")
            continue
        if current is not None:
            commands.append(current)
            current = None
        if raw.startswith("$ "):
            current = raw[2:]
    if current is not None:
        commands.append(current)
    return commands


def substituted(block: Block) -> str:
    code = block.code
    for old, new, _ in block.substitutions:
        if old not in code:
            raise MarkerError(f"{block.id}: substitute: {old!r} does not occur in the block")
        code = code.replace(old, new)
    return code


def run_block(block: Block, cwd: Path, env: dict[str, str], python: str) -> Outcome:
    """Run one block as written (after its substitutions); never raises for a failing block."""
    outcome = Outcome(block)
    try:
        code = substituted(block)
    except MarkerError as err:
        outcome.error = str(err)
        return outcome
    if block.language == "python":
        source = PRELUDES.get(block.prelude or "", "") + code + PRELUDE_EPILOGUES.get(block.prelude or "", "")
        with tempfile.NamedTemporaryFile("w", suffix=".py", prefix="doc_block_", delete=False) as f:
            f.write(source)
        try:
            argv = [python, f.name]
            outcome.ran.append(f"python block ({len(code.splitlines())} lines)")
            outcome.error = _run(argv, cwd, env, block.id)
        finally:
            os.unlink(f.name)
        return outcome
    commands = shell_commands(code) if block.language == "shell" else console_commands(code)
    used = set()
    keep = []
    for command in commands:
        hit = next(((text, why) for text, why in block.skip_commands if text in command), None)
        if hit:
            used.add(hit[0])
            outcome.skipped.append((_one_line(command), hit[1]))
        else:
            keep.append(command)
            outcome.ran.append(_one_line(command))
    unused = [text for text, _ in block.skip_commands if text not in used]
    if unused:
        outcome.error = f"{block.id}: skip-command {unused[0]!r} matches no command of the block"
        return outcome
    if not keep:
        return outcome
    script = "set -eo pipefail\n" + "\n".join(keep) + "\n"
    outcome.error = _run(["bash", "-c", script], cwd, env, block.id)
    return outcome


def _one_line(command: str) -> str:
    return " ".join(command.replace("\\\n", " ").split())


def _run(argv: list[str], cwd: Path, env: dict[str, str], what: str, timeout: float = BLOCK_TIMEOUT_S) -> str | None:
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        return f"{what}: still running after {timeout:.0f} s (a long command needs a shortening substitute)\n" \
               f"{_tail(err.stdout)}{_tail(err.stderr)}"
    if proc.returncode != 0:
        return f"{what}: exit status {proc.returncode}\n--- stdout ---\n{_tail(proc.stdout)}\n" \
               f"--- stderr ---\n{_tail(proc.stderr)}"
    return None


def _tail(text: str | bytes | None, limit: int = 3000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = text or ""
    return text if len(text) <= limit else "..." + text[-limit:]


# --- figures -------------------------------------------------------------------------------------
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def figure_matches(quoted: str, output: str) -> bool:
    """Is the number quoted (``19.4 %``, ``5,072,833``, ``0.33``) printed by the command?

    Printed numbers are rounded to the quoted number of decimals; a quoted percentage also matches
    a printed fraction (``19.4 %`` ~ ``0.1944``). A quote with several numbers (``precision 1.000,
    recall 0.680``) must occur in the output as written (runs of white space count as one), so each
    number stands beside its name.
    """
    found = _NUMBER.search(quoted)
    if not found:
        raise MarkerError(f"figure {quoted!r} holds no number")
    if len(_NUMBER.findall(quoted)) > 1:
        written = r"(?<![\w.])" + re.escape(" ".join(quoted.split())) + r"(?!\.?\d)"
        return re.search(written, " ".join(output.split())) is not None
    text = found.group(0).replace(",", "")
    decimals = len(text.split(".")[1]) if "." in text else 0
    value = float(text)
    percent = "%" in quoted[found.end():found.end() + 3]
    for printed in _NUMBER.findall(output):
        try:
            number = float(printed.replace(",", ""))
        except ValueError:
            continue
        candidates = [number, number * 100.0] if percent else [number]
        if any(abs(round(c, decimals) - value) < 1e-9 for c in candidates):
            return True
    return False


_FIGURE_RUNS: dict[tuple[str, str], subprocess.CompletedProcess | None] = {}  # (command, cwd) -> its run


def _figure_run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess | None:
    """The command's run (None: it timed out), once per command and workspace: several figures
    quoted from one command (a script that prints a table) share it."""
    key = (command, str(cwd))
    if key not in _FIGURE_RUNS:
        try:
            _FIGURE_RUNS[key] = subprocess.run(["bash", "-c", "set -eo pipefail\n" + command], cwd=cwd, env=env,
                                               capture_output=True, text=True, timeout=FIGURE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _FIGURE_RUNS[key] = None
    return _FIGURE_RUNS[key]


def check_figure(figure: Figure, cwd: Path, env: dict[str, str]) -> str | None:
    """Run the figure's command; None when its output shows the quoted figure, else why not."""
    proc = _figure_run(figure.command, cwd, env)
    if proc is None:
        return f"{figure.id}: {figure.command!r} takes over {FIGURE_TIMEOUT_S} s; mark the figure unchecked"
    if proc.returncode != 0:
        return f"{figure.id}: {figure.command!r} failed ({proc.returncode}):\n{_tail(proc.stderr)}"
    output = proc.stdout + proc.stderr
    if not figure_matches(figure.text or "", output):
        return f"{figure.id}: the docs quote {figure.text!r} but {figure.command!r} prints:\n{_tail(output)}"
    return None
