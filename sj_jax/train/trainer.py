"""The training loop at the edge: data in, jitted steps, progress, metrics, checkpoints, SIGTERM.

`train(kind, cfg)` runs `sft`, `jsft` or `dpo` from a `TrainConfig`. A restarted run continues from
the latest complete checkpoint in `output_dir/checkpoints` with the same data order, RNG and
optimizer state, so it logs the same losses as a run that was never stopped. A non-finite loss or
gradient never reaches the parameters (the step skips its update); under `nan_policy: halt` the run
stops with an error and the last good checkpoint stays the latest.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp

from sj_jax.api import Model, load_model
from sj_jax.config import save_yaml, to_dict
from sj_jax.data.batches import EpochIterator, collate_pairs, collate_sft, example_length
from sj_jax.data.examples import DataReport, load_examples, pair_example, sft_example
from sj_jax.data.judgment import judgment_text
from sj_jax.data.packing import pack
from sj_jax.errors import SJError
from sj_jax.sharding import make_mesh
from sj_jax.train import lora
from sj_jax.train.checkpoint import Checkpointer
from sj_jax.train.config import TrainConfig
from sj_jax.train.metrics import MetricsLog, read_metrics, write_report
from sj_jax.train.optim import make_optimizer
from sj_jax.train.preemption import PreemptionGuard
from sj_jax.train.steps import StepSpec, compile_step, mesh_shardings

Kind = Literal["sft", "jsft", "dpo"]


class NonFiniteLossError(SJError):
    """The loss or gradient went NaN/Inf; the message names the step and the last good checkpoint."""


@dataclasses.dataclass
class RunResult:
    steps: int
    last_loss: float
    metrics_file: Path
    report: Path | None
    preempted: bool = False


def load_data(kind: Kind, cfg: TrainConfig, tokenizer: Any) -> tuple[list, DataReport]:
    report = DataReport()
    d = cfg.data
    if not d.train_file:
        raise SJError("data.train_file: not set (a JSONL file)")
    if kind == "dpo":
        def build(row, where):
            return pair_example(tokenizer, row, where, d.max_prompt_length, d.max_response_length, report)
    else:
        def judgment(tok, row, where):
            return judgment_text(tok, cfg.judge, row, where)

        def build(row, where):
            return sft_example(tokenizer, row, where, d.max_length, report, judgment=judgment)
    return load_examples(d.train_file, build, report), report


def _collate(kind: Kind, cfg: TrainConfig, examples: list, pad_id: int):
    """The step's batch with the micro-batch axis in front, and its static response length (dpo)."""
    accum = cfg.optim.grad_accum
    if kind == "dpo":
        batch, r = collate_pairs(examples, cfg.data.max_prompt_length, cfg.data.max_response_length, pad_id)
    else:
        batch, r = collate_sft(examples, cfg.data.max_length, pad_id), None
    batch = {k: v.reshape((accum, -1) + v.shape[1:]) for k, v in batch.items()}
    return batch, r


