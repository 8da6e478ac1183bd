"""Rejection sampling of a judge's own judgments on pairs whose better response is known (SPEC 2.3).

Of the judgments of a pair in one order, only those whose verdict is the known label are kept (at
most `per_order`, drawn with the seed); the kept ones are then balanced between the labels A and
B (the larger side is cut, with the seed, to the size of the smaller), so the trained judge learns
no preferred letter. With `both_orders`, a pair keeps judgments only where the judge named the known
label in each order at least once: a pair it answers with one letter whatever the order (a position
rule, right in one order by chance) teaches nothing about the responses and gives none.
For DPO, each kept judgment is paired with a discarded one of the same pair
and order (wrong verdict or none), as the self-taught evaluator's release does.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Selection:
    """kept: (pair, order, sample) of each kept judgment; rejects: for each (pair, order), the
    samples whose verdict is not the label; counts: what was seen, kept and dropped, and why."""

    kept: list[tuple[int, int, int]]
    rejects: dict[tuple[int, int], list[int]]
    counts: dict[str, int]


def rejection_sample(labels: np.ndarray, truth: np.ndarray, *, per_order: int = 1, balance: bool = True,
                     both_orders: bool = False, seed: int = 0) -> Selection:
    """labels: int8 `[pairs, 2, samples]` (1 = "A", 2 = "B", 0 = no verdict); truth: int8 `[pairs, 2]`,
    the right label of each order. Returns the kept judgments, label-balanced when `balance`."""
    labels, truth = np.asarray(labels), np.asarray(truth)
    if labels.ndim != 3 or truth.shape != labels.shape[:2]:
        raise ValueError(f"labels [pairs, 2, samples] and truth [pairs, 2] expected, got {labels.shape} and "
                         f"{truth.shape}")
    if not set(np.unique(truth)) <= {1, 2}:
        raise ValueError("truth: every label must be 1 (A) or 2 (B)")
    rng = np.random.default_rng([seed, 17])
    right = labels == truth[:, :, None]
    kept, rejects = [], {}
    one_order = 0
    for i in range(labels.shape[0]):
        by_position = both_orders and right[i].any(axis=1).sum() == 1  # right in one order only
        one_order += int(by_position)
        for o in range(labels.shape[1]):
            good = np.flatnonzero(right[i, o])
            rejects[(i, o)] = np.flatnonzero(~right[i, o]).tolist()
            if len(good) and not by_position:
                take = rng.choice(good, size=min(per_order, len(good)), replace=False)
                kept += [(i, o, int(s)) for s in sorted(take)]
    consistent = len(kept)
    by_label = {lab: [k for k in kept if truth[k[0], k[1]] == v] for lab, v in (("A", 1), ("B", 2))}
    if balance:
        n = min(len(v) for v in by_label.values())
        for lab, v in by_label.items():
            by_label[lab] = [v[j] for j in sorted(rng.choice(len(v), size=n, replace=False))]
        kept = sorted(by_label["A"] + by_label["B"])
    counts = {"judgments": int(labels.size), "right_verdict": int(right.sum()),
              "wrong_verdict": int(((labels != 0) & ~right).sum()), "no_verdict": int((labels == 0).sum()),
              "right_in_one_order_only": one_order if both_orders else 0,
              "consistent_kept": consistent, "dropped_to_balance": consistent - len(kept), "kept": len(kept),
              "kept_A": sum(1 for k in kept if truth[k[0], k[1]] == 1),
              "kept_B": sum(1 for k in kept if truth[k[0], k[1]] == 2)}
    return Selection(kept, rejects, counts)


def preference_pairs(selection: Selection, seed: int = 0) -> tuple[list[tuple[int, int, int, int]], int]:
    """(pair, order, chosen sample, rejected sample) for each kept judgment with a discarded one of
    the same pair and order (drawn with the seed), and how many kept judgments had none."""
    rng = np.random.default_rng([seed, 19])
    out, missing = [], 0
    for i, o, s in selection.kept:
        pool = selection.rejects[(i, o)]
        if not pool:
            missing += 1
            continue
        out.append((i, o, s, int(pool[rng.integers(len(pool))])))
    return out, missing
