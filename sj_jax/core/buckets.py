"""Padded sizes: every batch, prompt and sequence length is rounded up to a bucket, so that a run
compiles a few shapes rather than one a batch."""

from __future__ import annotations


def bucket(n: int, cap: int | None = None, *, minimum: int = 16, fine: bool = False, multiple: int = 1) -> int:
    """The smallest bucket >= n: powers of two from `minimum` (`fine`: with 3 * 2^(k-1) between them,
    16, 24, 32, 48, 64, 96, ..., which wastes under a third), never above `cap` unless n is, then
    rounded up to a multiple of `multiple` (the data-parallel size, for rows)."""
    b = minimum
    while b < n:
        b = b * 3 // 2 if fine and b & (b - 1) == 0 else (b * 4 // 3 if fine else b * 2)
    if cap is not None:
        b = min(b, max(cap, n))
    return -(-b // multiple) * multiple
