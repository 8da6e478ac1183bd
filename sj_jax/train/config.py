"""The configuration of a training run (`sj-jax sft|jsft|dpo`): one frozen dataclass tree, read from YAML."""

from __future__ import annotations

import dataclasses
from typing import Literal

from sj_jax.core.errors import ConfigError
from sj_jax.judge.template import DEFAULT_TEMPLATE, JudgeTemplate
from sj_jax.loading.runs import RunModel
from sj_jax.models.sharding import MeshConfig


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with a schedule, global-norm clipping and in-step gradient accumulation."""

    learning_rate: float = 1e-5
    schedule: Literal["cosine", "constant", "linear"] = "cosine"  # after the warm-up
    warmup_ratio: float = 0.03  # of the total steps; used when warmup_steps is None
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0  # cosine/linear end at learning_rate * min_lr_ratio
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0  # 0 = off
    grad_accum: int = 1  # micro-batches per optimizer step, accumulated inside one jitted step


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    label_smoothing: float = 0.0
    nll_weight: float = 0.0  # + nll_weight x the chosen response's mean token NLL (the self-taught evaluator's DPO)

    def __post_init__(self):
        if not self.nll_weight >= 0:
            raise ConfigError(f"dpo.nll_weight: must be >= 0, got {self.nll_weight}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Local JSONL. sft/jsft: {"messages": [...]} or {"prompt", "response"} or {"judgment": {...}} rows;
    dpo: {"prompt", "chosen", "rejected"} rows (prompt: a string or a list of messages)."""

    train_file: str = ""
    max_length: int = 1024  # sft/jsft: whole example; longer ones are cut from the left of the context
    max_prompt_length: int = 512  # dpo: prompts are cut from the left
    max_response_length: int = 512  # dpo: responses are cut from the right
    shuffle: bool = True
    group_by_length: bool = False  # batch examples of similar length together (less padding; seeded, resumable)
    packing: bool = False  # sft/jsft: several examples per max_length row, each attending to itself only
    pair_layout: Literal["joint", "separate"] = "joint"  # dpo: one row a pair, prompt once (same numbers)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100  # steps; 0 = only at the end and on SIGTERM
    keep: int = 3
    async_save: bool = True
    resume: bool = True  # continue from the latest complete checkpoint in output_dir/checkpoints


@dataclasses.dataclass(frozen=True)
class TrainConfig(RunModel):
    """One run. `steps` = optimizer steps (0: `epochs` passes over the data)."""

    remat: Literal["none", "full", "dots"] = "none"
    output_dir: str = "runs/train"
    seed: int = 0
    batch_size: int = 8  # examples (dpo: pairs) per micro-batch, over all devices
    steps: int = 0
    epochs: float = 1.0
    log_every: int = 1
    logprob_chunk: int = 8192  # vocabulary chunk of the output projection
    nan_policy: Literal["halt", "skip"] = "halt"  # skip: drop the update, halt after max_nonfinite in a row
    max_nonfinite: int = 3
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    dpo: DPOConfig = DPOConfig()
    judge: JudgeTemplate = DEFAULT_TEMPLATE  # jsft: the text of judgment examples
    checkpoint: CheckpointConfig = CheckpointConfig()
    mesh: MeshConfig = MeshConfig()
