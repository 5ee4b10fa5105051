"""Paths as users write them: ``~`` and environment variables expanded, relative ones resolved.

Every place a path comes in (the Python API, console-script arguments, training configs, ROS
parameters and launch arguments) goes through :func:`expand_path`, so ``~/models/QAA-8192`` or
``$DATA/maps/site`` mean the same everywhere, whether a shell expanded them or not.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

__all__ = ["PathError", "expand_path", "path_argument"]

_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")


class PathError(ValueError, argparse.ArgumentTypeError):
    """A path that cannot be expanded (an unset variable); argparse prints it as the argument's error."""


def expand_path(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> Path:
    """``path`` with ``~``/``~user`` and ``$VAR``/``${VAR}`` expanded; relative results joined to ``base``.

    ``base`` (itself expanded) is the documented folder relative paths are taken from (for
    example a training config's ``data_root``); without it a relative path stays relative (to the
    working directory). An empty string gives ``Path("")`` (the working directory): callers
    that treat "" as "not set" check before calling.

    Usable as an argparse ``type`` for arguments the code treats as :class:`~pathlib.Path`.

    Raises:
        PathError: (a ValueError) naming the variable when the path uses one that is not set (the path would
            otherwise silently name a folder literally called ``$VAR``).
    """
    text = os.fspath(path)
    if not text:
        return Path(text)
    expanded = os.path.expandvars(os.path.expanduser(text))
    unset = [m.group(1).strip("{}") for m in _VARIABLE.finditer(expanded)]
    if unset:
        raise PathError(f"path {text!r}: environment variable {unset[0]} is not set")
    result = Path(os.path.expanduser(expanded))  # a variable may have expanded to '~/...'
    if base is not None and not result.is_absolute():
        result = expand_path(base) / result
    return result


def path_argument(text: str) -> str:
    """argparse ``type`` for path arguments kept as strings: :func:`expand_path`, as ``str`` ("" stays "")."""
    return os.fspath(expand_path(text)) if text else text
