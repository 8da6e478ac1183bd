"""One command for a GPU or TPU host: a Llama-shaped model of about 1B parameters (Llama-3.2-1B's
shape, random weights) in bfloat16, on the first device.

    python -m benchmarks.accelerator [--json out.json] [--no-peer] [--remat none|full|dots]
    python -m benchmarks.accelerator --tiny       # a tiny model on any machine (the CPU test runs this)

Prints the device first, then:
- a full-fine-tuning DPO step (16 pairs, each row 256 prompt + 512 response tokens) and an SFT step
  (16 x 1024), with MFU against the chip's dense bfloat16 peak (on a CPU: the measured float32
  matmul rate, said so);
- sampling: 64 prompts of 128 tokens, 256 new tokens each at temperature 1.0 (no stop), in new
  tokens/s; the decode step against the memory-bandwidth bound (weights and the average live KV
  cache read once a step, at the chip's HBM bandwidth, or the measured read bandwidth on a CPU);
  the first call's compile time (prefill and decode loop);
- the peer on the same device: transformers' LlamaForCausalLM with the same shape, the same DPO
  step (policy forward and backward, reference forward, the sigmoid DPO loss as TRL computes it,
  AdamW) and `generate`, as ratios (>1: sj_jax faster). `--no-peer` or no torch: skipped.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# JAX would take 75% of a GPU's memory at start, leaving PyTorch (the peer, same device) too little.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import sj_jax  # noqa: E402
from benchmarks.common import alternate, forward_flops, jax_matmul_peak, write_json  # noqa: E402
from sj_jax.core.config import from_dict  # noqa: E402
from sj_jax.experiments.memory import Workload, estimate  # noqa: E402
from sj_jax.loading.model import init_model  # noqa: E402
from sj_jax.models.config import ModelConfig  # noqa: E402
from sj_jax.models.presets import PRESETS  # noqa: E402
from sj_jax.models.sharding import MeshConfig, make_mesh  # noqa: E402
from sj_jax.train.config import TrainConfig  # noqa: E402
from sj_jax.train.optim import make_optimizer  # noqa: E402
from sj_jax.train.steps import StepSpec, compile_step, place_batch  # noqa: E402
from sj_jax.train.trainer import init_state  # noqa: E402

# Dense bfloat16 peak FLOP/s and HBM bytes/s by device kind (the vendors' data sheets; SXM parts).
CHIPS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.04e12),
         "TPU v6 lite": (918e12, 1.64e12), "TPU v5p": (459e12, 2.76e12), "TPU v5 lite": (197e12, 0.82e12),
         "TPU v4": (275e12, 1.2e12)}

FULL = {"model": PRESETS["llama-3.2-1b"], "pairs": 16, "prompt": 256, "response": 512, "sft_rows": 16,
        "sft_len": 1024, "sample_prompts": 64, "sample_prompt_len": 128, "new": 256}
# the tiny decode step is ~0.1 ms: 512 new tokens keep its sum well above the run-to-run noise of a
# loaded CI machine (32 steps once measured a negative step: full minus prefill-only is a difference)
TINY = {"model": ModelConfig("llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=1024),
        "pairs": 4, "prompt": 16, "response": 32, "sft_rows": 4, "sft_len": 64, "sample_prompts": 8,
        "sample_prompt_len": 16, "new": 512}


def chip(device) -> tuple[str, float, float, str]:
    """(kind, peak FLOP/s, bytes/s, where the numbers come from) of `device`."""
    kind = getattr(device, "device_kind", str(device))
    for name, (flops, bw) in CHIPS.items():
        if name.lower() in kind.lower():
            return kind, flops, bw, "data sheet (dense bfloat16)"
    from benchmarks.common import read_bandwidth

    return kind, jax_matmul_peak() * 1e9, read_bandwidth(), "measured here (float32 matmul, read bandwidth)"


def train_step_seconds(cfg: ModelConfig, kind: str, rows: int, seq: int, response: int, rounds: int):
    """(median seconds of a jitted full-fine-tuning step, compile seconds) on one device."""
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    model = init_model(cfg, seed=0, mesh=mesh)
    tc = from_dict(TrainConfig, {"lora": {"enabled": False}})
    tx, schedule = make_optimizer(tc.optim, 1000)
    state, frozen = init_state(kind, tc, model, tx)
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (1, rows, seq)).astype(np.int32)
    if kind == "dpo":
        shape = (1, rows // 2, 2, seq)
        ids = ids.reshape(shape)
        loss = np.zeros(shape, np.int32)
        loss[..., -response:] = 1
        batch = {"input_ids": ids, "attention_mask": np.ones(shape, np.int32), "loss_mask": loss}
        spec = StepSpec("dpo", cfg, tc.lora, tc.dpo, tc.logprob_chunk, response_len=response)
    else:
        batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)}
        spec = StepSpec("sft", cfg, tc.lora, tc.dpo, tc.logprob_chunk)
    batch = place_batch(mesh, batch)
    step = compile_step(spec, tx, schedule, mesh, state, frozen, batch)
    t0 = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - t0
    box = {"state": state}

    def run():
        box["state"], m = compiled(box["state"], frozen, batch)
        jax.block_until_ready(m["loss"])

    run()
    return alternate({"step": run}, rounds)["step"], compile_s


def sampling(cfg: ModelConfig, prompts: int, prompt_len: int, new: int, rounds: int):
    """(new tokens/s, decode step s, first call's extra seconds (compile), prefill-only s)."""
    model = init_model(cfg, seed=0, mesh=make_mesh(MeshConfig(data=1), jax.devices()[:1]))
    ids = np.random.default_rng(1).integers(3, cfg.vocab_size, (prompts, prompt_len)).tolist()
    kw = dict(temperature=1.0, top_p=1.0, stop=[], chat=False, batch_size=prompts)

    def run(n):
        out = sj_jax.generate(model, ids, max_new_tokens=n, **kw)
        assert all(len(t[0]) == n for t in out.token_ids)

    t0 = time.perf_counter()
    run(new)
    first = time.perf_counter() - t0
    run(1)
    secs = alternate({"full": lambda: run(new), "prefill": lambda: run(1)}, rounds)
    step = (secs["full"] - secs["prefill"]) / (new - 1)
    return prompts * new / secs["full"], step, first - secs["full"], secs["prefill"], model


def peer(cfg: ModelConfig, spec: dict, rounds: int, device_kind: str) -> dict | None:
    """The same DPO step and sampling in PyTorch on the same device, or None without torch."""
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None
    from sj_jax.models.config import to_hf_config_kwargs

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    hf = LlamaConfig(**to_hf_config_kwargs(cfg))
    policy = LlamaForCausalLM(hf).to(dev, dtype)
    ref = LlamaForCausalLM(hf).to(dev, dtype).eval()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, fused=dev == "cuda")
    p, r, pairs = spec["prompt"], spec["response"], spec["pairs"]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.vocab_size, (2 * pairs, p + r), generator=gen).to(dev)

    def logps(model):
        logits = model(ids).logits[:, p - 1:-1].float()
        return torch.gather(logits.log_softmax(-1), 2, ids[:, p:, None]).squeeze(-1).sum(-1)

    def dpo():
        pol = logps(policy)
        with torch.no_grad():
            rf = logps(ref)
        margin = (pol[0::2] - rf[0::2]) - (pol[1::2] - rf[1::2])
        loss = -torch.nn.functional.logsigmoid(0.1 * margin).mean()  # TRL's sigmoid loss, beta 0.1
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev == "cuda":
            torch.cuda.synchronize()

    prompts = torch.randint(3, cfg.vocab_size, (spec["sample_prompts"], spec["sample_prompt_len"]),
                            generator=gen).to(dev)

    def sample():
        with torch.inference_mode():
            out = policy.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=1.0,
                                  top_k=0, max_new_tokens=spec["new"], min_new_tokens=spec["new"], pad_token_id=0)
        assert out.shape[1] == spec["sample_prompt_len"] + spec["new"]
        if dev == "cuda":
            torch.cuda.synchronize()

    dpo(), sample()  # warm up
    secs = alternate({"dpo": dpo, "sample": sample}, rounds)
    return {"device": dev, "dtype": str(dtype), "dpo_step_s": secs["dpo"], "sample_s": secs["sample"],
            "sample_tokens_per_s": spec["sample_prompts"] * spec["new"] / secs["sample"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny model (any machine; the CPU test)")
    ap.add_argument("--no-peer", action="store_true", help="skip the PyTorch side")
    ap.add_argument("--remat", choices=("none", "full", "dots"), default="none")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    spec = TINY if args.tiny else FULL
    device = jax.devices()[0]
    kind, peak, bandwidth, source = chip(device)
    print(f"device: {kind} ({device.platform}), jax {jax.__version__}; peak {peak / 1e12:.1f} TFLOP/s and "
          f"{bandwidth / 1e9:.0f} GB/s: {source}", flush=True)
    on_cpu = device.platform == "cpu"
    dtype = "float32" if on_cpu else "bfloat16"  # a CPU has no fast bfloat16 matmul
    cfg = spec["model"].replace(dtype=dtype, param_dtype=dtype, remat=args.remat)
    print(f"model: {cfg.num_params / 1e9:.2f}B parameters ({cfg.num_layers} layers, hidden {cfg.hidden_size}), "
          f"{dtype}, remat {args.remat}", flush=True)
    out: dict = {"device": kind, "platform": device.platform, "jax": jax.__version__, "peak_flops": peak,
                 "bandwidth_bytes_per_s": bandwidth, "peak_source": source, "dtype": dtype,
                 "params": cfg.num_params, "remat": args.remat}

    pairs, p, r = spec["pairs"], spec["prompt"], spec["response"]
    est = estimate(cfg, Workload("dpo", 2 * pairs, p + r), MeshConfig(data=1), 1)
    print(f"sj-jax memory's estimate of the DPO step: {est['total'] / 2**30:.2f} GiB", flush=True)
    dpo_s, dpo_compile = train_step_seconds(cfg, "dpo", 2 * pairs, p + r, r, args.rounds)
    # policy forward and backward (3 forwards' FLOPs) and the reference's forward
    dpo_flops = 4 * forward_flops(cfg, 2 * pairs, p + r)
    out["dpo"] = {"pairs": pairs, "tokens_per_row": p + r, "step_s": dpo_s, "compile_s": dpo_compile,
                  "mfu": dpo_flops / dpo_s / peak, "estimated_bytes": est["total"]}
    print(f"DPO step, {pairs} pairs x {p}+{r} tokens: {dpo_s * 1e3:.1f} ms, MFU {100 * out['dpo']['mfu']:.1f}% "
          f"(compile {dpo_compile:.1f} s)", flush=True)
    rows, length = spec["sft_rows"], spec["sft_len"]
    sft_s, sft_compile = train_step_seconds(cfg, "sft", rows, length, 0, args.rounds)
    out["sft"] = {"rows": rows, "tokens_per_row": length, "step_s": sft_s, "compile_s": sft_compile,
                  "mfu": 3 * forward_flops(cfg, rows, length) / sft_s / peak}
    print(f"SFT step, {rows} x {length} tokens: {sft_s * 1e3:.1f} ms, MFU {100 * out['sft']['mfu']:.1f}% "
          f"(compile {sft_compile:.1f} s)", flush=True)

    n, plen, new = spec["sample_prompts"], spec["sample_prompt_len"], spec["new"]
    tok_s, step, compile_s, prefill_s, model = sampling(cfg, n, plen, new, args.rounds)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(model.params))
    kv = n * (plen + new / 2) * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(dtype).itemsize
    bound = (weight_bytes + kv) / bandwidth
    out["sampling"] = {"prompts": n, "prompt_tokens": plen, "new_tokens": new, "tokens_per_s": tok_s,
                       "decode_step_s": step, "bound_step_s": bound, "step_over_bound": step / bound,
                       "first_call_compile_s": compile_s, "prefill_s": prefill_s}
    print(f"sampling {n} prompts x {plen} tokens, {new} new: {tok_s:.0f} new tokens/s; decode step "
          f"{step * 1e3:.2f} ms against a bound of {bound * 1e3:.2f} ms ({step / bound:.1f}x); compile "
          f"(prefill and decode) {compile_s:.1f} s", flush=True)

    theirs = None if args.no_peer else peer(cfg, spec, args.rounds, kind)
    if theirs is None:
        print("peer: skipped (--no-peer, or no torch)", flush=True)
    else:
        theirs["dpo_ratio"] = theirs["dpo_step_s"] / dpo_s
        theirs["sample_ratio"] = tok_s / theirs["sample_tokens_per_s"]
        out["peer"] = theirs
        print(f"PyTorch ({theirs['device']}, {theirs['dtype']}): DPO step {theirs['dpo_step_s'] * 1e3:.1f} ms "
              f"-> sj_jax {theirs['dpo_ratio']:.2f}x; generate {theirs['sample_tokens_per_s']:.0f} new tokens/s "
              f"-> sj_jax {theirs['sample_ratio']:.2f}x", flush=True)
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
