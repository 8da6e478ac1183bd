"""The task suite: seeded, disjoint splits of every family, and the rows made from them.

A problem's split is decided by a hash of (family, key), not by the order it was drawn in, so the
splits are disjoint by construction and stay disjoint when counts, seeds or difficulties change.
Rows are plain dicts (written as JSONL):
- problem rows (evaluation sets and on-policy prompts): id, task, difficulty, prompt, answer, explanation;
- SFT rows: id, task, prompt, response;
- pair rows (RewardBench layout plus extras): id, subset (= task), task, prompt, chosen, rejected,
  corruption, rationale (with {chosen} / {rejected} standing for the two responses' letters),
  explanation (the problem's worked answer).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

from sj_jax.core.errors import ConfigError, DataError
from sj_jax.tasks.families import FAMILIES, FLAWS, MAX_DIFFICULTY, Problem

SPLITS = ("train", "validation", "test")


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@dataclasses.dataclass(frozen=True)
class TaskSuiteConfig:
    """Which families, at which difficulties, how many problems per family in each split."""

    families: tuple[str, ...] = tuple(FAMILIES)
    difficulties: tuple[int, ...] = (1, 2, 3)  # drawn uniformly per problem
    train: int = 200
    validation: int = 50
    test: int = 100
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # of the problem space; fixes the splits

    def __post_init__(self):
        for f in self.families:
            if f not in FAMILIES:
                raise ConfigError(f"tasks.families: unknown family {f!r}; known: {', '.join(FAMILIES)}")
        if not self.families:
            raise ConfigError("tasks.families: empty")
        for d in self.difficulties:
            if not 1 <= d <= MAX_DIFFICULTY:
                raise ConfigError(f"tasks.difficulties: {d} is outside 1..{MAX_DIFFICULTY}")
        if not self.difficulties:
            raise ConfigError("tasks.difficulties: empty")
        for s in SPLITS:
            if getattr(self, s) < 0:
                raise ConfigError(f"tasks.{s}: must be >= 0")
        if any(x <= 0 for x in self.split_fractions) or abs(sum(self.split_fractions) - 1) > 1e-9:
            raise ConfigError(f"tasks.split_fractions: three positive numbers summing to 1, got {self.split_fractions}")


def split_of(family: str, key: str, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """The split a problem belongs to: a pure function of its family and canonical key."""
    u = _stable_int(f"{family}\x00{key}") / 2.0**64
    edge = 0.0
    for name, frac in zip(SPLITS, fractions):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]


def draw_problems(cfg: TaskSuiteConfig, family: str, split: str, seed: int) -> list[Problem]:
    """`cfg.<split>` distinct problems of `family` that belong to `split`, deterministic in `seed`."""
    want = getattr(cfg, split)
    rng = np.random.default_rng([seed, _stable_int(family) % 2**32, SPLITS.index(split)])
    draw = FAMILIES[family].draw
    out, seen, tries = [], set(), 0
    # A split holds ~10% of the space; when most draws are duplicates the space is nearly used up.
    limit = 100 * want + 2000
    while len(out) < want:
        tries += 1
        if tries > limit:
            raise DataError(f"tasks: family {family!r} at difficulties {list(cfg.difficulties)} has too few distinct "
                            f"{split} problems for {want} (found {len(out)}); add higher difficulties or ask for fewer")
        p = draw(rng, int(cfg.difficulties[int(rng.integers(len(cfg.difficulties)))]))
        if p.key in seen or split_of(family, p.key, cfg.split_fractions) != split:
            continue
        seen.add(p.key)
        out.append(p)
    return out


def problem_id(p: Problem, split: str, i: int) -> str:
    return f"{p.family}-{split}-{i:05d}"


def problem_row(p: Problem, split: str, i: int) -> dict:
    return {"id": problem_id(p, split, i), "task": p.family, "difficulty": p.difficulty, "prompt": p.prompt,
            "answer": p.answer, "explanation": p.explanation}


def sft_row(problem: dict) -> dict:
    """An SFT row (prompt, response = the answer) from a problem row."""
    return {"id": problem["id"], "task": problem["task"], "prompt": problem["prompt"], "response": problem["answer"]}


def rationale(explanation: str, flaw: str) -> str:
    """A judge rationale with {chosen} / {rejected} left for the letters of the two responses."""
    return f"Response {{chosen}} is correct: {explanation} Response {{rejected}} {flaw}."


def pair_row(problem: dict, rejected: str, kind: str) -> dict:
    """A known-label pair from a problem row: its answer against a wrong response of `kind`."""
    return {"id": f"{problem['id']}-{kind}", "subset": problem["task"], "task": problem["task"],
            "prompt": problem["prompt"], "chosen": problem["answer"], "rejected": rejected, "corruption": kind,
            "rationale": rationale(problem["explanation"], FLAWS[kind]), "explanation": problem["explanation"]}


def corruption_pairs(p: Problem, row: dict, kinds: Sequence[str], per_problem: int,
                     rng: np.random.Generator) -> list[dict]:
    """Up to `per_problem` pairs from the problem's corruptions of the allowed `kinds` (drawn at random)."""
    available = [k for k in kinds if k in p.wrong]
    if per_problem < len(available):
        available = [available[i] for i in sorted(rng.choice(len(available), size=per_problem, replace=False))]
    return [pair_row(row, p.wrong[k], k) for k in available]


@dataclasses.dataclass
class SuiteSplit:
    problems: list[Problem]
    rows: list[dict]  # problem rows, same order


def build_split(cfg: TaskSuiteConfig, split: str, seed: int = 0) -> SuiteSplit:
    """Every family's problems of one split, family by family."""
    problems, rows = [], []
    for family in cfg.families:
        for i, p in enumerate(draw_problems(cfg, family, split, seed)):
            problems.append(p)
            rows.append(problem_row(p, split, i))
    return SuiteSplit(problems, rows)


def split_pairs(split: SuiteSplit, kinds: Sequence[str], per_problem: int, seed: int, name: str) -> list[dict]:
    """Corruption pairs for every problem of a split (see `corruption_pairs`)."""
    rng = np.random.default_rng([seed, SPLITS.index(name), 7])
    return [pair for p, row in zip(split.problems, split.rows)
            for pair in corruption_pairs(p, row, kinds, per_problem, rng)]
