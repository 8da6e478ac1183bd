"""The self-taught evaluator (SPEC 2): a judge that improves on synthetic pairs it makes and filters itself.

Stages, each writing its output under `output_dir` and leaving `stage.json` when done (a rerun
skips what is done, and a stopped training stage resumes from its checkpoint):

- `select`: the pool's instructions, labelled by the seed model with a category and a difficulty
  through a prompt; kept or dropped, every reason counted (`selection.json`, `selected.jsonl`).
- `eval 0`: the seed model as a judge on the evaluation files, in each mode.
Then for each iteration i = 1, 2, ...:
- `pairs i`: for each of the iteration's instructions x, a good response to x; a modified
  instruction x' written by the model; and the model's response to x', worse for x by
  construction. A row whose output cannot be used is counted under its reason. Where the pool
  row carries a task-suite answer, both responses are checked, so the synthetic label's accuracy
  is measured (`pairs.jsonl`, `dropped.jsonl`).
- `judgments i`: `annotate.samples` generative judgments an order from the current judge (the
  seed model, then iteration i - 1's); kept when the verdict is the known label, balanced between
  A and B (`sj_jax.algorithms.rejection`); the training rows follow (`judgments.jsonl`, `train.jsonl`).
- `train i`: `sj-jax sft` on the kept judgments, or `sj-jax dpo` (a kept judgment chosen, a
  discarded one of the same pair rejected, plus the NLL term), from the seed model or from the
  last judge; its run folder is `iter<i>/train`.
- `eval i`: the new judge on the evaluation files.
Then `results.json`, `report.md` and `judge_accuracy.png`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sj_jax.algorithms import self_taught_report
from sj_jax.algorithms.rejection import preference_pairs, rejection_sample
from sj_jax.algorithms.self_taught_config import CATEGORIES, PromptText, SelfTaughtConfig
from sj_jax.core.config import read_yaml, save_yaml, to_dict
from sj_jax.core.errors import ConfigError, SJError
from sj_jax.core.machine import stage_machine
from sj_jax.core.progress import sampling_bar
from sj_jax.core.stages import read_stage, run_stage
from sj_jax.data.chat import context_text
from sj_jax.evaluation.eval_judge import judge_file, read_pairs
from sj_jax.evaluation.eval_tasks import read_rows
from sj_jax.inference.generate import encode_prompts, generate, length_batches
from sj_jax.judge.generative import judge_generative
from sj_jax.judge.generative_template import judgment_row, messages
from sj_jax.judge.template import encode
from sj_jax.loading.model import load_model
from sj_jax.tasks.families import FAMILIES, check
from sj_jax.train.trainer import train

_SALTS = {"select": 1, "pairs": 2, "modify": 3, "judgments": 4, "balance": 5}


class SelfTaughtStopped(SJError):
    """A stage was stopped (SIGTERM, or `stop_after` / `stop_at_step`) after saving; rerun to resume."""


@dataclasses.dataclass
class SelfTaughtResult:
    out: Path
    results: dict[str, Any] | None  # None when stopped
    table: str = ""
    stopped_in: str | None = None


def stage_seed(seed: int, iteration: int, what: str) -> int:
    return int(np.random.SeedSequence([seed, iteration, _SALTS[what]]).generate_state(1)[0] >> 1)


# -- parsing the model's outputs (pure) -----------------------------------------------------------

_CATEGORY = re.compile(r"^\W*([A-Za-z]+)")
_DIFFICULTY = re.compile(r"difficulty\W*([1-5])\b", re.IGNORECASE)


def parse_label(text: str) -> tuple[str | None, int | None]:
    """(category, difficulty) from the selection prompt's answer (the text after "Category:");
    None for a part that is not there in the asked form."""
    m = _CATEGORY.match(text)
    category = m.group(1).lower() if m else None
    d = _DIFFICULTY.search(text)
    return (category if category in CATEGORIES else None), (int(d.group(1)) if d else None)


def selection_reason(text: str, finished: bool, cfg) -> tuple[str, str | None, int | None]:
    """("kept" or why the row is dropped, category, difficulty) for one instruction's label."""
    category, difficulty = parse_label(text)
    if category is None or difficulty is None:
        return ("kept_unparsed" if cfg.keep_unparsed else
                "unparsed_category" if category is None else "unparsed_difficulty"), category, difficulty
    if cfg.categories and category not in cfg.categories:
        return "category_not_kept", category, difficulty
    if difficulty < cfg.min_difficulty:
        return "too_easy", category, difficulty
    return "kept", category, difficulty


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def parse_modified(text: str, finished: bool, original: str, keep_cut: bool = False) -> tuple[str | None, str]:
    """(the modified instruction, "ok") or (None, why not): its first paragraph, unquoted."""
    first = text.strip().split("\n\n")[0].strip().strip('"“”').strip()
    if not first:
        return None, "modified_empty"
    if not finished and not keep_cut and first == text.strip():
        return None, "modified_cut"  # it never ended: the instruction may be incomplete
    if _norm(first) == _norm(original):
        return None, "modified_same"
    return first, "ok"


