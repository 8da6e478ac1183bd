"""Token-length statistics of built datasets: what the trainer will see, and what truncation costs.

Each file is tokenised with the same builders the trainer uses (`sft_example`, `pair_example`), so
the truncation counts here are the trainer's own.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sj_jax.data.chat import assistant_spans, render, tokens_with_mask
from sj_jax.data.examples import DataReport, pair_example, sft_example
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
        if "judgment" in row:
            text, spans = judge(tokenizer, row["judgment"], w)
        else:
            sft_messages = row.get("messages") or [{"role": "user", "content": row["prompt"]},
                                                   {"role": "assistant", "content": row["response"]}]
            text, spans = assistant_spans(tokenizer, sft_messages, w)
        lengths.append(len(tokens_with_mask(tokenizer, text, spans)[0]))
        sft_example(tokenizer, row, w, max_length, report, judgment=judge)
    return {"tokens": _stats(lengths), "truncation": report.as_dict()}


def pair_lengths(tokenizer: Any, rows: Sequence[dict], max_prompt: int, max_response: int,
                 where: str) -> dict[str, Any]:
    """Prompt and response token counts of pair rows, and the DPO truncation report."""
    report = DataReport(rows=len(rows))
    prompts, responses = [], []
    for i, row in enumerate(rows):
        w = f"{where}:{i + 1}"
        msgs = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        prompts.append(len(tokenizer(render(tokenizer, msgs, add_generation_prompt=True),
                                     add_special_tokens=False)["input_ids"]))
        full = pair_example(tokenizer, row, w, 1 << 30, 1 << 30, DataReport())
        responses += [len(full.chosen_ids), len(full.rejected_ids)]
        pair_example(tokenizer, row, w, max_prompt, max_response, report)
    return {"prompt_tokens": _stats(prompts), "response_tokens": _stats(responses), "truncation": report.as_dict()}