def init_state(kind: Kind, cfg: TrainConfig, model: Model, tx):
    """(state, frozen): what is trained and what is held fixed (see `sj_jax.train.steps`)."""
    key = jax.random.key(cfg.seed)
    if cfg.lora.enabled:
        trainable = jax.jit(lambda p, k: lora.init_lora(cfg.lora, p, k))(model.params, jax.random.fold_in(key, 1))
        frozen = model.params
    elif kind == "dpo":
        trainable = jax.jit(lambda p: jax.tree.map(jnp.copy, p))(model.params)
        frozen = model.params
    else:
        trainable, frozen = model.params, None
    state = {"params": trainable, "opt_state": jax.jit(tx.init)(trainable), "step": jnp.int32(0),
             "rng": jax.random.key_data(key)}
    return jax.device_put(state, mesh_shardings(state, model.mesh)), frozen


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def train(kind: Kind, cfg: TrainConfig, *, model: Model | None = None, stop_at_step: int | None = None,
          progress: bool = True) -> RunResult:
    """Runs (or resumes) a training run; `stop_at_step` ends it early as a preemption would."""
    if cfg.data.packing and kind == "dpo":  # before the model and data load, not after
        raise SJError("data.packing: packs SFT/JSFT examples; DPO pairs keep one pair a row")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    mesh = make_mesh(cfg.mesh)
    if model is None:
        model = load_model(cfg.model, dtype=cfg.dtype, param_dtype=cfg.param_dtype, mesh=mesh, remat=cfg.remat)
    mesh = model.mesh
    examples, report = load_data(kind, cfg, model.tokenizer)
    data_report = report.as_dict()
    if cfg.data.packing:
        examples, packed = pack(examples, cfg.data.max_length)
        data_report["packing"] = packed.as_dict()  # batch_size now counts packed rows
    (out / "data_report.json").write_text(json.dumps(data_report, indent=1))
    rows_per_step = cfg.batch_size * cfg.optim.grad_accum
    lengths = [example_length(e) for e in examples] if cfg.data.group_by_length else None
    it = EpochIterator(len(examples), rows_per_step, cfg.seed, cfg.data.shuffle, lengths=lengths)
    total = cfg.steps or int(cfg.epochs * it.steps_per_epoch)
    tx, schedule = make_optimizer(cfg.optim, total)
    state, frozen = init_state(kind, cfg, model, tx)

    ckpt = Checkpointer(out / "checkpoints", max_to_keep=cfg.checkpoint.keep, save_every=cfg.checkpoint.every,
                        async_save=cfg.checkpoint.async_save,
                        run_info=Checkpointer.run_info({"kind": kind, **to_dict(cfg)}, cfg.seed))
    start = 0
    if cfg.checkpoint.resume and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(target=_abstract(state))
        it.restore(meta["data"])
        start = int(state["step"])
        print(f"resumed from step {start} ({ckpt.latest_step()} in {out / 'checkpoints'})", file=sys.stderr)
    log = MetricsLog(out / "metrics.jsonl", resume_step=start)
    pad_id = model.tokenizer.pad_token_id
    base_spec = StepSpec("dpo" if kind == "dpo" else "sft", model.config, cfg.lora, cfg.dpo, cfg.logprob_chunk)
    steps: dict[Any, Any] = {}
    last_loss, nonfinite_run, preempted = float("nan"), 0, False
    from tqdm import tqdm

    t0 = time.perf_counter()
    tokens_done = 0
    with PreemptionGuard() as guard, tqdm(total=total, initial=start, disable=not progress, file=sys.stderr,
                                          unit="step", dynamic_ncols=True) as bar:
        for step in range(start, total):
            batch, r = _collate(kind, cfg, [examples[i] for i in it.next()], pad_id)
            key = (r,) + tuple(v.shape for v in batch.values())
            if key not in steps:
                spec = dataclasses.replace(base_spec, response_len=r)
                steps[key] = compile_step(spec, tx, schedule, mesh, state, frozen, batch)
            state, metrics = steps[key](state, frozen, batch)
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            tokens_done += int((batch["attention_mask"] > 0).sum())
            elapsed = time.perf_counter() - t0
            row = {"step": step + 1, **m, "tokens_per_s": tokens_done / elapsed, "elapsed_s": elapsed}
            if m["nonfinite"]:
                nonfinite_run += 1
                log.write(row)
                if cfg.nan_policy == "halt" or nonfinite_run > cfg.max_nonfinite:
                    ckpt.wait()
                    log.close()
                    raise NonFiniteLossError(
                        f"step {step + 1}: non-finite loss or gradient (loss={m['loss']}, grad_norm={m['grad_norm']}); "
                        f"the update was not applied; the last good checkpoint is step {ckpt.latest_step()} "
                        f"in {out / 'checkpoints'}")
                continue
            nonfinite_run = 0
            last_loss = m["loss"]
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                log.write(row)
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            stop = guard.should_stop(step + 1) or (stop_at_step is not None and step + 1 >= stop_at_step)
            if ckpt.should_save(step + 1) or stop or step + 1 == total:
                ckpt.save(step + 1, state, {"data": it.state()}, force=True)
            if stop and step + 1 < total:
                preempted = True
                break
    ckpt.wait()
    ckpt.close()
    log.close()
    report_path = None
    if not preempted:
        rows = read_metrics(out / "metrics.jsonl")
        keys = ("loss", "rewards/margins", "rewards/accuracies") if kind == "dpo" else ("loss",)
        report_path = write_report(out, f"sj-jax {kind}: {cfg.model}", rows, {
            "steps": total, "final loss": f"{last_loss:.4f}", "examples": report.examples,
            **{k: v for k, v in report.as_dict().items() if k != "examples"}}, keys)
    return RunResult(total if not preempted else step + 1, last_loss, out / "metrics.jsonl", report_path, preempted)