def pair_reason(good: str, good_done: bool, worse: str, worse_done: bool, keep_cut: bool = False) -> str:
    """"ok" or why a (good, worse) pair is not usable."""
    for name, text, done in (("good", good, good_done), ("worse", worse, worse_done)):
        if not text.strip():
            return f"{name}_empty"
        if not done and not keep_cut:
            return f"{name}_cut"
    return "same_response" if _norm(good) == _norm(worse) else "ok"


def label_check(rows: list[dict]) -> dict[str, Any]:
    """On rows with a task-suite answer: how often the synthetic label (good > worse) is right by
    the checkers (good correct, worse not), wrong (worse correct, good not), or uninformative."""
    known = [r for r in rows if r.get("task") in FAMILIES and isinstance(r.get("answer"), str)]
    if not known:
        return {"checked": 0}
    right = sum(1 for r in known if r["good_correct"] and not r["worse_correct"])
    wrong = sum(1 for r in known if r["worse_correct"] and not r["good_correct"])
    both = sum(1 for r in known if r["good_correct"] and r["worse_correct"])
    return {"checked": len(known), "right": right, "wrong": wrong, "both_correct": both,
            "both_wrong": len(known) - right - wrong - both, "accuracy": right / len(known),
            "accuracy_when_decided": right / (right + wrong) if right + wrong else None}


# -- the run --------------------------------------------------------------------------------------

