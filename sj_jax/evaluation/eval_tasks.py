"""`sj-jax eval-tasks`: a model's policy accuracy on problem rows and judge accuracy on pair rows,
as JSON (every response kept) and Markdown tables."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sj_jax.core.config import Runtime
from sj_jax.core.errors import DataError
from sj_jax.core.jsonl import read_jsonl
from sj_jax.core.progress import sampling_bar
from sj_jax.evaluation.accuracy import judge_accuracy, policy_accuracy
from sj_jax.judge.template import DEFAULT_TEMPLATE, JudgeTemplate
from sj_jax.loading.model import load_model
from sj_jax.tasks.families import FAMILIES
from sj_jax.weights.registry import DEFAULT_MODEL


@dataclasses.dataclass(frozen=True)
class EvalTasksConfig(Runtime):
    model: str = DEFAULT_MODEL
    prompts_file: str | None = "data/prompts_test.jsonl"  # problem rows; "" or null = skip the policy evaluation
    pairs_file: str | None = "data/pairs_test.jsonl"  # pair rows; "" or null = skip the judge evaluation
    limit: int = 0  # first N rows per task (0 = all)
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 64  # sampler rows per compiled batch
    judge_batch_size: int = 16
    judge: JudgeTemplate = DEFAULT_TEMPLATE
    out: str = ""  # JSON results (default: next to prompts_file, eval_<model>.json)


def read_rows(path: str, fields: tuple[str, ...], limit: int) -> list[dict]:
    """Rows with the required string fields (errors name file:line), at most `limit` per task/subset."""
    rows, seen = [], {}
    for n, row in read_jsonl(path):
        for f in fields:
            if not isinstance(row.get(f), str) or not row[f].strip():
                if not (f == "prompt" and isinstance(row.get(f), list) and row[f]):
                    raise DataError(f"{path}:{n}: field {f!r} must be a non-empty string")
        if "task" in fields and row["task"] not in FAMILIES:
            raise DataError(f"{path}:{n}: unknown task {row['task']!r}; known: {', '.join(FAMILIES)}")
        group = row.get("task") or row.get("subset") or ""
        seen[group] = seen.get(group, 0) + 1
        if not limit or seen[group] <= limit:
            rows.append(row)
    return rows


def evaluate(cfg: EvalTasksConfig, log=print) -> dict[str, Any]:
    """Runs the configured evaluations; returns (and writes to `cfg.out`) tables and per-row results."""
    if not cfg.prompts_file and not cfg.pairs_file:
        raise DataError("eval-tasks: set prompts_file, pairs_file or both")
    model = load_model(cfg.model, dtype=cfg.dtype)
    result: dict[str, Any] = {"model": cfg.model, "config": dataclasses.asdict(cfg)}
    if cfg.prompts_file:
        rows = read_rows(cfg.prompts_file, ("prompt", "answer", "task"), cfg.limit)
        log(f"policy: {len(rows)} problems from {cfg.prompts_file} ...")
        with sampling_bar(len(rows), what="problem") as progress:
            ev = policy_accuracy(model, rows, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                 top_p=cfg.top_p, seed=cfg.seed, batch_size=cfg.batch_size, progress=progress)
        result["policy"] = {"by_task": ev.table("task"), "by_difficulty": ev.table("difficulty"),
                            "cut": int(sum(not f for f in ev.finished)),
                            "rows": [{"id": r.get("id"), "task": r["task"], "answer": r["answer"], "response": t,
                                      "correct": c, "answer_correct": a}
                                     for r, t, c, a in zip(rows, ev.responses, ev.metrics["accuracy"],
                                                           ev.metrics["answer_accuracy"])]}
    if cfg.pairs_file:
        pairs = read_rows(cfg.pairs_file, ("prompt", "chosen", "rejected"), cfg.limit)
        log(f"judge: {len(pairs)} pairs from {cfg.pairs_file} ...")
        with tqdm(total=2 * len(pairs), unit="prompt", file=sys.stderr) as bar:  # both orders of each pair
            acc, p = judge_accuracy(model, pairs, template=cfg.judge, batch_size=cfg.judge_batch_size,
                                    progress=bar.update)
        result["judge"] = {"by_subset": acc.table("subset"), "by_corruption": acc.table("corruption"),
                           "p_chosen": [float(x) for x in p]}
    out = Path(cfg.out or Path(cfg.prompts_file or cfg.pairs_file).with_name(
        f"eval_{Path(cfg.model).stem}.json"))
    out.write_text(json.dumps(result, indent=1))
    result["out"] = str(out)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The tables of an `evaluate` result."""
    lines = []
    if "policy" in result:
        lines += ["| task | n | accuracy (bare answer) | answer accuracy (lenient) |", "|---|---|---|---|"]
        for t, v in result["policy"]["by_task"].items():
            lines.append(f"| {t} | {v['n']} | {v['accuracy']:.3f} | {v['answer_accuracy']:.3f} |")
        lines.append("")
    if "judge" in result:
        for by in ("by_subset", "by_corruption"):
            if set(result["judge"][by]) <= {"", "all"}:
                continue  # rows without that field (e.g. a RewardBench file has no corruption kinds)
            lines += [f"| {by[3:]} | n | judge accuracy |", "|---|---|---|"]
            for t, v in result["judge"][by].items():
                lines.append(f"| {t or '-'} | {v['n']} | {v['accuracy']:.3f} |")
            lines.append("")
    return "\n".join(lines)
