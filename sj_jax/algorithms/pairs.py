"""From N samples of a prompt to one (chosen, rejected) training pair: the degenerate-sample rules,
then the judge.

Rules, applied before any judgment (`DegenerateRules`):

- an empty response (nothing but whitespace) is never shown to the judge: under `empty: lose` it
  loses its pair, under `empty: skip` it is dropped;
- a response cut at `max_new_tokens` (no end of turn: SELF-JUDGE's missing-EOS penalty) loses its
  pair (`truncated: lose`), is dropped (`skip`), or is judged like any other (`keep`);
- two responses with the same token ids teach nothing, so one of them is dropped (`identical: skip`).

A candidate that "loses" can be the rejected response but never the chosen one. After the rules, a
prompt with fewer than two candidates left (or no candidate that may be chosen) yields no pair, and
the reason is counted. With N = 2 the judge sees the one pair in both orders; with N > 2 the chosen
response is the winner of a knock-out tournament and the rejected one the winner of a tournament of
the rest under the reversed verdicts (`pairing: tournament`, 2N - 3 judgments), or both come from a
round robin of all N(N - 1)/2 pairs, ranked by summed win probability (`pairing: all_pairs`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Sequence

import numpy as np

from sj_jax.algorithms.tournament import Judge, run_brackets
from sj_jax.core.errors import ConfigError

SKIP_REASONS = ("empty", "truncated", "identical", "no_decision")  # no_decision: the checker judge only


@dataclasses.dataclass(frozen=True)
class DegenerateRules:
    empty: Literal["lose", "skip"] = "lose"
    truncated: Literal["lose", "skip", "keep"] = "lose"
    identical: Literal["skip", "keep"] = "skip"

    def __post_init__(self):
        for name, allowed in (("empty", ("lose", "skip")), ("truncated", ("lose", "skip", "keep")),
                              ("identical", ("skip", "keep"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"degenerate.{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One sample: its decoded `text` (what the judge reads), `token_ids` (what is trained, stop
    token included when it stopped) and whether it stopped at the end of its turn."""

    text: str
    token_ids: tuple[int, ...]
    finished: bool


@dataclasses.dataclass(frozen=True)
class PairChoice:
    """The pair kept for one prompt: candidate indices, or `skipped` with its reason.

    decided_by: "judge" | "rule" (a losing candidate made the pair without a judgment) | "checker"
    (the oracle judge, `checker_pairs`).
    judgments: the pairwise judgments it took.
    """

    chosen: int | None
    rejected: int | None
    skipped: str | None = None
    decided_by: str = "judge"
    judgments: int = 0


def defect(c: Candidate, rules: DegenerateRules) -> str | None:
    """"empty" or "truncated" when a rule applies to the candidate, else None."""
    if not c.text.strip():
        return "empty"
    if not c.finished and rules.truncated != "keep":
        return "truncated"
    return None


def _reversed(judge: Judge) -> Judge:
    return lambda contexts, a, b: 1.0 - np.asarray(judge(contexts, a, b), np.float64)


