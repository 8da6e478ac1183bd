"""Every training step kind the demo uses, on SmolLM2-135M-Instruct with LoRA, timed against its floor.

    python -m benchmarks.train_steps [--steps 12] [--kinds sft,jsft,dpo,self_judge] [--json out.json]

The work is the demo's (`sj_jax.experiments.demo_config`): batch 8 of the task suite's SFT rows, of its
JSFT mixture (the demo's short judge template), of its known-label pairs (offline DPO, the joint
layout), and SELF-JUDGE steps (8 prompts, 2 samples of at most 48 tokens, the frozen model judging).

For each kind it prints:
- `run s/step`: the mean time of the first `steps` steps as a run meets them, compiles included (the
  persistent compilation cache is off, so every new padded shape compiles, as on a fresh machine);
- `compiled s/step`: the median over the same batches once every shape is compiled;
- `programs`: how many padded shapes (compiled step programs) those steps met;
- `floor s`: the FLOPs the step must do, at this machine's float32 matmul rate (printed first): the
  layers over the real tokens and the output projection over the trained tokens only; LoRA's backward
  costs one forward (activation gradients; no weight gradients for the base), so a LoRA step is 2x
  the forward and a DPO step adds the reference's forward (3x); attention scores counted in full.
  SELF-JUDGE adds its sampling (prefill FLOPs, then each decode step the larger of its FLOPs and one
  read of the weights at the measured memory bandwidth) and the judge's forward over its prompts.

Run it on a quiet machine; only ratios within one run compare (machines of this pool differ 2.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402


def layer_flops(cfg, lengths) -> float:
    """Forward FLOPs of the layers (no output projection) over rows of these real lengths."""
    e, f, h, k, d, n = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                        cfg.num_layers)
    per_token = 2 * (e * h * d * 2 + e * k * d * 2 + 3 * e * f)
    return float(sum(L * n * (per_token + 2 * 2 * L * h * d) for L in lengths))


def projection_flops(cfg, tokens: int) -> float:
    return 2.0 * cfg.hidden_size * cfg.vocab_size * tokens


def build_data(root: Path, template) -> Path:
    from sj_jax.data.build import DataBuildConfig, build
    from sj_jax.tasks.suite import TaskSuiteConfig

    cfg = DataBuildConfig(output_dir=str(root), tasks=TaskSuiteConfig(validation=4, test=4),
                          max_length=256, judge=template, cache_dir="off")
    build(cfg, log=lambda m: None)
    return root


def bench_train(kind: str, model, data: Path, template, steps: int, peak: float) -> dict:
    """sft / jsft: the trainer's own data path, collate and shared compiled step."""
    from sj_jax.data.batches import EpochIterator
    from sj_jax.models.lora import LoraConfig
    from sj_jax.train import trainer
    from sj_jax.train.config import DataConfig, OptimConfig, TrainConfig
    from sj_jax.train.optim import make_optimizer
    from sj_jax.train.steps import StepSpec, shared_step

    tc = TrainConfig(batch_size=8, steps=steps, judge=template, lora=LoraConfig(enabled=True),
                     data=DataConfig(train_file=str(data / f"{kind}_train.jsonl"), max_length=256,
                                     group_by_length=True),
                     optim=OptimConfig(learning_rate=1e-4), cache_dir="off")
    examples, _ = trainer.load_data(kind, tc, model.tokenizer)
    it = EpochIterator(len(examples), 8, 0, True, lengths=examples.lengths())
    state, frozen = trainer.init_state(kind, tc, model, make_optimizer(tc.optim, steps)[0])
    spec = StepSpec("sft", model.config, tc.lora, tc.dpo, tc.logprob_chunk)
    batches, flops = [], []
    for _ in range(steps):
        chosen = [examples[i] for i in it.next()]
        batch, _ = trainer._collate(kind, tc, chosen, model.tokenizer.pad_token_id)
        batches.append(batch)
        trained = sum(int(np.sum(e.loss_mask[1:])) for e in chosen)
        flops.append(2 * (layer_flops(model.config, [len(e.input_ids) for e in chosen])
                          + projection_flops(model.config, trained)))

    def step(batch):
        nonlocal state
        fn = shared_step(spec, tc.optim, steps, model.mesh, state, frozen, batch)
        state, m = fn(state, frozen, batch)
        float(m["loss"])

    return _timed(batches, step, flops, peak)


