"""Packing: several short SFT/JSFT examples in one row, each its own attention segment.

A packed row's attention mask holds segment ids (1, 1, 1, 2, 2, 0 ...) instead of 1s; the model
then lets a token attend only to its own segment and restarts positions at 0 for each (see
`Transformer.hidden_states`), so a packed example is scored exactly as it is alone. Rows are
filled best-fit decreasing (longest first, each into the row it leaves least room in): a pure
function of the examples, so a resumed run packs the same rows.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Sequence

import numpy as np

from sj_jax.data.examples import SFTExample


@dataclasses.dataclass
class PackReport:
    examples: int = 0
    rows: int = 0
    tokens: int = 0
    row_length: int = 0

    @property
    def fill(self) -> float:
        """The fraction of packed row positions holding real tokens."""
        return self.tokens / max(1, self.rows * self.row_length)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "fill": round(self.fill, 4)}


def pack(examples: Sequence[SFTExample], length: int) -> tuple[list[SFTExample], PackReport]:
    """Rows of at most `length` tokens, each the concatenation of whole examples, with
    `segment_ids` 1, 2, ... per example (an example longer than `length` must not be given)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in order:
        n = len(examples[i].input_ids)
        if n > length:
            raise ValueError(f"example {i} has {n} tokens, more than the packed row length {length}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
            rows[r].append(i)
            bisect.insort(free, (room - n, r))
        else:
            rows.append([i])
            bisect.insort(free, (length - n, len(rows) - 1))
    out = []
    for members in rows:
        ids = np.concatenate([examples[i].input_ids for i in members]).astype(np.int32)
        loss = np.concatenate([examples[i].loss_mask for i in members]).astype(np.int32)
        seg = np.concatenate([np.full(len(examples[i].input_ids), s + 1, np.int32) for s, i in enumerate(members)])
        out.append(SFTExample(ids, loss, seg))
    report = PackReport(len(examples), len(out), int(sum(len(e.input_ids) for e in examples)), length)
    return out, report
