"""`sj-jax tournament`: self-rejection for N = 1, 2, 4, 8 ... on a prompt file, with a table.

The samples are drawn once, max(N) per prompt; the tournament for each N plays over the first N of
them (`tournaments_by_n`), so every N sees the same draws and a difference between two N is the
judge's, not the sampler's luck. On task-suite rows (`task` and `answer` fields) each winner is checked: strict
accuracy (the bare answer the prompt asks for) and lenient (the right answer anywhere). On any other
prompts the winners are written, with their mean length.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from sj_jax.algorithms.tournament import tournaments_by_n
from sj_jax.core.config import Runtime
from sj_jax.core.errors import ConfigError
from sj_jax.core.progress import sampling_bar
from sj_jax.evaluation.accuracy import check_responses
from sj_jax.evaluation.eval_tasks import read_rows
from sj_jax.judge.template import DEFAULT_TEMPLATE, JudgeTemplate
from sj_jax.loading.model import load_model
from sj_jax.weights.registry import DEFAULT_MODEL


@dataclasses.dataclass(frozen=True)
class TournamentConfig(Runtime):
    model: str = DEFAULT_MODEL  # the policy that samples
    judge_model: str = ""  # the judging model; "" = the policy itself
    prompts_file: str = "data/prompts_test.jsonl"  # {"prompt": ...} rows (task-suite rows are also scored)
    n: tuple[int, ...] = (1, 2, 4, 8)
    limit: int = 0  # first N rows per task (0 = all)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 0.9
    seed: int = 0
    batch_size: int = 64  # sampler rows per compiled batch
    judge_batch_size: int = 16
    judge: JudgeTemplate = DEFAULT_TEMPLATE
    out: str = ""  # JSON results (default: tournament_<model>.json beside prompts_file)


def run(cfg: TournamentConfig, log=print) -> dict[str, Any]:
    """Samples, plays the tournaments for every N, writes `cfg.out` (JSON) and returns the result."""
    if not cfg.n or any(k < 1 for k in cfg.n):
        raise ConfigError(f"n: a list of sample counts >= 1, got {list(cfg.n)}")
    policy = load_model(cfg.model, dtype=cfg.dtype)
    judge = policy if not cfg.judge_model else load_model(cfg.judge_model, dtype=cfg.dtype)
    rows = read_rows(cfg.prompts_file, ("prompt",), cfg.limit)
    scored = all(isinstance(r.get("task"), str) and isinstance(r.get("answer"), str) for r in rows)
    log(f"tournament: {len(rows)} prompts from {cfg.prompts_file}, {max(cfg.n)} samples each, N = {list(cfg.n)}")
    with sampling_bar(len(rows) * max(cfg.n), what="sample") as progress:
        played = tournaments_by_n(policy, [r["prompt"] for r in rows], cfg.n, judge=judge, template=cfg.judge,
                                  max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                  seed=cfg.seed, batch_size=cfg.batch_size, judge_batch_size=cfg.judge_batch_size,
                                  progress=progress)

    result: dict[str, Any] = {"model": cfg.model, "judge_model": cfg.judge_model or cfg.model,
                              "config": dataclasses.asdict(cfg), "by_n": {}}
    for k, t in played.items():
        win = [b.winner for b in t.brackets]
        entry: dict[str, Any] = {"n": k, "mean_tokens": float(np.mean([len(ids) for ids in t.winner_token_ids])),
                                 "cut": int(sum(not f[w] for f, w in zip(t.finished, win))),
                                 "judgments": int(sum(b.judged for b in t.brackets)),
                                 "rows": [{"id": r.get("id"), "winner": w, "response": x}
                                          for r, w, x in zip(rows, win, t.winners)]}
        if scored:
            acc = check_responses(rows, t.winners)
            entry.update({key: v for key, v in acc.summary("task").items() if key != "n"})  # "n" is N here
            for r, ok, le in zip(entry["rows"], acc.metrics["accuracy"], acc.metrics["answer_accuracy"]):
                r.update(correct=ok, answer_correct=le)
        result["by_n"][str(k)] = entry
        log(f"N = {k}: {entry.get('accuracy', float('nan')):.3f} strict, {entry['mean_tokens']:.1f} tokens")
    out = Path(cfg.out or Path(cfg.prompts_file).with_name(f"tournament_{Path(str(cfg.model)).name}.json"))
    out.write_text(json.dumps(result, indent=1))
    result["out"] = str(out)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The table of a `run` result: one row per N."""
    scored = any("accuracy" in e for e in result["by_n"].values())
    head = "| N | " + ("strict | lenient | " if scored else "") + "mean tokens | cut | judgments |"
    lines = [f"Tournament: {result['model']} (judge: {result['judge_model']})", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for e in result["by_n"].values():
        acc = f"{e['accuracy']:.3f} | {e['answer_accuracy']:.3f} | " if scored else ""
        lines.append(f"| {e['n']} | {acc}{e['mean_tokens']:.1f} | {e['cut']} | {e['judgments']} |")
    return "\n".join(lines)
