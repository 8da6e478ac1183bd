"""Judgment pairs from the model's own mistakes: sample answers to problems, keep the wrong ones
(checked by the task's checker) as rejected responses against the known answer."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from sj_jax.api import Model
from sj_jax.generate import generate
from sj_jax.tasks.families import check
from sj_jax.tasks.suite import pair_row


@dataclasses.dataclass
class OwnSampleStats:
    problems: int = 0
    samples: int = 0
    correct: int = 0  # strictly correct (the bare answer)
    wrong: int = 0
    format_only: int = 0  # of the wrong ones: the right answer, not in the requested format
    empty: int = 0  # nothing but the end of turn: no response to pair
    cut: int = 0  # hit max_new_tokens before the end of turn (kept: a cut answer is still an answer)
    duplicate: int = 0  # the same wrong text twice for one problem
    pairs: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def own_wrong_pairs(model: Model, problems: Sequence[dict], *, samples: int = 4, per_problem: int = 1,
                    temperature: float = 1.0, top_p: float = 0.9, max_new_tokens: int = 64, seed: int = 0,
                    batch_size: int | None = 64,
                    progress: Callable[[int, int], None] | None = None) -> tuple[list[dict], OwnSampleStats]:
    """Pair rows of each problem row's answer against up to `per_problem` distinct wrong samples of
    the model's own (corruption "model_sample", or "model_sample_format" when the sample states the
    right answer but not as the bare answer asked for), and what sampling found."""
    g = generate(model, [p["prompt"] for p in problems], max_new_tokens=max_new_tokens, temperature=temperature,
                 top_p=top_p, num_samples=samples, seed=seed, batch_size=batch_size, progress=progress)
    stats = OwnSampleStats(problems=len(problems), samples=len(problems) * samples)
    pairs = []
    for i, problem in enumerate(problems):
        kept: list[tuple[str, str]] = []
        for text, finished in zip(g.texts[i], g.finished[i]):
            text = text.strip()
            stats.cut += not finished
            if not text:
                stats.empty += 1
            elif check(problem["task"], problem["answer"], text):
                stats.correct += 1
            else:
                stats.wrong += 1
                format_only = check(problem["task"], problem["answer"], text, strict=False)
                stats.format_only += format_only
                if any(text == t for t, _ in kept):
                    stats.duplicate += 1
                elif len(kept) < per_problem:
                    kept.append((text, "model_sample_format" if format_only else "model_sample"))
        for j, (text, kind) in enumerate(kept):
            row = pair_row(problem, text, kind)
            row["id"] = f"{row['id']}-{j}"
            pairs.append(row)
    stats.pairs = len(pairs)
    return pairs, stats
