"""Forward tokens/s on SmolLM2-135M-Instruct, float32, CPU: sj_jax and PyTorch transformers, one run.

    python benchmarks/forward.py [--batch 8] [--seq 256] [--rounds 5]

Both run the same full causal-LM forward (float32 logits over the whole vocabulary) on the same
random tokens, timed in alternation; the ratio is sj_jax tokens/s over PyTorch tokens/s.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sj_jax  # noqa: E402
from benchmarks.common import alternate, forward_flops, jax_matmul_peak, load_default_pair, write_json  # noqa: E402,E501


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import torch

    model, torch_model = load_default_pair()
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (args.batch, args.seq)).astype(np.int32)
    torch_ids = torch.from_numpy(ids.astype(np.int64))

    def run_jax():
        sj_jax.logits(model, ids).block_until_ready()

    def run_torch():
        with torch.inference_mode():
            torch_model(input_ids=torch_ids).logits

    run_jax(), run_torch()  # compile / warm up
    # Same numbers first: a benchmark of a wrong forward is worth nothing.
    with torch.inference_mode():
        ref = torch_model(input_ids=torch_ids[:1, :64]).logits.numpy()
    err = np.abs(np.asarray(sj_jax.logits(model, ids[:1, :64])) - ref).max() / np.abs(ref).max()
    assert err < 1e-4, err

    secs = alternate({"sj_jax": run_jax, "torch": run_torch}, args.rounds)
    tokens = args.batch * args.seq
    flops = forward_flops(model.config, args.batch, args.seq)
    peak = jax_matmul_peak()
    res = {
        "work": f"SmolLM2-135M forward, float32, batch {args.batch} x {args.seq} tokens",
        "device": str(jax.devices()[0]), "torch_threads": torch.get_num_threads(),
        "sj_jax_s": secs["sj_jax"], "torch_s": secs["torch"],
        "sj_jax_tokens_per_s": tokens / secs["sj_jax"], "torch_tokens_per_s": tokens / secs["torch"],
        "ratio_sj_jax_over_torch": secs["torch"] / secs["sj_jax"],
        "sj_jax_gflops": flops / secs["sj_jax"] / 1e9, "torch_gflops": flops / secs["torch"] / 1e9,
        "jax_matmul_peak_gflops": peak, "sj_jax_fraction_of_peak": flops / secs["sj_jax"] / 1e9 / peak,
    }
    print(f"{res['work']}  ({res['device']}, torch threads {res['torch_threads']})")
    print(f"  sj_jax : {res['sj_jax_s']*1e3:8.1f} ms  {res['sj_jax_tokens_per_s']:8.0f} tok/s  "
          f"{res['sj_jax_gflops']:6.1f} GFLOP/s ({100*res['sj_jax_fraction_of_peak']:.0f}% of JAX matmul peak "
          f"{peak:.0f})")
    print(f"  torch  : {res['torch_s']*1e3:8.1f} ms  {res['torch_tokens_per_s']:8.0f} tok/s  "
          f"{res['torch_gflops']:6.1f} GFLOP/s")
    print(f"  ratio sj_jax / torch: {res['ratio_sj_jax_over_torch']:.2f}x")
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
