"""The SELF-JUDGE loop (SPEC 1.3): sample from the current policy, judge with the frozen JSFT model, DPO.

One full copy of the weights serves policy, reference and judge: `frozen` is the initial model (with
LoRA, the base weights with the adapter off), the DPO reference and, by default, the judge; the
policy is `frozen` plus the trained adapter (or, without LoRA, a trained copy). Each step:

1. the next `batch_size` prompts of the prompt file (shuffled epochs, resumable position);
2. `num_samples` responses per prompt from the current policy's weights through the KV-cached
   sampler, each row keyed by (seed, step, prompt, sample), so a resumed run draws the same samples;
3. `sj_jax.algorithms.pairs.choose_pairs`: the degenerate-sample rules, then the judge (both orders,
   every principle) on the decoded texts;
4. one jitted DPO step on the sampled token ids themselves (never decoded and re-encoded), the
   batch padded to `batch_size` pairs with zero-weight rows so every step has one compiled shape;
5. metrics: loss and TRL's reward metrics, the judge's margin and swap consistency, response
   lengths, the fraction stopped at end of turn, skipped pairs by reason, a KL estimate, the time of
   each phase, and every `validation.every` steps the greedy accuracy on the validation split.

The ablations change one thing each: `judge_model: policy` judges with the current weights;
`samples: off_policy` draws from the initial model, each prompt's samples keyed by the prompt
alone (so a prompt seen again gets the same samples: drawn once); `samples: offline` trains on a
fixed file of pairs and samples nothing. Checkpoints, metrics, preemption and the NaN policy are the
trainer's (`sj_jax.train.loop`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sj_jax.algorithms.pairs import SKIP_REASONS, Candidate, PairChoice, checker_pairs, choose_pairs, defect
from sj_jax.algorithms.self_judge_config import SelfJudgeConfig
from sj_jax.core.config import save_yaml, to_dict
from sj_jax.core.distributed import gather_from_processes, is_primary
from sj_jax.core.errors import ConfigError, SJError
from sj_jax.data.batches import EpochIterator, collate_pairs, collate_pairs_joint
from sj_jax.data.chat import context_text
from sj_jax.data.examples import PairExample, pair_example
from sj_jax.data.shares import Examples, file_rows
from sj_jax.evaluation.accuracy import policy_accuracy
from sj_jax.evaluation.eval_tasks import read_rows
from sj_jax.inference.generate import encode_prompts, generate
from sj_jax.judge.generative import GenerativeJudgments, judge_generative
from sj_jax.judge.scoring import Judgments, judge_pairs_detailed
from sj_jax.loading.model import Model, load_model
from sj_jax.models import lora
from sj_jax.models.sharding import make_mesh
from sj_jax.tasks.families import FAMILIES, check
from sj_jax.train.loop import run_loop
from sj_jax.train.metrics import read_metrics, write_report
from sj_jax.train.optim import make_optimizer
from sj_jax.train.steps import StepSpec, as_param_dtype, batch_shape, mesh_shardings, place_batch, shared_step
from sj_jax.train.trainer import init_state
from sj_jax.weights.checkpoint import Checkpointer
from sj_jax.weights.tokenizer import end_of_turn_ids

_SALTS = {"sample": 1, "off_policy": 2, "pairs": 3, "judge": 4}
PLOTTED = ("loss", "rewards/margins", "rewards/accuracies", "judge/margin", "samples/length_mean",
           "samples/eos_fraction", "kl_estimate", "val/accuracy")


def step_seed(seed: int, step: int, what: str) -> int:
    """A sampling or shuffling seed in [0, 2^31) that depends only on (run seed, step, purpose)."""
    return int(np.random.SeedSequence([seed, step, _SALTS[what]]).generate_state(1)[0] >> 1)


@dataclasses.dataclass
class StepRecord:
    """What the last step drew and trained, on the host: for inspection, debugging and tests."""

    step: int
    prompt_index: list[int]
    candidates: list[list[Candidate]]
    choices: list[PairChoice]
    pairs: list[PairExample]
    batch: dict[str, np.ndarray] | None  # the DPO batch, micro-batch axis first (see `update`)
    response_len: int | None


@dataclasses.dataclass
class SelfJudgeResult:
    steps: int
    last_loss: float
    metrics_file: Path
    report: Path | None
    preempted: bool = False


class SelfJudgeRun:
    """A SELF-JUDGE run: everything loaded, the state initialised; `run()` trains (or resumes)."""

    def __init__(self, cfg: SelfJudgeConfig, *, model: Model | None = None):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if is_primary():  # process 0 writes the run's files; every process samples, judges and trains its share
            save_yaml(cfg, self.out / "config.yaml")
        if model is None:
            model = load_model(cfg.model, dtype=cfg.dtype, param_dtype=cfg.param_dtype, mesh=make_mesh(cfg.mesh),
                               remat=cfg.remat)
        if model.tokenizer is None:
            raise ConfigError("model: SELF-JUDGE needs a tokenizer (prompts, the judge's template, decoding)")
        self.model, self.tok = model, model.tokenizer
        limit = model.config.max_position_embeddings
        if cfg.max_prompt_length + cfg.sampling.max_new_tokens > limit:
            raise ConfigError(f"max_prompt_length + sampling.max_new_tokens: {cfg.max_prompt_length} + "
                              f"{cfg.sampling.max_new_tokens} exceeds the model's {limit} positions")
        self.stop_ids = end_of_turn_ids(self.tok)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.stop_ids[0]
        self.data_report = self._load_data()
        if is_primary():
            (self.out / "data_report.json").write_text(json.dumps(self.data_report, indent=1))
        n = len(self.pairs) if cfg.samples == "offline" else len(self.prompt_ids)
        if n < cfg.batch_size:
            raise ConfigError(f"batch_size: {cfg.batch_size} prompts a step, but only {n} usable rows in "
                              f"{cfg.offline_file if cfg.samples == 'offline' else cfg.prompts_file}")
        self.it = EpochIterator(n, cfg.batch_size, cfg.seed, shuffle=True)
        self.total = cfg.steps or int(cfg.epochs * self.it.steps_per_epoch)
        self.state, self.frozen = init_state("dpo", cfg, model, make_optimizer(cfg.optim, self.total)[0])
        self.spec = StepSpec("dpo", model.config, cfg.lora, cfg.dpo, cfg.logprob_chunk)
        self._merge = (lora.jitted_merge(cfg.lora, mesh_shardings(self.frozen, model.mesh)) if cfg.lora.enabled
                       else None)
        self._cast = (jax.jit(functools.partial(as_param_dtype, model.config)) if model.config.param_dtype != "float32"
                      else lambda params: params)
        v = cfg.validation
        self.val_rows = read_rows(v.file, ("prompt", "answer", "task"), v.limit) if v.file else []
        self.judge = None  # a judge of its own (judge_model a path), loaded once
        if cfg.judge_model not in ("frozen", "policy", "checker"):
            self.judge = load_model(cfg.judge_model, dtype=cfg.dtype, mesh=model.mesh)
            if self.judge.tokenizer is None:
                raise ConfigError(f"judge_model: {cfg.judge_model} has no tokenizer to render the judge's prompt")
        self.last: StepRecord | None = None
        self._shapes: set[tuple] = set()  # the padded DPO batch shapes met so far: one compiled program each

    def _load_data(self) -> dict:
        cfg = self.cfg
        if cfg.samples == "offline":
            def build(row, where, report):
                return pair_example(self.tok, row, where, cfg.max_prompt_length, cfg.sampling.max_new_tokens, report)

            self.pairs = Examples(file_rows(cfg.offline_file), build, index=jax.process_index(),
                                  count=jax.process_count(), gather=gather_from_processes)
            return {"file": cfg.offline_file, **self.pairs.report.as_dict()}
        rows = read_rows(cfg.prompts_file, ("prompt",), 0)
        ids = encode_prompts(self.model, [r["prompt"] for r in rows], chat=True)
        keep = [i for i, x in enumerate(ids) if len(x) <= cfg.max_prompt_length]
        self.prompt_ids = [ids[i] for i in keep]
        self.contexts = [context_text(rows[i]["prompt"]) for i in keep]
        # Task-suite rows carry their answer: every sample is then checked, and the judge's verdicts
        # on pairs with exactly one correct sample are scored (measured, never used for training).
        self.answers = [(rows[i]["task"], rows[i]["answer"]) if _checkable(rows[i]) else None for i in keep]
        if cfg.judge_model == "checker" and not all(self.answers):  # before any state is built
            missing = sum(1 for a in self.answers if a is None)
            raise ConfigError(f"judge_model: checker needs task-suite prompts (rows with a task and an answer); "
                              f"{missing} of {len(self.answers)} usable rows of {cfg.prompts_file} have none")
        return {"file": cfg.prompts_file, "rows": len(rows), "prompts": len(keep),
                "dropped_too_long": len(rows) - len(keep)}

    # -- the weights each phase uses ------------------------------------------------------------

    def policy_params(self, state: dict) -> dict:
        """The current policy: the frozen base with the trained adapter merged, or the trained copy."""
        if self._merge is not None:
            return self._merge(self.frozen, state["params"])
        return self._cast(state["params"])  # the float32 master as the sampler's param_dtype

    def _with(self, params: dict) -> Model:
        return dataclasses.replace(self.model, params=params)

    # -- the phases of a step -----------------------------------------------------------------

    def draw(self, step: int, idx: list[int], policy: dict) -> list[list[Candidate]]:
        """`num_samples` candidates for each prompt index, from `policy` (on-policy) or the initial model."""
        cfg, s = self.cfg, self.cfg.sampling
        if cfg.samples == "on_policy":
            params, seed, keys = policy, step_seed(cfg.seed, step, "sample"), None
        else:  # keyed by the prompt alone: a prompt met again in a later epoch gets the same samples
            params, seed, keys = self.frozen, step_seed(cfg.seed, 0, "off_policy"), idx
        g = generate(self._with(params), [self.prompt_ids[i] for i in idx], max_new_tokens=s.max_new_tokens,
                     temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, num_samples=cfg.num_samples, seed=seed,
                     stop=self.stop_ids, batch_size=s.batch_size, key_ids=keys)
        return [[Candidate(g.texts[r][j], tuple(g.token_ids[r][j]), g.finished[r][j]) for j in range(cfg.num_samples)]
                for r in range(len(idx))]

    def judge_model(self, policy: dict) -> Model:
        """The judge: the frozen initial model, (`judge_model: policy`) the current weights, or a model of its own."""
        if self.judge is not None:
            return self.judge
        return self._with(self.frozen if self.cfg.judge_model == "frozen" else policy)

    def choose(self, step: int, idx: list[int], candidates: list[list[Candidate]],
               policy: dict) -> tuple[list[PairChoice], list[Judgments | GenerativeJudgments]]:
        cfg = self.cfg
        if cfg.judge_model == "checker":  # the oracle ceiling: no model judges
            answers = [self.answers[i] for i in idx]
            return checker_pairs(candidates, lambda k, text: check(*answers[k], text),
                                 seed=step_seed(cfg.seed, step, "pairs")), []
        judge = self.judge_model(policy)
        seen: list[Judgments] = []

        def decide(contexts, a, b):
            if cfg.judge_mode == "generative":  # each call of a step keyed by its place in the step
                j = judge_generative(judge, contexts, a, b, template=cfg.generative, samples=cfg.judge_samples,
                                     temperature=cfg.judge_temperature, top_p=cfg.sampling.top_p,
                                     seed=step_seed(cfg.seed, step, "judge") + len(seen),
                                     batch_size=cfg.sampling.batch_size)
            else:
                j = judge_pairs_detailed(judge, contexts, a, b, template=cfg.judge, principles=cfg.principle_list,
                                         batch_size=cfg.judge_batch_size)
            seen.append(j)
            return j.prob_first

        choices = choose_pairs([self.contexts[i] for i in idx], candidates, decide, rules=cfg.degenerate,
                               pairing=cfg.pairing, seed=step_seed(cfg.seed, step, "pairs"))
        return choices, seen

    def update(self, state: dict, pairs: list[PairExample]) -> tuple[dict, dict, dict, int]:
        """One DPO step on `pairs`, padded to `batch_size` with zero-weight copies of the first.
        Returns (state, metrics, the batch on the host, its response length R). The batch is
        `[1, batch_size, T]` (`pair_layout: joint`) or `[1, batch_size, 2, P + R]`, with
        pair_weight `[1, batch_size]`."""
        cfg = self.cfg
        b = cfg.batch_size
        collate = collate_pairs_joint if cfg.pair_layout == "joint" else collate_pairs
        batch, r = collate(pairs + [pairs[0]] * (b - len(pairs)), cfg.max_prompt_length, cfg.sampling.max_new_tokens,
                           self.pad_id)
        batch["pair_weight"] = (np.arange(b) < len(pairs)).astype(np.float32)
        host = {k: v[None] for k, v in batch.items()}  # one micro-batch
        batch = place_batch(self.model.mesh, host)
        fn = shared_step(dataclasses.replace(self.spec, response_len=r), cfg.optim, self.total, self.model.mesh,
                         state, self.frozen, batch)
        state, metrics = fn(state, self.frozen, batch)
        self._shapes.add(batch_shape(host))
        metrics = {**jax.device_get(metrics), "step_programs": len(self._shapes)}
        return state, {k: float(v) for k, v in metrics.items()}, host, r

    def validate(self, policy: dict) -> dict[str, float]:
        """Greedy accuracy of `policy` on the validation rows: overall (strict and lenient) and by task."""
        v = self.cfg.validation
        ev = policy_accuracy(self._with(policy), self.val_rows, max_new_tokens=v.max_new_tokens,
                             batch_size=self.cfg.sampling.batch_size)
        table = ev.table("task")
        out = {"val/accuracy": table["all"]["accuracy"], "val/answer_accuracy": table["all"]["answer_accuracy"]}
        out.update({f"val/{task}/accuracy": t["accuracy"] for task, t in table.items() if task != "all"})
        return out

    def _verified(self, idx: list[int], candidates: list[list[Candidate]],
                  choices: list[PairChoice]) -> dict[str, float]:
        """On checkable prompts: the fraction of correct samples, the judged pairs with exactly one
        correct sample (`judge/verified_pairs`) and how many of them the judge got right."""
        known = [(k, self.answers[i]) for k, i in enumerate(idx) if self.answers[i] is not None]
        if not known:
            return {}
        ok = {k: [check(task, answer, c.text) for c in candidates[k]] for k, (task, answer) in known}
        pairs = [(ok[k][c.chosen], ok[k][c.rejected]) for k, _ in known
                 for c in [choices[k]] if c.skipped is None and c.decided_by == "judge"]
        one = [w for w, lose in pairs if w != lose]
        return {"samples/accuracy": float(np.mean([x for v in ok.values() for x in v])),
                "judge/verified_pairs": float(len(one)), "judge/verified_correct": float(sum(one))}

    def step(self, step: int, state: dict) -> tuple[dict, dict]:
        """Loop step `step` (0-based) from `state`: (new state, its metrics row)."""
        cfg = self.cfg
        idx = [int(i) for i in self.it.next()]
        t0 = time.perf_counter()
        policy = self.policy_params(state)
        row: dict[str, Any] = {}
        candidates: list[list[Candidate]] = []
        choices: list[PairChoice] = []
        if cfg.samples == "offline":
            pairs = [self.pairs[i] for i in idx]
        else:
            candidates = self.draw(step, idx, policy)
            t1 = time.perf_counter()
            choices, judgments = self.choose(step, idx, candidates, policy)
            t2 = time.perf_counter()
            pairs = [PairExample(np.asarray(self.prompt_ids[i], np.int32),
                                 np.asarray(candidates[k][c.chosen].token_ids, np.int32),
                                 np.asarray(candidates[k][c.rejected].token_ids, np.int32))
                     for k, (i, c) in enumerate(zip(idx, choices)) if c.skipped is None]
            row.update(_sample_metrics(candidates, cfg), **_judge_metrics(judgments, choices),
                       **self._verified(idx, candidates, choices),
                       **{"time/sample_s": t1 - t0, "time/judge_s": t2 - t1})
        t3 = time.perf_counter()
        batch, r = None, None
        row["pairs"] = len(pairs)
        if pairs:
            state, metrics, batch, r = self.update(state, pairs)
            row.update(metrics, updated=1)
            if cfg.samples == "on_policy":
                # E_{y ~ policy}[log policy(y) - log ref(y)], sequence level, from both trained samples (nats)
                row["kl_estimate"] = (metrics["rewards/chosen"] + metrics["rewards/rejected"]) / (2 * cfg.dpo.beta)
        else:
            row["updated"] = 0
            if is_primary():
                print(f"step {step + 1}: every pair was skipped ({_skips(choices)}); no update", file=sys.stderr)
        row["time/step_s"] = time.perf_counter() - t3
        row["time/total_s"] = time.perf_counter() - t0
        every = cfg.validation.every
        if self.val_rows and ((every and (step + 1) % every == 0) or step + 1 == self.total):
            row.update(self.validate(self.policy_params(state)))
        self.last = StepRecord(step, idx, candidates, choices, pairs,
                               None if batch is None else {k: np.asarray(v) for k, v in batch.items()}, r)
        return state, row

    def run(self, *, stop_at_step: int | None = None, progress: bool = True) -> SelfJudgeResult:
        """Trains from step 0, or from the latest complete checkpoint in `output_dir`."""
        cfg = self.cfg

        def before(start, state, write):
            if start == 0 and self.val_rows:
                write({"step": 0, **self.validate(self.policy_params(state))})

        loop = run_loop(out=self.out, state=self.state, total=self.total, step_fn=self.step,
                        checkpoint=cfg.checkpoint,
                        run_info=Checkpointer.run_info({"kind": "self_judge", **to_dict(cfg)}, cfg.seed),
                        data_state=self.it.state, restore_data=self.it.restore, nan_policy=cfg.nan_policy,
                        max_nonfinite=cfg.max_nonfinite, log_every=cfg.log_every, progress=progress,
                        stop_at_step=stop_at_step, postfix=_postfix, on_start=before)
        self.state = loop.state
        report = None
        if is_primary() and not loop.preempted:
            rows = read_metrics(self.out / "metrics.jsonl")
            report = write_report(self.out, f"sj-jax self-judge: {cfg.model}", rows, self.summary(rows), PLOTTED,
                                  columns=PLOTTED[:-1] + (
                                      "judge/swap_consistency", "pairs", "time/total_s", "val/accuracy",
                                      "val/answer_accuracy"))
        return SelfJudgeResult(loop.steps, loop.last_loss, self.out / "metrics.jsonl", report, loop.preempted)

    def summary(self, rows: list[dict]) -> dict[str, Any]:
        """The report's table from the run's metrics rows: settings, validation before and after,
        skipped pairs, time per phase."""
        cfg = self.cfg
        steps = [r for r in rows if r.get("step", 0) > 0]
        val = [r for r in rows if "val/accuracy" in r]
        judge = "checker (the oracle: a diagnostic ceiling)" if cfg.judge_model == "checker" else cfg.judge_model
        out: dict[str, Any] = {
            "model": cfg.model, "samples": cfg.samples, "judge": judge, "N": cfg.num_samples,
            "loss type": cfg.dpo.loss_type, "beta": cfg.dpo.beta, "principles": ", ".join(cfg.principles) or "-",
            "steps": self.total, "prompts a step": cfg.batch_size,
            "steps without an update": sum(1 for r in steps if not r.get("updated", 1)),
        }
        if val:
            out["validation accuracy (strict / lenient), first"] = (
                f"{val[0]['val/accuracy']:.3f} / {val[0]['val/answer_accuracy']:.3f} (step {val[0]['step']})")
            out["validation accuracy (strict / lenient), last"] = (
                f"{val[-1]['val/accuracy']:.3f} / {val[-1]['val/answer_accuracy']:.3f} (step {val[-1]['step']})")
        for reason in SKIP_REASONS:
            out[f"pairs skipped: {reason}"] = int(sum(r.get(f"skipped/{reason}", 0) for r in steps))
        verified = sum(r.get("judge/verified_pairs", 0) for r in steps)
        if verified:
            right = sum(r.get("judge/verified_correct", 0) for r in steps)
            out["judge on its own samples (pairs with one correct)"] = f"{right / verified:.3f} of {int(verified)}"
        for phase in ("sample", "judge", "step", "total"):
            t = [r[f"time/{phase}_s"] for r in steps if f"time/{phase}_s" in r]
            if t:
                out[f"time/{phase} (mean s)"] = f"{np.mean(t):.2f}"
        return out


def _sample_metrics(candidates: list[list[Candidate]], cfg: SelfJudgeConfig) -> dict[str, float]:
    flat = [c for cands in candidates for c in cands]
    return {
        "samples/length_mean": float(np.mean([len(c.token_ids) for c in flat])),
        "samples/eos_fraction": float(np.mean([c.finished for c in flat])),
        "samples/empty": float(sum(1 for c in flat if not c.text.strip())),
        "samples/truncated": float(sum(1 for c in flat if not c.finished)),
        "samples/degenerate": float(sum(1 for c in flat if defect(c, cfg.degenerate) is not None)),
    }


def _judge_metrics(judgments: list[Judgments | GenerativeJudgments], choices: list[PairChoice]) -> dict[str, float]:
    out = {f"skipped/{r}": float(sum(1 for c in choices if c.skipped == r)) for r in SKIP_REASONS}
    out["decided_by_rule"] = float(sum(1 for c in choices if c.skipped is None and c.decided_by == "rule"))
    out["judge/judgments"] = float(sum(len(j.prob_first) for j in judgments))
    if judgments:
        p = np.concatenate([j.prob_first for j in judgments])
        out["judge/margin"] = float(np.mean(np.abs(2 * p - 1)))  # 0: no preference, 1: certain
        out["judge/swap_consistency"] = float(np.mean(np.concatenate([j.swap_consistent.ravel() for j in judgments])))
        no_verdict = [j.no_verdict_rate for j in judgments if isinstance(j, GenerativeJudgments)]
        if no_verdict:
            out["judge/no_verdict_rate"] = float(np.mean(no_verdict))
    return out


def _checkable(row: dict) -> bool:
    return row.get("task") in FAMILIES and isinstance(row.get("answer"), str)


def _skips(choices: list[PairChoice]) -> str:
    return ", ".join(f"{r}: {sum(1 for c in choices if c.skipped == r)}" for r in SKIP_REASONS) or "offline"


def _postfix(row: dict) -> dict:
    out = {"loss": f"{row['loss']:.4f}"} if "loss" in row else {"loss": "-"}
    if "samples/length_mean" in row:
        out["len"] = f"{row['samples/length_mean']:.0f}"
    if "judge/margin" in row:
        out["judge"] = f"{row['judge/margin']:.2f}"
    if "time/total_s" in row:
        out["s"] = f"{row['time/total_s']:.1f}"
    return out


def self_judge(cfg: SelfJudgeConfig, *, model: Model | None = None, stop_at_step: int | None = None,
               progress: bool = True) -> SelfJudgeResult:
    """Runs (or resumes) a SELF-JUDGE run: `SelfJudgeRun(cfg, model=model).run(...)`."""
    try:
        return SelfJudgeRun(cfg, model=model).run(stop_at_step=stop_at_step, progress=progress)
    except ValueError as e:  # a prompt or sample the sampler or judge refused: name the run
        raise SJError(f"self-judge ({cfg.output_dir}): {e}") from e
