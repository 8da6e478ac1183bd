"""JSFT judgment examples: the judge prompt (the very text `judge_pairs` scores) followed by the
verdict, and optionally a rationale; the loss covers the verdict (and rationale) only (SPEC 1.1).

Row: {"context": str, "response_a": str, "response_b": str, "label": "A" | "B",
      "rationale": str (optional), "principle": name of a principle (optional)}.
"""

from __future__ import annotations

from typing import Any

from sj_jax.core.errors import DataError
from sj_jax.data.chat import Span
from sj_jax.judge.template import DEFAULT_PRINCIPLES, JudgeTemplate, render_prompt
from sj_jax.weights.tokenizer import end_of_turn_ids

RATIONALE_SEPARATOR = "\n"


def judgment_text(tokenizer: Any, template: JudgeTemplate, row: Any, where: str,
                  principles=DEFAULT_PRINCIPLES) -> tuple[str, list[Span]]:
    """(text, character spans to train on) of one judgment example."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: field 'judgment' must be an object")
    for f in ("context", "response_a", "response_b"):
        if not isinstance(row.get(f), str) or not row[f].strip():
            raise DataError(f"{where}: judgment.{f} must be a non-empty string")
    if row.get("label") not in ("A", "B"):
        raise DataError(f"{where}: judgment.label must be \"A\" or \"B\", got {row.get('label')!r}")
    principle = None
    if row.get("principle") is not None:
        by_name = {p.name: p for p in principles}
        if row["principle"] not in by_name:
            raise DataError(f"{where}: judgment.principle {row['principle']!r} unknown; known: {', '.join(by_name)}")
        principle = by_name[row["principle"]]
    prompt = render_prompt(tokenizer, template, row["context"], row["response_a"], row["response_b"], principle)
    target = template.verdict_a if row["label"] == "A" else template.verdict_b
    rationale = row.get("rationale")
    if rationale is not None:
        if not isinstance(rationale, str) or not rationale.strip():
            raise DataError(f"{where}: judgment.rationale must be a non-empty string when present")
        eot = tokenizer.convert_ids_to_tokens(end_of_turn_ids(tokenizer)[-1])
        target += RATIONALE_SEPARATOR + rationale + eot
    return prompt + target, [(len(prompt), len(prompt) + len(target))]
