"""The one bench runner: named sections under one wall-clock budget, each in its own try/except.

``python -m bench.run`` drives it in either mode: the CPU benchmark (``make bench``, sections in
``bench/run.py``) or, with ``--gpu``, the GPU benchmark of the release model (``bench/gpu.sh``,
sections in ``bench/gpu_bench.py``). A section that fails is reported and the rest still run; a
section is skipped, with the reason, when the budget is spent.

- CPU mode: a section runs while at least 20 s of the budget are left, with no limit of its own
  (the slow ones read :meth:`Runner.left`); how busy the CPU was with other processes meanwhile
  is measured (:class:`LoadMeter`) and stored under ``load``.
- GPU mode: a section gets at most its own limit (less when the budget is shorter, 5 s kept in
  reserve) as a deadline argument, and is skipped below 3 s; ``after`` runs after each section
  (freeing GPU memory, saving what was measured so far).
"""
from __future__ import annotations

import os
import resource
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

CPU_MIN_LEFT_S = 20.0  # CPU mode: a section starts only with this much of the budget left
GPU_RESERVE_S, GPU_MIN_S = 5.0, 3.0  # GPU mode: kept back from each limit; the shortest limit run


def log(message: str) -> None:
    print(message, flush=True)


def meminfo(key: str) -> float:
    """A /proc/meminfo figure in bytes (NaN when absent)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1]) * 1024
    return float("nan")


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def _own_cpu_s() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


class LoadMeter:
    """CPU share taken by other processes while a section ran (0 = the machine was ours alone)."""

    def __init__(self) -> None:
        self.busy, self.total = _cpu_jiffies()
        self.own = _own_cpu_s()
        self.wall = time.monotonic()
        self.loadavg = os.getloadavg()[0]

    def result(self) -> dict[str, float]:
        busy, total = _cpu_jiffies()
        tick = os.sysconf("SC_CLK_TCK")
        cores = os.cpu_count() or 1
        capacity = (total - self.total) / tick  # CPU-seconds available in the interval
        busy_s = (busy - self.busy) / tick
        own_s = _own_cpu_s() - self.own  # children count once they have exited
        others = max(0.0, busy_s - own_s)
        return {"wall_s": time.monotonic() - self.wall, "cpu_capacity_s": capacity, "busy_s": busy_s,
                "own_cpu_s": own_s, "others_share": others / capacity if capacity else float("nan"),
                "loadavg_start": self.loadavg, "loadavg_end": os.getloadavg()[0], "cores": cores}


class Runner:
    """Runs sections under one budget of ``budget_s`` seconds, in CPU or GPU mode (module docstring).

    ``results`` collects them: ``sections`` (GPU mode: ``parts``, as its results.json names them)
    maps a section's name to what it returned, ``errors`` and ``skipped`` to the reason, and in
    CPU mode ``load`` to its :class:`LoadMeter` figures.
    """

    def __init__(self, budget_s: float, gpu: bool = False, after: Callable[[], None] | None = None) -> None:
        self.gpu = gpu
        self.deadline = time.monotonic() + budget_s
        self.after = after
        self.key = "parts" if gpu else "sections"
        self.results: dict[str, Any] = {self.key: {}, **({} if gpu else {"load": {}}), "errors": {}, "skipped": {}}

    def left(self) -> float:
        """Seconds of the whole budget left."""
        return self.deadline - time.monotonic()

    def run(self, name: str, fn: Callable[[float], Any], limit_s: float | None = None) -> None:
        """Run section ``name``: ``fn(deadline)`` (monotonic seconds: the section's own deadline in
        GPU mode, the budget's in CPU mode); its result goes into ``results``."""
        if self.gpu:
            limit = min(limit_s if limit_s is not None else self.left(), self.left() - GPU_RESERVE_S)
            if limit < GPU_MIN_S:
                self.results["skipped"][name] = f"no time left ({self.left():.0f} s of the budget)"
                log(f"[{name}] skipped: no time left")
                return
            log(f"[{name}] up to {limit:.0f} s")
            deadline = time.monotonic() + limit
        else:
            if self.left() < CPU_MIN_LEFT_S:
                self.results["skipped"][name] = f"budget spent ({self.left():.0f} s left)"
                log(f"[{name}] skipped: budget spent")
                return
            log(f"[{name}] ({self.left():.0f} s of the budget left)")
            deadline = self.deadline
        meter = LoadMeter()
        started = time.monotonic()
        try:
            self.results[self.key][name] = fn(deadline)
        except Exception as err:  # one section failing must not lose the others
            self.results["errors"][name] = f"{type(err).__name__}: {err}"
            log(f"[{name}] FAILED: {type(err).__name__}: {err}\n{traceback.format_exc(limit=6 if self.gpu else 5)}")
        finally:
            if self.after is not None:
                self.after()
        if self.gpu:
            log(f"[{name}] took {time.monotonic() - started:.1f} s")
        else:
            self.results["load"][name] = meter.result()
            log(f"[{name}] {self.results['load'][name]['wall_s']:.0f} s; other processes used "
                f"{100 * self.results['load'][name]['others_share']:.0f} % of the CPU meanwhile")
