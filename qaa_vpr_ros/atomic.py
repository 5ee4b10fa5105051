"""Atomic file and folder writes: temp file or folder, fsync, rename; nothing saved is lost."""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder's entries (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> None:
    """Render a matplotlib figure to PNG at ``path`` atomically, then close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


class FolderNotOursError(FileExistsError):
    """``atomic_folder`` was asked to replace something it may not delete (the message says what)."""


# Linux renameat2(2) flag: swap two paths in one step (no moment without the folder).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap folders ``a`` and ``b``; False where the OS or filesystem cannot."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, f"swapping {a} and {b}: {os.strerror(err)}")


def aside_path(path: str | Path) -> Path:
    """Where :func:`atomic_folder` keeps the old folder while it swaps in a new one (rename-aside
    fallback). It holds the only complete copy only if a crash hit between the two renames."""
    path = Path(path)
    return path.parent / f".{path.name}.replaced"


def resolve_folder(path: str | Path) -> Path:
    """The folder to read for ``path``: ``path`` itself, or its aside copy when a crash interrupted
    a replacement between its two renames (read-only; the next :func:`atomic_folder` repairs it)."""
    path = Path(path)
    aside = aside_path(path)
    if not os.path.lexists(path) and aside.is_dir():
        return aside
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover(path: Path) -> None:
    """Finish or undo what a crashed replacement of ``path`` left behind."""
    aside = aside_path(path)
    if aside.is_dir() and not aside.is_symlink():
        if not os.path.lexists(path):
            os.replace(aside, path)  # crashed between the renames: the old folder comes back
            fsync_path(path.parent)
        elif path.is_dir():
            # Crashed after the swap (or while deleting the old copy): the aside name is reserved
            # for atomic_folder and its content is stale, possibly half deleted.
            shutil.rmtree(aside, ignore_errors=True)
    # Temp folders of writers that died (kill -9, power cut); their pid is in the name.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        parts = stale.name[len(path.name) + 2 :].split(".")
        if stale.is_dir() and not stale.is_symlink() and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            shutil.rmtree(stale, ignore_errors=True)


def _check_replaceable(path: Path, replaces: Callable[[Path], bool] | None) -> None:
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        raise FolderNotOursError(f"{path} exists and is not a folder; refusing to replace it")
    if not any(path.iterdir()):
        return
    if replaces is None or not replaces(path):
        raise FolderNotOursError(
            f"{path} exists and holds files that are not ours (not the kind of folder being written); "
            "refusing to replace or delete it: choose a new or empty folder"
        )


@contextlib.contextmanager
def atomic_folder(path: str | Path, *, replaces: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it replaces ``path`` in one step.

    An existing ``path`` is replaced only when it is an empty folder or ``replaces(path)`` says it
    is one of ours (e.g. a map folder); anything else raises :class:`FolderNotOursError` before and
    after the body, and is never moved or deleted. Files written into the yielded folder are
    fsynced before the swap. The swap is one ``renameat2(RENAME_EXCHANGE)`` where the filesystem
    supports it, else two renames through :func:`aside_path`, which readers find with
    :func:`resolve_folder` and the next call repairs: a crash at any point leaves the old or the new
    folder readable. If the body raises, the temp folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover(path)
    _check_replaceable(path, replaces)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                fsync_path(child)
        fsync_path(tmp)
        _check_replaceable(path, replaces)
        if not os.path.lexists(path):
            os.rename(tmp, path)
        elif _exchange(tmp, path):
            fsync_path(path.parent)
            shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        else:
            aside = aside_path(path)
            os.rename(path, aside)
            fsync_path(path.parent)
            os.rename(tmp, path)
            fsync_path(path.parent)
            shutil.rmtree(aside, ignore_errors=True)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
