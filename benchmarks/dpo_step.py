"""One DPO optimizer step on SmolLM2-135M-Instruct, float32, CPU: sj_jax and TRL's DPOTrainer, one run.

    python -m benchmarks.dpo_step [--pairs 4] [--rounds 3] [--json out.json]

The work (both sides): `pairs` preference pairs a step, prompt 64 + response 64 tokens each, sigmoid
DPO with beta 0.1, the reference's log-probs computed on the fly, AdamW at lr 1e-6, gradients clipped
to norm 1. TRL gets exactly the same token ids (`benchmarks.trl_dpo`). Before timing, both sides'
log-probs are checked against each other, and both first losses against log 2.

Each side lives in its own process and the two are stepped in alternation (`benchmarks.common`).
sj_jax runs the batch layout `sj-jax dpo` uses (`--layout`, default `data.pair_layout`). Printed:
step time, tokens/s, the ratio, and MFU against a measured JAX matmul peak.
"""

from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sj_jax  # noqa: E402
from benchmarks.common import Sides, forward_flops, machine, print_machine, quiet_check, stats, write_json  # noqa: E402
from benchmarks.trl_dpo import TRLDPOStep, load_torch_model_and_tokenizer, make_pairs  # noqa: E402
from sj_jax.core.config import from_dict  # noqa: E402
from sj_jax.data.batches import collate_pairs, collate_pairs_joint  # noqa: E402
from sj_jax.data.examples import PairExample  # noqa: E402
from sj_jax.train.config import DataConfig, TrainConfig  # noqa: E402
from sj_jax.train.optim import make_optimizer  # noqa: E402
from sj_jax.train.steps import StepSpec, compile_step  # noqa: E402
from sj_jax.train.trainer import init_state  # noqa: E402
from sj_jax.weights.registry import DEFAULT_MODEL  # noqa: E402


def sj_batch(pairs: list[dict], layout: str) -> dict[str, np.ndarray]:
    """One micro-batch as `sj-jax dpo` collates it: `[1, pairs, 2, P + R]` (separate: a row a response)
    or `[1, pairs, P + 2R]` (joint: a row a pair, the prompt once), int32."""
    examples = [PairExample(*(np.asarray(p[k], np.int32) for k in ("prompt_ids", "chosen_ids", "rejected_ids")))
                for p in pairs]
    prompt, response = len(pairs[0]["prompt_ids"]), len(pairs[0]["chosen_ids"])
    collate = collate_pairs_joint if layout == "joint" else collate_pairs
    batch, _ = collate(examples, prompt, response, 0)
    return {k: v[None] for k, v in batch.items()}


class SJDPOStep:
    """sj_jax's DPO step on the same work: full-weight policy, frozen reference, the trainer's own step."""

    def __init__(self, pairs: list[dict], *, beta: float = 0.1, lr: float = 1e-6, remat: str = "none",
                 layout: str = DataConfig.pair_layout):
        self.model = sj_jax.load_model(DEFAULT_MODEL, tokenizer=None, remat=remat)
        cfg = from_dict(TrainConfig, {"dpo": {"beta": beta}, "remat": remat, "optim": {
            "learning_rate": lr, "schedule": "constant", "warmup_steps": 0, "clip_norm": 1.0}})
        self.tx, schedule = make_optimizer(cfg.optim, 1 << 20)
        self.state, self.frozen = init_state("dpo", cfg, self.model, self.tx)
        self.batch = sj_batch(pairs, layout)
        spec = StepSpec("dpo", self.model.config, dpo=cfg.dpo, response_len=len(pairs[0]["chosen_ids"]))
        self.fn = compile_step(spec, self.tx, schedule, self.model.mesh,
                               self.state, self.frozen, self.batch)

    def step(self) -> dict[str, float]:
        self.state, metrics = self.fn(self.state, self.frozen, self.batch)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}


