"""What a measurement needs to say about the machine it ran on: its float32 matmul rate."""

from __future__ import annotations

import time

import numpy as np


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a float32 `n x n` matmul in JAX here, the best of `repeats` after one warm-up
    (machines of one pool differ up to 2.5x, so every timing is printed beside this)."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9
