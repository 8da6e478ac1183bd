"""A training run's folder as a model: its latest complete checkpoint over the model it started from.

`sj-jax sft|jsft|dpo` write `config.yaml` and Orbax steps under `checkpoints/`. `load_run` rebuilds
the model the run trained: the base (`model:` in the run's config, itself a name, a folder, a GGUF
or another run) with the trained weights restored onto the mesh, or, for a LoRA run, the base with
the adapter merged in. `load_run_parts` keeps base and adapter apart, for a loop that switches the
adapter off (the frozen reference and judge are then the base). Only the weights are read: the
optimizer moments stay on disk.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from sj_jax.errors import SJError

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"


def is_run_folder(path: Path) -> bool:
    """A folder written by the trainer: its config and a checkpoint directory."""
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / CHECKPOINTS).is_dir()


@dataclasses.dataclass
class RunParts:
    """A run's base model, its trained weights (full params, or LoRA adapters), the LoRA settings
    (`lora.enabled` False for a full-weight run) and the checkpoint step they come from."""

    base: Any  # sj_jax.api.Model
    trained: dict
    lora: Any  # sj_jax.train.config.LoraConfig
    step: int
    folder: Path


def load_run_parts(folder: str | Path, *, dtype: str | None = None, param_dtype: str | None = None,
                   mesh: Any = None, step: int | None = None, tokenizer: Any = "auto",
                   remat: str = "none") -> RunParts:
    """The pieces of a run folder (the latest complete step unless `step`); dtype and param_dtype
    default to the run's own; tokenizer and remat as in `load_model`, for the base."""
    from sj_jax.api import load_model
    from sj_jax.config import from_dict
    from sj_jax.errors import ConfigError
    from sj_jax.train import lora
    from sj_jax.train.checkpoint import complete_steps, restore_subtree
    from sj_jax.config import read_yaml
    from sj_jax.train.config import TrainConfig

    import yaml

    folder = Path(folder)
    path = folder / CONFIG_FILE
    try:
        raw = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    # What every kind of run (sft, jsft, dpo, self-judge) says of its model, read with the trainer's types.
    try:
        cfg = from_dict(TrainConfig, {k: raw[k] for k in ("model", "dtype", "param_dtype", "lora") if k in raw})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    steps = complete_steps(folder / CHECKPOINTS)
    if not steps:
        raise SJError(f"{folder / CHECKPOINTS}: no complete checkpoint (the run has not saved a step yet)")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise SJError(f"{folder / CHECKPOINTS}: no complete step {step}; complete: {steps}")
    dtype = dtype or cfg.dtype
    base = load_model(cfg.model, dtype=dtype, param_dtype=param_dtype or cfg.param_dtype, mesh=mesh,
                      tokenizer=tokenizer, remat=remat)
    if cfg.lora.enabled:
        replicated = NamedSharding(base.mesh, PartitionSpec())
        shapes = jax.eval_shape(lambda p: lora.init_lora(cfg.lora, p, jax.random.key(0)), base.params)
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes)
    else:
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), base.params)
    trained = restore_subtree(folder / CHECKPOINTS / str(step), {"params": target})["params"]
    return RunParts(base, trained, cfg.lora, step, folder)


def load_run(folder: str | Path, *, dtype: str | None = None, param_dtype: str | None = None,
             mesh: Any = None, step: int | None = None, tokenizer: Any = "auto", remat: str = "none"):
    """The model a run trained, as one `Model` (a LoRA adapter merged into the base weights)."""
    from sj_jax.api import Model
    from sj_jax.train import lora

    parts = load_run_parts(folder, dtype=dtype, param_dtype=param_dtype, mesh=mesh, step=step,
                           tokenizer=tokenizer, remat=remat)
    base = parts.base
    if parts.lora.enabled:
        shardings = jax.tree.map(lambda x: x.sharding, base.params)
        params = lora.jitted_merge(parts.lora, shardings)(base.params, parts.trained)
    else:
        params = parts.trained
    return Model(base.config, params, base.tokenizer, base.mesh, f"{Path(folder)}@step{parts.step}")