def choose_pairs(contexts: Sequence[str], candidates: Sequence[Sequence[Candidate]], judge: Judge, *,
                 rules: DegenerateRules = DegenerateRules(), pairing: str = "tournament",
                 seed: int = 0) -> list[PairChoice]:
    """One `PairChoice` per prompt. The judge is called on non-empty texts only, and each round (or
    the round robin) over all prompts in one call."""
    if pairing not in ("tournament", "all_pairs"):
        raise ConfigError(f"pairing: {pairing!r} is not one of tournament, all_pairs")
    choices: list[PairChoice | None] = [None] * len(candidates)
    pools: dict[int, list[int]] = {}  # prompt -> the candidates left for the judge
    for i, cands in enumerate(candidates):
        if len(cands) < 2:
            raise ValueError(f"candidates[{i}]: {len(cands)} samples; a pair needs at least 2")
        kinds = [defect(c, rules) for c in cands]
        dropped = [k for k in kinds if k is not None and getattr(rules, k) == "skip"]
        losers = [j for j, k in enumerate(kinds) if k is not None and getattr(rules, k) == "lose"]
        good, seen = [], set()
        for j, k in enumerate(kinds):
            if k is None:
                if rules.identical == "skip" and cands[j].token_ids in seen:
                    dropped.append("identical")
                    continue
                seen.add(cands[j].token_ids)
                good.append(j)
        if not good:
            reason = (dropped or [kinds[j] for j in losers])[0]
            choices[i] = PairChoice(None, None, skipped=reason)
        elif losers:
            pools[i] = good  # the best of the good ones against a loser, below
        elif len(good) < 2:
            choices[i] = PairChoice(None, None, skipped=dropped[0])
        else:
            pools[i] = good
    # The chosen response: the pool's tournament winner (a single candidate wins unjudged).
    order = sorted(pools)
    best: dict[int, int] = {}
    judged: dict[int, int] = {i: 0 for i in order}
    if pairing == "tournament" or all(len(pools[i]) == 2 for i in order):
        brackets = run_brackets([contexts[i] for i in order], [[candidates[i][j].text for j in pools[i]] for i in order],
                                judge, seed=seed)
        for i, b in zip(order, brackets):
            best[i], judged[i] = pools[i][b.winner], b.judged
        # The rejected one, where no losing candidate is there to take the place: the rest's worst.
        rest = [i for i in order if not _has_loser(candidates[i], rules) and len(pools[i]) > 2]
        worst: dict[int, int] = {}
        if rest:
            others = {i: [j for j in pools[i] if j != best[i]] for i in rest}
            brackets = run_brackets([contexts[i] for i in rest], [[candidates[i][j].text for j in others[i]]
                                                                   for i in rest], _reversed(judge), seed=seed + 1)
            for i, b in zip(rest, brackets):
                worst[i], judged[i] = others[i][b.winner], judged[i] + b.judged
        for i in order:
            if i not in worst and not _has_loser(candidates[i], rules):
                worst[i] = next(j for j in pools[i] if j != best[i])
    else:
        best, worst = _round_robin(contexts, candidates, pools, order, judge, judged)
    for i in order:
        if _has_loser(candidates[i], rules):
            loser = next(j for j, c in enumerate(candidates[i]) if _loses(c, rules))
            choices[i] = PairChoice(best[i], loser, decided_by="rule", judgments=judged[i])
        else:
            choices[i] = PairChoice(best[i], worst[i], judgments=judged[i])
    return choices  # type: ignore[return-value]


def oracle_correct(text: str, finished: bool, check: Callable[[str], bool]) -> bool:
    """The oracle judge's rule, for the SELF-JUDGE pairs and the tournament's pass@N alike: a sample is
    right when it is finished, not empty, and `check(text)` accepts it; `check` never reads the others."""
    return finished and bool(text.strip()) and check(text)


def checker_pairs(candidates: Sequence[Sequence[Candidate]], check: Callable[[int, str], bool], *,
                  seed: int = 0) -> list[PairChoice]:
    """The oracle judge, a diagnostic ceiling rather than a method: for prompt i, a correct finished
    sample (chosen) against one that is not (rejected), each drawn with `seed` among its kind.
    `check(i, text)` says whether `text` answers prompt i; it is called only on finished, non-empty
    samples (an empty or cut-off one is never correct). A prompt whose samples are all correct or all
    not is skipped as "no_decision"."""
    rng = np.random.default_rng(seed)
    choices = []
    for i, cands in enumerate(candidates):
        if len(cands) < 2:
            raise ValueError(f"candidates[{i}]: {len(cands)} samples; a pair needs at least 2")
        right = {j for j, c in enumerate(cands) if oracle_correct(c.text, c.finished, lambda t, i=i: check(i, t))}
        wrong = [j for j in range(len(cands)) if j not in right]
        if right and wrong:
            choices.append(PairChoice(int(rng.choice(sorted(right))), int(rng.choice(wrong)), decided_by="checker"))
        else:
            choices.append(PairChoice(None, None, skipped="no_decision"))
    return choices


def _loses(c: Candidate, rules: DegenerateRules) -> bool:
    k = defect(c, rules)
    return k is not None and getattr(rules, k) == "lose"


def _has_loser(cands: Sequence[Candidate], rules: DegenerateRules) -> bool:
    return any(_loses(c, rules) for c in cands)


def _round_robin(contexts, candidates, pools, order, judge, judged):
    """(best, worst) per prompt by summed win probability over all pairs of its pool; ties go to
    the lower index. Prompts with a losing candidate only need their best."""
    matches = [(i, x, y) for i in order for a, x in enumerate(pools[i]) for y in pools[i][a + 1:]]
    p = np.asarray(judge([contexts[i] for i, _, _ in matches], [candidates[i][x].text for i, x, _ in matches],
                         [candidates[i][y].text for i, _, y in matches]), np.float64) if matches else np.zeros(0)
    if p.shape != (len(matches),):
        raise ValueError(f"judge: returned shape {p.shape} for {len(matches)} pairs")
    score = {(i, j): 0.0 for i in order for j in pools[i]}
    for (i, x, y), q in zip(matches, p):
        score[i, x] += q
        score[i, y] += 1.0 - q
        judged[i] += 1
    best, worst = {}, {}
    for i in order:
        ranked = sorted(pools[i], key=lambda j: (-score[i, j], j))
        best[i] = ranked[0]
        if len(ranked) > 1:
            worst[i] = ranked[-1]
    return best, worst
