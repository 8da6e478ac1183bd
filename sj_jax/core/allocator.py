"""The host allocator: large buffers go back to the system when XLA frees them.

On the CPU backend every array lives in host memory, allocated by glibc's malloc. glibc serves a
request below its mmap threshold from its heap arenas, and raises that threshold, up to 32 MiB, each
time a larger mapped block is freed. XLA's buffers of a few MiB to 32 MiB (a layer's KV cache for a
batch, an MLP activation) then stay in the arenas after use, and different sizes fragment them: the
generative judge of 16 prompts of 512 tokens (SmolLM2-135M) peaked at 4.75 GB resident on its second
call, 3.70 GB with a fixed 4 MiB threshold (`benchmarks/memory.py`). A fixed threshold maps every
buffer of 4 MiB or more and unmaps it when freed; smaller ones keep the heap's speed.

The smaller ones still leave free pages inside the heaps (one arena per thread that allocated), which
glibc keeps resident: after the generative judge of 8 pairs of 2,048-token prompts, 0.4-0.5 GB of
them (RSS 1.6-1.8 GB, 1.2-1.4 GB after `malloc_trim`), and the next call's peak came on top.
`release_free_memory` hands them back; the sampler calls it after each batch, at the cost of a walk
over the heaps (well under a millisecond against a batch's seconds).
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 4 << 20


def map_large_buffers(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fixes glibc's mmap threshold at `threshold` bytes for this process; True if it took effect.
    Nothing happens off glibc, or where `MALLOC_MMAP_THRESHOLD_` is already set (the user's choice)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or os.uname().sysname != "Linux":
        return False
    # The process's own symbols, libc's among them: no library search (find_library runs ldconfig).
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # None off glibc (musl has no mallopt)
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))


def release_free_memory() -> bool:
    """Returns the heaps' free pages to the system (glibc's `malloc_trim(0)`); True if any were.
    Nothing happens off glibc."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None) if os.uname().sysname == "Linux" else None
    return trim is not None and bool(trim(0))
