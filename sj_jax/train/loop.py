"""The edges every training run shares: resume, progress, metrics, the NaN policy, checkpoints, SIGTERM.

`run_loop` drives any step function, `(step index, state) -> (state, metrics row)`, from the latest
complete checkpoint (or step 0) to `total`: `sj-jax sft|jsft|dpo` (`sj_jax.train.trainer`) and the
SELF-JUDGE loop (`sj_jax.algorithms.self_judge`) both run through it, so a checkpoint, a metrics file, a
preempted run and a NaN mean the same thing everywhere. The step function owns everything between
two checkpoints (data, sampling, the jitted update); whatever it needs to continue exactly, besides
the state, is its data position (`data_state` / `restore_data`), saved in every checkpoint.

A row whose `nonfinite` is 1 is a step whose update was dropped: it is logged, and under
`nan_policy: halt` (or more than `max_nonfinite` in a row) the run stops with `NonFiniteLossError`
and the last good checkpoint stays the latest. A row with `updated: 0` (a step that had nothing to
train on) is logged and counted, but it is not a failure.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

import jax
from tqdm import tqdm

from sj_jax.core.distributed import is_primary
from sj_jax.core.errors import SJError
from sj_jax.train.config import CheckpointConfig
from sj_jax.train.metrics import MetricsLog, NullLog
from sj_jax.train.preemption import PreemptionGuard
from sj_jax.weights.checkpoint import Checkpointer

StepFn = Callable[[int, Any], tuple[Any, dict]]


class NonFiniteLossError(SJError):
    """The loss or gradient went NaN/Inf; the message names the step and the last good checkpoint."""


@dataclasses.dataclass
class LoopResult:
    state: Any
    start: int  # the step the run (re)started from
    steps: int  # steps done when it ended (== total unless preempted)
    last_loss: float
    preempted: bool


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def run_loop(*, out: Path, state: Any, total: int, step_fn: StepFn, checkpoint: CheckpointConfig, run_info: dict,
             data_state: Callable[[], dict], restore_data: Callable[[dict], None], nan_policy: str = "halt",
             max_nonfinite: int = 3, log_every: int = 1, progress: bool = True, stop_at_step: int | None = None,
             postfix: Callable[[dict], dict] | None = None,
             on_start: Callable[[int, Any, Callable[[dict], None]], None] | None = None,
             ) -> LoopResult:
    """Runs steps `start .. total - 1` of the run in `out` and returns where it ended.

    state: the freshly initialised state (a restore replaces it, with the same shardings).
    stop_at_step: end after this step as a preemption would (tests, drills). postfix: the progress
    bar's fields from a row. on_start(start, state, write): called once before the first step (after
    any restore) with the metrics file's `write`, e.g. to log a step-0 evaluation.
    """
    ckpt = Checkpointer(out / "checkpoints", max_to_keep=checkpoint.keep, save_every=checkpoint.every,
                        async_save=checkpoint.async_save, run_info=run_info)
    start = 0
    if checkpoint.resume and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(target=_abstract(state))
        restore_data(meta["data"])
        start = int(meta.get("loop_step", ckpt.latest_step()))
        print(f"resumed from step {start} ({out / 'checkpoints'})", file=sys.stderr)
    # Process 0 writes the metrics and shows the progress; the others run the same steps silently.
    log = MetricsLog(out / "metrics.jsonl", resume_step=start) if is_primary() else NullLog()
    last_loss, nonfinite_run, preempted, step = float("nan"), 0, False, start

    try:
        if on_start is not None:
            on_start(start, state, log.write)
        with PreemptionGuard() as guard, tqdm(total=total, initial=start, disable=not (progress and is_primary()),
                                              file=sys.stderr, unit="step", dynamic_ncols=True) as bar:
            for step in range(start, total):
                state, row = step_fn(step, state)
                row = {"step": step + 1, **row}
                if row.get("nonfinite"):
                    nonfinite_run += 1
                    log.write(row)
                    if nan_policy == "halt" or nonfinite_run > max_nonfinite:
                        ckpt.wait()
                        raise NonFiniteLossError(
                            f"step {step + 1}: non-finite loss or gradient (loss={row.get('loss')}, "
                            f"grad_norm={row.get('grad_norm')}); the update was not applied; the last good "
                            f"checkpoint is step {ckpt.latest_step()} in {out / 'checkpoints'}")
                    continue
                nonfinite_run = 0
                if row.get("updated", 1):
                    last_loss = row["loss"]
                if (step + 1) % log_every == 0 or step + 1 == total:
                    log.write(row)
                bar.update(1)
                if postfix is not None:
                    bar.set_postfix(postfix(row))
                stop = guard.should_stop(step + 1) or (stop_at_step is not None and step + 1 >= stop_at_step)
                if ckpt.should_save(step + 1) or stop or step + 1 == total:
                    ckpt.save(step + 1, state, {"data": data_state(), "loop_step": step + 1}, force=True)
                if stop and step + 1 < total:
                    preempted = True
                    break
    finally:
        ckpt.wait()
        ckpt.close()
        log.close()
    return LoopResult(state, start, step + 1 if preempted else total, last_loss, preempted)
