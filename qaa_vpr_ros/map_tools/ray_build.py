"""Ray as the worker pool of a planned build (``build_map --ray``, ``eval_map --ray``).

The only module that imports ``ray`` (an optional extra: ``pip install qaa_vpr_ros[ray]``; a
contract in ``.importlinter`` keeps it so). What runs on the workers, and how the work is cut,
is :func:`qaa_vpr_ros.map_tools.build.build_map_planned`; here: connecting, placing each task
(CPUs, a GPU per extraction task where the cluster has GPUs), retrying tasks whose worker died,
and handing back results in order and the first failure as it was raised.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["RAY_EXTRA", "RayMissingError", "RayOptions", "RayPool"]

RAY_EXTRA = "pip install qaa_vpr_ros[ray]"


class RayMissingError(RuntimeError):
    """``--ray`` without Ray installed."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise RayMissingError(f"--ray needs Ray, an optional extra: {RAY_EXTRA}") from err
    return ray


@dataclass(frozen=True)
class RayOptions:
    """``address``: ``auto`` (the cluster ``ray start`` made on this machine, or ``$RAY_ADDRESS``),
    ``ray://HOST:PORT``/``HOST:PORT``, or ``local`` (a private Ray instance on this machine only)."""

    address: str = "auto"
    gpus_per_task: float | None = None  # None: 1 where the cluster has GPUs, else 0
    cpus_per_task: int = 1  # also the torch threads of each task
    max_retries: int = 3  # retries of a task whose worker process died

    def __post_init__(self) -> None:
        if self.cpus_per_task < 1:
            raise ValueError(f"--ray-cpus-per-task must be >= 1, got {self.cpus_per_task}")
        if self.gpus_per_task is not None and self.gpus_per_task < 0:
            raise ValueError(f"--ray-gpus-per-task must be >= 0, got {self.gpus_per_task}")
        if self.max_retries < 0:
            raise ValueError(f"--ray-max-retries must be >= 0, got {self.max_retries}")


class RayPool:
    """A :class:`qaa_vpr_ros.map_tools.build.WorkerPool` on Ray; a context manager that connects (or
    uses the Ray already initialised in this process) and disconnects what it connected."""

    def __init__(self, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()
        self.ray = import_ray()
        self.startup_s = 0.0
        self._connected = False

    def __enter__(self) -> RayPool:
        started = time.monotonic()
        if not self.ray.is_initialized():
            address = None if self.options.address == "local" else self.options.address
            try:
                self.ray.init(address=address, include_dashboard=False, logging_level="WARNING",
                              log_to_driver=False)
            except ConnectionError as err:
                raise ConnectionError(f"--ray {self.options.address}: no Ray cluster there ({err}); start one "
                                      "with `ray start --head`, or pass --ray local") from err
            self._connected = True
        self.startup_s = time.monotonic() - started
        return self

    def __exit__(self, *exc: object) -> None:
        if self._connected:
            self.ray.shutdown()
            self._connected = False

    @property
    def gpus_per_task(self) -> float:
        if self.options.gpus_per_task is not None:
            return self.options.gpus_per_task
        return 1.0 if self.ray.cluster_resources().get("GPU", 0) > 0 else 0.0

    def map(self, function: Callable[..., Any], calls: Sequence[tuple], labels: Sequence[str], *, gpu: bool,
            on_done: Callable[[Any], Any] | None = None) -> list[Any]:
        ray = self.ray
        remote = ray.remote(function).options(
            num_cpus=self.options.cpus_per_task, num_gpus=self.gpus_per_task if gpu else 0,
            max_retries=self.options.max_retries, retry_exceptions=False,  # a bad bag fails the same way again
        )
        refs = [remote.remote(*call) for call in calls]
        position = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                i = position[ready[0]]
                try:
                    results[i] = ray.get(ready[0])
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    raise (cause if isinstance(cause, Exception) else err) from None
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as err:
                    raise RuntimeError(f"{labels[i]}: the worker died {self.options.max_retries + 1} times "
                                       f"(--ray-max-retries {self.options.max_retries}): {err}") from None
                if on_done is not None:
                    on_done(results[i])
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return results
