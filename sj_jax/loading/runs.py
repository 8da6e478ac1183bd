"""A training run's folder as a model: its latest complete checkpoint over the model it started from.

`sj-jax sft|jsft|dpo` write `config.yaml` and Orbax steps under `checkpoints/`. Here: what a run
says of its model (`read_run_model`: the base, itself a name, a folder, a GGUF or another run; the
dtypes; LoRA) and its trained weights restored onto the mesh of a loaded base (`restore_trained`).
`sj_jax.loading.model.load_model` composes them: the base with the trained weights, or with the
adapter merged in (`load_run_parts` keeps them apart). Only the weights are read: the optimizer
moments stay on disk.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import jax
import yaml
from jax.sharding import NamedSharding, PartitionSpec

from sj_jax.core.config import Runtime, from_dict, read_yaml
from sj_jax.core.errors import ConfigError, SJError
from sj_jax.models import lora
from sj_jax.models.lora import LoraConfig
from sj_jax.weights.checkpoint import complete_steps, restore_subtree
from sj_jax.weights.registry import DEFAULT_MODEL

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"


def is_run_folder(path: Path) -> bool:
    """A folder written by the trainer: its config and a checkpoint directory."""
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / CHECKPOINTS).is_dir()


@dataclasses.dataclass
class RunParts:
    """A run's base model, its trained weights (full params, or LoRA adapters), the LoRA settings
    (`lora.enabled` False for a full-weight run) and the checkpoint step they come from."""

    base: Any  # sj_jax.loading.model.Model
    trained: dict
    lora: LoraConfig
    step: int
    folder: Path


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunModel(Runtime):
    """The model of a training run: the keys every kind of run (sft, jsft, dpo, self-judge) has,
    defined once here; `TrainConfig` and `SelfJudgeConfig` are `RunModel`s. `model`: the start (a
    name, a folder, a GGUF or another run); `param_dtype`: the master weights'; `lora`: adapters."""

    model: str = DEFAULT_MODEL
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    lora: LoraConfig = LoraConfig()


def read_run_model(folder: Path) -> RunModel:
    """The run's model settings from `folder/config.yaml`; errors name the file and the key."""
    path = folder / CONFIG_FILE
    try:
        raw = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        return from_dict(RunModel, {f.name: raw[f.name] for f in dataclasses.fields(RunModel) if f.name in raw})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def run_step(folder: Path, step: int | None) -> int:
    """`step` (the latest complete one when None), checked against the run's complete checkpoints."""
    steps = complete_steps(folder / CHECKPOINTS)
    if not steps:
        raise SJError(f"{folder / CHECKPOINTS}: no complete checkpoint (the run has not saved a step yet)")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise SJError(f"{folder / CHECKPOINTS}: no complete step {step}; complete: {steps}")
    return step


def restore_trained(folder: Path, step: int, base_params: dict, lora_cfg: LoraConfig, mesh: Any) -> dict:
    """The trained weights of `step`: full params laid out as `base_params`, or LoRA adapters (replicated)."""
    if lora_cfg.enabled:
        replicated = NamedSharding(mesh, PartitionSpec())
        shapes = jax.eval_shape(lambda p: lora.init_lora(lora_cfg, p, jax.random.key(0)), base_params)
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes)
    else:
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), base_params)
    return restore_subtree(folder / CHECKPOINTS / str(step), {"params": target})["params"]
