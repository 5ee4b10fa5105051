"""Progress bars that stay readable in log files (training, build_map, evaluation).

On a terminal: an ordinary tqdm bar. When the output is not a terminal (redirected to a file, a
pipe, a launch log), tqdm would still redraw its bar with carriage returns many times a second,
so a long run wrote megabytes of redraws; here the same status line is written as one plain line
at the start, every ``interval_s`` seconds, and once at the end.
"""
from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["DEFAULT_INTERVAL_S", "INTERVAL_ENV", "progress_bar"]

DEFAULT_INTERVAL_S = 30.0
INTERVAL_ENV = "QAA_VPR_PROGRESS_INTERVAL_S"  # overrides the log-line interval (seconds)


def progress_bar(total: int | None = None, *, desc: str, unit: str = "it", enabled: bool = True,
                 file: TextIO | None = None, interval_s: float | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on a terminal, periodic plain lines otherwise, nothing when not ``enabled``.

    ``file`` defaults to ``sys.stderr``; ``interval_s`` (default ``$QAA_VPR_PROGRESS_INTERVAL_S``
    or 30 s) is the time between log lines when ``file`` is not a terminal. Other keyword
    arguments go to tqdm (``leave``, ``initial``, ...).
    """
    stream = file if file is not None else sys.stderr
    if not enabled:
        return tqdm(total=total, disable=True)
    if _is_terminal(stream):
        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, **kwargs)
    if interval_s is None:
        interval_s = float(os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL_S)
    kwargs.pop("leave", None)  # a log keeps the final line
    return _LogLines(total=total, desc=desc, unit=unit, out=stream, mininterval=interval_s,
                     maxinterval=max(interval_s, 0.1), miniters=1, ascii=True, leave=True, **kwargs)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Discard:
    """Where tqdm's own terminal control output goes in log mode (carriage returns, final newline)."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class _LogLines(tqdm):
    """tqdm whose every display is one whole line on ``out``: no carriage returns, no cursor moves."""

    def __init__(self, *args: Any, out: TextIO, **kwargs: Any) -> None:
        self._out = out
        self._last_line_n: float | None = None
        self._last_line_t: float | None = None
        super().__init__(*args, file=_Discard(), **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None and not msg.strip():
            return True  # tqdm clearing its line: nothing to clear in a log
        now = self._time()
        if msg is None and self.disable:  # the final line (close)
            if self.n == self._last_line_n:
                return True  # right after a line with the same count: no duplicate
        elif self._last_line_t is not None and now - self._last_line_t < self.mininterval:
            return True  # a refresh (set_postfix, ...) between two lines: wait for the interval
        text = (self.__str__() if msg is None else msg).rstrip()
        self._last_line_n, self._last_line_t = self.n, now
        self._out.write(text + "\n")
        self._out.flush()
        return True

    def moveto(self, n: int) -> None:
        pass