def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class SelfTaughtRun:
    """A self-taught evaluator run in `cfg.output_dir`: `run()` does what is not done yet."""

    def __init__(self, cfg: SelfTaughtConfig, *, model=None, log: Callable[[str], None] | None = None,
                 progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(cfg.output_dir), progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        e = cfg.eval
        self.eval_rows = {Path(f).stem: read_pairs(f, e.limits[k] if k < len(e.limits) else e.limit)
                          for k, f in enumerate(e.files)}  # a bad file fails now, before any work
        if len(self.eval_rows) != len(cfg.eval.files):
            raise ConfigError("eval.files: two files share a name; each needs its own stem")
        self._check_folder()
        self.seed_model = model if model is not None else load_model(cfg.model, dtype=cfg.dtype)
        if self.seed_model.tokenizer is None:
            raise ConfigError("model: the self-taught loop needs a tokenizer (prompts, the judge's template)")
        self._models: dict[int, Any] = {0: self.seed_model}
        self.t0 = time.perf_counter()

    def _check_folder(self) -> None:
        """The folder holds this run or none; `iterations` may grow (more iterations on the same run)."""
        self.out.mkdir(parents=True, exist_ok=True)
        saved = self.out / "config.yaml"
        skip = ("iterations", "cache_dir", "distributed", "output_dir")
        if saved.exists():
            theirs = {k: v for k, v in (read_yaml(saved.read_text()) or {}).items() if k not in skip}
            mine = {k: v for k, v in to_dict(self.cfg).items() if k not in skip}
            for k in dict.fromkeys(list(theirs) + list(mine)):
                if theirs.get(k) != mine.get(k):
                    raise ConfigError(f"{self.out}: holds a self-taught run with another {k!r}; use another "
                                      "output_dir, or delete the folder")
        save_yaml(self.cfg, saved)

    def _stage(self, name: str, folder: Path, fn: Callable[[], dict], stop_after: str | None) -> dict:
        done = run_stage(name, folder, fn, on_start=lambda: self.log(
            f"self-taught: {name} · elapsed {time.perf_counter() - self.t0:.0f} s"), machine=stage_machine)
        if done.ran and stop_after == name:
            raise SelfTaughtStopped(f"stopped after stage {name}; run the same command again to resume")
        return done.result

    def iter_dir(self, i: int) -> Path:
        return self.out / f"iter{i}"

    def judge_source(self, i: int) -> str:
        """What the judge after iteration i is: the seed model, or the last iteration <= i that trained."""
        return last_judge(self.out, self.cfg, i)

    def model(self, i: int):
        """The judge after iteration i (0: the seed model), loaded once; older ones are let go."""
        source = self.judge_source(i)
        if source == self.cfg.model:
            return self.seed_model
        if i not in self._models:
            for k in [k for k in self._models if k not in (0, i)]:
                del self._models[k]
            self._models[i] = load_model(source, dtype=self.cfg.dtype)
        return self._models[i]

    # -- stages

    def run(self, *, stop_after: str | None = None, stop_at_step: int | None = None) -> SelfTaughtResult:
        cfg = self.cfg
        try:
            self._stage("select", self.out / "select", self._select, stop_after)
            self._stage("eval 0", self.out / "eval" / "iter0", lambda: self._eval(0), stop_after)
            for i in range(1, cfg.iterations + 1):
                d = self.iter_dir(i)
                self._stage(f"pairs {i}", d / "pairs", lambda i=i: self._pairs(i), stop_after)
                self._stage(f"judgments {i}", d / "judgments", lambda i=i: self._judgments(i), stop_after)
                self._stage(f"train {i}", d / "train", lambda i=i: self._train(i, stop_at_step), stop_after)
                self._stage(f"eval {i}", self.out / "eval" / f"iter{i}", lambda i=i: self._eval(i), stop_after)
        except SelfTaughtStopped as e:
            self.log(f"self-taught: {e}")
            return SelfTaughtResult(self.out, None, stopped_in=str(e))
        results = self_taught_report.write(self.out, cfg)
        self.log(f"self-taught: done in {time.perf_counter() - self.t0:.0f} s; report: {self.out / 'report.md'}")
        return SelfTaughtResult(self.out, results, self_taught_report.table(results))

    def _ask(self, model, prompt: PromptText, instructions: list[str], *, max_new_tokens: int, temperature: float,
             seed: int):
        """The model's answers to `prompt` for each instruction (None where the prompt is too long)."""
        tok = model.tokenizer
        texts = [tok.apply_chat_template([{"role": "system", "content": prompt.system},
                                          {"role": "user", "content": prompt.user.replace("{instruction}", x)}],
                                         tokenize=False, add_generation_prompt=True) + prompt.assistant_prefix
                 for x in instructions]
        return self._sample(model, [encode(tok, t) for t in texts], max_new_tokens, temperature, seed)

    def _sample(self, model, prompts: list, max_new_tokens: int, temperature: float, seed: int):
        """(texts, finished) for token-id or text prompts; None for a prompt too long for the model."""
        ids = encode_prompts(model, prompts, chat=True)
        limit = model.config.max_position_embeddings - max_new_tokens
        fits = [i for i, p in enumerate(ids) if len(p) <= limit]
        texts: list[str | None] = [None] * len(ids)
        finished = [False] * len(ids)
        with sampling_bar(len(fits), enabled=self.progress) as bar:
            for chunk in length_batches([len(ids[i]) for i in fits], max_new_tokens, max_rows=self.cfg.batch_size):
                rows = [fits[k] for k in chunk]
                g = generate(model, [ids[i] for i in rows], max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=self.cfg.pairs.top_p if temperature > 0 else 1.0, seed=seed, key_ids=rows,
                             progress=bar)
                for k, i in enumerate(rows):
                    texts[i], finished[i] = g.texts[k][0], g.finished[k][0]
        return texts, finished

    def _select(self) -> dict:
        cfg, s = self.cfg, self.cfg.selection
        rows = read_rows(cfg.pool_file, ("prompt",), 0)
        if cfg.pool_limit and cfg.pool_limit < len(rows):  # drawn, not the first N: a pool may be sorted by task
            pick = np.random.default_rng([cfg.seed, 29]).choice(len(rows), size=cfg.pool_limit, replace=False)
            rows = [rows[k] for k in sorted(pick)]
        instructions = [context_text(r["prompt"]) for r in rows]
        counts: Counter = Counter()
        kept = []
        if s.enabled:
            texts, finished = self._ask(self.seed_model, s.prompt, instructions, max_new_tokens=s.max_new_tokens,
                                        temperature=0.0, seed=stage_seed(cfg.seed, 0, "select"))
        for k, (row, x) in enumerate(zip(rows, instructions)):
            if not s.enabled:
                reason, cat, diff = "kept", None, None
            elif texts[k] is None:
                reason, cat, diff = "too_long", None, None
            else:
                reason, cat, diff = selection_reason(texts[k], finished[k], s)
            counts[reason] += 1
            if reason.startswith("kept"):
                kept.append({**row, "instruction": x, "category": cat, "difficulty": diff})
        if not kept:
            raise SJError(f"select: no instruction of {cfg.pool_file} was kept ({dict(counts)}); loosen "
                          "selection.categories / min_difficulty, or set selection.keep_unparsed=true")
        order = np.random.default_rng([cfg.seed, 23]).permutation(len(kept))
        _write_jsonl(self.out / "select" / "selected.jsonl", [kept[i] for i in order])
        categories = Counter(r["category"] or "unparsed" for r in kept)
        return {"pool": len(rows), "kept": len(kept), "reasons": dict(counts), "categories": dict(categories)}

    def _instructions(self, i: int) -> list[dict]:
        rows = _read_jsonl(self.out / "select" / "selected.jsonl")
        n = self.cfg.instructions
        return [rows[(n * (i - 1) + k) % len(rows)] for k in range(min(n, len(rows)))]

    def _pairs(self, i: int) -> dict:
        cfg, p = self.cfg, self.cfg.pairs
        writer = self.seed_model if p.writer == "seed" else self.model(i - 1)
        rows = self._instructions(i)
        xs = [r["instruction"] for r in rows]
        good, good_done = self._sample(writer, xs, p.max_response_tokens, p.temperature,
                                       stage_seed(cfg.seed, i, "pairs"))
        mod, mod_done = self._ask(writer, p.prompt, xs, max_new_tokens=p.max_instruction_tokens,
                                  temperature=p.modify_temperature, seed=stage_seed(cfg.seed, i, "modify"))
        parsed = [parse_modified(m, d, x, p.keep_cut) if m is not None else (None, "too_long")
                  for m, d, x in zip(mod, mod_done, xs)]
        todo = [k for k, (x2, _) in enumerate(parsed) if x2 is not None]
        worse, worse_done = [None] * len(rows), [False] * len(rows)
        if todo:
            w, wd = self._sample(writer, [parsed[k][0] for k in todo], p.max_response_tokens, p.temperature,
                                 stage_seed(cfg.seed, i, "pairs") + 1)
            for j, k in enumerate(todo):
                worse[k], worse_done[k] = w[j], wd[j]
        counts: Counter = Counter()
        out, dropped = [], []
        for k, r in enumerate(rows):
            reason = parsed[k][1]
            if reason == "ok":
                reason = ("too_long" if good[k] is None or worse[k] is None else
                          pair_reason(good[k], good_done[k], worse[k], worse_done[k], p.keep_cut))
            counts[reason] += 1
            row = {"id": f"iter{i}-{k}", "prompt": r["instruction"], "chosen": good[k], "rejected": worse[k],
                   "modified": parsed[k][0], "source_id": r.get("id"), "subset": r.get("category") or "all"}
            if r.get("task") in FAMILIES and isinstance(r.get("answer"), str):
                row.update(task=r["task"], answer=r["answer"])
                if reason == "ok":
                    row.update(good_correct=check(r["task"], r["answer"], good[k]),
                               worse_correct=check(r["task"], r["answer"], worse[k]))
            (out if reason == "ok" else dropped).append({**row, "reason": reason} if reason != "ok" else row)
        _write_jsonl(self.iter_dir(i) / "pairs" / "pairs.jsonl", out)
        _write_jsonl(self.iter_dir(i) / "pairs" / "dropped.jsonl", dropped)
        return {"instructions": len(rows), "pairs": len(out), "reasons": dict(counts), "labels": label_check(out)}

    def _judgments(self, i: int) -> dict:
        cfg, a = self.cfg, self.cfg.annotate
        d = self.iter_dir(i) / "judgments"
        pairs = _read_jsonl(self.iter_dir(i) / "pairs" / "pairs.jsonl")
        if not pairs:
            _write_jsonl(d / "judgments.jsonl", [])
            _write_jsonl(d / "train.jsonl", [])
            return {"pairs": 0, "train_rows": 0}
        seed = stage_seed(cfg.seed, i, "judgments")
        with sampling_bar(2 * len(pairs) * a.samples, what="judgment", enabled=self.progress) as bar:
            j = judge_generative(self.model(i - 1), [r["prompt"] for r in pairs], [r["chosen"] for r in pairs],
                                 [r["rejected"] for r in pairs], template=cfg.generative, samples=a.samples,
                                 temperature=a.temperature, top_p=a.top_p, seed=seed, batch_size=cfg.batch_size,
                                 progress=bar)
        truth = np.tile(np.array([1, 2], np.int8), (len(pairs), 1))  # the good response is A, then B
        sel = rejection_sample(j.labels, truth, per_order=a.per_order, balance=a.balance, both_orders=a.both_orders,
                               seed=stage_seed(cfg.seed, i, "balance"))
        tpl = cfg.generative

        def shown(r, o):
            return (r["chosen"], r["rejected"]) if o == 0 else (r["rejected"], r["chosen"])

        if cfg.train.method == "sft":
            rows = [judgment_row(tpl, pairs[p]["prompt"], *shown(pairs[p], o), j.texts[p][o][s]) for p, o, s in sel.kept]
            no_rejected = 0
        else:
            chosen_rejected, no_rejected = preference_pairs(sel, seed)
            rows = [{"prompt": messages(tpl, pairs[p]["prompt"], *shown(pairs[p], o)),
                     "chosen": tpl.assistant_prefix + j.texts[p][o][c],
                     "rejected": tpl.assistant_prefix + j.texts[p][o][r]} for p, o, c, r in chosen_rejected]
        kept = set(sel.kept)
        _write_jsonl(d / "judgments.jsonl", [
            {"pair": pairs[p]["id"], "order": o, "sample": s, "label": "-AB"[int(j.labels[p, o, s])],
             "reason": j.reasons[p][o][s], "kept": (p, o, s) in kept, "text": j.texts[p][o][s]}
            for p in range(len(pairs)) for o in range(2) for s in range(a.samples)])
        _write_jsonl(d / "train.jsonl", rows)
        majority = j.majority()
        decided = [k for k, r in enumerate(pairs) if "good_correct" in r and r["good_correct"] != r["worse_correct"]]
        true_acc = (float(np.mean([(majority[k] > 0) == pairs[k]["good_correct"] if majority[k] else 0.5
                                   for k in decided])) if decided else None)
        return {"pairs": len(pairs), **sel.counts, "no_rejected_for_dpo": no_rejected, "train_rows": len(rows),
                "synthetic_label_agreement": float(np.mean(np.where(majority > 0, 1.0, np.where(majority < 0, 0.0, 0.5)))),
                "checker_agreement": true_acc, "checker_pairs": len(decided),
                "no_verdict_rate": j.no_verdict_rate}

    def _train(self, i: int, stop_at_step: int | None) -> dict:
        cfg, t = self.cfg, self.cfg.train
        rows = _read_jsonl(self.iter_dir(i) / "judgments" / "train.jsonl")
        if not rows:
            self.log(f"self-taught: iteration {i} kept no judgment; the judge stays {self.judge_source(i - 1)}")
            return {"trained": False, "rows": 0}
        source = cfg.model if t.init_from == "seed" else self.judge_source(i - 1)
        response = cfg.generative.max_new_tokens + 32
        tc = t.run_config({"model": source, "dtype": cfg.dtype, "param_dtype": cfg.dtype, "cache_dir": cfg.cache_dir,
                           "matmul_precision": cfg.matmul_precision, "distributed": cfg.distributed,
                           "output_dir": str(self.iter_dir(i) / "train"), "seed": cfg.seed + i, "judge": cfg.judge,
                           "data.train_file": str(self.iter_dir(i) / "judgments" / "train.jsonl"),
                           "data.max_prompt_length": t.data.max_length - response,
                           "data.max_response_length": response})
        if source == cfg.model and t.lora.enabled:
            base = self.seed_model  # LoRA trains beside the weights it is given, never donating them
        else:
            base = load_model(source, dtype=cfg.dtype)
        r = train(t.method, tc, model=base, stop_at_step=stop_at_step, progress=self.progress)
        if r.preempted:
            raise SelfTaughtStopped(f"stopped in stage train {i} at step {r.steps}; run the same command again "
                                    "to resume")
        self._models.pop(i, None)
        return {"trained": True, "rows": len(rows), "steps": r.steps, "last_loss": r.last_loss, "from": source}

    def _eval(self, i: int) -> dict:
        cfg, e = self.cfg, self.cfg.eval
        model = self.model(i)
        out: dict[str, Any] = {"judge": self.judge_source(i)}
        for name, rows in self.eval_rows.items():
            for mode in e.modes:
                r = judge_file(model, rows, mode=mode, judge=cfg.judge, generative=cfg.generative, samples=e.samples,
                               temperature=e.temperature, seed=cfg.seed, batch_size=cfg.batch_size,
                               judge_batch_size=cfg.judge_batch_size, progress=self.progress)
                (self.out / "eval" / f"iter{i}" / f"{name}.{mode}.json").write_text(json.dumps(r, indent=1))
                out[f"{name}/{mode}"] = {k: v for k, v in r.items() if k != "pairs"}
        return out


def last_judge(out: Path, cfg: SelfTaughtConfig, iterations: int | None = None) -> str:
    """The judge after `iterations` iterations (default: all of them): the last one that trained, or
    the seed model."""
    for k in range(cfg.iterations if iterations is None else iterations, 0, -1):
        done = read_stage(out / f"iter{k}" / "train")
        if done is not None and done["result"].get("trained"):
            return str(out / f"iter{k}" / "train")
    return cfg.model


def self_taught(cfg: SelfTaughtConfig, **kw) -> SelfTaughtResult:
    """Runs (or resumes) a self-taught evaluator run: `SelfTaughtRun(cfg).run()`."""
    stop_after, stop_at_step = kw.pop("stop_after", None), kw.pop("stop_at_step", None)
    try:
        return SelfTaughtRun(cfg, **kw).run(stop_after=stop_after, stop_at_step=stop_at_step)
    except ValueError as e:  # a prompt or response the sampler or judge refused: name the run
        raise SJError(f"self-taught ({cfg.output_dir}): {e}") from e
