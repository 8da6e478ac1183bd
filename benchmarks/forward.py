"""Forward tokens/s on SmolLM2-135M-Instruct, float32, CPU: sj_jax and PyTorch transformers, one run.

    python -m benchmarks.forward [--batch 8] [--seq 256] [--rounds 5]

Both run the same full causal-LM forward (float32 logits over the whole vocabulary) on the same
random tokens, each side in its own process, timed in alternation (`benchmarks.common`); the ratio
is sj_jax tokens/s over PyTorch tokens/s.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import sj_jax  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks.common import forward_flops  # noqa: E402


def build_sj_jax(ids: np.ndarray):
    """sj_jax's side (own process): the full forward of `ids`; `check` gives row 0's first 64 logits."""
    from sj_jax.weights.registry import DEFAULT_MODEL

    model = sj_jax.load_model(DEFAULT_MODEL, tokenizer=None)

    def forward() -> None:
        sj_jax.logits(model, ids).block_until_ready()

    return {"flops": forward_flops(model.config, *ids.shape)}, {
        "forward": forward, "check": lambda: np.asarray(sj_jax.logits(model, ids[:1, :64]))}


def build_torch(ids: np.ndarray, threads: int):
    """PyTorch's side (own process): the same forward, float32."""
    import torch

    torch_model = common.load_torch_default(threads)
    torch_ids = torch.from_numpy(ids.astype(np.int64))

    def forward(rows=slice(None), width=None):
        with torch.inference_mode():
            return torch_model(input_ids=torch_ids[rows, :width]).logits

    def run() -> None:
        forward()

    return {"threads": torch.get_num_threads()}, {"forward": run, "check": lambda: forward(slice(0, 1), 64).numpy()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch's intra-op threads")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    m = common.machine()
    common.print_machine(m)
    vocab = common.load_default_tokenizer().vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, (args.batch, args.seq)).astype(np.int32)
    with common.Sides({"sj_jax": (build_sj_jax, (ids,)), "torch": (build_torch, (ids, args.threads))}) as sides:
        for side in ("sj_jax", "torch"):
            sides.call(side, "forward")  # compile / warm up
        # Same numbers first: a benchmark of a wrong forward is worth nothing.
        ref, got = sides.call("torch", "check")[1], sides.call("sj_jax", "check")[1]
        err = float(np.abs(got - ref).max() / np.abs(ref).max())
        assert err < 1e-4, err
        samples, _ = sides.alternate({s: (s, "forward") for s in ("sj_jax", "torch")}, args.rounds)
        flops, threads = sides.info["sj_jax"]["flops"], sides.info["torch"]["threads"]
    common.quiet_check(m)
    st = {k: common.stats(v) for k, v in samples.items()}
    secs = {k: v["median"] for k, v in st.items()}
    tokens, peak = args.batch * args.seq, m["matmul_gflops"]
    res = {
        "work": f"SmolLM2-135M forward, float32, batch {args.batch} x {args.seq} tokens",
        "machine": m, "seconds": st, "torch_threads": threads, "max_rel_err_vs_torch": err,
        "sj_jax_s": secs["sj_jax"], "torch_s": secs["torch"],
        "sj_jax_tokens_per_s": tokens / secs["sj_jax"], "torch_tokens_per_s": tokens / secs["torch"],
        "ratio_sj_jax_over_torch": secs["torch"] / secs["sj_jax"],
        "sj_jax_gflops": flops / secs["sj_jax"] / 1e9, "torch_gflops": flops / secs["torch"] / 1e9,
        "jax_matmul_peak_gflops": peak, "sj_jax_fraction_of_peak": flops / secs["sj_jax"] / 1e9 / peak,
    }
    print(f"{res['work']}  (torch threads {threads}; each side in its own process, called in alternation)")
    print(f"  sj_jax : {res['sj_jax_s']*1e3:8.1f} ms (spread {100 * st['sj_jax']['spread']:.0f}%)  "
          f"{res['sj_jax_tokens_per_s']:8.0f} tok/s  {res['sj_jax_gflops']:6.1f} GFLOP/s "
          f"({100*res['sj_jax_fraction_of_peak']:.0f}% of JAX matmul peak {peak:.0f})")
    print(f"  torch  : {res['torch_s']*1e3:8.1f} ms (spread {100 * st['torch']['spread']:.0f}%)  "
          f"{res['torch_tokens_per_s']:8.0f} tok/s  {res['torch_gflops']:6.1f} GFLOP/s")
    print(f"  ratio sj_jax / torch: {res['ratio_sj_jax_over_torch']:.2f}x")
    common.write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
