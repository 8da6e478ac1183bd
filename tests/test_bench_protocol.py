"""The benchmarks' protocol (`benchmarks.common`) and the peers' table (`benchmarks.peers`), without a model."""

from __future__ import annotations

import math
import os
import time

import pytest

from benchmarks import common, peers


def build_side(name: str, fail_at_build: bool = False):
    """A side for `Sides`: records its calls and answers with its process id (imported by the child)."""
    if fail_at_build:
        raise ValueError(f"side {name} cannot start")
    calls = []

    def work(seconds: float = 0.0):
        calls.append(time.monotonic())
        time.sleep(seconds)
        return {"pid": os.getpid(), "name": name, "calls": len(calls)}

    def broken():
        raise KeyError("no such column")

    return {"pid": os.getpid(), "name": name}, {"work": work, "broken": broken}


def test_each_side_runs_in_a_process_of_its_own_and_is_called_in_alternation():
    with common.Sides({"a": (build_side, ("a",)), "b": (build_side, ("b",))}) as sides:
        pids = {sides.info[s]["pid"] for s in ("a", "b")}
        assert len(pids) == 2 and os.getpid() not in pids
        secs, last = sides.alternate({"a": ("a", "work"), "b": ("b", "work")}, rounds=3)
        assert [len(v) for v in secs.values()] == [3, 3]
        assert last["a"]["calls"] == 3 and last["b"]["calls"] == 3
        assert last["a"]["pid"] == sides.info["a"]["pid"] and last["b"]["pid"] == sides.info["b"]["pid"]
        dt, out = sides.call("a", "work", 0.2)
        assert dt >= 0.2 and out["calls"] == 4


def test_a_side_that_fails_names_itself_and_carries_its_traceback():
    with pytest.raises(RuntimeError, match=r"side 'b' failed:(.|\n)*cannot start"):
        common.Sides({"a": (build_side, ("a",)), "b": (build_side, ("b", True))})
    with common.Sides({"a": (build_side, ("a",))}) as sides:
        with pytest.raises(RuntimeError, match=r"side 'a' failed:(.|\n)*KeyError: 'no such column'"):
            sides.call("a", "broken")


def test_stats_give_the_median_and_the_spread():
    st = common.stats([2.0, 1.0, 4.0, 3.0, 10.0])
    assert st == {"median": 3.0, "min": 1.0, "max": 10.0, "spread": 3.0, "n": 5}


def test_a_run_whose_matmul_rate_moved_or_whose_cpu_was_busy_is_not_quiet(monkeypatch):
    monkeypatch.setattr(common, "jax_matmul_peak", lambda: 200.0)
    quiet = common.quiet_check({"matmul_gflops": 190.0, "busy_before": 0.02})
    assert quiet["quiet"] and quiet["matmul_gflops_after"] == 200.0
    moved = common.quiet_check({"matmul_gflops": 250.0, "busy_before": 0.02})
    assert not moved["quiet"] and "250 -> 200" in moved["quiet_why"]
    busy = common.quiet_check({"matmul_gflops": 200.0, "busy_before": 0.5})
    assert not busy["quiet"] and "50% of the CPU" in busy["quiet_why"]
    assert 0.0 <= common.cpu_busy(0.1) <= 1.0


def _spread(med):
    return {"median": med, "min": med, "max": med * 1.1, "spread": 0.1, "n": 3}


def test_the_peers_table_has_a_row_a_comparison_with_its_goal():
    machine = {"cpu": "test cpu", "cores": 2, "matmul_gflops": 250.0, "read_GBps": 12.0, "quiet": True}
    results = {
        "dpo": {"layout": "joint", "seconds": {"sj_jax": _spread(5.0), "trl": _spread(7.0)},
                "ratio_sj_jax_over_trl": 1.4, "machine": machine},
        "sample": {"machine": {**machine, "quiet": False}, "results": [
            {"batch": b, "sj_jax_s": 1.0, "torch_s": r, "ratio": r,
             "seconds": {"sj_jax": _spread(1.0), "torch": _spread(r)}} for b, r in ((64, 2.5), (16, 1.5))]},
        "judge": {"seconds": {"sj_jax": _spread(2.0), "torch": _spread(3.0)}, "ratio_sj_jax_over_torch": 1.5,
                  "machine": machine},
        "self_judge": {"machine": machine, "seconds": {"sj_jax": _spread(10.0), "peer": _spread(16.0)},
                       "medians_s": {s: {"sample": 1.0 * k, "judge": 2.0 * k, "step": 7.0 * k, "total": 10.0 * k}
                                     for s, k in (("sj_jax", 1.0), ("peer", 1.6))},
                       "ratios": {"sample": 1.6, "judge": 1.6, "step": 1.6, "total": 1.6}},
    }
    rows = [r for name in peers.BENCHES for r in peers.rows(name, results[name])]
    assert [r["key"] for r in rows] == ["dpo", "sample64", "sample16", "judge", "self_judge", "self_judge/sample",
                                        "self_judge/judge", "self_judge/step"]
    text = peers.table(machine, rows).splitlines()
    assert "250 GFLOP/s" in text[0]
    met = {r["key"]: line.split()[-3] for r, line in zip(rows, text[2:]) if r["key"] in peers.GOALS}
    assert met == {"dpo": "yes", "sample64": "yes", "sample16": "no", "judge": "yes", "self_judge": "yes"}
    assert text[3].split()[-1] == "NO"  # the sampling run was not quiet
    assert math.isclose(rows[0]["ratio"], 1.4)


def test_the_sampling_benchmarks_matmul_chain_is_the_same_work_on_both_sides():
    """`benchmarks.sample` times the decode step's matmuls in XLA and in PyTorch: the same products,
    every projection of every layer and the output projection, so both sides give one result."""
    import jax
    import numpy as np
    import torch

    from benchmarks import sample
    from sj_jax import ModelConfig

    cfg = ModelConfig(model_type="llama", vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=3,
                      num_heads=4, num_kv_heads=2, head_dim=8)
    layers, head = sample.random_matmul_weights(cfg)
    assert [layers[0][n].shape for n in ("q", "k", "o", "down")] == [(32, 32), (32, 16), (32, 32), (48, 32)]
    assert len(layers) == 3 and head.shape == (32, 96)
    x = np.random.default_rng(5).standard_normal((6, 32), dtype=np.float32)
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(jax.jit(lambda ls, hd, h: sample.matmul_chain(
            ls, hd, h, jax.nn.silu, lambda t: jax.numpy.tile(t, (1, 2))))(layers, head, x))
    tl = [{n: torch.from_numpy(w) for n, w in layer.items()} for layer in layers]

    def torch_chain(ls):
        return sample.matmul_chain(ls, torch.from_numpy(head), torch.from_numpy(x), torch.nn.functional.silu,
                                   lambda t: t.repeat(1, 2)).numpy()

    ref = torch_chain(tl)
    assert ours.shape == (6, 96)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    # every layer counts: without the last layer the result differs by well over the tolerance above
    assert np.abs(torch_chain(tl[:2]) - ref).max() > 2e-5
