"""One SELF-JUDGE step on SmolLM2-135M-Instruct, float32, CPU: sj_jax against the reference composition.

    python -m benchmarks.self_judge_step [--prompts 16] [--new 64] [--rounds 4] [--json out.json]

The work (both sides): `prompts` task-suite prompts a step (the same ones every step), N = 2 samples
each at T 1.0 / top-p 0.9 up to `new` tokens, the pair judged by the frozen initial model in both
orders (the default judge template), one full-weight DPO step (sigmoid, beta 0.1, AdamW lr 1e-6,
clip 1) against that frozen model as reference. Fresh samples every step on both sides.

- sj_jax: `SelfJudgeRun.step` (its own phase timers): the KV-cached sampler, `judge_pairs` with the
  shared-prefix cache, the jitted DPO step on the sampled ids (padded to static buckets).
- the peer, built as oddqueue/self-judge does it: transformers `generate` (num_return_sequences 2),
  a PyTorch forward of the judge prompts reading p(" A") and p(" B") at the last position (both
  orders averaged), and TRL's DPOTrainer loss and optimizer step (`benchmarks.trl_dpo`) on the
  sampled ids (the reference implementation decodes, appends EOS and re-tokenises; handing TRL the ids
  is the same work or less). Nothing is skipped on either side: cut and identical samples are trained.

Each side lives in its own process, and the two are stepped in alternation (`benchmarks.common`) after warm-up steps
(compiles, allocator growth), medians printed per phase, with each phase's ratio and the step's last.
Each phase's floor is printed beside it: its model FLOPs at the measured JAX matmul peak (the decode
floor is the weight read at the measured memory bandwidth, the larger of the two).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

PHASES = ("sample", "judge", "step")


def task_prompts(n: int) -> list[dict]:
    """`n` training prompts of the task suite, spread over its families (deterministic)."""
    from sj_jax.tasks.suite import TaskSuiteConfig, build_split

    rows = build_split(TaskSuiteConfig(train=max(4, n)), "train").rows
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    out, k = [], 0
    while len(out) < n:
        for t in sorted(by_task):
            if k < len(by_task[t]) and len(out) < n:
                out.append(by_task[t][k])
        k += 1
    return out


# -- sj_jax's side ----------------------------------------------------------------------------------

class SJSide:
    def __init__(self, prompts: list[dict], new: int):
        import sj_jax
        from sj_jax.algorithms.self_judge import SelfJudgeRun
        from sj_jax.algorithms.self_judge_config import SelfJudgeConfig
        from sj_jax.core.config import from_dict

        self.dir = tempfile.TemporaryDirectory(prefix="sj_bench_")
        path = os.path.join(self.dir.name, "prompts.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in prompts)
        cfg = from_dict(SelfJudgeConfig, {
            "output_dir": os.path.join(self.dir.name, "run"), "prompts_file": path, "batch_size": len(prompts),
            "num_samples": 2, "sampling": {"max_new_tokens": new, "temperature": 1.0, "top_p": 0.9},
            "degenerate": {"empty": "lose", "truncated": "keep", "identical": "keep"},
            "validation": {"file": ""}, "lora": {"enabled": False},
            "optim": {"learning_rate": 1e-6, "schedule": "constant", "warmup_steps": 0, "clip_norm": 1.0}})
        self.run = SelfJudgeRun(cfg, model=sj_jax.load_model(cfg.model))
        self.state, self.i = self.run.state, 0

    def step(self) -> dict:
        self.state, row = self.run.step(self.i, self.state)
        self.i += 1
        return {"sample": row["time/sample_s"], "judge": row["time/judge_s"], "step": row["time/step_s"],
                "pairs": row["pairs"], "loss": row.get("loss"), **self.work()}

    def work(self) -> dict:
        """The step's token counts: prompts, sampled tokens, the judge's (shared prefix once, both
        orders' rests), the DPO batch's real tokens and its padded shape."""
        from sj_jax.inference.kv_cache import common_prefix_len
        from sj_jax.judge.scoring import judge_prompts
        from sj_jax.judge.template import as_principles

        run, rec = self.run, self.run.last
        texts = [[c.text for c in cs] for cs in rec.candidates]
        judged = [k for k, t in enumerate(texts) if t[0].strip() and t[1].strip()]
        jp = judge_prompts(run.model, [run.contexts[rec.prompt_index[k]] for k in judged],
                           [texts[k][0] for k in judged], [texts[k][1] for k in judged], run.cfg.judge,
                           as_principles(None, run.cfg.judge))
        judge_tokens = sum(len(a) + len(b) - common_prefix_len([a, b]) for a, b in zip(jp[::2], jp[1::2]))
        return {"prompt_tokens": sum(len(run.prompt_ids[i]) for i in rec.prompt_index),
                "new_tokens": sum(len(c.token_ids) for cs in rec.candidates for c in cs),
                "judge_tokens": judge_tokens,
                "dpo_tokens": sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in rec.pairs),
                "dpo_shape": list(rec.batch["input_ids"].shape) if rec.batch is not None else None}


# -- the peer: transformers generate, a PyTorch verdict, TRL's DPO step ------------------------------

class PeerSide:
    def __init__(self, prompts: list[dict], new: int, threads: int):
        import torch

        from benchmarks.trl_dpo import TRLDPOStep, load_torch_model_and_tokenizer
        from sj_jax.data.chat import context_text

        torch.set_num_threads(threads)
        self.torch = torch
        self.policy, self.tok = load_torch_model_and_tokenizer()
        self.new = new
        self.contexts = [context_text(r["prompt"]) for r in prompts]
        self.prompt_ids = [self.tok.apply_chat_template([{"role": "user", "content": r["prompt"]}],
                                                        add_generation_prompt=True, tokenize=True,
                                                        return_dict=True)["input_ids"] for r in prompts]
        self.eot = {self.tok.convert_tokens_to_ids("<|im_end|>"), self.tok.eos_token_id}
        # TRLDPOStep keeps a frozen deep copy as the reference; the same frozen model judges. Its
        # constructor checks its collated batch on equal-length pairs; the steps then bring their own.
        first = self.prompt_ids[0]
        seed_pairs = [{"prompt_ids": first, "chosen_ids": [1, 2], "rejected_ids": [3, 2]} for _ in self.prompt_ids]
        self.trl = TRLDPOStep(self.policy, self.tok, seed_pairs, threads=threads)
        self.judge_model = self.trl.trainer.ref_model
        self.model = self.trl.model
        self.gen = torch.Generator().manual_seed(0)

    def sample(self) -> list[list[list[int]]]:
        torch = self.torch
        width = max(len(p) for p in self.prompt_ids)
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in self.prompt_ids])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in self.prompt_ids])
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=0.9,
                                      top_k=0, max_new_tokens=self.new, num_return_sequences=2, pad_token_id=pad)
        res = []
        for i in range(len(self.prompt_ids)):
            two = []
            for j in range(2):
                row = out[2 * i + j, width:].tolist()
                end = next((k for k, t in enumerate(row) if t in self.eot), None)
                two.append(row if end is None else row[:end + 1])
            res.append(two)
        return res

    def judge(self, samples) -> list[tuple[int, int]]:
        from benchmarks.judge import torch_judge

        texts = [[self.tok.decode(s, skip_special_tokens=True) for s in two] for two in samples]
        probs = torch_judge(self.judge_model, self.tok, self.contexts, [t[0] for t in texts], [t[1] for t in texts],
                            batch=16)
        score_a = (probs[:, 0, 0] + probs[:, 1, 1]) / 2
        score_b = (probs[:, 0, 1] + probs[:, 1, 0]) / 2
        return [(0, 1) if a >= b else (1, 0) for a, b in zip(score_a, score_b)]

    def dpo(self, samples, order) -> float:
        t = self.trl.trainer
        pairs = [{"prompt_ids": p, "chosen_ids": s[c], "rejected_ids": s[r]}
                 for p, s, (c, r) in zip(self.prompt_ids, samples, order)]
        batches, num_items = t.get_batch_samples(iter([t.data_collator(pairs)]), 1, t.args.device)
        t.current_gradient_accumulation_steps = 1
        loss = t.training_step(self.model, batches[0], num_items)
        t._clip_grad_norm(self.model)
        t.optimizer.step()
        t.lr_scheduler.step()
        self.model.zero_grad()
        t._metrics["train"].clear()
        return float(loss)

    def step(self) -> dict:
        t0 = time.perf_counter()
        samples = self.sample()
        t1 = time.perf_counter()
        order = self.judge(samples)
        t2 = time.perf_counter()
        loss = self.dpo(samples, order)
        t3 = time.perf_counter()
        return {"sample": t1 - t0, "judge": t2 - t1, "step": t3 - t2,
                "new_tokens": sum(len(s) for two in samples for s in two), "pairs": len(samples), "loss": loss}


def build_side(side: str, n: int, new: int, threads: int):
    """A side in its own process: (info, {"step": one SELF-JUDGE step, returning its phase seconds});
    sj_jax's info holds its model's config (for the floors)."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    prompts = task_prompts(n)
    if side == "sj_jax":
        runner = SJSide(prompts, new)
        return {"config": runner.run.model.config}, {"step": runner.step}
    return {}, {"step": PeerSide(prompts, new, threads).step}


def floors(cfg, n: int, new: int, work: dict, machine: dict) -> dict[str, float]:
    """Each phase's lower bound in seconds on this machine, for sj_jax's median work (token counts
    from `SJSide.work`) on a model of config `cfg`: its model FLOPs at the measured matmul peak; a
    decode step also reads every weight once, at the measured memory bandwidth, whichever is slower.
    machine: `common.machine()`."""
    from benchmarks.common import forward_flops

    peak, bw = machine["matmul_gflops"] * 1e9, machine["read_GBps"] * 1e9
    per_token = forward_flops(cfg, 1, 1)
    decode_step = max(2 * n * per_token / peak, cfg.num_params * 4 / bw)
    return {"matmul_gflops": peak / 1e9, "read_GBps": bw / 1e9, "device": machine["device"],
            "sample": 2 * work["prompt_tokens"] * per_token / peak + decode_step * new,
            "judge": work["judge_tokens"] * per_token / peak,
            # policy forward + backward (3x) and the reference forward (1x), over the pairs' real tokens
            "step": 4 * work["dpo_tokens"] * per_token / peak}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from benchmarks.common import Sides, machine, print_machine, quiet_check, stats

    m = machine()
    print_machine(m)
    build = {side: (build_side, (side, args.prompts, args.new, args.threads)) for side in ("sj_jax", "peer")}
    with Sides(build) as sides:
        cfg = sides.info["sj_jax"]["config"]
        for _ in range(args.warmup):
            for side in ("sj_jax", "peer"):
                sides.call(side, "step")
        runs: dict[str, list[dict]] = {"sj_jax": [], "peer": []}
        for _ in range(args.rounds):
            for side in runs:
                runs[side].append(sides.call(side, "step")[1])
    quiet_check(m)
    med = {s: {ph: statistics.median(r[ph] for r in rs) for ph in PHASES} for s, rs in runs.items()}
    for s in med:
        med[s]["total"] = sum(med[s][ph] for ph in PHASES)
        med[s]["new_tokens"] = statistics.median(r["new_tokens"] for r in runs[s])
    work = {k: statistics.median(r[k] for r in runs["sj_jax"]) for k in
            ("prompt_tokens", "new_tokens", "judge_tokens", "dpo_tokens")}
    shape = runs["sj_jax"][-1]["dpo_shape"]
    fl = floors(cfg, args.prompts, args.new, work, m)
    res = {"machine": m,
           "work": f"SELF-JUDGE step, SmolLM2-135M float32, {args.prompts} prompts x N=2, up to {args.new} new tokens, "
                   "judge both orders, full-weight DPO (beta 0.1)",
           "medians_s": med, "runs": runs,
           "seconds": {s: stats([sum(r[ph] for ph in PHASES) for r in rs]) for s, rs in runs.items()},
           "floors_s": fl, "sj_jax_work_tokens": work,
           "ratios": {ph: med["peer"][ph] / med["sj_jax"][ph] for ph in PHASES + ("total",)}}
    print(res["work"] + f"  ({fl['device']}; JAX float32 matmul {fl['matmul_gflops']:.0f} GFLOP/s, "
                        f"read {fl['read_GBps']:.1f} GB/s; each side in its own process, stepped in alternation)")
    print(f"  {'phase':8s} {'sj_jax s':>9s} {'peer s':>9s} {'ratio':>7s} {'floor s':>8s}")
    for ph in PHASES:
        print(f"  {ph:8s} {med['sj_jax'][ph]:9.2f} {med['peer'][ph]:9.2f} {res['ratios'][ph]:6.2f}x {fl[ph]:8.2f}")
    print(f"  new tokens sampled a step (median): sj_jax {med['sj_jax']['new_tokens']:.0f}, "
          f"peer {med['peer']['new_tokens']:.0f}; sj_jax's judge ran {work['judge_tokens']:.0f} tokens, its DPO "
          f"step {work['dpo_tokens']:.0f} real tokens in a padded batch {shape}")
    print(f"  step     {med['sj_jax']['total']:9.2f} {med['peer']['total']:9.2f} {res['ratios']['total']:6.2f}x "
          f"{sum(fl[ph] for ph in PHASES):8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
