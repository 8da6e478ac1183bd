"""A command's `Runtime` keys applied to the process, once, before any model loads: the other
processes joined, the float32 matmul precision set, and the caches pointed where `cache_dir` says."""

from __future__ import annotations

from typing import TypeVar

import jax

from sj_jax.core.cache import configure_caches
from sj_jax.core.config import Runtime
from sj_jax.core.distributed import start

R = TypeVar("R", bound=Runtime)


def set_matmul_precision(precision: str) -> None:
    """The process's float32 matmul precision: "high" or "highest"; "default" leaves JAX's own setting
    (`$JAX_DEFAULT_MATMUL_PRECISION` if set, else the backend's choice: TF32 on NVIDIA GPUs)."""
    if precision != "default":
        jax.config.update("jax_default_matmul_precision", precision)


def apply_runtime(cfg: R) -> R:
    """Joins the other processes (if any), then sets the precision and the caches; returns `cfg`."""
    start(cfg.distributed)
    set_matmul_precision(cfg.matmul_precision)
    configure_caches(cfg.cache_dir)
    return cfg