def bench_dpo(model, data: Path, template, steps: int, peak: float, variant: str) -> dict:
    """offline DPO or the whole SELF-JUDGE step, through `SelfJudgeRun` (the demo's stage 3)."""
    from sj_jax.algorithms.self_judge import SelfJudgeRun
    from sj_jax.algorithms.self_judge_config import SamplingSettings, SelfJudgeConfig, ValidationSettings
    from sj_jax.judge.scoring import judge_prompts
    from sj_jax.judge.template import as_principles
    from sj_jax.models.lora import LoraConfig
    from sj_jax.train.config import CheckpointConfig

    out = Path(tempfile.mkdtemp(prefix="bench_dpo_"))
    sc = SelfJudgeConfig(output_dir=str(out), prompts_file=str(data / "prompts_train.jsonl"),
                         offline_file=str(data / "pairs_train.jsonl"), batch_size=8, steps=steps, samples=variant,
                         sampling=SamplingSettings(max_new_tokens=48), judge=template,
                         validation=ValidationSettings(file=""), lora=LoraConfig(enabled=True),
                         checkpoint=CheckpointConfig(every=0, async_save=False), cache_dir="off")
    run = SelfJudgeRun(sc, model=model)
    cfg = model.config
    if variant == "offline":
        batches = [[run.pairs[i] for i in run.it.next()] for _ in range(steps)]
        flops = [3 * (layer_flops(cfg, [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in b])
                      + projection_flops(cfg, sum(len(p.chosen_ids) + len(p.rejected_ids) for p in b)))
                 for b in batches]

        def step(pairs):
            run.state = run.update(run.state, pairs)[0]

        return _timed(batches, step, flops, peak)
    # SELF-JUDGE: whole steps, each phase timed by the loop itself
    from benchmarks.common import read_bandwidth

    bw = read_bandwidth()
    rows, floors = [], {"sample": [], "judge": [], "step": []}
    plist = as_principles(None, template)
    t_run = []
    for i in range(steps):
        t0 = time.perf_counter()
        run.state, row = run.step(i, run.state)
        t_run.append(time.perf_counter() - t0)
        rows.append(row)
        rec = run.last
        prompts = [run.prompt_ids[j] for j in rec.prompt_index]
        new = max(len(c.token_ids) for cands in rec.candidates for c in cands)
        rows_n = len(prompts) * sc.num_samples
        per_token = layer_flops(cfg, [1]) + projection_flops(cfg, 1)
        decode = new * max(2 * rows_n * per_token / 2 / peak, cfg.num_params * 4 / bw)
        floors["sample"].append(sc.num_samples * (layer_flops(cfg, [len(p) for p in prompts])
                                                  + projection_flops(cfg, len(prompts))) / peak + decode)
        judged = [(k, c) for k, c in enumerate(rec.choices) if c.skipped is None and c.decided_by == "judge"]
        texts = [(run.contexts[rec.prompt_index[k]], rec.candidates[k][c.chosen].text,
                  rec.candidates[k][c.rejected].text) for k, c in judged]
        jp = judge_prompts(model, *zip(*texts), template, plist) if texts else []
        floors["judge"].append((layer_flops(cfg, [len(p) for p in jp]) + projection_flops(cfg, len(jp))) / peak)
        floors["step"].append(3 * (layer_flops(cfg, [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids)
                                                    for p in rec.pairs])
                                   + projection_flops(cfg, sum(len(p.chosen_ids) + len(p.rejected_ids)
                                                               for p in rec.pairs))) / peak if rec.pairs else 0.0)
    phases = {ph: {"run_s": statistics.mean(r[f"time/{ph}_s"] for r in rows if f"time/{ph}_s" in r),
                   "floor_s": statistics.mean(floors[ph])} for ph in ("sample", "judge", "step")}
    floor = sum(p["floor_s"] for p in phases.values())
    return {"run_s": statistics.mean(t_run), "compiled_s": None, "floor_s": floor,
            "programs": int(rows[-1].get("step_programs", 0)) or None, "phases": phases,
            "run_over_floor": statistics.mean(t_run) / floor}


