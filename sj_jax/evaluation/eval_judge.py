"""`sj-jax eval-judge`: a pairwise judge on RewardBench-format rows, each pair judged in both orders.

Two modes: `verdict`, the one-pass judge (p(" A") and p(" B") after the template's assistant
prefix, `sj_jax.judge.scoring`), and `generative`, the judge that writes an evaluation and then a
verdict (`sj_jax.judge.generative`, `samples` judgments an order, majority vote). Per pair, as
RewardBench scores: 1 when the verdict names the chosen response, 0 when it names the rejected
one, 0.5 when there is none (a tie, or no verdict parsed). Reported per subset and overall:
accuracy, the rate of pairs without a verdict (`no_verdict`: the votes tie or none was parsed;
the judgments without a parsed verdict are counted apart, by reason), accuracy with the chosen response shown first and shown second
(each order read alone) and swap consistency (both orders, read alone, name the same response).
The same command scores any model sj-jax loads: the base model, a JSFT or SELF-JUDGE run's judge,
an iteration of the self-taught loop, so every judge is compared on the same files.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from tqdm import tqdm

from sj_jax.core.config import Runtime, read_yaml
from sj_jax.core.errors import ConfigError
from sj_jax.data.chat import context_text
from sj_jax.data.loaders import load_rewardbench
from sj_jax.evaluation.accuracy import Accuracy
from sj_jax.judge.generative import judge_generative
from sj_jax.judge.generative_template import GenerativeTemplate
from sj_jax.judge.scoring import judge_pairs_detailed
from sj_jax.judge.template import DEFAULT_TEMPLATE, JudgeTemplate
from sj_jax.loading.model import load_model
from sj_jax.weights.registry import DEFAULT_MODEL

MODES = ("verdict", "generative")
METRICS = ("accuracy", "no_verdict", "accuracy_chosen_first", "accuracy_chosen_second", "swap_consistent")


@dataclasses.dataclass(frozen=True)
class EvalJudgeConfig(Runtime):
    """One evaluation. `judge`: the one-pass template (None: the model's run folder's own, else the
    default); `generative`: the generative template; `samples` judgments an order (generative)."""

    model: str = DEFAULT_MODEL
    data: str = ""  # RewardBench-format JSONL: {"prompt", "chosen", "rejected", "subset"?, "id"?}
    mode: Literal["verdict", "generative"] = "verdict"
    samples: int = 1
    temperature: float = 0.0  # generative; 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    limit: int = 0  # the first N pairs of each subset (0 = all)
    out: str = ""  # the JSON results ("" = beside the data: <data stem>.<mode>.judge.json in the working folder)
    batch_size: int = 64  # generative: sampler rows a compiled batch
    judge_batch_size: int = 16  # verdict: judge prompts a forward pass
    max_prompt_tokens: int = 0  # the longest judge prompt (0 = what the model's positions allow); bounds memory
    too_long: Literal["error", "truncate"] = "error"  # a longer prompt: an error, or its context's start cut (counted)
    judge: JudgeTemplate | None = None
    generative: GenerativeTemplate = GenerativeTemplate()

    def __post_init__(self):
        if self.samples < 1:
            raise ConfigError(f"samples: must be at least 1, got {self.samples}")
        if self.max_prompt_tokens < 0:
            raise ConfigError(f"max_prompt_tokens: must be 0 (the model's limit) or more, got {self.max_prompt_tokens}")
        if self.too_long not in ("error", "truncate"):
            raise ConfigError(f"too_long: one of error, truncate; got {self.too_long!r}")
        if self.mode == "verdict" and self.samples != 1:
            raise ConfigError("samples: the verdict mode reads one forward pass an order; samples count only in "
                              "--mode generative")


def read_pairs(path: str | Path, limit: int = 0) -> list[dict]:
    """RewardBench-format rows (strict: a malformed row names the file and line), the first `limit`
    of each subset (0 = all), in file order."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data: {path}: no such file")
    rows, _ = load_rewardbench(path, strict=True)
    if limit:
        seen: dict[str, int] = {}
        kept = []
        for r in rows:
            s = r.get("subset", "all")
            if seen.get(s, 0) < limit:
                kept.append(r)
                seen[s] = seen.get(s, 0) + 1
        rows = kept
    if not rows:
        raise ConfigError(f"data: {path}: no pairs")
    return rows


