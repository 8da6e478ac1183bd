"""On-policy sampling speed on SmolLM2-135M-Instruct, float32, CPU: sj_jax vs PyTorch `generate`.

    python -m benchmarks.sample [--batches 64 16] [--rounds 3]

Work: prompts of 32 tokens (windows of English text, or random tokens), exactly 64 new tokens each
(no stop token), temperature 1.0, top-p 0.9. Each side runs in its own process, the two called in
alternation (`benchmarks.common`); the ratio is new tokens/s of sj_jax over PyTorch's. The
bandwidth bound is the bytes one decode step must read (all parameters, and the average live KV
cache) over a measured memory read bandwidth.

Beside it, each side times the decode step's matmuls alone, at the batch's rows: every layer's
q, k, v, o, gate, up and down projections and the output projection, chained as the layers chain
them, on random weights of the model's shapes (XLA in one jitted program over per-layer arrays, as
the sampler's decode step holds them; PyTorch eager). A decode step cannot be faster than its
matmuls, so this says which step time each ratio would need and whether the kernels allow it. A
timed call runs the chain `CHAIN_REPEATS` times back to back, as decode steps run.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sj_jax  # noqa: E402
from benchmarks import common  # noqa: E402

PROMPT, NEW = 32, 64
# The matmul chain runs this many times a timed call, back to back as decode steps run: one call
# alone, after the other calls of the alternation, read 1.3x (PyTorch) and 1.9x (XLA) slower.
CHAIN_REPEATS = 8

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


def projection_shapes(cfg) -> dict[str, tuple[int, int]]:
    """(in, out) of each of a layer's projections."""
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    e, f = cfg.hidden_size, cfg.intermediate_size
    return {"q": (e, q), "k": (e, kv), "v": (e, kv), "o": (q, e), "gate": (e, f), "up": (e, f), "down": (f, e)}


