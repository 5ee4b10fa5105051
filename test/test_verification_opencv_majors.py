"""Geometric verification on both OpenCV majors setup.py allows (4.x and 5.x): test_verification's
cases pass on the other major too, and verify_pair decides alike on named real pairs.

The other major lives in a small second venv, .venv-opencv-other (`make opencv-other`, which
`make test` runs first; requirements-opencv-other.txt). Run as a script with an interpreter, this
file prints that interpreter's decisions on PAIRS as JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "rtabmap_samples"
OTHER_PYTHON = REPO / ".venv-opencv-other" / "bin" / "python"
# rtabmap_samples image numbers (query, match). Revisits: white in loop_ground_truth.png (the walk's
# second pass, images 41-84, over its start). Non-revisits: far apart and black there; 8-69 is
# the same kind of corridor (repeated ceiling lights and doors), the hardest of them.
REVISITS = [(41, 3), (43, 4), (45, 5), (49, 10), (52, 13), (61, 22), (67, 28), (70, 31), (81, 2), (83, 42)]
NON_REVISITS = [(8, 69), (16, 68), (24, 67), (44, 75), (15, 62), (64, 81), (5, 30), (20, 50)]
PAIRS = REVISITS + NON_REVISITS


def decisions() -> dict:
    """This interpreter's OpenCV version and verify_pair's outcome on each of PAIRS."""
    import cv2

    from qaa_vpr_ros.verification import Intrinsics, verify_pair

    k = Intrinsics(420.0, 420.0, 256.0, 192.0)  # as test_verification.py (an uncalibrated camera)

    def image(n: int):
        return cv2.cvtColor(cv2.imread(str(SAMPLES / "images" / f"{n}.jpg"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    out = {}
    for a, b in PAIRS:
        v = verify_pair(image(a), image(b), k)
        out[f"{a}-{b}"] = {"accepted": v.accepted, "model": v.model, "inliers": v.inliers, "reason": v.reason}
    return {"opencv": cv2.__version__, "decisions": out}


def _run(python: Path | str, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([str(python), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _other_python():
    if not OTHER_PYTHON.is_file():
        pytest.fail(f"{OTHER_PYTHON} not found: run `make opencv-other` (make test does) to create the "
                    "second venv with the other OpenCV major (requirements-opencv-other.txt)")
    return OTHER_PYTHON


def _skip_without_samples():
    if not (SAMPLES / "images" / "1.jpg").is_file():
        pytest.skip(f"real test images not found in {SAMPLES} (see /work/shared/data/README.md)")


def _major(python: Path | str) -> int:
    done = _run(python, "-c", "import cv2; print(cv2.__version__)", timeout=60.0)
    assert done.returncode == 0, f"{python}: cannot import cv2: {done.stderr.strip()}"
    return int(done.stdout.strip().split(".")[0])


def test_the_pairs_are_what_the_ground_truth_says():
    import cv2
    _skip_without_samples()
    truth = cv2.imread(str(SAMPLES / "loop_ground_truth.png"), cv2.IMREAD_GRAYSCALE)
    assert all(truth[a - 1, b - 1] for a, b in REVISITS)
    assert not any(truth[a - 1, b - 1] or truth[b - 1, a - 1] for a, b in NON_REVISITS)


def test_verification_tests_pass_on_the_other_opencv_major():
    _skip_without_samples()
    other = _other_python()
    assert {_major(other), _major(sys.executable)} == {4, 5}, "the two venvs must hold OpenCV 4.x and 5.x"
    # --noconftest: the conftest imports torch, which the small venv does not have.
    # -rs: the only skips allowed are the parts that need the map store (faiss), not in that venv.
    done = _run(other, "-m", "pytest", "-q", "-rs", "--noconftest", "-p", "no:cacheprovider",
                "test/test_verification.py")
    assert done.returncode == 0, f"test_verification.py on {other}:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    assert " passed" in done.stdout, done.stdout[-2000:]
    skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("map store (faiss)" in line for line in skips), skips
    assert len(skips) <= 2, skips


def test_verify_pair_decides_alike_on_opencv_4_and_5():
    _skip_without_samples()
    runs = {}
    for python in (sys.executable, _other_python()):
        done = _run(python, str(Path(__file__).relative_to(REPO)))
        assert done.returncode == 0, f"{python} {__file__}:\n{done.stderr[-4000:]}"
        result = json.loads(done.stdout)
        runs[result["opencv"].split(".")[0]] = result["decisions"]
    assert set(runs) == {"4", "5"}, f"OpenCV majors run: {sorted(runs)}"
    for pair in runs["4"]:
        four, five = runs["4"][pair], runs["5"][pair]
        assert four["accepted"] == five["accepted"], f"pair {pair}: OpenCV 4 {four}, OpenCV 5 {five}"
    accepted = {pair for pair, d in runs["5"].items() if d["accepted"]}
    assert not accepted & {f"{a}-{b}" for a, b in NON_REVISITS}, accepted
    assert len(accepted & {f"{a}-{b}" for a, b in REVISITS}) >= len(REVISITS) // 2, runs["5"]


if __name__ == "__main__":
    print(json.dumps(decisions()))
