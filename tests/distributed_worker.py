"""One process of a multi-process run in `test_distributed.py` (or the whole run, on one process).

    python distributed_worker.py runs MODEL DATA OUT    JSFT stopped at step 2 and resumed, DPO, 2 SELF-JUDGE steps
    python distributed_worker.py first|rest MODEL DATA OUT  the same in two parts (JSFT to its stop; the rest)
    python distributed_worker.py drill MODEL DATA OUT   a long JSFT run, slowed, that a SIGTERM stops

The processes come from the environment (`SJ_COORDINATOR`, `SJ_NUM_PROCESSES`, `SJ_PROCESS_ID`), as
`launch/local.sh` sets them; without them this is one process over every device it sees.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sj_jax.algorithms.self_judge import self_judge
from sj_jax.algorithms.self_judge_config import SelfJudgeConfig
from sj_jax.core.config import from_dict
from sj_jax.core.runtime import apply_runtime
from sj_jax.train import trainer
from sj_jax.train.config import TrainConfig


def train_config(kind: str, model: str, data: Path, out: Path, steps: int) -> TrainConfig:
    return from_dict(TrainConfig, {
        "model": model, "output_dir": str(out / kind), "batch_size": 4, "steps": steps, "seed": 3,
        "matmul_precision": "highest", "cache_dir": "auto",
        "data": {"train_file": str(data / ("dpo.jsonl" if kind == "dpo" else "jsft.jsonl")), "max_length": 128,
                 "max_prompt_length": 64, "max_response_length": 32},
        "optim": {"learning_rate": 3e-3, "warmup_steps": 1},
        "checkpoint": {"every": 0, "keep": 2, "async_save": False}})


def self_judge_config(model: str, data: Path, out: Path) -> SelfJudgeConfig:
    return from_dict(SelfJudgeConfig, {
        "model": model, "output_dir": str(out / "self_judge"), "prompts_file": str(data / "prompts.jsonl"),
        "batch_size": 4, "steps": 2, "seed": 1, "matmul_precision": "highest", "cache_dir": "auto",
        "sampling": {"max_new_tokens": 6}, "degenerate": {"truncated": "keep"}, "validation": {"file": ""},
        "lora": {"enabled": True}, "optim": {"learning_rate": 3e-2, "schedule": "constant", "warmup_steps": 0},
        "checkpoint": {"every": 0, "async_save": False}})


def slowed(run_loop, seconds: float):
    """`run_loop` whose steps each take at least `seconds` longer: time for a signal to land mid-run."""
    def wrapped(**kw):
        step_fn = kw["step_fn"]

        def slow_step(step, state):
            out = step_fn(step, state)
            time.sleep(seconds)
            return out

        return run_loop(**{**kw, "step_fn": slow_step})

    return wrapped


def main(mode: str, model: str, data: str, out: str) -> None:
    data_dir, out_dir = Path(data), Path(out)
    if mode in ("runs", "first", "rest"):
        cfg = apply_runtime(train_config("jsft", model, data_dir, out_dir, steps=4))
        if mode in ("runs", "first"):
            first = trainer.train("jsft", cfg, stop_at_step=2, progress=False)  # a collective save, then a stop
            assert first.preempted and first.steps == 2, first
            print(f"TOKENISED {first.tokenised}", flush=True)
        if mode in ("runs", "rest"):
            again = trainer.train("jsft", cfg, progress=False)  # a collective restore of step 2
            assert not again.preempted and again.steps == 4, again
            trainer.train("dpo", train_config("dpo", model, data_dir, out_dir, steps=3), progress=False)
            self_judge(self_judge_config(model, data_dir, out_dir), progress=False)
        print("DONE", flush=True)
    elif mode == "drill":
        cfg = apply_runtime(train_config("jsft", model, data_dir, out_dir, steps=16))
        trainer.run_loop = slowed(trainer.run_loop, 0.3)
        r = trainer.train("jsft", cfg, progress=False)
        print(f"PREEMPTED {r.steps}" if r.preempted else f"DONE {r.steps}", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
