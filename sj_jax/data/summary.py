"""Token-length statistics of built datasets: what the trainer will see, and what truncation costs.

Each file is tokenised with the same builders the trainer uses (`sft_example`, `pair_example`), so
the truncation counts here are the trainer's own.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sj_jax.data.examples import DataReport, cut_pair, cut_sft, pair_tokens, sft_tokens
from sj_jax.data.judgment import judgment_text
from sj_jax.judge.template import JudgeTemplate

EDGES = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def histogram(lengths: Sequence[int]) -> dict[str, int]:
    """Counts per length range, "<32", "32-63", ..., ">=4096"."""
    counts = np.histogram(np.asarray(lengths), bins=list(EDGES) + [np.inf])[0]
    names = [f"{a}-{b - 1}" if a else f"<{b}" for a, b in zip(EDGES[:-1], EDGES[1:])] + [f">={EDGES[-1]}"]
    return {n: int(c) for n, c in zip(names, counts)}


def _stats(lengths: Sequence[int]) -> dict[str, Any]:
    x = np.asarray(lengths)
    return {"min": int(x.min()), "median": float(np.median(x)), "p95": float(np.percentile(x, 95)),
            "max": int(x.max()), "histogram": histogram(x)}


def sft_lengths(tokenizer: Any, rows: Sequence[dict], max_length: int, template: JudgeTemplate,
                where: str) -> dict[str, Any]:
    """Token counts of SFT/JSFT rows before truncation, and the trainer's truncation report at `max_length`."""
    report = DataReport(rows=len(rows))
    lengths = []
    judge = lambda tok, row, w: judgment_text(tok, template, row, w)  # noqa: E731
    for i, row in enumerate(rows):
        w = f"{where}:{i + 1}"
        ids, mask = sft_tokens(tokenizer, row, w, judgment=judge)
        lengths.append(len(ids))
        cut_sft(ids, mask, w, max_length, report)
    return {"tokens": _stats(lengths), "truncation": report.as_dict()}


def pair_lengths(tokenizer: Any, rows: Sequence[dict], max_prompt: int, max_response: int,
                 where: str) -> dict[str, Any]:
    """Prompt and response token counts of pair rows, and the DPO truncation report."""
    report = DataReport(rows=len(rows))
    prompts, responses = [], []
    for i, row in enumerate(rows):
        full = pair_tokens(tokenizer, row, f"{where}:{i + 1}")
        prompts.append(len(full.prompt_ids))
        responses += [len(full.chosen_ids), len(full.rejected_ids)]
        cut_pair(full, max_prompt, max_response, report)
    return {"prompt_tokens": _stats(prompts), "response_tokens": _stats(responses), "truncation": report.as_dict()}
