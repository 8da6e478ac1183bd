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


def pack_plan(lengths: Sequence[int], length: int) -> list[np.ndarray]:
    """Each packed row's members (indices into `lengths`, tokens per example), best-fit decreasing
    into rows of at most `length` tokens (an example longer than `length` must not be given)."""
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in order:
        n = int(lengths[i])
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
    return [np.asarray(members, np.int64) for members in rows]


def join(members: Sequence[SFTExample]) -> SFTExample:
    """One packed row: the examples end to end, `segment_ids` 1, 2, ... per example."""
    ids = np.concatenate([e.input_ids for e in members]).astype(np.int32)
    loss = np.concatenate([e.loss_mask for e in members]).astype(np.int32)
    seg = np.concatenate([np.full(len(e.input_ids), s + 1, np.int32) for s, e in enumerate(members)])
    return SFTExample(ids, loss, seg)


def pack(examples: Sequence[SFTExample], length: int) -> tuple[list[SFTExample], PackReport]:
    """Rows of at most `length` tokens, each the concatenation of whole examples (`pack_plan`, `join`)."""
    lengths = [len(e.input_ids) for e in examples]
    out = [join([examples[i] for i in members]) for members in pack_plan(lengths, length)]
    return out, PackReport(len(examples), len(out), int(sum(lengths)), length)
