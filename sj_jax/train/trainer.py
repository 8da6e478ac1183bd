"""`sj-jax sft|jsft|dpo`: data in, one jitted step a batch, driven by the shared run loop
(`sj_jax.train.loop`: resume, progress, metrics, NaN policy, checkpoints, SIGTERM).

`train(kind, cfg)` runs `sft`, `jsft` or `dpo` from a `TrainConfig`. A restarted run continues from
the latest complete checkpoint in `output_dir/checkpoints` with the same data order, RNG and
optimizer state, so it logs the same losses as a run that was never stopped. A non-finite loss or
gradient never reaches the parameters (the step skips its update); under `nan_policy: halt` the run
stops with an error and the last good checkpoint stays the latest.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp

from sj_jax.core.config import save_yaml, to_dict
from sj_jax.core.distributed import gather_from_processes, is_primary
from sj_jax.core.errors import SJError
from sj_jax.data.batches import EpochIterator, collate_pairs, collate_pairs_joint, collate_sft
from sj_jax.data.examples import DataReport, pair_example, sft_example
from sj_jax.data.judgment import judgment_text
from sj_jax.data.shares import Examples, PackedExamples, file_rows
from sj_jax.loading.model import Model, load_model
from sj_jax.models import lora
from sj_jax.models.sharding import make_mesh
from sj_jax.train.config import TrainConfig
from sj_jax.train.loop import run_loop
from sj_jax.train.metrics import read_metrics, write_report
from sj_jax.train.optim import make_optimizer
from sj_jax.train.steps import (StepSpec, batch_shape, local_batch_rows, mesh_shardings, optimizer_shardings,
                                place_batch, shared_step)
from sj_jax.weights.checkpoint import Checkpointer

Kind = Literal["sft", "jsft", "dpo"]


@dataclasses.dataclass
class RunResult:
    steps: int
    last_loss: float
    metrics_file: Path
    report: Path | None
    preempted: bool = False
    tokenised: int = 0  # training examples this process tokenised (on several: its share and its rows)


def load_data(kind: Kind, cfg: TrainConfig, tokenizer: Any) -> tuple[Examples, DataReport]:
    """The training file's examples and its whole report; on several processes each tokenises only
    its share up front, and later only the rows its devices hold (`sj_jax.data.shares`)."""
    d = cfg.data
    if not d.train_file:
        raise SJError("data.train_file: not set (a JSONL file)")
    if kind == "dpo":
        def build(row, where, report):
            return pair_example(tokenizer, row, where, d.max_prompt_length, d.max_response_length, report)
    else:
        def judgment(tok, row, where):
            return judgment_text(tok, cfg.judge, row, where)

        def build(row, where, report):
            return sft_example(tokenizer, row, where, d.max_length, report, judgment=judgment)
    examples = Examples(file_rows(d.train_file), build, index=jax.process_index(), count=jax.process_count(),
                        gather=gather_from_processes)
    return examples, examples.report


def _collate(kind: Kind, cfg: TrainConfig, examples: list, pad_id: int):
    """The step's batch with the micro-batch axis in front, and its static response length (dpo)."""
    accum = cfg.optim.grad_accum
    if kind == "dpo":
        collate = collate_pairs_joint if cfg.data.pair_layout == "joint" else collate_pairs
        batch, r = collate(examples, cfg.data.max_prompt_length, cfg.data.max_response_length, pad_id)
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
    elif kind == "dpo" or model.config.param_dtype != "float32":
        # Full fine-tuning trains a float32 master copy (mixed precision: the forward casts it to
        # param_dtype, the optimizer updates it in float32); DPO keeps the start as its reference.
        trainable = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(jnp.float32), p))(model.params)
        frozen = model.params if kind == "dpo" else None
    else:
        trainable, frozen = model.params, None
    opt_layout = optimizer_shardings(jax.eval_shape(tx.init, trainable), trainable, model.mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_layout)(trainable)  # the moments sharded as the weights
    state = {"params": trainable, "opt_state": opt_state, "step": jnp.int32(0), "rng": jax.random.key_data(key)}
    return jax.device_put(state, mesh_shardings(state, model.mesh)), frozen