def _timed(batches: list, step, flops: list[float], peak: float) -> dict:
    """Run each batch once as a run would (compiles included), then each again compiled."""
    first = []
    for b in batches:
        t0 = time.perf_counter()
        step(b)
        first.append(time.perf_counter() - t0)
    again = []
    for b in batches:
        t0 = time.perf_counter()
        step(b)
        again.append(time.perf_counter() - t0)
    # each array's shape (not `steps.batch_shape`, so the script also times older trees of sj_jax)
    shapes = ({tuple((k, v.shape) for k, v in sorted(b.items())) for b in batches}
              if isinstance(batches[0], dict) else None)
    floor = statistics.mean(flops) / peak
    return {"run_s": statistics.mean(first), "compiled_s": statistics.median(again), "floor_s": floor,
            "programs": len(shapes) if shapes is not None else None,
            "run_over_floor": statistics.mean(first) / floor, "compiled_over_floor": statistics.median(again) / floor}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--kinds", default="sft,jsft,dpo,self_judge")
    ap.add_argument("--json")
    args = ap.parse_args()

    import jax

    import sj_jax
    from sj_jax.core.cache import configure_caches
    from sj_jax.core.machine import matmul_gflops
    from sj_jax.experiments.demo_config import DEMO_TEMPLATE
    from sj_jax.weights.registry import DEFAULT_MODEL

    peak = matmul_gflops(repeats=10) * 1e9
    print(f"float32 matmul: {peak / 1e9:.1f} GFLOP/s on {jax.devices()[0]} ({os.cpu_count()} cores)", flush=True)
    configure_caches("off")  # every new shape compiles, as on a fresh machine
    model = sj_jax.load_model(DEFAULT_MODEL)
    data = build_data(Path(tempfile.mkdtemp(prefix="bench_steps_")), DEMO_TEMPLATE)
    results = {"matmul_gflops": peak / 1e9, "steps": args.steps, "kinds": {}}
    for kind in args.kinds.split(","):
        t0 = time.perf_counter()
        if kind in ("sft", "jsft"):
            r = bench_train(kind, model, data, DEMO_TEMPLATE, args.steps, peak)
        elif kind == "dpo":
            r = bench_dpo(model, data, DEMO_TEMPLATE, args.steps, peak, "offline")
        elif kind == "self_judge":
            r = bench_dpo(model, data, DEMO_TEMPLATE, args.steps, peak, "on_policy")
        else:
            sys.exit(f"--kinds: unknown kind {kind!r}")
        results["kinds"][kind] = r
        print(f"{kind}: {json.dumps(r)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\n{'kind':11s} {'run s/step':>11s} {'compiled s':>11s} {'floor s':>8s} {'run/floor':>10s} "
          f"{'compiled/floor':>15s} {'programs':>9s}")
    for kind, r in results["kinds"].items():
        comp = f"{r['compiled_s']:.2f}" if r.get("compiled_s") else "-"
        cof = f"{r['compiled_over_floor']:.2f}" if r.get("compiled_over_floor") else "-"
        print(f"{kind:11s} {r['run_s']:11.2f} {comp:>11s} {r['floor_s']:8.2f} {r['run_over_floor']:10.2f} "
              f"{cof:>15s} {str(r['programs']):>9s}")
        for ph, p in r.get("phases", {}).items():
            ratio = p["run_s"] / max(p["floor_s"], 1e-9)
            print(f"  {ph:9s} {p['run_s']:11.2f} {'':>11s} {p['floor_s']:8.2f} {ratio:10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
