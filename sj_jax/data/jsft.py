"""The JSFT mixture (SPEC 1.1): instruction rows plus judgment rows made from preference pairs.

Every pair becomes judgment rows in both orders (better response shown first with label "A", then
second with label "B"), so labels are balanced and position carries no signal. With principles,
each pair gives one judgment per principle (its own system message); a pair with per-principle
preferences (`by_principle`, e.g. UltraFeedback) is labelled by that principle's preference and
skipped, counted, where the principle ties. With rationales, a pair's `rationale` (where {chosen}
and {rejected} stand for the letters the two responses get) follows the verdict. The mixing ratio
subsamples whole pairs (both orders stay together) or instruction rows, then everything is
shuffled with the seed.

With `generative_rows`, each pair also gives two rows in the generative judge's form (both orders,
the `GenerativeTemplate` of the build): an evaluation that first works the problem (the pair's
`explanation`, e.g. "2 + 3 = 5."), then says what each response gives and which one is correct, then
the verdict. A judge that writes its evaluation first can then decide by content: a one-pass judge
has to name a letter before any work.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Sequence

import numpy as np

from sj_jax.core.errors import ConfigError
from sj_jax.data.chat import context_text
from sj_jax.judge.generative_template import GenerativeTemplate, judgment_row
from sj_jax.judge.template import DEFAULT_PRINCIPLES


@dataclasses.dataclass(frozen=True)
class JSFTConfig:
    judgment_ratio: float | None = None  # judgment rows per instruction row; None = all of both
    principles: tuple[str, ...] = ()  # principle names (judge.template DEFAULT_PRINCIPLES); () = the judge's system
    rationale: bool = False  # train on the pair's rationale after the verdict
    generative_rows: bool = False  # each pair also as generative judgments that work the problem first

    def __post_init__(self):
        known = [p.name for p in DEFAULT_PRINCIPLES]
        for p in self.principles:
            if p not in known:
                raise ConfigError(f"jsft.principles: unknown principle {p!r}; known: {', '.join(known)}")
        if self.judgment_ratio is not None and not self.judgment_ratio > 0:
            raise ConfigError(f"jsft.judgment_ratio: must be > 0 (or null for all rows), got {self.judgment_ratio}")


def _letters(rationale: str, chosen_letter: str) -> str:
    other = "B" if chosen_letter == "A" else "A"
    # str.replace, not format: rationales quote task text, which may hold braces.
    return rationale.replace("{chosen}", chosen_letter).replace("{rejected}", other)


def worked_evaluation(explanation: str, response_a: str, response_b: str, label: str) -> str:
    """A generative judgment's evaluation that works the problem before it decides."""
    return (f"{explanation.strip()} Response A says {response_a.strip()}. Response B says {response_b.strip()}. "
            f"So Response {label} is correct.")


def generative_rows(pair: dict, pid: str, context: str, template: GenerativeTemplate,
                    counts: Counter) -> list[dict]:
    """The pair's two generative judgment rows (chosen shown first, then second) as chat rows
    {"id", "pair_id", "messages"}, `context` its prompt as text; none, counted, for a pair without
    an `explanation`."""
    explanation = pair.get("explanation")
    if not isinstance(explanation, str) or not explanation.strip():
        counts["generative_no_explanation"] += 1
        return []
    out = []
    for label, (a, b) in (("A", (pair["chosen"], pair["rejected"])), ("B", (pair["rejected"], pair["chosen"]))):
        text = worked_evaluation(explanation, a, b, label) + template.verdict_text(label)
        row = judgment_row(template, context, a, b, text)
        out.append({"id": f"{pid}-{'ab' if label == 'A' else 'ba'}-generative", "pair_id": pid, **row})
        counts["generative_judgment"] += 1
    return out


def judgment_rows(pairs: Sequence[dict], principles: Sequence[str] = (), rationale: bool = False,
                  counts: Counter | None = None, generative: GenerativeTemplate | None = None) -> list[dict]:
    """Judgment rows {"id", "pair_id", "judgment": {context, response_a, response_b, label, ...}}
    for pair rows {"id", "prompt", "chosen", "rejected", "by_principle"?, "rationale"?,
    "explanation"?}; with a `generative` template, each pair's generative rows too."""
    counts = Counter() if counts is None else counts
    out = []
    for k, pair in enumerate(pairs):
        pid = str(pair.get("id", k))
        context = context_text(pair["prompt"])
        for principle in principles or (None,):
            better_is_chosen = True
            if principle is not None and "by_principle" in pair:
                sign = pair["by_principle"].get(principle)
                if sign is None:
                    counts[f"principle_tie:{principle}"] += 1
                    continue
                better_is_chosen = sign > 0
            better, worse = ((pair["chosen"], pair["rejected"]) if better_is_chosen
                             else (pair["rejected"], pair["chosen"]))
            for label, (a, b) in (("A", (better, worse)), ("B", (worse, better))):
                j: dict[str, Any] = {"context": context, "response_a": a, "response_b": b, "label": label}
                if principle is not None:
                    j["principle"] = principle
                if rationale:
                    # A rationale explains why the chosen response is better; it does not fit a principle
                    # under which the rejected one wins.
                    if pair.get("rationale") and better_is_chosen:
                        j["rationale"] = _letters(pair["rationale"], label)
                    else:
                        counts["no_rationale"] += 1
                suffix = f"{principle}-" if principle else ""
                out.append({"id": f"{pid}-{suffix}{'ab' if label == 'A' else 'ba'}", "pair_id": pid, "judgment": j})
                counts["judgment"] += 1
        if generative is not None:
            out += generative_rows(pair, pid, context, generative, counts)
    return out


def mix(instructions: Sequence[dict], judgments: Sequence[dict], ratio: float | None, seed: int,
        counts: Counter | None = None) -> list[dict]:
    """Instruction and judgment rows, subsampled to `ratio` judgment rows per instruction row (whole
    pairs kept together), shuffled with `seed`."""
    counts = Counter() if counts is None else counts
    rng = np.random.default_rng([seed, 11])
    instructions, judgments = list(instructions), list(judgments)
    if ratio is not None and instructions and judgments:
        want = ratio * len(instructions)
        if want < len(judgments):
            groups: dict[str, list[dict]] = {}
            for row in judgments:
                groups.setdefault(row["pair_id"], []).append(row)
            keys = list(groups)
            per_group = len(judgments) / len(keys)
            take = max(1, int(round(want / per_group)))
            keep = sorted(rng.choice(len(keys), size=take, replace=False))
            judgments = [r for i in keep for r in groups[keys[i]]]
        else:
            n = max(1, int(round(len(judgments) / ratio)))
            instructions = [instructions[i] for i in sorted(rng.choice(len(instructions), size=n, replace=False))]
    rows = instructions + judgments
    counts["instruction_rows"] = len(instructions)
    counts["judgment_rows"] = len(judgments)
    return [rows[i] for i in rng.permutation(len(rows))]


def build_jsft(instructions: Sequence[dict], pairs: Sequence[dict], cfg: JSFTConfig, seed: int,
               generative: GenerativeTemplate | None = None) -> tuple[list[dict], Counter]:
    """(the shuffled JSFT rows, counts of what went in and what was skipped); `generative`: the
    template of the generative rows (`cfg.generative_rows`; default `GenerativeTemplate()`)."""
    counts: Counter = Counter()
    template = (generative or GenerativeTemplate()) if cfg.generative_rows else None
    judgments = judgment_rows(pairs, cfg.principles, cfg.rationale, counts, template)
    return mix(instructions, judgments, cfg.judgment_ratio, seed, counts), counts