def train(kind: Kind, cfg: TrainConfig, *, model: Model | None = None, stop_at_step: int | None = None,
          progress: bool = True) -> RunResult:
    """Runs (or resumes) a training run; `stop_at_step` ends it early as a preemption would."""
    if cfg.data.packing and kind == "dpo":  # before the model and data load, not after
        raise SJError("data.packing: packs SFT/JSFT examples; DPO pairs keep one pair a row")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    primary = is_primary()  # process 0 writes the run's files; every process trains
    if primary:
        save_yaml(cfg, out / "config.yaml")
    mesh = make_mesh(cfg.mesh)
    if model is None:
        model = load_model(cfg.model, dtype=cfg.dtype, param_dtype=cfg.param_dtype, mesh=mesh, remat=cfg.remat)
    mesh = model.mesh
    examples, report = load_data(kind, cfg, model.tokenizer)
    data_report = report.as_dict()
    if cfg.data.packing:
        examples = PackedExamples(examples, cfg.data.max_length)
        data_report["packing"] = examples.report.as_dict()  # batch_size now counts packed rows
    if primary:
        (out / "data_report.json").write_text(json.dumps(data_report, indent=1))
    rows_per_step = cfg.batch_size * cfg.optim.grad_accum
    lengths = examples.lengths() if cfg.data.group_by_length else None
    it = EpochIterator(len(examples), rows_per_step, cfg.seed, cfg.data.shuffle, lengths=lengths)
    total = cfg.steps or int(cfg.epochs * it.steps_per_epoch)
    tx = make_optimizer(cfg.optim, total)[0]
    state, frozen = init_state(kind, cfg, model, tx)
    pad_id = model.tokenizer.pad_token_id
    base_spec = StepSpec("dpo" if kind == "dpo" else "sft", model.config, cfg.lora, cfg.dpo, cfg.logprob_chunk)
    clock = {"t0": time.perf_counter(), "tokens": 0}
    shapes: set[tuple] = set()  # the padded batch shapes met so far: one compiled program each

    mine = local_batch_rows(mesh, cfg.optim.grad_accum, cfg.batch_size)  # the rows this process fills in

    def one_step(step: int, state):
        rows = [examples[i] if mine[k % cfg.batch_size] else examples.stand_in(i) for k, i in enumerate(it.next())]
        batch, r = _collate(kind, cfg, rows, pad_id)
        tokens = int((batch["attention_mask"] > 0).sum())
        batch = place_batch(mesh, batch)
        fn = shared_step(dataclasses.replace(base_spec, response_len=r), cfg.optim, total, mesh, state, frozen, batch)
        state, metrics = fn(state, frozen, batch)
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        clock["tokens"] += tokens
        elapsed = time.perf_counter() - clock["t0"]
        shapes.add(batch_shape(batch))
        return state, {**m, "tokens_per_s": clock["tokens"] / elapsed, "elapsed_s": elapsed,
                       "step_programs": len(shapes)}

    loop = run_loop(out=out, state=state, total=total, step_fn=one_step, checkpoint=cfg.checkpoint,
                    run_info=Checkpointer.run_info({"kind": kind, **to_dict(cfg)}, cfg.seed),
                    data_state=it.state, restore_data=it.restore, nan_policy=cfg.nan_policy,
                    max_nonfinite=cfg.max_nonfinite, log_every=cfg.log_every, progress=progress,
                    stop_at_step=stop_at_step,
                    postfix=lambda row: {"loss": f"{row['loss']:.4f}", "tok_s": f"{row['tokens_per_s']:.0f}"})
    report_path = None
    if primary and not loop.preempted:
        rows = read_metrics(out / "metrics.jsonl")
        keys = ("loss", "rewards/margins", "rewards/accuracies") if kind == "dpo" else ("loss",)
        report_path = write_report(out, f"sj-jax {kind}: {cfg.model}", rows, {
            "steps": total, "final loss": f"{loop.last_loss:.4f}", "examples": report.examples,
            **{k: v for k, v in report.as_dict().items() if k != "examples"}}, keys)
    base = examples.base if cfg.data.packing else examples
    return RunResult(loop.steps, loop.last_loss, out / "metrics.jsonl", report_path, loop.preempted, base.tokenised)
