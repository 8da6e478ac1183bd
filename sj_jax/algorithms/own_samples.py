"""Judgment pairs from the model's own answers, labelled by the task suite's checker, and `sj-jax
data build` with them (`build_with_own_samples`). Two pairings (`own_samples.pairing`):

- "answer": the problem's known answer (chosen) against a wrong sample of the model's (rejected);
- "own": a correct finished sample of the model's (chosen) against a wrong one of the same problem
  (rejected): both written by the model, so a judge trained on them must read what separates the
  policy's own answers (as RLHF reward models learn from comparisons of the SFT policy's samples),
  not the surface of code-made corruptions. A problem whose samples are all right or all wrong
  gives none.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Sequence

import numpy as np

from sj_jax.core.progress import sampling_bar
from sj_jax.data.build import DataBuildConfig, build
from sj_jax.inference.generate import generate
from sj_jax.loading.model import Model, load_model
from sj_jax.tasks.families import check
from sj_jax.tasks.suite import pair_row


@dataclasses.dataclass
class OwnSampleStats:
    problems: int = 0
    samples: int = 0
    correct: int = 0  # strictly correct (the bare answer); a cut one is never paired
    wrong: int = 0
    format_only: int = 0  # of the wrong ones: the right answer, not in the requested format
    empty: int = 0  # nothing but the end of turn: no response to pair
    cut: int = 0  # hit max_new_tokens before the end of turn (a wrong one is kept: still an answer)
    duplicate: int = 0  # the same wrong text twice for one problem
    mixed: int = 0  # problems with a correct and a wrong sample (pairing "own" pairs only these)
    pairs: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def own_pairs(model: Model, problems: Sequence[dict], *, pairing: str = "answer", samples: int = 4,
              per_problem: int = 1, temperature: float = 1.0, top_p: float = 0.9, max_new_tokens: int = 64,
              seed: int = 0, batch_size: int | None = 64,
              progress: Callable[[int, int], None] | None = None) -> tuple[list[dict], OwnSampleStats]:
    """`samples` answers a problem row from `model`, each labelled by the checker, and up to
    `per_problem` pair rows a problem (`pairing` "answer" or "own", see the module docstring). A
    rejected response is `corruption` "model_sample", or "model_sample_format" where it states the
    right answer but not as the bare answer asked for; own pairs carry `pairing: "own"`."""
    g = generate(model, [p["prompt"] for p in problems], max_new_tokens=max_new_tokens, temperature=temperature,
                 top_p=top_p, num_samples=samples, seed=seed, batch_size=batch_size, progress=progress)
    stats = OwnSampleStats(problems=len(problems), samples=len(problems) * samples)
    rng = np.random.default_rng([seed, 13])
    rows = []
    for problem, texts, finished in zip(problems, g.texts, g.finished, strict=True):
        right, wrong = _label(problem, texts, finished, stats)
        stats.mixed += bool(right and wrong)
        if pairing == "answer":
            kept = [(problem["answer"], w) for w in wrong[:per_problem]]
        else:
            combos = list(itertools.product(right, wrong))
            pick = sorted(rng.choice(len(combos), size=min(per_problem, len(combos)), replace=False))
            kept = [combos[i] for i in pick]
        for j, (chosen, (text, kind)) in enumerate(kept):
            row = pair_row(problem, text, kind)
            if pairing == "own":
                row.update(id=f"{problem['id']}-own-{j}", chosen=chosen, pairing="own")
            else:
                row["id"] = f"{row['id']}-{j}"
            rows.append(row)
    stats.pairs = len(rows)
    return rows, stats


def _label(problem: dict, texts: Sequence[str], finished: Sequence[bool],
           stats: OwnSampleStats) -> tuple[list[str], list[tuple[str, str]]]:
    """(the distinct correct finished samples, the distinct wrong ones with their kind), counted."""
    right: list[str] = []
    wrong: list[tuple[str, str]] = []
    for text, done in zip(texts, finished, strict=True):
        text = text.strip()
        stats.cut += not done
        if not text:
            stats.empty += 1
        elif check(problem["task"], problem["answer"], text):
            stats.correct += 1
            if done and text not in right:  # a cut answer is never right (the oracle rule)
                right.append(text)
        else:
            stats.wrong += 1
            format_only = check(problem["task"], problem["answer"], text, strict=False)
            stats.format_only += format_only
            if any(text == t for t, _ in wrong):
                stats.duplicate += 1
            else:
                wrong.append((text, "model_sample_format" if format_only else "model_sample"))
    return right, wrong


def build_with_own_samples(cfg: DataBuildConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`sj_jax.data.build.build`, with pairs of the model's own answers when `cfg.own_samples.enabled`
    (sampled from `own_samples.model`, else `cfg.model`)."""
    if not cfg.own_samples.enabled:
        return build(cfg, log=log)
    o = cfg.own_samples
    model = load_model(o.model or cfg.model, dtype=cfg.dtype)

    def sample_pairs(problems: list[dict]) -> tuple[list[dict], dict[str, int]]:
        with sampling_bar(len(problems) * o.samples) as progress:
            pairs, stats = own_pairs(model, problems, pairing=o.pairing, samples=o.samples, per_problem=o.per_problem,
                                     temperature=o.temperature, top_p=o.top_p, max_new_tokens=o.max_new_tokens,
                                     seed=cfg.seed, batch_size=o.batch_size, progress=progress)
        return pairs, stats.as_dict()

    return build(cfg, log=log, own_pairs=sample_pairs)
