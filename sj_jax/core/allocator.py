"""The host allocator: large buffers go back to the system when XLA frees them.

On the CPU backend every array lives in host memory, allocated by glibc's malloc. glibc serves a
request below its mmap threshold from its heap arenas, and raises that threshold, up to 32 MiB, each
time a larger mapped block is freed. XLA's buffers of a few MiB to 32 MiB (a layer's KV cache for a
batch, an MLP activation) then stay in the arenas after use, and different sizes fragment them: the
generative judge of 16 prompts of 512 tokens (SmolLM2-135M) peaked at 4.75 GB resident on its second
call, 3.70 GB with a fixed 4 MiB threshold (`benchmarks/memory.py`). A fixed threshold maps every
buffer of 4 MiB or more and unmaps it when freed; smaller ones keep the heap's speed.
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
