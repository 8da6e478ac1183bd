"""On-policy sampling speed on SmolLM2-135M-Instruct, float32, CPU: sj_jax vs PyTorch `generate`.

    python -m benchmarks.sample [--batches 64 16] [--rounds 3]

Work: prompts of 32 random tokens, exactly 64 new tokens each (no stop token), temperature 1.0,
top-p 0.9. Both are timed in alternation in one run; the ratio is new tokens/s of sj_jax over
PyTorch's. The bandwidth bound is the bytes one decode step must read (all parameters, and the
average live KV cache) over a measured memory read bandwidth.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sj_jax  # noqa: E402
from benchmarks.common import alternate  # noqa: E402
from sj_jax.registry import DEFAULT_MODEL, resolve  # noqa: E402

PROMPT, NEW = 32, 64


def read_bandwidth(nbytes: int = 512 << 20) -> float:
    """Bytes/s of a float32 sum over `nbytes` (read-only streaming), best of 5."""
    a = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def main() -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 16])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = sj_jax.load_model(DEFAULT_MODEL, tokenizer=None)
    path = resolve(DEFAULT_MODEL)
    tm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    cfg = model.config
    bw = read_bandwidth()
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(model.params))
    results = []
    for batch in args.batches:
        prompts = np.random.default_rng(batch).integers(100, cfg.vocab_size, (batch, PROMPT)).tolist()
        kw = dict(temperature=1.0, top_p=0.9, stop=[], chat=False)

        def ours(n=NEW):
            out = sj_jax.generate(model, prompts, max_new_tokens=n, **kw)
            assert all(len(t[0]) == n for t in out.token_ids)

        t_ids = torch.tensor(prompts)

        def theirs():
            with torch.inference_mode():
                out = tm.generate(t_ids, attention_mask=torch.ones_like(t_ids), do_sample=True, temperature=1.0,
                                  top_p=0.9, top_k=0, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=2)
            assert out.shape[1] == PROMPT + NEW

        ours(), ours(1), theirs()  # compile and warm up
        secs = alternate({"sj_jax": ours, "torch": theirs}, args.rounds)
        prefill = alternate({"prefill": lambda: ours(1)}, args.rounds)["prefill"]
        step = (secs["sj_jax"] - prefill) / (NEW - 1)
        kv_bytes = batch * (PROMPT + NEW / 2) * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 4
        bound = (param_bytes + kv_bytes) / bw
        r = {
            "batch": batch, "sj_jax_s": secs["sj_jax"], "torch_s": secs["torch"],
            "sj_jax_tokens_per_s": batch * NEW / secs["sj_jax"], "torch_tokens_per_s": batch * NEW / secs["torch"],
            "ratio": secs["torch"] / secs["sj_jax"], "decode_step_ms": step * 1e3,
            "bound_step_ms": bound * 1e3, "fraction_of_bound": bound / step,
            "read_bandwidth_GBps": bw / 1e9, "bytes_per_step_MB": (param_bytes + kv_bytes) / 1e6,
        }
        results.append(r)
        print(f"{batch:3d} prompts x {PROMPT} tokens, {NEW} new, T=1.0 top-p 0.9 ({jax.devices()[0]}):")
        print(f"   sj_jax {r['sj_jax_tokens_per_s']:7.0f} new tok/s   torch {r['torch_tokens_per_s']:7.0f} new tok/s"
              f"   ratio {r['ratio']:.2f}x")
        print(f"   decode step {r['decode_step_ms']:.1f} ms; bound {r['bound_step_ms']:.1f} ms "
              f"({r['bytes_per_step_MB']:.0f} MB at {r['read_bandwidth_GBps']:.1f} GB/s): "
              f"{100 * r['fraction_of_bound']:.0f}% of the bandwidth bound")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
