"""The demo's plan: its stages in the order they run, each one's rough cost, and where each writes.
The demo runs it (`sj_jax.experiments.demo`) and its report reads it (`sj_jax.experiments.demo_report`)."""

from __future__ import annotations

from pathlib import Path

from sj_jax.experiments.demo_config import DemoConfig

# Stage 3, in this order: the three ways of training from JSFT, and SELF-JUDGE with the checker as
# its judge ("oracle": a diagnostic ceiling, not a method: what a perfect judge would give the loop).
VARIANTS = ("offline", "off_policy", "on_policy", "oracle")
BASE_POLICIES = ("base", "sft", "jsft")
METHODS = BASE_POLICIES + VARIANTS
TOURNAMENT_POLICIES = ("jsft", "on_policy")
JUDGES = ("base", "jsft")


def seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed{seed}"


def own_pairs_file(out: Path) -> Path:
    """The held-out own-sample pairs the judges stage makes (test prompts, the JSFT policy's answers)."""
    return out / "judges" / "own_pairs_test.jsonl"


def judge_eval_dir(out: Path, cfg: DemoConfig) -> Path:
    """Where the judges' results on `cfg.judge_eval` lie: one folder per file, named by its stem."""
    return out / "judges" / f"eval_{Path(cfg.judge_eval).stem}"


def plan(cfg: DemoConfig) -> dict[str, float]:
    """Each stage's rough cost (seconds on a 200 GFLOP/s 2-core machine, compiles included, as
    measured there), for the demo's ETA: the measured pace of the stages run so far scales it."""
    e, p = cfg.eval, cfg.self_judge
    step = {"sft": 2.0, "jsft": 3.5}
    plan = {"data": 8.0}
    own = cfg.data.own_samples
    for kind in ("sft", "jsft"):
        t = getattr(cfg, kind)
        if kind == "jsft" and own.enabled:  # samples of 32 tokens about 0.04 s each in batches of 64
            plan["judge data"] = 20 + own.problems * own.samples * own.max_new_tokens / 32 * 0.04
        plan[kind] = 30 + t.steps * step[kind] * t.batch_size / 8
    families = len(cfg.data.tasks.families)
    greedy = 20 + e.test_limit * families * 0.002 * e.max_new_tokens  # one policy's test rows
    plan["eval base"] = 3 * greedy
    own_pairs = e.own_pairs_limit * families
    plan["judges"] = 2 * (15 + 0.3 * e.judge_limit * families) + own_pairs * (e.own_pairs_samples * 0.04 + 0.6)
    if cfg.judge_eval:
        plan["judge eval"] = 90.0
    t = cfg.self_taught
    if t.enabled:  # as measured alone: judgments about 1 a second on 2 cores, eval files in both modes
        evals = (t.iterations + 1) * (2 * e.judge_limit * families * 1.2 + (300.0 if cfg.judge_eval else 0.0))
        plan["self-taught"] = 200 + evals + t.iterations * (2 * t.instructions * t.annotate.samples * 0.6 + 180
                                                             + 60 * t.train.epochs)
    per_prompt = 0.3 * max(e.tournament_n) + 0.15 * (max(e.tournament_n) - 1)  # samples, then judgments
    for k in range(cfg.seeds):
        seed = cfg.seed + k
        rate = p.batch_size / 8
        plan[f"offline (seed {seed})"] = 20 + p.steps * 4 * rate
        plan[f"off_policy (seed {seed})"] = 30 + p.steps * 10 * rate
        plan[f"on_policy (seed {seed})"] = 30 + p.steps * 12 * rate
        plan[f"oracle (seed {seed})"] = 30 + p.steps * 8 * rate
        plan[f"eval (seed {seed})"] = len(VARIANTS) * greedy + 2 * (30 + per_prompt * e.tournament_limit * families)
    return plan
