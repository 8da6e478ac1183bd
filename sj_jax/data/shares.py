"""Training examples tokenised where they are used: on several processes, each tokenises its share.

Every process reads the file's rows (cheap); tokenising is the cost. Process p of P tokenises rows
p, p + P, p + 2P, ... up front, for two things only: every example's `shape_of` (a few ints) and the
data report's counts. Those are all-gathered, so every process knows the global list of examples,
their lengths (for length grouping and packing), the global order and the global report, exactly as
one process would. A step then needs real tokens only for the rows of the global batch that its own
devices hold: `examples[i]` tokenises on first use (and keeps it); the other rows are
`examples.stand_in(i)`, placeholders of the same shape, so every process pads the global batch to
the same buckets without exchanging a token (`sj_jax.train.trainer`).

On one process this is every row tokenised up front, as a plain list would be. A bad row raises the
same error, naming its file and line, on every process (the first bad row in file order).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from sj_jax.core.errors import DataError
from sj_jax.core.jsonl import read_jsonl
from sj_jax.data.examples import SHAPE_WIDTH, DataReport, PairExample, SFTExample, shape_of, stand_in
from sj_jax.data.packing import PackReport, join, pack_plan

Build = Callable[[dict, str, DataReport], Any]  # (row, "file:line", report) -> example, or None (dropped)
Gather = Callable[[np.ndarray], np.ndarray]  # x -> [processes, *x.shape], as `gather_from_processes`
_REPORT_FIELDS = tuple(f.name for f in dataclasses.fields(DataReport))


def _alone(x: np.ndarray) -> np.ndarray:
    return x[None]


@dataclasses.dataclass
class Share:
    """What one process found in its rows (p, p + P, ...): shapes `int64[ceil(rows / P), SHAPE_WIDTH]`
    (rows past the end all -1), its report's counts, and its first bad row (or -1)."""

    shapes: np.ndarray
    counts: np.ndarray
    first_error: int
    tokenised: dict[int, Any]  # row -> example (or None), kept for use


def tokenise_share(rows: Sequence[tuple[str, dict]], build: Build, index: int, count: int) -> Share:
    mine = range(index, len(rows), count)
    per = -(-len(rows) // count)
    shapes = np.full((per, SHAPE_WIDTH), -1, np.int64)
    report, tokenised, first_error = DataReport(), {}, -1
    for k, r in enumerate(mine):
        where, row = rows[r]
        try:
            e = build(row, where, report)
        except DataError:
            first_error = r  # raised on every process alike, after the gather
            break
        report.rows += 1
        tokenised[r] = e
        shapes[k] = shape_of(e)
    counts = np.asarray([getattr(report, f) for f in _REPORT_FIELDS], np.int64)
    return Share(shapes, counts, first_error, tokenised)


class Examples:
    """The kept examples of a file, in file order: `len`, `shapes`, `examples[i]` (tokenised on first
    use) and `stand_in(i)`; `report` is the whole file's, `tokenised` counts this process's work."""

    def __init__(self, rows: Sequence[tuple[str, dict]], build: Build, *, index: int = 0, count: int = 1,
                 gather: Gather = _alone):
        share = tokenise_share(rows, build, index, count)
        all_shapes = gather(share.shapes)  # [count, per, width]
        counts = gather(share.counts)
        errors = gather(np.asarray(share.first_error, np.int64))
        bad = [int(e) for e in errors if e >= 0]
        if bad:
            where, row = rows[min(bad)]
            build(row, where, DataReport())  # raises the row's own error, here as on its process
            raise DataError(f"{where}: rejected on another process, but not here")
        # row r was process r % count's (r // count)-th
        by_row = all_shapes.transpose(1, 0, 2).reshape(-1, SHAPE_WIDTH)[:len(rows)]
        self._rows, self._build = rows, build
        self.report = DataReport(**dict(zip(_REPORT_FIELDS, (int(v) for v in counts.sum(0)))))
        self.row_of = np.flatnonzero(by_row[:, 0] > 0)  # kept example i -> its row
        self.shapes = by_row[self.row_of]
        self._cache = {r: e for r, e in share.tokenised.items() if e is not None}
        self.tokenised = len(share.tokenised)

    def __len__(self) -> int:
        return len(self.row_of)

    def __getitem__(self, i: int) -> SFTExample | PairExample:
        r = int(self.row_of[i])
        if r not in self._cache:
            where, row = self._rows[r]
            self._cache[r] = self._build(row, where, DataReport())  # counted once, in its owner's share
            self.tokenised += 1
        return self._cache[r]

    def stand_in(self, i: int) -> SFTExample | PairExample:
        return stand_in(self.shapes[i])

    def lengths(self) -> np.ndarray:
        """Tokens each example occupies in a batch row (a pair: its prompt and longer response)."""
        kind, a, b, c = self.shapes.T
        return np.where(kind == 2, a + np.maximum(b, c), a)


class PackedExamples:
    """`Examples` (SFT) packed into rows of `length` tokens (`sj_jax.data.packing`): the plan from the
    shapes alone, a row's tokens joined from its members when it is used."""

    def __init__(self, examples: Examples, length: int):
        self.base = examples
        lengths = examples.lengths()
        self.plan = pack_plan(lengths, length)
        self.report = PackReport(len(examples), len(self.plan), int(lengths.sum()), length)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> SFTExample:
        return join([self.base[m] for m in self.plan[i]])

    def stand_in(self, i: int) -> SFTExample:
        members = self.base.shapes[self.plan[i]]
        # collate_sft reads a row's length, trained tokens and first token: one stand-in has them all
        return stand_in((1, members[:, 1].sum(), members[:, 2].sum(), members[0, 3]))

    def lengths(self) -> np.ndarray:
        tokens = self.base.shapes[:, 1]
        return np.asarray([tokens[m].sum() for m in self.plan], np.int64)


def file_rows(path: str) -> list[tuple[str, dict]]:
    """`("file:line", row)` for every row of a JSONL file."""
    return [(f"{path}:{n}", row) for n, row in read_jsonl(path)]
