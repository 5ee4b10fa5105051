"""Review findings on folder replacement (issue 11): a map save only ever replaces a map of ours,
and a crash at any point of the replacement leaves a loadable map (the old or the new one)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qaa_vpr_ros import atomic
from qaa_vpr_ros.maps import Keyframe, MapError, PlaceMap

REPO = Path(__file__).resolve().parents[1]
FINGERPRINT = "f" * 64
DIM = 8


def _map(n: int, seed: int = 0) -> PlaceMap:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = PlaceMap.create(DIM, FINGERPRINT)
    m.add(x, [Keyframe(id=i, stamp_sec=i, stamp_nanosec=0, camera="/cam", frame_id="cam") for i in range(n)])
    return m


def test_save_refuses_to_replace_a_folder_that_is_not_a_map(tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    (precious / "manifest.json").write_text('{"format": "qaa_vpr_ros.place_map"}')  # even with a manifest
    with pytest.raises(MapError, match="not a place map"):
        _map(5).save(precious)
    assert (precious / "chapter1.tex").read_text() == "years of work"
    assert sorted(os.listdir(tmp_path)) == ["thesis"]  # no temp folder left behind


def test_save_refuses_a_file_and_replaces_only_maps_or_empty_folders(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(MapError, match="not a folder"):
        _map(3).save(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"
    (tmp_path / "empty").mkdir()
    _map(3).save(tmp_path / "empty")
    _map(4).save(tmp_path / "empty")  # a map of ours is replaced
    assert len(PlaceMap.load(tmp_path / "empty")) == 4
    assert sorted(os.listdir(tmp_path)) == ["empty", "file"]


def test_atomic_folder_refuses_non_empty_folder_without_a_predicate(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(atomic.FolderNotOursError, match="keep.txt|not"):
        with atomic.atomic_folder(target) as tmp:
            (tmp / "new").write_text("y")
    assert (target / "keep.txt").read_text() == "x"
    with atomic.atomic_folder(target, replaces=lambda p: (p / "keep.txt").is_file()) as tmp:
        (tmp / "new").write_text("y")
    assert os.listdir(target) == ["new"]


_CRASHING_SAVE = textwrap.dedent("""
    import os, shutil, sys
    import numpy as np
    from qaa_vpr_ros import atomic
    from qaa_vpr_ros.maps import Keyframe, PlaceMap
    folder, crash_at, exchange = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    x = np.random.default_rng(1).standard_normal((7, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = PlaceMap.create(8, "f" * 64)
    m.add(x, [Keyframe(id=i, stamp_sec=i, stamp_nanosec=0, camera="/cam", frame_id="cam") for i in range(7)])
    m._ensure_index()
    calls = [0]
    def crashing(fn):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == crash_at:
                os._exit(137)  # like kill -9: no cleanup, no finally
            return fn(*args, **kwargs)
        return wrapper
    if hasattr(atomic, "_exchange") and not exchange:
        atomic._exchange = lambda a, b: False
    for mod, name in ((os, "replace"), (os, "rename"), (os, "rmdir"), (shutil, "rmtree"), (atomic, "_exchange")):
        if hasattr(mod, name):
            setattr(mod, name, crashing(getattr(mod, name)))
    m.save(folder)
    print("completed", calls[0])
""")


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "rename-aside"])
def test_crash_at_every_step_of_replacing_a_map_leaves_a_loadable_map(tmp_path, exchange):
    folder = tmp_path / "map"
    _map(5).save(folder)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seen, leftovers = set(), {}
    for crash_at in range(1, 30):
        proc = subprocess.run([sys.executable, "-c", _CRASHING_SAVE, str(folder), str(crash_at), str(int(exchange))],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode in (0, 137), proc.stderr
        n = len(PlaceMap.load(folder))  # never "missing": the old (5) or the new (7) map
        assert n in (5, 7), f"crash before filesystem call {crash_at}: map has {n} keyframes"
        seen.add(n)
        _map(5).save(folder)  # back to the old map for the next crash point (cleans leftovers)
        if sorted(os.listdir(tmp_path)) != ["map"]:
            leftovers[crash_at] = sorted(os.listdir(tmp_path))
        assert len(PlaceMap.load(folder)) == 5
        if proc.returncode == 0:
            break
    else:
        raise AssertionError("the save never completed within 30 filesystem calls")
    assert seen == {5, 7}
    assert not leftovers, f"a later save left these behind (crash point: folder listing): {leftovers}"
