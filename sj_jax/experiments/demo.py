"""`sj-jax demo`: the SELF-JUDGE paper's table in miniature, every stage in one run folder.

Stages (each one a function here, each writing what it made under `cfg.out`):

1. `build_data`: the task suite's train / validation / test problems and known-label pairs, and the
   JSFT mixture (`sj-jax data build`).
2. `_train_base`: SFT (instruction rows) from the base model; `build_judge_data`: the SFT policy's
   own answers to train problems, checked, as pairs of a correct against a wrong answer, added to
   the JSFT mixture (`data.own_samples`, into judge_data/); JSFT on that mixture from the base model
   (`sj-jax sft|jsft`; LoRA by default).
3. `_train_jsft`: offline DPO (the known-label train pairs), off-policy (samples drawn once from
   the JSFT policy) and SELF-JUDGE on-policy, all from the JSFT checkpoint with the frozen JSFT
   model as judge and reference, the same prompts, steps, beta, learning rate and pairs a step
   (`sj-jax self-judge` with `samples: offline|off_policy|on_policy`); and SELF-JUDGE with the
   checker as judge ("oracle", a diagnostic ceiling: what a perfect judge gives the same loop).
4. `evaluate_policy` (greedy test accuracy, strict and lenient, per family, mean length) for base,
   SFT, JSFT and the three runs; `evaluate_tournament` (self-rejection, N = 1, 2, 4, 8) on the JSFT
   and SELF-JUDGE policies, each judging its own samples.
5. `evaluate_judge`: the base and JSFT judges on held-out known-label pairs and on held-out pairs
   of the JSFT policy's own answers (test problems, a correct against a wrong sample), both orders,
   each order alone, swap consistency, per family; on a `--judge-eval` file; and, from the
   SELF-JUDGE run's metrics, how often the judge picked the correct sample of a pair with exactly one.
6. `sj_jax.experiments.demo_report`: results.json, report.md (the table over seeds, a paragraph per
   claim), metrics.jsonl of every stage and the plots.

Each stage's config is written beside its output (a user can rerun any stage alone with its own
command). A finished stage leaves `stage.json`; running the demo again skips it, and a stopped
training stage resumes from its checkpoint, so a stopped and restarted demo ends with the same
results as one that never stopped. Stages 3 to 5 repeat for each seed.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from sj_jax.algorithms.own_samples import build_with_own_samples, own_pairs
from sj_jax.algorithms.pairs import oracle_correct
from sj_jax.algorithms.self_judge import SelfJudgeRun
from sj_jax.algorithms.self_judge_config import SelfJudgeConfig
from sj_jax.algorithms.self_taught import SelfTaughtRun, last_judge
from sj_jax.algorithms.self_taught_config import SelfTaughtConfig
from sj_jax.algorithms.tournament import tournaments_by_n
from sj_jax.core.config import as_base, load_yaml, read_yaml, save_yaml, to_dict, with_fields
from sj_jax.core.errors import ConfigError, SJError
from sj_jax.core.machine import stage_machine
from sj_jax.core.progress import sampling_bar
from sj_jax.core.stages import run_stage
from sj_jax.data.build import DataBuildConfig, write_jsonl
from sj_jax.data.loaders import load_rewardbench
from sj_jax.evaluation.accuracy import check_responses, judge_accuracy, policy_accuracy
from sj_jax.evaluation.eval_tasks import read_rows
from sj_jax.experiments import demo_report
from sj_jax.experiments.demo_config import FULL, DemoConfig
from sj_jax.experiments.demo_plan import (
    BASE_POLICIES,
    JUDGES,
    TOURNAMENT_POLICIES,
    VARIANTS,
    judge_eval_dir,
    own_pairs_file,
    plan,
    seed_dir,
)
from sj_jax.loading.model import load_model
from sj_jax.tasks.families import check
from sj_jax.train.config import TrainConfig
from sj_jax.train.metrics import read_metrics
from sj_jax.train.trainer import train


class DemoStopped(SJError):
    """A stage was stopped (SIGTERM, or `stop_at`) after saving; the same command resumes it."""


@dataclasses.dataclass
class DemoResult:
    out: Path
    results: dict[str, Any] | None  # None when stopped
    stopped_in: str | None = None


# -- the configs of the stages' own commands ------------------------------------------------------

def data_config(cfg: DemoConfig, out: Path) -> DataBuildConfig:
    """Stage 1's `sj-jax data build` config: `cfg.data` with what the demo sets (`DATA_OWNED`); its
    examples as long as JSFT's; the model's own samples left to the judge data stage."""
    return with_fields(cfg.data, {**_shared(cfg), "generative": cfg.generative, "output_dir": str(out / "data"),
                                  "seed": cfg.seed, "model": cfg.model, "max_length": cfg.jsft.data.max_length,
                                  "own_samples.enabled": False})


def judge_data_config(cfg: DemoConfig, out: Path) -> DataBuildConfig:
    """The judge data stage's `sj-jax data build` config (after SFT, when `data.own_samples.enabled`):
    stage 1's, with `data.own_samples` answered by the SFT run (or the base model: `own_samples_from`),
    into judge_data/, whose jsft_train.jsonl JSFT trains on. The same seed makes the same problems
    and known-label pairs as stage 1."""
    answers = str(out / "sft") if cfg.own_samples_from == "sft" else cfg.model
    return with_fields(data_config(cfg, out), {"output_dir": str(out / "judge_data"), "own_samples.model": answers,
                                               "own_samples.enabled": True})


def train_config(cfg: DemoConfig, out: Path, kind: str) -> TrainConfig:
    """Stage 2's `sj-jax sft|jsft` config (kind "sft" or "jsft"): `cfg.sft` or `cfg.jsft` with what
    the demo sets (`TRAIN_OWNED`)."""
    data = out / "data" / "sft_train.jsonl"
    if kind == "jsft":
        data = out / ("judge_data" if cfg.data.own_samples.enabled else "data") / "jsft_train.jsonl"
    return with_fields(getattr(cfg, kind), {**_shared(cfg), "model": cfg.model, "param_dtype": cfg.dtype,
                                            "output_dir": str(out / kind), "seed": cfg.seed,
                                            "data.train_file": str(data), "checkpoint": cfg.checkpoint})


def self_judge_config(cfg: DemoConfig, out: Path, variant: str, seed: int) -> SelfJudgeConfig:
    """Stage 3's `sj-jax self-judge` config for one variant (`samples`) and seed: `cfg.self_judge`
    with what the demo sets (`SELF_JUDGE_OWNED`), from the JSFT run."""
    data = out / "data"
    owned = {**_shared(cfg), "generative": cfg.generative, "model": str(out / "jsft"), "param_dtype": cfg.dtype,
             "output_dir": str(seed_dir(out, seed) / variant), "seed": seed, "samples": variant,
             "prompts_file": str(data / "prompts_train.jsonl"), "offline_file": str(data / "pairs_train.jsonl"),
             "checkpoint": cfg.checkpoint}
    if variant == "oracle":  # SELF-JUDGE with a perfect judge: the checker, a diagnostic ceiling
        return with_fields(cfg.self_judge, {**owned, "samples": "on_policy", "judge_model": "checker"})
    if cfg.self_taught.judge_for_self_judge:
        st = self_taught_config(cfg, out)
        owned.update(judge_model=last_judge(Path(st.output_dir), st), judge_mode="generative")
    return with_fields(cfg.self_judge, owned)


def self_taught_config(cfg: DemoConfig, out: Path) -> SelfTaughtConfig:
    """The self-taught stage's `sj-jax self-taught` config: `cfg.self_taught` with what the demo sets
    (`SELF_TAUGHT_OWNED`): seeded by the JSFT model, its pool the train problems, its judge measured
    on the held-out pairs and the `judge_eval` file."""
    data = out / "data"
    own = own_pairs_file(out)  # made by the judges stage, which runs first; none where no problem had a pair
    files = ((str(data / "pairs_test.jsonl"), cfg.eval.judge_limit),) + (((str(own), 0),) if _has_rows(own) else ())
    files += ((cfg.judge_eval, 0),) if cfg.judge_eval else ()
    loop = as_base(cfg.self_taught, SelfTaughtConfig)
    return with_fields(loop, {**_shared(cfg), "generative": cfg.generative, "model": str(out / "jsft"),
                              "output_dir": str(out / "self_taught"),
                              "seed": cfg.seed, "pool_file": str(data / "prompts_train.jsonl"),
                              "eval.files": tuple(f for f, _ in files), "eval.limits": tuple(n for _, n in files),
                              "train.checkpoint": cfg.checkpoint})


def _has_rows(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


# What a rerun on the same folder may change: more seeds, another judge file, where it writes and
# caches, and how many processes run it (the data order is global).
RERUN_MAY_CHANGE = ("seeds", "judge_eval", "out", "cache_dir", "distributed")


def _shared(cfg: DemoConfig) -> dict[str, Any]:
    """What every stage takes from the demo: the judge's text, the dtype, the cache and the process's runtime."""
    return {"judge": cfg.judge, "dtype": cfg.dtype, "cache_dir": cfg.cache_dir,
            "matmul_precision": cfg.matmul_precision, "distributed": cfg.distributed}


# -- stages 4 and 5: evaluations ------------------------------------------------------------------

def evaluate_policy(model, rows: list[dict], cfg: DemoConfig, progress: bool = False) -> dict[str, Any]:
    """Greedy accuracy (strict: the bare answer; lenient: the answer anywhere) per family, and
    the mean response length in tokens."""
    with sampling_bar(len(rows), what="problem", enabled=progress) as bar:
        ev = policy_accuracy(model, rows, max_new_tokens=cfg.eval.max_new_tokens, temperature=0.0,
                             batch_size=cfg.eval.batch_size, progress=bar)
    ok, lenient = ev.metrics["accuracy"], ev.metrics["answer_accuracy"]
    return {**ev.summary("task"), "mean_tokens": float(np.mean(ev.lengths)),
            "cut": int(sum(not f for f in ev.finished)),
            "rows": [{"id": r.get("id"), "task": r["task"], "response": t, "correct": s, "answer_correct": le}
                     for r, t, s, le in zip(rows, ev.responses, ok, lenient)]}


def evaluate_tournament(policy, judge, rows: list[dict], cfg: DemoConfig, seed: int,
                        progress: bool = False) -> dict[str, Any]:
    """Self-rejection (`tournaments_by_n`): max(N) samples per problem, a knock-out tournament over
    the first N of them for each N (so N = 1 is a plain sample), judged by `judge` (both orders)."""
    e = cfg.eval
    with sampling_bar(len(rows) * max(e.tournament_n), enabled=progress) as bar:
        played = tournaments_by_n(policy, [r["prompt"] for r in rows], e.tournament_n, judge=judge,
                                  template=cfg.judge, max_new_tokens=e.max_new_tokens, temperature=e.temperature,
                                  top_p=e.top_p, seed=seed, batch_size=e.batch_size,
                                  judge_batch_size=e.judge_batch_size, progress=bar)
    return {"by_n": {str(n): {**check_responses(rows, t.winners).summary("task"),
                              "mean_tokens": float(np.mean([len(ids) for ids in t.winner_token_ids])),
                              "judgments": int(sum(b.judged for b in t.brackets)),
                              "pass_at_n": pass_at_n(rows, t.candidates, t.finished)}
                     for n, t in played.items()}}


def pass_at_n(rows: list[dict], candidates: list[list[str]], finished: list[list[bool]]) -> float:
    """The oracle judge's tournament (a diagnostic ceiling): the fraction of problems with a correct
    (strict), finished sample among their candidates, the one an oracle would pick."""
    return float(np.mean([any(oracle_correct(c, f, lambda t, r=r: check(r["task"], r["answer"], t))
                              for c, f in zip(cands, fin))
                          for r, cands, fin in zip(rows, candidates, finished, strict=True)]))


def evaluate_judge(model, pairs: list[dict], cfg: DemoConfig, group: str = "subset",
                   progress: bool = False) -> dict[str, Any]:
    """Pairwise accuracy (both orders averaged; each order alone), swap consistency, by `group`."""
    with tqdm(total=2 * len(pairs), unit="prompt", file=sys.stderr, disable=not progress) as bar:
        acc, p = judge_accuracy(model, pairs, template=cfg.judge, batch_size=cfg.eval.judge_batch_size,
                                progress=bar.update)
    return {"by_" + group: acc.table(group), "p_chosen": [float(x) for x in p]}


def own_sample_judging(metrics_file: Path) -> dict[str, Any]:
    """From a SELF-JUDGE run's metrics: the judge's accuracy on the pairs of its own samples where
    exactly one was correct, and the fraction of correct samples over the run."""
    rows = [r for r in read_metrics(metrics_file) if r.get("step", 0) > 0]
    pairs = sum(r.get("judge/verified_pairs", 0) for r in rows)
    right = sum(r.get("judge/verified_correct", 0) for r in rows)
    acc = [r["samples/accuracy"] for r in rows if "samples/accuracy" in r]
    return {"pairs": int(pairs), "correct": int(right), "accuracy": right / pairs if pairs else None,
            "sample_accuracy": float(np.mean(acc)) if acc else None}


# -- the driver ----------------------------------------------------------------------------------

class Demo:
    """The demo in `cfg.out`: `run()` does what is not done yet, stage by stage, and reports."""

    def __init__(self, cfg: DemoConfig, *, log: Callable[[str], None] | None = None, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(cfg.out), progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        try:
            self.judge_eval_rows = self._read_judge_eval()  # a bad file fails here, before any training
        except OSError as e:  # a file that is there but cannot be read: name it, in one line
            raise ConfigError(f"judge_eval: {e.filename or cfg.judge_eval}: cannot read it "
                              f"({e.strerror or e})") from e
        self._check_folder()
        self._models: dict[str, Any] = {}
        self.plan = plan(cfg)
        self.clock = {"t0": time.perf_counter(), "done": 0.0, "ran": 0.0}

    def _read_judge_eval(self) -> list[dict]:
        if not self.cfg.judge_eval:
            return []

        path = Path(self.cfg.judge_eval)
        if not path.is_file():
            raise ConfigError(f"judge_eval: {path}: no such file")
        rows, _ = load_rewardbench(path, strict=True)
        if not rows:
            raise ConfigError(f"judge_eval: {path}: no pairs")
        return rows

    def _check_folder(self) -> None:
        """The run folder holds this demo's stages or none: another config would mix results. A
        folder that cannot be made, read or written (a file, no permission, /proc) is a ConfigError
        naming it, before any stage starts."""
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"out: {self.out}: is a file, not a folder; use another --out")
        saved = self.out / "demo_config.yaml"
        mine = {k: v for k, v in to_dict(self.cfg).items() if k not in RERUN_MAY_CHANGE}
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            text = saved.read_text() if saved.exists() else None
        except OSError as e:
            raise ConfigError(f"out: {e.filename or self.out}: cannot make or read the run folder "
                              f"({e.strerror or e}); use another --out") from e
        if text is not None:
            theirs = {k: v for k, v in (read_yaml(text) or {}).items()
                      if k not in RERUN_MAY_CHANGE}
            diff = _first_difference(theirs, mine)
            if diff is not None:
                raise ConfigError(f"{self.out}: holds a demo run with {diff[0]}={diff[1]!r}, but this command has "
                                  f"{diff[0]}={diff[2]!r}; use another --out, or delete the folder")
        try:
            save_yaml(self.cfg, saved)
        except OSError as e:
            raise ConfigError(f"out: {e.filename or saved}: cannot write in the run folder "
                              f"({e.strerror or e}); use another --out") from e

    # -- bookkeeping

    def _stage(self, key: str, folder: Path, fn: Callable[[], Any]) -> Any:
        """Runs `fn` unless `folder/stage.json` says it is done; keeps its result, its time and the
        matmul rate it ran at (measured once in this process, when the first stage starts). Logs one
        line per stage, run or skipped: the plan's stages are steps 1 to len(plan) of len(plan) + 1,
        the report (not a stage) is the last step."""
        weight = self.plan[key]
        step = f"demo [{list(self.plan).index(key) + 1}/{len(self.plan) + 1}]"
        done = run_stage(key, folder, fn, on_start=lambda: self.log(f"{step} {key} · {self._eta()}"),
                         machine=stage_machine)
        self.clock["done"] += weight
        if done.ran:
            self.clock["ran"] += weight
        else:
            self.log(f"{step} {key} · done already, skipped")
        return done.result

    def _eta(self) -> str:
        elapsed = time.perf_counter() - self.clock["t0"]
        left = sum(self.plan.values()) - self.clock["done"]
        if self.clock["ran"] <= 0:
            return f"elapsed {_hms(elapsed)}"
        return f"elapsed {_hms(elapsed)} · demo ETA {_hms(elapsed / self.clock['ran'] * left)}"

    def model(self, name: str, seed: int | None = None):
        """The model of a stage's output, loaded once: "base", "sft", "jsft", or a variant of `seed`."""
        key = name if seed is None else f"{name}@{seed}"
        if key not in self._models:
            if name == "base":
                self._models[key] = load_model(self.cfg.model, dtype=self.cfg.dtype)
            else:
                folder = self.out / name if seed is None else seed_dir(self.out, seed) / name
                self._models[key] = load_model(folder, dtype=self.cfg.dtype)
        return self._models[key]

    def forget(self, *names: str) -> None:
        for k in [k for k in self._models if k.split("@")[0] in names]:
            del self._models[k]

    def _rows(self, split: str, kind: str, limit: int) -> list[dict]:
        fields = ("prompt", "answer", "task") if kind == "prompts" else ("prompt", "chosen", "rejected")
        # the first `limit` rows of each task (pairs: of each subset, the same families), in file order
        return read_rows(str(self.out / "data" / f"{kind}_{split}.jsonl"), fields, limit)

    # -- the stages

    def run(self, *, stop_at: tuple[str, int] | None = None) -> DemoResult:
        """Every stage not done yet, then the report. `stop_at` = (stage, step): stop that training
        stage after that step as a preemption would (tests and drills)."""
        cfg, out = self.cfg, self.out
        try:
            self._stage("data", out / "data", lambda: _summary(build_data(cfg, out)))
            self._stage("sft", out / "sft", lambda: self._train_base("sft", stop_at))
            if cfg.data.own_samples.enabled:
                self._stage("judge data", out / "judge_data", lambda: _summary(build_judge_data(cfg, out)))
            self._stage("jsft", out / "jsft", lambda: self._train_base("jsft", stop_at))
            self._stage("eval base", out / "eval", self._eval_base)
            self._stage("judges", out / "judges", self._judges)
            if cfg.judge_eval:  # a stage of its own: a later run may add a file to a finished demo
                self._stage("judge eval", judge_eval_dir(out, cfg), self._judge_eval)
            if cfg.self_taught.enabled:
                self._stage("self-taught", out / "self_taught", lambda: self._self_taught(stop_at))
            for k in range(cfg.seeds):
                seed = cfg.seed + k
                for v in VARIANTS:
                    self._stage(f"{v} (seed {seed})", seed_dir(out, seed) / v,
                                lambda v=v, seed=seed: self._train_jsft(v, seed, stop_at))
                self._stage(f"eval (seed {seed})", seed_dir(out, seed) / "eval",
                            lambda seed=seed: self._eval_seed(seed))
        except DemoStopped as e:
            self.log(f"demo: {e}")
            return DemoResult(out, None, str(e))
        steps = len(self.plan) + 1  # the report is one more step than the stages
        self.log(f"demo [{steps}/{steps}] report · {self._eta()}")
        results = demo_report.write(out, cfg)
        self.log(f"demo: done in {_hms(time.perf_counter() - self.clock['t0'])}; report: {out / 'report.md'}")
        return DemoResult(out, results)

    def _train_base(self, kind: str, stop_at) -> dict:
        tc = train_config(self.cfg, self.out, kind)
        stop = stop_at[1] if stop_at and stop_at[0] == kind else None
        # Full fine-tuning trains (and donates) the very arrays it is given: a copy of its own then.
        base = self.model("base") if tc.lora.enabled else load_model(self.cfg.model, dtype=self.cfg.dtype)
        r = train(kind, tc, model=base, stop_at_step=stop, progress=self.progress)
        if r.preempted:
            raise DemoStopped(f"stopped in stage {kind} at step {r.steps}; run the same command again to resume")
        return {"steps": r.steps, "last_loss": r.last_loss}

    def _train_jsft(self, variant: str, seed: int, stop_at) -> dict:
        sc = self_judge_config(self.cfg, self.out, variant, seed)
        stop = stop_at[1] if stop_at and stop_at[0] == variant else None
        r = SelfJudgeRun(sc, model=self.model("jsft")).run(stop_at_step=stop, progress=self.progress)
        if r.preempted:
            raise DemoStopped(f"stopped in stage {variant} (seed {seed}) at step {r.steps}; run the same command "
                              "again to resume")
        return {"steps": r.steps, "last_loss": r.last_loss}

    def _self_taught(self, stop_at) -> dict:
        st = self_taught_config(self.cfg, self.out)
        stop = stop_at[1] if stop_at and stop_at[0] == "self-taught" else None
        r = SelfTaughtRun(st, model=self.model("jsft"), log=self.log, progress=self.progress).run(stop_at_step=stop)
        if r.results is None:
            raise DemoStopped(f"{r.stopped_in} (stage self-taught)")
        return {"judges": r.results["judges"], "iterations": r.results["iterations"],
                "selection": r.results["selection"], "stage_seconds": r.results["stage_seconds"]}

    def _eval_base(self) -> dict:
        rows = self._rows("test", "prompts", self.cfg.eval.test_limit)
        return {name: evaluate_policy(self.model(name), rows, self.cfg, self.progress) for name in BASE_POLICIES}

    def _judges(self) -> dict:
        """Each judge on the held-out known-label pairs, and on held-out pairs of the JSFT policy's own
        answers (test problems; written to `own_pairs_file` for the self-taught stage to read too)."""
        cfg, e = self.cfg, self.cfg.eval
        pairs = self._rows("test", "pairs", e.judge_limit)
        problems = self._rows("test", "prompts", e.own_pairs_limit)
        with sampling_bar(len(problems) * e.own_pairs_samples, enabled=self.progress) as bar:
            own, stats = own_pairs(self.model("jsft"), problems, pairing="own", samples=e.own_pairs_samples,
                                   per_problem=1, temperature=e.temperature, top_p=e.top_p,
                                   max_new_tokens=e.max_new_tokens, seed=cfg.seed, batch_size=e.batch_size,
                                   progress=bar)
        write_jsonl(own_pairs_file(self.out), own)
        out: dict[str, Any] = {"own_pairs": stats.as_dict()}
        for name in JUDGES:
            out[name] = {"heldout": evaluate_judge(self.model(name), pairs, cfg, progress=self.progress)}
            if own:
                out[name]["own_samples"] = evaluate_judge(self.model(name), own, cfg, progress=self.progress)
        return out

    def _judge_eval(self) -> dict:
        return {name: evaluate_judge(self.model(name), self.judge_eval_rows, self.cfg, progress=self.progress)
                for name in JUDGES}

    def _eval_seed(self, seed: int) -> dict:
        rows = self._rows("test", "prompts", self.cfg.eval.test_limit)
        t_rows = self._rows("test", "prompts", self.cfg.eval.tournament_limit)
        out: dict[str, Any] = {"policies": {}, "tournament": {}}
        for v in VARIANTS:
            out["policies"][v] = evaluate_policy(self.model(v, seed), rows, self.cfg, self.progress)
        for name in TOURNAMENT_POLICIES:
            policy = self.model(name) if name in BASE_POLICIES else self.model(name, seed)
            out["tournament"][name] = evaluate_tournament(policy, policy, t_rows, self.cfg, seed, self.progress)
        out["own_samples"] = own_sample_judging(seed_dir(self.out, seed) / "on_policy" / "metrics.jsonl")
        self.forget(*VARIANTS)
        return out