def _score(names_chosen: np.ndarray, names_rejected: np.ndarray) -> np.ndarray:
    """1 / 0.5 / 0 per pair: the verdict names the chosen response / neither / the rejected one."""
    return np.where(names_chosen, 1.0, np.where(names_rejected, 0.0, 0.5))


def verdict_outcomes(j) -> dict[str, np.ndarray]:
    """Per-pair outcomes (`METRICS`) of the one-pass judge's `Judgments` whose first response is the
    chosen one: the verdict of both orders averaged (an exact tie is no verdict); each order alone by
    its more probable verdict token."""
    p = j.prob_first
    o0, o1 = j.probs[:, 0, 0], j.probs[:, 0, 1]  # [pairs, 2]: p(A), p(B) with chosen first, then second
    return {"accuracy": _score(p > 0.5, p < 0.5), "no_verdict": (p == 0.5).astype(float),
            "accuracy_chosen_first": _score(o0[:, 0] > o0[:, 1], o0[:, 0] < o0[:, 1]),
            "accuracy_chosen_second": _score(o1[:, 1] > o1[:, 0], o1[:, 1] < o1[:, 0]),
            "swap_consistent": j.swap_consistent[:, 0].astype(float)}


def generative_outcomes(judgments) -> dict[str, np.ndarray]:
    """Per-pair outcomes (`METRICS`) of `GenerativeJudgments` whose first response is the chosen one."""
    m, m0, m1 = judgments.majority(), judgments.majority(0), judgments.majority(1)
    return {"accuracy": _score(m > 0, m < 0), "no_verdict": (m == 0).astype(float),
            "accuracy_chosen_first": _score(m0 > 0, m0 < 0), "accuracy_chosen_second": _score(m1 > 0, m1 < 0),
            "swap_consistent": judgments.swap_consistent.astype(float)}


def judge_file(model, rows: Sequence[dict], *, mode: str, judge: JudgeTemplate, generative: GenerativeTemplate,
               samples: int = 1, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 64,
               judge_batch_size: int = 16, progress: bool = False, max_prompt_tokens: int = 0,
               too_long: str = "error") -> dict[str, Any]:
    """Judges `rows` in `mode`; returns the table by subset, the sample-level no-verdict rate and
    reasons (generative), the pairs whose contexts were cut to fit `max_prompt_tokens` (`too_long`:
    truncate) and how many tokens, per-pair results and the seconds it took."""
    if mode not in MODES:
        raise ConfigError(f"mode: unknown {mode!r}; one of {', '.join(MODES)}")
    if too_long not in ("error", "truncate"):
        raise ConfigError(f"too_long: one of error, truncate; got {too_long!r}")
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    contexts = [context_text(r["prompt"]) for r in rows]
    chosen, rejected = [r["chosen"] for r in rows], [r["rejected"] for r in rows]
    fit = {"max_prompt_tokens": max_prompt_tokens, "truncate": too_long == "truncate"}
    if mode == "verdict":
        with tqdm(total=2 * len(rows), unit="prompt", file=sys.stderr, disable=not progress) as bar:
            j = judge_pairs_detailed(model, contexts, chosen, rejected, template=judge, batch_size=judge_batch_size,
                                     progress=bar.update, **fit)
        out = verdict_outcomes(j)
        per_pair = [{} for _ in rows]
    else:
        with tqdm(total=2 * samples * len(rows), unit="judgment", file=sys.stderr, disable=not progress) as bar:
            j = judge_generative(model, contexts, chosen, rejected, template=generative, samples=samples,
                                 temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size,
                                 progress=lambda n, _: bar.update(n), **fit)
        out = generative_outcomes(j)
        reasons = [r for pair in j.reasons for order in pair for r in order]
        extra = {"judgment_no_verdict_rate": j.no_verdict_rate,
                 "judgment_reasons": {k: reasons.count(k) for k in sorted(set(reasons))},
                 "judgment_cut": int((~j.finished).sum())}
        per_pair = [{"judgments": j.texts[i], "labels": j.labels[i].tolist()} for i in range(len(rows))]
    acc = Accuracy({k: list(map(float, v)) for k, v in out.items()}, {"subset": [r.get("subset", "all") for r in rows]})
    return {"mode": mode, "samples": samples if mode == "generative" else 1, "by_subset": acc.table("subset"),
            **extra, "context_cut": {"pairs": int((j.context_cut > 0).sum()), "tokens": int(j.context_cut.sum())},
            "seconds": round(time.perf_counter() - t0, 1),
            "pairs": [{"id": r.get("id"), "subset": r.get("subset", "all"),
                       **{k: float(out[k][i]) for k in METRICS}, "context_cut": int(j.context_cut[i]), **per_pair[i]}
                      for i, r in enumerate(rows)]}


