"""Turn SIGTERM (a scheduler's preemption notice) into a flag the training loop polls between steps.

Usage:
    with PreemptionGuard() as guard:
        for step in ...:
            ...train...
            if guard.should_stop(step):          # every process calls it at every step
                ckpt.save(step, state, meta, force=True); ckpt.wait(); break

Several processes: `should_stop` all-gathers the local flags, so a signal seen by any one process stops
all of them at the same step and they save the same step (Levanter's "one decides, all follow", done
with one collective). JAX's own route is the preemption sync service of `jax.distributed.initialize`
(`jax_enable_preemption_service`): `multihost_utils.reached_preemption_sync_point(step)`, which Orbax's
`CheckpointManager.reached_preemption(step)` wraps, picks a common step from JAX's C++ SIGTERM notifier.
Use one route or the other, not both: this guard's Python handler replaces that notifier while active.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from sj_jax.core.errors import SJError

log = logging.getLogger(__name__)


class PreemptionGuard:
    """Context manager: SIGTERM (and SIGINT if `sigint`) sets `requested` instead of killing the process.

    A second SIGINT while a stop is already requested raises KeyboardInterrupt, so Ctrl-C twice still
    quits at once. The previous handlers are put back on exit.
    """

    def __init__(self, *, sigint: bool = False):
        self.signals = (signal.SIGTERM, signal.SIGINT) if sigint else (signal.SIGTERM,)
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: will checkpoint and stop at the end of this step", self.signal_name)

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            raise SJError("PreemptionGuard must be entered on the main thread (Python delivers signals there)")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, prev in self._previous.items():
            # None means a handler installed from C that Python cannot reinstall; the default is closest.
            signal.signal(sig, signal.SIG_DFL if prev is None else prev)
        self._previous.clear()

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint `step` and stop; the same answer on every process (a collective if > 1)."""
        if jax.process_count() == 1:
            return self.requested

        flags = multihost_utils.process_allgather(np.asarray([self.requested], np.int32))
        stop = bool(np.asarray(flags).any())
        if stop and not self.requested:
            log.warning("another process was signalled: stopping at step %d", step)
        return stop
