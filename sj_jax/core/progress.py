"""Progress bars for long sampling jobs (on stderr): rows done, ETA, and new tokens/s."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

from tqdm import tqdm


@contextlib.contextmanager
def sampling_bar(rows: int, what: str = "sample", enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A `progress(rows_done, new_tokens)` callback for `sj_jax.inference.generate`, drawing a tqdm bar."""
    with tqdm(total=rows, unit=what, disable=not enabled, file=sys.stderr) as bar:
        clock = [time.perf_counter()]

        def progress(done: int, new_tokens: int) -> None:
            now = time.perf_counter()
            bar.update(done)
            bar.set_postfix(new_tok_per_s=f"{new_tokens / max(now - clock[0], 1e-9):.0f}")
            clock[0] = now

        yield progress
