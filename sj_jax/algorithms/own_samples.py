"""Judgment pairs from the model's own mistakes: sample answers to problems, keep the wrong ones
(checked by the task's checker) as rejected responses against the known answer; and `sj-jax data build`
with them (`build_with_own_samples`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

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


def build_with_own_samples(cfg: DataBuildConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`sj_jax.data.build.build`, with pairs of `cfg.model`'s own wrong answers when `cfg.own_samples.enabled`."""
    if not cfg.own_samples.enabled:
        return build(cfg, log=log)
    o = cfg.own_samples
    model = load_model(cfg.model, dtype=cfg.dtype)

    def own_pairs(problems: list[dict]) -> tuple[list[dict], dict[str, int]]:
        with sampling_bar(len(problems) * o.samples) as progress:
            pairs, stats = own_wrong_pairs(model, problems, samples=o.samples, per_problem=o.per_problem,
                                           temperature=o.temperature, top_p=o.top_p, max_new_tokens=o.max_new_tokens,
                                           seed=cfg.seed, batch_size=o.batch_size, progress=progress)
        return pairs, stats.as_dict()

    return build(cfg, log=log, own_pairs=own_pairs)