def build_data(cfg: DemoConfig, out: Path) -> dict:
    """Stage 1: `sj-jax data build` into `out/data`."""
    return _data_build(data_config(cfg, out))


def build_judge_data(cfg: DemoConfig, out: Path) -> dict:
    """The judge data stage: `sj-jax data build` with the SFT policy's own answers into `out/judge_data`."""
    return _data_build(judge_data_config(cfg, out))


def _data_build(dc: DataBuildConfig) -> dict:
    Path(dc.output_dir).mkdir(parents=True, exist_ok=True)
    save_yaml(dc, Path(dc.output_dir) / "config.yaml")
    return build_with_own_samples(dc, log=lambda m: print(m, file=sys.stderr))


def _summary(summary: dict) -> dict:
    return {"files": summary["files"], "seconds": summary["seconds"]}


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(dict.fromkeys(list(a) + list(b))):
            d = _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else k)
            if d is not None:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b):
        return None
    return None if a == b else (where, a, b)


def load_demo_config(path: str | None, overrides: list[str], full: bool) -> DemoConfig:
    """The demo's config: the defaults, or `path`; `--full`'s overrides, then the user's."""
    return load_yaml(DemoConfig, path, (list(FULL) if full else []) + list(overrides))


def demo(cfg: DemoConfig, **kw) -> DemoResult:
    """Runs (or resumes) the demo in `cfg.out`: `Demo(cfg).run()`."""
    stop_at = kw.pop("stop_at", None)
    return Demo(cfg, **kw).run(stop_at=stop_at)


__all__ = ["Demo", "DemoResult", "DemoStopped", "build_data", "build_judge_data", "data_config", "judge_data_config",
           "demo", "evaluate_judge",
           "evaluate_policy", "evaluate_tournament", "load_demo_config", "own_sample_judging", "pass_at_n",
           "self_judge_config", "self_taught_config", "train_config"]