def build_side(side: str, n_pairs: int, remat: str, layout: str):
    """A side in its own process: (info, {"step": one optimizer step, returning its metrics})."""
    torch_model, tok = load_torch_model_and_tokenizer()
    pairs = make_pairs(tok, n_pairs)
    if side == "trl":
        runner = TRLDPOStep(torch_model, tok, pairs)
        return {"ref_logps": [x.tolist() for x in runner.logps("reference")], "tokens": runner.tokens_per_step}, {
            "step": runner.step}
    del torch_model
    runner = SJDPOStep(pairs, remat=remat, layout=layout)
    seq = len(pairs[0]["prompt_ids"]) + len(pairs[0]["chosen_ids"])
    # Model FLOPs, as MFU counts them: policy forward + backward (3x) and the reference forward
    # (1x), over every token and the full vocabulary head, whatever shortcut an implementation takes.
    return {"flops": 4 * forward_flops(runner.model.config, 2 * n_pairs, seq)}, {"step": runner.step}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    ap.add_argument("--layout", default=DataConfig.pair_layout, choices=["joint", "separate"],
                    help="sj_jax's DPO batch (default: sj-jax dpo's `data.pair_layout`)")
    ap.add_argument("--other-layout", action="store_true",
                    help="also step sj_jax with the other layout, in a third process, in the same alternation")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    m = machine()
    print_machine(m)
    build = {side: (build_side, (side, args.pairs, args.remat, args.layout)) for side in ("sj_jax", "trl")}
    other = {"joint": "separate", "separate": "joint"}[args.layout]
    if args.other_layout:
        build[f"sj_jax_{other}"] = (build_side, ("sj_jax", args.pairs, args.remat, other))
    with Sides(build) as sides:
        trl_chosen, tokens = np.asarray(sides.info["trl"]["ref_logps"][0]), sides.info["trl"]["tokens"]
        flops = sides.info["sj_jax"]["flops"]
        # Same numbers first: the first losses (policy == reference) and the reference log-probs.
        (_, first_sj), (_, first_trl) = sides.call("sj_jax", "step"), sides.call("trl", "step")
        for name, met in (("sj_jax", first_sj), ("TRL", first_trl)):
            assert abs(met["loss"] - math.log(2)) < 1e-5, (name, met["loss"])
        logp_err = abs(first_sj["logps/chosen"] - float(np.mean(trl_chosen))) / abs(float(np.mean(trl_chosen)))
        assert logp_err < 1e-4, (first_sj["logps/chosen"], float(np.mean(trl_chosen)))
        samples, _ = sides.alternate({side: (side, "step") for side in build}, args.rounds)
    quiet_check(m)
    peak = m["matmul_gflops"]
    secs = {k: stats(v)["median"] for k, v in samples.items()}
    res = {
        "work": f"DPO step, SmolLM2-135M float32, {args.pairs} pairs x (64 prompt + 64 response) tokens, beta 0.1, "
                f"sj_jax layout {args.layout}, "
                "reference on the fly",
        "machine": m, "seconds": {k: stats(v) for k, v in samples.items()}, "remat": args.remat,
        "layout": args.layout, "samples_s": samples,
        "sj_jax_s_per_step": secs["sj_jax"], "trl_s_per_step": secs["trl"],
        "sj_jax_tokens_per_s": tokens / secs["sj_jax"], "trl_tokens_per_s": tokens / secs["trl"],
        "ratio_sj_jax_over_trl": secs["trl"] / secs["sj_jax"],
        "model_gflop_per_step": flops / 1e9, "jax_matmul_peak_gflops": peak,
        "sj_jax_mfu": flops / secs["sj_jax"] / 1e9 / peak, "trl_mfu": flops / secs["trl"] / 1e9 / peak,
        "logps_chosen_rel_err_vs_trl": logp_err,
    }
    print(res["work"] + "  (each side in its own process, stepped in alternation)")
    for name in ("sj_jax", "trl"):
        print(f"  {name:7s}: {res[f'{name}_s_per_step']:6.2f} s/step (median of {args.rounds}; spread "
              f"{100 * res['seconds'][name]['spread']:.0f}%)  {res[f'{name}_tokens_per_s']:6.0f} tokens/s  "
              f"MFU {100 * res[f'{name}_mfu']:.0f}% of the JAX matmul peak {peak:.0f} GFLOP/s")
    print(f"  ratio sj_jax / TRL: {res['ratio_sj_jax_over_trl']:.2f}x  "
          f"(model FLOPs {res['model_gflop_per_step']:.0f} GFLOP a step)")
    if args.other_layout:
        res[f"sj_jax_{other}_s_per_step"] = secs[f"sj_jax_{other}"]
        res[f"ratio_{args.layout}_over_{other}"] = secs[f"sj_jax_{other}"] / secs["sj_jax"]
        print(f"  sj_jax with the {other} layout: {secs[f'sj_jax_{other}']:6.2f} s/step (spread "
              f"{100 * res['seconds'][f'sj_jax_{other}']['spread']:.0f}%): {args.layout} / {other} "
              f"{res[f'ratio_{args.layout}_over_{other}']:.2f}x")
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
