"""`sj-jax tournament`: self-rejection for N = 1, 2, 4, 8 ... on a prompt file, with a table.

The samples are drawn once, max(N) per prompt; the tournament for each N plays over the first N of
them, so every N sees the same draws and a difference between two N is the judge's, not the
sampler's luck. On task-suite rows (`task` and `answer` fields) each winner is checked: strict
accuracy (the bare answer the prompt asks for) and lenient (the right answer anywhere). On any other
prompts the winners are written, with their mean length.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from sj_jax.errors import ConfigError
from sj_jax.judge.template import DEFAULT_TEMPLATE, JudgeTemplate
from sj_jax.registry import DEFAULT_MODEL


@dataclasses.dataclass(frozen=True)
class TournamentConfig:
    model: str = DEFAULT_MODEL  # the policy that samples
    judge_model: str = ""  # the judging model; "" = the policy itself
    dtype: str = "float32"
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
    cache_dir: str | None = "auto"  # compiled executables and dequantised weights; "off" = none (sj_jax.cache)


def run(cfg: TournamentConfig, log=print) -> dict[str, Any]:
    """Samples, plays the tournaments for every N, writes `cfg.out` (JSON) and returns the result."""
    from sj_jax.api import load_model
    from sj_jax.data.chat import context_text
    from sj_jax.generate import generate
    from sj_jax.loops.tournament import pairwise_judge, run_brackets
    from sj_jax.progress import sampling_bar
    from sj_jax.tasks.families import check
    from sj_jax.loops.eval_tasks import read_rows

    if not cfg.n or any(k < 1 for k in cfg.n):
        raise ConfigError(f"n: a list of sample counts >= 1, got {list(cfg.n)}")
    policy = load_model(cfg.model, dtype=cfg.dtype)
    judge = policy if not cfg.judge_model else load_model(cfg.judge_model, dtype=cfg.dtype)
    rows = read_rows(cfg.prompts_file, ("prompt",), cfg.limit)
    scored = all(isinstance(r.get("task"), str) and isinstance(r.get("answer"), str) for r in rows)
    top = max(cfg.n)
    log(f"tournament: {len(rows)} prompts from {cfg.prompts_file}, {top} samples each, N = {list(cfg.n)}")
    with sampling_bar(len(rows) * top, what="sample") as progress:
        g = generate(policy, [r["prompt"] for r in rows], max_new_tokens=cfg.max_new_tokens,
                     temperature=cfg.temperature, top_p=cfg.top_p, num_samples=top, seed=cfg.seed,
                     batch_size=cfg.batch_size, progress=progress)
    contexts = [context_text(r["prompt"]) for r in rows]
    decide = pairwise_judge(judge, template=cfg.judge, batch_size=cfg.judge_batch_size)

    result: dict[str, Any] = {"model": cfg.model, "judge_model": cfg.judge_model or cfg.model,
                              "config": dataclasses.asdict(cfg), "by_n": {}}
    for k in cfg.n:
        brackets = run_brackets(contexts, [t[:k] for t in g.texts], decide, seed=cfg.seed)
        win = [b.winner for b in brackets]
        texts = [t[w] for t, w in zip(g.texts, win)]
        lengths = [len(ids[w]) for ids, w in zip(g.token_ids, win)]
        entry: dict[str, Any] = {"n": k, "mean_tokens": float(np.mean(lengths)),
                                 "cut": int(sum(not f[w] for f, w in zip(g.finished, win))),
                                 "judgments": int(sum(b.judged for b in brackets)),
                                 "rows": [{"id": r.get("id"), "winner": w, "response": t}
                                          for r, w, t in zip(rows, win, texts)]}
        if scored:
            strict = [check(r["task"], r["answer"], t) for r, t in zip(rows, texts)]
            lenient = [check(r["task"], r["answer"], t, strict=False) for r, t in zip(rows, texts)]
            entry.update(accuracy=float(np.mean(strict)), answer_accuracy=float(np.mean(lenient)))
            for r, s, le in zip(entry["rows"], strict, lenient):
                r.update(correct=s, answer_correct=le)
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
