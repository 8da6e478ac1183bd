"""Tournament self-rejection at inference (SPEC 1.4): N samples per prompt, judged in knock-out rounds.

The candidates of a prompt are shuffled, then paired off round by round; an odd one out gets a bye
(and goes first in the next round, so it does not get two in a row). Each match is one pairwise
judgment (both orders, every principle: `judge_pairs`), so N candidates take N - 1 matches. All the
matches of a round, over every prompt, go to the judge as one batch. An empty candidate loses to a
non-empty one without a judgment (the judge never reads an empty response); of two empty ones the
first wins. A tie (p = 1/2) goes to the first of the pair, which the shuffle made random.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from sj_jax.data.chat import context_text
from sj_jax.inference.generate import generate
from sj_jax.judge.scoring import judge_pairs

# (contexts, responses_a, responses_b) -> float `[pairs]`: the probability that a is the better one.
Judge = Callable[[list[str], list[str], list[str]], np.ndarray]


@dataclasses.dataclass
class Bracket:
    """One prompt's tournament: the winner's index among its candidates, the matches played
    (N - 1), how many of them the judge decided (the rest had an empty side), and the rounds."""

    winner: int
    matches: int
    judged: int
    rounds: int


def run_brackets(contexts: Sequence[str], candidates: Sequence[Sequence[str]], judge: Judge, *,
                 seed: int = 0, shuffle: bool = True) -> list[Bracket]:
    """Knock-out tournaments, one per prompt, the matches of each round judged in one `judge` call.

    shuffle=False keeps the candidates' order: for independent samples the order is already random,
    and the tournament over the first N of them is then the first half of the one over 2N, so with a
    `cached_judge` the tournaments for N = 1, 2, 4, 8 cost the judgments of N = 8 alone."""
    if len(contexts) != len(candidates):
        raise ValueError(f"contexts: {len(contexts)} prompts but {len(candidates)} candidate lists")
    for i, c in enumerate(candidates):
        if not c:
            raise ValueError(f"candidates[{i}]: no candidates")
    rng = np.random.default_rng(seed)
    alive = [list(rng.permutation(len(c))) if shuffle else list(range(len(c))) for c in candidates]
    stats = [Bracket(-1, 0, 0, 0) for _ in candidates]
    while any(len(a) > 1 for a in alive):
        matches = []  # (prompt, first, second)
        byes: dict[int, int] = {}
        for i, a in enumerate(alive):
            if len(a) < 2:
                continue
            stats[i].rounds += 1
            matches += [(i, a[j], a[j + 1]) for j in range(0, len(a) - 1, 2)]
            if len(a) % 2:
                byes[i] = a[-1]
        text = lambda i, k: candidates[i][k]  # noqa: E731
        judged = [m for m in matches if text(m[0], m[1]).strip() and text(m[0], m[2]).strip()]
        p = np.asarray(judge([contexts[i] for i, _, _ in judged], [text(i, x) for i, x, _ in judged],
                             [text(i, y) for i, _, y in judged]), np.float64) if judged else np.zeros(0)
        if p.shape != (len(judged),):
            raise ValueError(f"judge: returned shape {p.shape} for {len(judged)} pairs")
        verdict = {m: bool(q >= 0.5) for m, q in zip(judged, p)}
        nxt: list[list[int]] = [[byes[i]] if i in byes else [] for i in range(len(alive))]
        for m in matches:
            i, x, y = m
            stats[i].matches += 1
            if m in verdict:
                stats[i].judged += 1
                first_wins = verdict[m]
            else:
                first_wins = bool(text(i, x).strip()) or not text(i, y).strip()
            nxt[i].append(x if first_wins else y)
        alive = [nxt[i] if len(a) > 1 else a for i, a in enumerate(alive)]
    for s, a in zip(stats, alive):
        s.winner = int(a[0])
    return stats


def pairwise_judge(model: Any, *, template: Any = None, principles: Sequence[Any] | None = None,
                   batch_size: int = 16) -> Judge:
    """`judge_pairs` with `model` (both orders, every principle) as a `Judge` for `run_brackets`."""
    def decide(contexts, a, b):
        return judge_pairs(model, contexts, a, b, template=template, principles=principles, batch_size=batch_size)

    return decide


def cached_judge(judge: Judge) -> Judge:
    """`judge`, remembering every (context, a, b) it has decided: a pair met again is not judged again."""
    seen: dict[tuple[str, str, str], float] = {}

    def decide(contexts, a, b):
        keys = list(zip(contexts, a, b))
        new = list(dict.fromkeys(k for k in keys if k not in seen))
        if new:
            p = np.asarray(judge([k[0] for k in new], [k[1] for k in new], [k[2] for k in new]), np.float64)
            seen.update(zip(new, p))
        return np.asarray([seen[k] for k in keys], np.float64)

    return decide


@dataclasses.dataclass
class TournamentResult:
    """Per prompt: every candidate (text, token ids, stopped at end of turn), the winner's index and
    its bracket."""

    prompts: list[str]
    candidates: list[list[str]]
    token_ids: list[list[list[int]]]
    finished: list[list[bool]]
    brackets: list[Bracket]

    @property
    def winners(self) -> list[str]:
        return [c[b.winner] for c, b in zip(self.candidates, self.brackets)]

    @property
    def winner_token_ids(self) -> list[list[int]]:
        return [t[b.winner] for t, b in zip(self.token_ids, self.brackets)]


def tournament(policy: Any, prompts: Sequence[str], *, n: int, judge: Any = None, template: Any = None,
               principles: Sequence[Any] | None = None, max_new_tokens: int = 256, temperature: float = 1.0,
               top_p: float = 0.9, top_k: int = 0, seed: int = 0, batch_size: int | None = None,
               judge_batch_size: int = 16) -> TournamentResult:
    """Samples `n` responses per chat prompt from `policy` and keeps the tournament's winner (its
    candidates shuffled first, as the module says).

    judge: the judging model (default: the policy itself, as in SELF-JUDGE); template and
    principles as in `judge_pairs`. The sampling settings are `generate`'s.
    """
    if n < 1:
        raise ValueError(f"n: must be at least 1, got {n}")
    return tournaments_by_n(policy, prompts, [n], judge=judge, template=template, principles=principles,
                            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                            seed=seed, batch_size=batch_size, judge_batch_size=judge_batch_size, shuffle=True)[n]


def tournaments_by_n(policy: Any, prompts: Sequence[Any], ns: Sequence[int], *, judge: Any = None,
                     template: Any = None, principles: Sequence[Any] | None = None, max_new_tokens: int = 256,
                     temperature: float = 1.0, top_p: float = 0.9, top_k: int = 0, seed: int = 0,
                     batch_size: int | None = None, judge_batch_size: int = 16, shuffle: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> dict[int, TournamentResult]:
    """Self-rejection for every N in `ns` from one draw of max(ns) samples per prompt: the
    tournament for N plays over the first N samples (N = 1 keeps sample 0), so every N sees the
    same draws and a difference between two N is the judge's, not the sampler's luck.

    The samples are independent, so their order is already random: unshuffled, the bracket over
    the first N is the first part of the one over 2N, and with one `cached_judge` each match is
    judged once across all N. shuffle=True shuffles each bracket's candidates first (`run_brackets`),
    as `tournament` does for its one N; the N then no longer share matches. `prompts` are chat
    prompts (as `generate` takes them); the judge reads their context text. judge: default the
    policy itself.
    """
    if not ns or any(k < 1 for k in ns):
        raise ValueError(f"ns: sample counts >= 1, got {list(ns)}")
    g = generate(policy, list(prompts), max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                 top_k=top_k, num_samples=max(ns), seed=seed, batch_size=batch_size, progress=progress)
    decide = cached_judge(pairwise_judge(policy if judge is None else judge, template=template,
                                         principles=principles, batch_size=judge_batch_size))
    contexts = [context_text(p) for p in prompts]
    out = {}
    for k in sorted(set(ns), reverse=True):  # the largest first: its rounds batch every match
        candidates = [t[:k] for t in g.texts]
        brackets = run_brackets(contexts, candidates, decide, seed=seed, shuffle=shuffle)
        out[k] = TournamentResult(list(prompts), candidates, [t[:k] for t in g.token_ids],
                                  [f[:k] for f in g.finished], brackets)
    return {k: out[k] for k in ns}