def random_matmul_weights(cfg) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Per-layer float32 weights of the projections' shapes, and the output projection's `[hidden, vocab]`."""
    rng = np.random.default_rng(0)
    layers = [{n: rng.standard_normal(s, dtype=np.float32) * 0.02 for n, s in projection_shapes(cfg).items()}
              for _ in range(cfg.num_layers)]
    return layers, rng.standard_normal((cfg.hidden_size, cfg.vocab_size), dtype=np.float32) * 0.02


def matmul_chain(layers, head, h, silu, repeat_kv):
    """The decode step's matmuls at `h`'s rows (`[rows, hidden]`), each layer's output feeding the next;
    the same code for jax.numpy and torch arrays (`silu`, `repeat_kv` from each library)."""
    for w in layers:
        h = h + (h @ w["q"] + repeat_kv(h @ w["k"] + h @ w["v"])) @ w["o"] * 0.01
        h = h + (silu(h @ w["gate"]) * (h @ w["up"])) @ w["down"] * 0.01
    return h @ head


def build_sj_jax(prompts_by_batch: dict[int, list[list[int]]]):
    """sj_jax's side (own process): `generate` of NEW tokens (or 1: the prefill) for each batch's prompts."""
    from sj_jax.weights.registry import DEFAULT_MODEL

    model = sj_jax.load_model(DEFAULT_MODEL, tokenizer=None)
    kw = dict(temperature=1.0, top_p=0.9, stop=[], chat=False)

    def run(batch: int, n: int = NEW) -> None:
        out = sj_jax.generate(model, prompts_by_batch[batch], max_new_tokens=n, **kw)
        assert all(len(t[0]) == n for t in out.token_ids)

    c = model.config
    layers, head = random_matmul_weights(c)
    layers, head = jax.device_put((layers, head))
    groups = c.num_heads // c.num_kv_heads
    chain = jax.jit(lambda layers, head, h: matmul_chain(layers, head, h, jax.nn.silu,
                                                         lambda x: jax.numpy.tile(x, (1, groups))))
    xs = {b: jax.device_put(np.random.default_rng(b).standard_normal((b, c.hidden_size), dtype=np.float32))
          for b in prompts_by_batch}

    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(model.params))
    calls = {f"sample{b}": (lambda b=b: run(b)) for b in prompts_by_batch}
    calls.update({f"prefill{b}": (lambda b=b: run(b, 1)) for b in prompts_by_batch})
    calls.update({f"matmuls{b}": (lambda b=b: [chain(layers, head, xs[b]).block_until_ready()
                                               for _ in range(CHAIN_REPEATS)])
                  for b in prompts_by_batch})
    kv_position = c.num_layers * 2 * c.num_kv_heads * c.head_dim * 4
    return {"param_bytes": param_bytes, "kv_bytes_a_position": kv_position}, calls


def build_torch(prompts_by_batch: dict[int, list[list[int]]], threads: int):
    """PyTorch's side (own process): transformers `generate`, exactly NEW tokens, same sampling."""
    import torch

    from sj_jax.models.config import from_hf_config

    tm = common.load_torch_default(threads)
    c = from_hf_config(tm.config)
    layers, head = random_matmul_weights(c)
    layers = [{n: torch.from_numpy(w) for n, w in layer.items()} for layer in layers]
    head, groups = torch.from_numpy(head), c.num_heads // c.num_kv_heads
    xs = {b: torch.from_numpy(np.random.default_rng(b).standard_normal((b, c.hidden_size), dtype=np.float32))
          for b in prompts_by_batch}

    def chain(batch: int) -> None:
        with torch.inference_mode():
            for _ in range(CHAIN_REPEATS):
                matmul_chain(layers, head, xs[batch], torch.nn.functional.silu, lambda x: x.repeat(1, groups))

    def run(batch: int) -> None:
        t_ids = torch.tensor(prompts_by_batch[batch])
        with torch.inference_mode():
            out = tm.generate(t_ids, attention_mask=torch.ones_like(t_ids), do_sample=True, temperature=1.0,
                              top_p=0.9, top_k=0, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=2)
        assert out.shape[1] == PROMPT + NEW

    calls = {f"sample{b}": (lambda b=b: run(b)) for b in prompts_by_batch}
    calls.update({f"matmuls{b}": (lambda b=b: chain(b)) for b in prompts_by_batch})
    return {"threads": torch.get_num_threads()}, calls


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 16])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch's intra-op threads")
    ap.add_argument("--prompts", choices=["text", "random"], default="text",
                    help="32-token windows of English text (default) or random tokens")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    m = common.machine()
    common.print_machine(m)
    tok = common.load_default_tokenizer()
    prompts = {b: make_prompts(args.prompts, b, tok.vocab_size, tok) for b in args.batches}
    assert all(len(p) == PROMPT for ps in prompts.values() for p in ps)
    results = []
    with common.Sides({"sj_jax": (build_sj_jax, (prompts,)), "torch": (build_torch, (prompts, args.threads))}) as sides:
        param_bytes, threads = sides.info["sj_jax"]["param_bytes"], sides.info["torch"]["threads"]
        kv_position = sides.info["sj_jax"]["kv_bytes_a_position"]
        for batch in args.batches:
            timed = {"sj_jax": ("sj_jax", f"sample{batch}"), "prefill": ("sj_jax", f"prefill{batch}"),
                     "torch": ("torch", f"sample{batch}"), "matmuls": ("sj_jax", f"matmuls{batch}"),
                     "torch_matmuls": ("torch", f"matmuls{batch}")}
            for side, name in timed.values():
                sides.call(side, name)  # compile and warm up
            samples, _ = sides.alternate(timed, args.rounds)
            st = {k: common.stats(v) for k, v in samples.items()}
            secs = {k: v["median"] for k, v in st.items()}
            step = (secs["sj_jax"] - secs["prefill"]) / (NEW - 1)
            kv_bytes = batch * (PROMPT + NEW / 2) * kv_position
            bound = (param_bytes + kv_bytes) / (m["read_GBps"] * 1e9)
            r = {
                "batch": batch, "prompts": args.prompts, "seconds": st, "torch_threads": threads,
                "sj_jax_s": secs["sj_jax"], "torch_s": secs["torch"],
                "sj_jax_tokens_per_s": batch * NEW / secs["sj_jax"], "torch_tokens_per_s": batch * NEW / secs["torch"],
                "ratio": secs["torch"] / secs["sj_jax"], "decode_step_ms": step * 1e3,
                "bound_step_ms": bound * 1e3, "fraction_of_bound": bound / step,
                "read_bandwidth_GBps": m["read_GBps"], "bytes_per_step_MB": (param_bytes + kv_bytes) / 1e6,
                "matmuls_ms": secs["matmuls"] / CHAIN_REPEATS * 1e3,
                "torch_matmuls_ms": secs["torch_matmuls"] / CHAIN_REPEATS * 1e3,
                # the decode step that would give the goal's 2x, the prefill as it is
                "step_ms_for_2x": (secs["torch"] / 2 - secs["prefill"]) / (NEW - 1) * 1e3,
            }
            results.append(r)
            print(f"{batch:3d} {args.prompts} prompts x {PROMPT} tokens, {NEW} new, T=1.0 top-p 0.9 (torch threads "
                  f"{threads}; each side in its own process, called in alternation):")
            print(f"   sj_jax {r['sj_jax_tokens_per_s']:7.0f} new tok/s (spread {100 * st['sj_jax']['spread']:.0f}%)"
                  f"   torch {r['torch_tokens_per_s']:7.0f} new tok/s (spread {100 * st['torch']['spread']:.0f}%)"
                  f"   ratio {r['ratio']:.2f}x", flush=True)
            print(f"   decode step {r['decode_step_ms']:.1f} ms; bound {r['bound_step_ms']:.1f} ms "
                  f"({r['bytes_per_step_MB']:.0f} MB at {r['read_bandwidth_GBps']:.1f} GB/s): "
                  f"{100 * r['fraction_of_bound']:.0f}% of the bandwidth bound", flush=True)
            print(f"   the step's matmuls alone: sj_jax (XLA) {r['matmuls_ms']:.1f} ms, PyTorch "
                  f"{r['torch_matmuls_ms']:.1f} ms; 2x generate needs a step of {r['step_ms_for_2x']:.1f} ms",
                  flush=True)
    common.quiet_check(m)
    common.write_json(args.json, {"machine": m, "results": results})
    return results


if __name__ == "__main__":
    main()
