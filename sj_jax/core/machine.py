"""What a measurement needs to say about the machine it ran on: its float32 matmul rate."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a float32 `n x n` matmul in JAX here, the best of `repeats` after one warm-up
    (machines of one pool differ up to 2.5x, so every timing is printed beside this)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


@functools.cache
def process_matmul_gflops() -> float:
    """`matmul_gflops()` rounded to 0.1, measured the first time it is asked for in this process and
    the same after: the rate the timings taken here are recorded with (`sj_jax.core.stages`)."""
    return round(matmul_gflops(), 1)


def stage_machine() -> dict[str, float]:
    """What a stage marker records about the machine the stage ran on (`run_stage(machine=...)`)."""
    return {"matmul_gflops_float32": process_matmul_gflops()}


__all__ = ["matmul_gflops", "process_matmul_gflops", "stage_machine"]
