"""Several processes, one program: JAX's multi-controller runtime started from the config or the
environment, and the few facts the edges need of it (who writes files, who shows progress).

One process per host (or per accelerator), each running the same command. `jax.distributed.initialize`
connects them; from then on `jax.devices()` lists every process's devices, one global mesh spans
them, and XLA's collectives do the communication. Nothing to set on a single host.

Where the processes come from, first match wins:
1. `distributed.coordinator` / `num_processes` / `process_id` in the command's config;
2. `SJ_COORDINATOR` (host:port of process 0), `SJ_NUM_PROCESSES`, `SJ_PROCESS_ID` (and
   `SJ_LOCAL_DEVICE_IDS`, comma-separated) in the environment, as `launch/local.sh` sets them;
3. a cluster JAX recognises by itself: a SLURM step of several tasks, a multi-host TPU slice
   (`TPU_WORKER_HOSTNAMES` with more than one host), an Open MPI job, or `SJ_DISTRIBUTED=auto`;
4. otherwise one process, and `jax.distributed` is never started.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from sj_jax.core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins the others (see the module docstring for the environment's part)."""

    coordinator: str = ""  # "host:port" of process 0; "" = from the environment, or one process
    num_processes: int = 0  # 0 = from the environment
    process_id: int = -1  # -1 = from the environment
    local_device_ids: tuple[int, ...] = ()  # this process's accelerators; () = every one it sees
    timeout_s: int = 300  # how long to wait for every process to connect

    def __post_init__(self):
        if self.num_processes < 0:
            raise ConfigError(f"distributed.num_processes: must be >= 0, got {self.num_processes}")
        if self.process_id < -1:
            raise ConfigError(f"distributed.process_id: must be >= 0 (or -1: from the environment), "
                              f"got {self.process_id}")
        if self.timeout_s < 1:
            raise ConfigError(f"distributed.timeout_s: must be >= 1, got {self.timeout_s}")


_ENV = {"coordinator": "SJ_COORDINATOR", "num_processes": "SJ_NUM_PROCESSES", "process_id": "SJ_PROCESS_ID",
        "local_device_ids": "SJ_LOCAL_DEVICE_IDS"}


def _env_int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"${name}: expected an integer, got {env[name]!r}") from None


def _cluster_detected(env: Mapping[str, str]) -> bool:
    """A multi-process cluster that `jax.distributed.initialize()` with no arguments recognises."""
    if env.get("SJ_DISTRIBUTED", "") == "auto":
        return True
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")) or 1) > 1:
        return True
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
        return True
    return int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1


def initialize_arguments(cfg: DistributedConfig, env: Mapping[str, str] = os.environ) -> dict[str, Any] | None:
    """The keyword arguments for `jax.distributed.initialize`, `{}` to let JAX detect a cluster, or
    None for a single process. Raises ConfigError naming the key (or variable) that is missing or wrong."""
    where = {k: f"distributed.{k}" for k in _ENV}
    coordinator, n, pid, local = cfg.coordinator, cfg.num_processes, cfg.process_id, cfg.local_device_ids
    if not coordinator and env.get(_ENV["coordinator"]):
        coordinator, where["coordinator"] = env[_ENV["coordinator"]], f"${_ENV['coordinator']}"
    if n == 0 and env.get(_ENV["num_processes"]):
        n, where["num_processes"] = _env_int(env, _ENV["num_processes"]), f"${_ENV['num_processes']}"
    if pid == -1 and env.get(_ENV["process_id"]):
        pid, where["process_id"] = _env_int(env, _ENV["process_id"]), f"${_ENV['process_id']}"
    if not local and env.get(_ENV["local_device_ids"]):
        try:
            local = tuple(int(x) for x in env[_ENV["local_device_ids"]].split(","))
        except ValueError:
            raise ConfigError(f"${_ENV['local_device_ids']}: expected comma-separated integers, got "
                              f"{env[_ENV['local_device_ids']]!r}") from None
    if not coordinator:
        if n > 1 or pid > 0:
            raise ConfigError(f"{where['num_processes']}={n}, {where['process_id']}={pid} but no coordinator: set "
                              f"distributed.coordinator or ${_ENV['coordinator']} (host:port of process 0)")
        return {} if _cluster_detected(env) else None
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{where['coordinator']}: expected host:port, got {coordinator!r}")
    if n < 1:
        raise ConfigError(f"distributed.num_processes (or ${_ENV['num_processes']}): needed with a coordinator "
                          f"({coordinator})")
    if pid == -1:
        raise ConfigError(f"distributed.process_id (or ${_ENV['process_id']}): needed with a coordinator "
                          f"({coordinator})")
    if not 0 <= pid < n:
        raise ConfigError(f"{where['process_id']}: must be in 0..{n - 1} ({n} processes), got {pid}")
    if n == 1:
        return None
    args: dict[str, Any] = {"coordinator_address": coordinator, "num_processes": n, "process_id": pid,
                            "initialization_timeout": cfg.timeout_s}
    if local:
        args["local_device_ids"] = list(local)
    return args


_started: dict[str, Any] | None = None


def start(cfg: DistributedConfig = DistributedConfig(), env: Mapping[str, str] = os.environ) -> bool:
    """Joins the other processes if there are any; returns whether this run has several. Call it
    before anything touches a JAX device. A second call with the same arguments does nothing."""
    global _started
    args = initialize_arguments(cfg, env)
    if args is None:
        return jax.process_count() > 1 if _started is not None else False
    if _started is not None:
        if args != _started:
            raise ConfigError(f"distributed: this process already joined with {_started}; it cannot rejoin "
                              f"with {args}")
        return True
    # The CPU client's collectives across processes (the tests' loopback runs and `launch/local.sh`);
    # accelerators bring their own (NCCL, ICI).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**args)
    _started = args
    _tag_logs()
    return True


def is_primary() -> bool:
    """Whether this process writes the run's files, metrics, reports and progress (process 0)."""
    return jax.process_index() == 0


def gather_from_processes(x: np.ndarray) -> np.ndarray:
    """`[processes, *x.shape]`: every process's `x` (the same shape and dtype on each), in process
    order, on every process. For small host facts (counts, lengths), not for model arrays."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x[None]
    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def _tag_logs() -> None:
    """Every log line says which process wrote it; the processes other than 0 log warnings and up."""
    tag = f"[process {jax.process_index()}/{jax.process_count()}]"
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"{tag} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if not is_primary():
        root.setLevel(max(root.level, logging.WARNING))
