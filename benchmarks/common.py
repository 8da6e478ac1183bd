"""The benchmarks' one protocol: the machine measured first, a quiet check, each side in its own
process stepped in alternation, medians with their spread, JSON out; and FLOP counts.

A benchmark against a peer:
1. `machine()` before anything loads: the float32 matmul rate (JAX), the memory read bandwidth, and
   how busy the CPU already is; `print_machine` prints it first.
2. `Sides`: each side (ours, the peer's) in a spawned process of its own. In one process, a JAX step
   right after a PyTorch step ran 6.2-7.3 s against 5.2 s alone: the two runtimes' thread pools and
   allocators get in each other's way, which says nothing about either.
3. `Sides.alternate`: one call of each side in turn, `rounds` times, so drift hits both alike.
4. `stats`: the median, min, max and spread of each side's seconds.
5. `quiet_check` after: the matmul rate again and the CPU's other load; a run that was not quiet
   says so in its JSON and on screen.
6. `write_json`.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
import traceback
from typing import Callable

import numpy as np

# A run is quiet when other processes took under this share of the CPU before it, and its matmul
# rate after is within this fraction of the rate before.
QUIET_BUSY = 0.10
QUIET_DRIFT = 0.15

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
    """Median seconds per call of each function, timed in alternation so that drift hits all alike.
    In-process: for two sides of one runtime; a peer in another runtime goes through `Sides`."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name] += time_call(fn, 1)
    return {k: statistics.median(v) for k, v in samples.items()}


def stats(samples: list[float]) -> dict[str, float]:
    """Median, min, max and spread ((max - min) / median) of `samples` seconds."""
    med = statistics.median(samples)
    return {"median": med, "min": min(samples), "max": max(samples), "spread": (max(samples) - min(samples)) / med,
            "n": len(samples)}


def read_bandwidth(nbytes: int = 512 << 20) -> float:
    """Bytes/s of a float32 sum over `nbytes` (read-only streaming), best of 5."""
    a = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all cores busy over `seconds` (from /proc/stat; nan where there is none)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
    except OSError:
        return float("nan")
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def machine() -> dict:
    """This machine, measured before a benchmark loads anything: CPU, cores, the CPU's load from other
    processes, the JAX float32 matmul rate (GFLOP/s) and the memory read bandwidth (GB/s)."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    busy = cpu_busy()
    import jax

    return {"cpu": cpu, "cores": os.cpu_count(), "device": str(jax.devices()[0]), "busy_before": busy,
            "matmul_gflops": jax_matmul_peak(), "read_GBps": read_bandwidth() / 1e9}


def print_machine(m: dict) -> None:
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['device']}; JAX float32 matmul {m['matmul_gflops']:.0f} "
          f"GFLOP/s, memory read {m['read_GBps']:.1f} GB/s; other load {100 * m['busy_before']:.0f}% of the CPU",
          flush=True)


def quiet_check(m: dict) -> dict:
    """After the timed work: the matmul rate again; (quiet, why) from the load before and the drift.
    Adds `matmul_gflops_after`, `quiet` and `quiet_why` to `m` and returns it."""
    after = jax_matmul_peak()
    drift = abs(after - m["matmul_gflops"]) / m["matmul_gflops"]
    why = []
    if m["busy_before"] > QUIET_BUSY:
        why.append(f"other processes held {100 * m['busy_before']:.0f}% of the CPU before the run")
    if drift > QUIET_DRIFT:
        why.append(f"the matmul rate moved {100 * drift:.0f}% ({m['matmul_gflops']:.0f} -> {after:.0f} GFLOP/s)")
    m.update(matmul_gflops_after=after, quiet=not why, quiet_why="; ".join(why))
    print(f"quiet check: {'quiet' if not why else 'NOT QUIET: ' + m['quiet_why']} "
          f"(matmul {m['matmul_gflops']:.0f} before, {after:.0f} GFLOP/s after)", flush=True)
    return m


def _serve(build: Callable, args: tuple, conn) -> None:
    """A side's process: `build(*args)` gives (info, {name: fn}); then runs ("name", fn args)
    requests, answering (seconds, result), until None."""
    try:
        info, calls = build(*args)
        conn.send(("ok", info))
    except BaseException:  # noqa: BLE001 (the parent raises it with this traceback)
        conn.send(("error", traceback.format_exc()))
        return
    while (msg := conn.recv()) is not None:
        name, fargs = msg
        try:
            t0 = time.perf_counter()
            out = calls[name](*fargs)
            conn.send(("ok", (time.perf_counter() - t0, out)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class Sides:
    """Each side of a benchmark in a spawned process of its own, called one at a time.

    sides: {side: (build, args)}; `build` is a module-level function, run in the child, returning
    (info: a picklable dict, calls: {name: function}). `info[side]` holds each side's info.
    """

    def __init__(self, sides: dict[str, tuple[Callable, tuple]]):
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs, self.info = {}, [], {}
        for side, (build, args) in sides.items():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(build, args, child), daemon=True)
            proc.start()
            self.conns[side] = parent
            self.procs.append(proc)
        for side in sides:
            self.info[side] = self._answer(side)

    def _answer(self, side: str):
        try:
            status, value = self.conns[side].recv()
        except EOFError:
            self.close()
            raise RuntimeError(f"benchmark side {side!r}: its process died (killed for memory?)") from None
        if status == "error":
            self.close()
            raise RuntimeError(f"benchmark side {side!r} failed:\n{value}")
        return value

    def call(self, side: str, name: str, *args) -> tuple[float, object]:
        """(seconds, result) of `calls[name](*args)` in `side`'s process."""
        self.conns[side].send((name, args))
        return self._answer(side)

    def alternate(self, calls: dict[str, tuple[str, str]], rounds: int) -> tuple[dict[str, list[float]], dict]:
        """Times {label: (side, call name)} in turn, `rounds` times: (seconds a label, last result a label)."""
        secs: dict[str, list[float]] = {k: [] for k in calls}
        last = {}
        for _ in range(rounds):
            for label, (side, name) in calls.items():
                dt, last[label] = self.call(side, name)
                secs[label].append(dt)
        return secs, last

    def close(self) -> None:
        for conn in self.conns.values():
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def load_torch_default(threads: int | None = None):
    """The embedded default as a float32 PyTorch transformers model in eval mode; `threads` sets
    torch's intra-op threads (default: torch's own, the cores)."""
    import logging

    import torch
    from transformers import AutoModelForCausalLM

    from sj_jax.weights.registry import DEFAULT_MODEL, resolve

    if threads:
        torch.set_num_threads(threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    path = resolve(DEFAULT_MODEL)
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def load_default_tokenizer():
    """The embedded default's tokenizer (transformers), without loading its weights."""
    from sj_jax.weights.registry import DEFAULT_MODEL, resolve
    from sj_jax.weights.tokenizer import load_tokenizer

    return load_tokenizer(resolve(DEFAULT_MODEL))


def write_json(path: str | None, results) -> None:
    """Writes `results` to `path` (if given), for plots and closing notes."""
    import json

    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
