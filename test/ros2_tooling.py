"""ROS 2's real launch and CLI tooling (``ros2 launch``, ``ros2 topic/param/service``) for tests.

A real ROS 2 installation (``ROS_DISTRO`` set, ``ros2`` on PATH, ``launch`` importable) is used
as it is. Otherwise ``../shared/ros2-launch/install.sh`` installs ROS 2's own, unmodified launch
packages into ``.ros2-launch/`` (git-ignored) for this virtualenv, once: a stamp names what was
installed. Neither present: :func:`ros2_environment` raises :class:`ToolingAbsent` with the reason
(the tests skip with it).

    .venv/bin/python test/ros2_tooling.py      # install now (``make test`` does this first)
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_TOOLING = REPO.parent / "shared" / "ros2-launch"
INSTALL_DIR = REPO / ".ros2-launch"


class ToolingAbsent(RuntimeError):
    """Neither a ROS 2 installation nor ../shared/ros2-launch: the real-launch tests cannot run."""


def _real_ros2() -> dict[str, str] | None:
    """The current environment when it is a sourced ROS 2 installation with launch, else None."""
    ros2 = shutil.which("ros2")
    if not os.environ.get("ROS_DISTRO") or ros2 is None:
        return None
    probe = subprocess.run([sys.executable, "-c", "import launch, launch_ros, rclpy"],
                           capture_output=True, timeout=120)
    return dict(os.environ) if probe.returncode == 0 else None


def _stamp(python: str) -> str:
    digest = hashlib.sha1(python.encode())
    for name in ("install.sh", "ros2-launch-src.tar.gz"):
        digest.update((SHARED_TOOLING / name).read_bytes())
    return f".installed-{digest.hexdigest()[:12]}"


def install_shared_tooling(python: str = sys.executable) -> Path:
    """Install ../shared/ros2-launch into .ros2-launch/ for ``python`` unless already there."""
    script = SHARED_TOOLING / "install.sh"
    if not script.is_file():
        raise ToolingAbsent(f"{script} absent")
    python = os.path.abspath(python)  # install.sh writes it into the ros2 script's #! line
    stamp = INSTALL_DIR / _stamp(python)
    INSTALL_DIR.mkdir(exist_ok=True)
    with open(INSTALL_DIR / ".lock", "w") as lock:  # several test runs may start at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.is_file():
            for old in INSTALL_DIR.glob(".installed-*"):
                old.unlink()
            proc = subprocess.run(["bash", str(script), str(INSTALL_DIR)], env=dict(os.environ, PYTHON=python),
                                  capture_output=True, text=True, timeout=900)
            if proc.returncode != 0 or not (INSTALL_DIR / "env.sh").is_file():
                raise RuntimeError(f"{script} {INSTALL_DIR} failed (exit {proc.returncode}):\n"
                                   f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            stamp.touch()
    return INSTALL_DIR


def sourced(script: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` after ``source script`` in bash (colcon's setup.bash, the tooling's env.sh)."""
    out = subprocess.run(["bash", "-c", f'source "{script}" >/dev/null && env -0'], env=env,
                         capture_output=True, timeout=120, check=True).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def colcon_build(workspace: Path, env: dict[str, str] | None = None) -> Path:
    """``colcon build`` of a copy of this repository in ``workspace``; returns its install folder."""
    env = dict(os.environ if env is None else env)
    colcon = shutil.which("colcon", path=env.get("PATH")) or str(Path(sys.executable).with_name("colcon"))
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "install", "log", ".pytest_cache",
                                    ".ruff_cache", "runs", "outputs", "demo_out", ".ros2-launch", "data")
    shutil.copytree(REPO, workspace / "src" / "qaa_vpr_ros", ignore=ignore)
    env["PATH"] = f"{Path(colcon).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [colcon, "--log-base", str(workspace / "log"), "build", "--base-paths", str(workspace / "src"),
         "--build-base", str(workspace / "build"), "--install-base", str(workspace / "install")],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"colcon build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return workspace / "install"


def ros2_environment() -> tuple[dict[str, str], str]:
    """(environment with ``ros2`` and ``colcon`` on PATH, a description of where they come from)."""
    env = _real_ros2()
    if env is not None:
        return env, f"ROS 2 {env['ROS_DISTRO']} installation ({shutil.which('ros2')})"
    if not (SHARED_TOOLING / "install.sh").is_file():
        raise ToolingAbsent(f"neither {SHARED_TOOLING} nor a ROS 2 installation (ROS_DISTRO set, ros2 on "
                            "PATH) is present; source /opt/ros/<distro>/setup.bash to run the real-launch tests")
    folder = install_shared_tooling()
    return sourced(folder / "env.sh", dict(os.environ)), f"ROS 2 launch tooling from {SHARED_TOOLING} in {folder}"


if __name__ == "__main__":
    try:
        print(ros2_environment()[1])
    except ToolingAbsent as err:
        print(f"real-launch tests will skip: {err}")
