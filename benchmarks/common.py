"""Shared helpers for benchmarks: timing, FLOP counts, and a measured matmul peak."""

from __future__ import annotations

import statistics
import time
from typing import Callable

# Words for a long made-up context (a note before the task), where a benchmark needs long prompts.
FILLER_WORDS = ("the river carried small boats past the old mill while children counted them from the bridge "
                "and a baker set out bread for the market that would open at noon near the station").split()


def time_call(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` (which must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def alternate(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternation so that drift hits all alike."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name] += time_call(fn, 1)
    return {k: statistics.median(v) for k, v in samples.items()}


def forward_flops(cfg, batch: int, seq: int) -> float:
    """Matmul FLOPs of one causal-LM forward (dense attention scores counted in full, as computed)."""
    e, f, h, k, d, v, n = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                           cfg.head_dim, cfg.vocab_size, cfg.num_layers)
    per_token_layer = 2 * (e * h * d * 2 + e * k * d * 2 + 3 * e * f)
    attention = 2 * 2 * seq * h * d  # scores and weighted values, per query token and layer
    return batch * seq * (n * (per_token_layer + attention) + 2 * e * v)


def jax_matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a float32 n x n matmul in JAX on this machine (`sj_jax.core.machine.matmul_gflops`)."""
    from sj_jax.core.machine import matmul_gflops

    return matmul_gflops(n, repeats)


def load_default_pair(tokenizer: bool = False):
    """The embedded default as (sj_jax model, float32 PyTorch transformers model), same weights."""
    import logging

    import torch
    from transformers import AutoModelForCausalLM

    import sj_jax
    from sj_jax.weights.registry import DEFAULT_MODEL, resolve

    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = sj_jax.load_model(DEFAULT_MODEL, tokenizer="auto" if tokenizer else None)
    path = resolve(DEFAULT_MODEL)
    torch_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                       dtype=torch.float32).eval()
    return model, torch_model


def write_json(path: str | None, results) -> None:
    """Writes `results` to `path` (if given), for plots and closing notes."""
    import json

    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
