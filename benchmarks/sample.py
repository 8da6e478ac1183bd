"""On-policy sampling speed on SmolLM2-135M-Instruct, float32, CPU: sj_jax vs PyTorch `generate`.

    python -m benchmarks.sample [--batches 64 16] [--rounds 3]

Work: prompts of 32 tokens (windows of English text, or random tokens), exactly 64 new tokens each (no stop token), temperature 1.0,
top-p 0.9. Both are timed in alternation in one run; the ratio is new tokens/s of sj_jax over
PyTorch's. The bandwidth bound is the bytes one decode step must read (all parameters, and the
average live KV cache) over a measured memory read bandwidth.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sj_jax  # noqa: E402
from benchmarks.common import alternate, load_default_pair, write_json  # noqa: E402

PROMPT, NEW = 32, 64

# Our own English prose, cut into 32-token windows: real text gives the peaked next-token
# distributions of on-policy prompts; random tokens give flat ones (the nucleus's worst case).
TEXT = (
    "The river that runs past the old mill has changed its course three times in living memory. "
    "Each flood carried away a little more of the bank, and each spring the farmers moved their fences "
    "back a few steps. The miller kept a notebook of the water levels, written in pencil and dated in "
    "his careful hand, and his granddaughter still reads it aloud when visitors ask about the village. "
    "She explains how the wheel turned grain into flour, how the stones were dressed every autumn, and why "
    "the children were told never to play near the sluice gate. Most visitors come for the bakery, which "
    "sells bread made from wheat grown on the same fields, and stay for the walk along the towpath. "
    "In the evening the light turns gold over the water, swallows skim the surface for insects, and the "
    "sound of the weir fills the valley. Scientists from the university measure the flow each month; they "
    "say the river will move again within fifty years, and the mill may one day stand on an island. "
    "To solve a problem like this, engineers first write down what they know, then list what they must "
    "find out, and finally test each idea against the measurements before they build anything at all."
)


def make_prompts(kind: str, batch: int, vocab: int, tokenizer) -> list[list[int]]:
    if kind == "random":
        return np.random.default_rng(batch).integers(100, vocab, (batch, PROMPT)).tolist()
    ids = tokenizer(TEXT)["input_ids"]
    stride = max(1, (len(ids) - PROMPT) // batch)
    return [ids[i * stride: i * stride + PROMPT] for i in range(batch)]


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
    ap.add_argument("--prompts", choices=["text", "random"], default="text",
                    help="32-token windows of English text (default) or random tokens")
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    model, tm = load_default_pair(tokenizer=True)
    cfg = model.config
    bw = read_bandwidth()
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(model.params))
    results = []
    for batch in args.batches:
        prompts = make_prompts(args.prompts, batch, cfg.vocab_size, model.tokenizer)
        assert all(len(p) == PROMPT for p in prompts)
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
            "batch": batch, "prompts": args.prompts, "sj_jax_s": secs["sj_jax"], "torch_s": secs["torch"],
            "sj_jax_tokens_per_s": batch * NEW / secs["sj_jax"], "torch_tokens_per_s": batch * NEW / secs["torch"],
            "ratio": secs["torch"] / secs["sj_jax"], "decode_step_ms": step * 1e3,
            "bound_step_ms": bound * 1e3, "fraction_of_bound": bound / step,
            "read_bandwidth_GBps": bw / 1e9, "bytes_per_step_MB": (param_bytes + kv_bytes) / 1e6,
        }
        results.append(r)
        print(f"{batch:3d} {args.prompts} prompts x {PROMPT} tokens, {NEW} new, T=1.0 top-p 0.9 ({jax.devices()[0]}):")
        print(f"   sj_jax {r['sj_jax_tokens_per_s']:7.0f} new tok/s   torch {r['torch_tokens_per_s']:7.0f} new tok/s"
              f"   ratio {r['ratio']:.2f}x")
        print(f"   decode step {r['decode_step_ms']:.1f} ms; bound {r['bound_step_ms']:.1f} ms "
              f"({r['bytes_per_step_MB']:.0f} MB at {r['read_bandwidth_GBps']:.1f} GB/s): "
              f"{100 * r['fraction_of_bound']:.0f}% of the bandwidth bound")
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
