"""Measured, never asserted: a policy's accuracy on problem rows (sampled with the KV-cached sampler,
checked by the task's checker) and a judge's accuracy on known-label pairs (`judge_pairs`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from sj_jax.data.chat import context_text
from sj_jax.inference.generate import generate
from sj_jax.judge.scoring import judge_pairs_detailed
from sj_jax.judge.template import JudgeTemplate
from sj_jax.loading.model import Model
from sj_jax.tasks.families import check


@dataclasses.dataclass
class Accuracy:
    """Per-row outcomes of one or more metrics, and their means by group (task, subset, difficulty...)."""

    metrics: dict[str, list[bool]]  # metric name -> outcome of every row
    groups: dict[str, list[str]]  # grouping name -> the group of every row

    def table(self, by: str) -> dict[str, dict[str, float]]:
        """{group: {"n": rows, metric: fraction true, ...}}, plus the group "all"."""
        names = self.groups[by]
        order = list(dict.fromkeys(str(g) for g in names)) + ["all"]
        out = {}
        for g in order:
            rows = [i for i, x in enumerate(names) if g == "all" or str(x) == g]
            out[g] = {"n": len(rows), **{m: float(np.mean([v[i] for i in rows])) for m, v in self.metrics.items()}}
        return out

    def summary(self, by: str = "task") -> dict[str, Any]:
        """{metric: overall fraction, ..., "n": rows, "by_<by>": {group: {"n", metric, ...}}}."""
        table = self.table(by)
        overall = table.pop("all")
        return {**{m: overall[m] for m in self.metrics}, "n": overall["n"], f"by_{by}": table}


def check_responses(rows: Sequence[dict], texts: Sequence[str]) -> Accuracy:
    """Each response checked against its problem row ({"task", "answer", "difficulty"?}): metric
    "accuracy" (the bare answer, as every prompt asks) and "answer_accuracy" (the right answer
    stated anywhere the lenient check finds it), grouped by task and difficulty."""
    if len(rows) != len(texts):
        raise ValueError(f"texts: {len(texts)} responses for {len(rows)} rows")
    metrics = {"accuracy": [check(r["task"], r["answer"], t) for r, t in zip(rows, texts)],
               "answer_accuracy": [check(r["task"], r["answer"], t, strict=False) for r, t in zip(rows, texts)]}
    groups = {"task": [r["task"] for r in rows], "difficulty": [str(r.get("difficulty", "")) for r in rows]}
    return Accuracy(metrics, groups)


@dataclasses.dataclass
class PolicyEval(Accuracy):
    responses: list[str] = dataclasses.field(default_factory=list)
    finished: list[bool] = dataclasses.field(default_factory=list)  # stopped at end of turn, not cut
    lengths: list[int] = dataclasses.field(default_factory=list)  # response tokens, the stop token included


def policy_accuracy(model: Model, rows: Sequence[dict], *, max_new_tokens: int = 64, temperature: float = 0.0,
                    top_p: float = 1.0, seed: int = 0, batch_size: int | None = 64,
                    progress: Callable[[int, int], None] | None = None) -> PolicyEval:
    """Samples one response per problem row ({"prompt", "answer", "task", ...}; temperature 0 =
    greedy) and checks it (`check_responses`)."""
    if not rows:
        raise ValueError("rows: no problems to evaluate")
    g = generate(model, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens, temperature=temperature,
                 top_p=top_p, seed=seed, batch_size=batch_size, progress=progress)
    texts = [t[0] for t in g.texts]
    acc = check_responses(rows, texts)
    return PolicyEval(acc.metrics, acc.groups, texts, [f[0] for f in g.finished], [len(t[0]) for t in g.token_ids])


def judge_accuracy(model: Model, pairs: Sequence[dict], *, template: JudgeTemplate | None = None,
                   principles: Sequence[Any] | None = None, batch_size: int = 16,
                   progress: Callable[[int], None] | None = None) -> tuple[Accuracy, np.ndarray]:
    """(accuracy, p(chosen > rejected) per pair) of the model as a pairwise judge on rows
    {"prompt", "chosen", "rejected", "subset"?, "corruption"?}.

    Metrics per pair: "accuracy" (both orders averaged, as `judge_pairs` decides: correct when
    p > 0.5; an exact tie counts as wrong), "accuracy_chosen_first" and "accuracy_chosen_second"
    (each order read alone: the verdict token with the higher probability) and "swap_consistent"
    (both orders, read alone, name the same response). With principles, the per-order metrics are
    those of the first principle."""
    if not pairs:
        raise ValueError("pairs: no pairs to judge")
    j = judge_pairs_detailed(model, [context_text(r["prompt"]) for r in pairs], [r["chosen"] for r in pairs],
                             [r["rejected"] for r in pairs], template=template, principles=principles,
                             batch_size=batch_size, progress=progress)
    p = j.prob_first
    order0, order1 = j.probs[:, 0, 0], j.probs[:, 0, 1]  # [pairs, 2]: p(A), p(B) in each order
    groups = {"subset": [r.get("subset", "all") for r in pairs],
              "corruption": [r.get("corruption", "") for r in pairs]}
    metrics = {"accuracy": [bool(x > 0.5) for x in p],
               "accuracy_chosen_first": [bool(a > b) for a, b in order0],
               "accuracy_chosen_second": [bool(b > a) for a, b in order1],
               "swap_consistent": [bool(x) for x in j.swap_consistent[:, 0]]}
    return Accuracy(metrics, groups), p