def run_template(model_path: str) -> JudgeTemplate | None:
    """The one-pass judge template a run folder was trained or run with (its config's `judge`), if any."""
    cfg = Path(model_path) / "config.yaml"
    if not cfg.is_file():
        return None
    judge = (read_yaml(cfg.read_text()) or {}).get("judge")
    return JudgeTemplate.from_dict(judge, f"{cfg}: judge") if isinstance(judge, dict) else None


def evaluate(cfg: EvalJudgeConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`sj-jax eval-judge`: reads the file (a bad row fails before the model loads), judges, writes JSON."""
    if not cfg.data:
        raise ConfigError("data: not set (a RewardBench-format JSONL file: --data FILE)")
    rows = read_pairs(cfg.data, cfg.limit)
    template = cfg.judge or run_template(cfg.model) or DEFAULT_TEMPLATE
    model = load_model(cfg.model, dtype=cfg.dtype)
    log(f"eval-judge: {len(rows)} pairs of {cfg.data}, mode {cfg.mode}, model {cfg.model}")
    result = judge_file(model, rows, mode=cfg.mode, judge=template, generative=cfg.generative, samples=cfg.samples,
                        max_prompt_tokens=cfg.max_prompt_tokens, too_long=cfg.too_long,
                        temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, batch_size=cfg.batch_size,
                        judge_batch_size=cfg.judge_batch_size, progress=True)
    result = {"model": cfg.model, "data": cfg.data, **result}
    out = Path(cfg.out or f"{Path(cfg.data).stem}.{cfg.mode}.judge.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    result["out"] = str(out)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The table: a row per subset and one for all pairs."""
    head = ["subset", "pairs", "accuracy", "tie or no verdict", "chosen first", "chosen second", "swap consistent"]
    lines = [f"judge {result.get('model', '')} on {result.get('data', '')} ({result['mode']}"
             + (f", {result['samples']} sample(s) an order" if result["mode"] == "generative" else "") + ")", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for subset, t in result["by_subset"].items():
        lines.append(f"| {subset} | {t['n']} | " + " | ".join(f"{t[k]:.3f}" for k in METRICS) + " |")
    cut = result.get("context_cut", {})
    if cut.get("pairs"):
        lines += ["", f"contexts cut to fit max_prompt_tokens: {cut['pairs']} pairs, {cut['tokens']} tokens in all "
                      "(each lost its first tokens)"]
    if "judgment_no_verdict_rate" in result:
        lines += ["", f"judgments without a verdict: {result['judgment_no_verdict_rate']:.3f} "
                      f"({', '.join(f'{k} {v}' for k, v in result['judgment_reasons'].items())})"]
    return "\n".join(lines)
