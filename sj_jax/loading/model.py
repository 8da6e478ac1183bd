"""The public handle on a model: load it (HF folder, GGUF, or an embedded name), run it, save it."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sj_jax.core.cache import cache_root
from sj_jax.core.errors import ConfigError, WeightsError
from sj_jax.loading.runs import RunParts, is_run_folder, read_run_model, restore_trained, run_step
from sj_jax.models import lora
from sj_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig, from_hf_config, to_hf_config_kwargs
from sj_jax.models.sharding import (MeshConfig, batch_sharding, logical_sharding, make_mesh, param_shardings,
                                    to_global, traced_on)
from sj_jax.models.transformer import Transformer
from sj_jax.weights.dequant_cache import CachedGGUFSource
from sj_jax.weights.gguf_io import GGUFSource
from sj_jax.weights.loader import abstract_params, export_tensors, load_params
from sj_jax.weights.registry import resolve
from sj_jax.weights.safetensors_io import SafetensorsSource, save_safetensors
from sj_jax.weights.tokenizer import gguf_tokenizer, load_tokenizer


@dataclasses.dataclass
class Model:
    """A loaded model: static `config`, sharded `params` on `mesh`, and its `tokenizer` (or None)."""

    config: ModelConfig
    params: dict
    tokenizer: Any
    mesh: Mesh
    source: str = ""

    @property
    def module(self) -> Transformer:
        return Transformer(self.config)


def read_hf_config(folder: Path) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face folder, with errors naming `config.json` and the bad field."""
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: missing (a Hugging Face model folder needs config.json)") from None
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    model_type = raw.get("model_type")
    if model_type is None:
        raise ConfigError(f"{path}: model_type is missing; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{path}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    from transformers import AutoConfig

    try:
        hf = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise ConfigError(f"{path}: transformers cannot read it: {e}") from e
    return from_hf_config(hf, str(path))


def _resolve_mesh(mesh: Mesh | MeshConfig | None) -> Mesh:
    if mesh is None:
        return make_mesh(MeshConfig(), jax.devices()[:1])
    if isinstance(mesh, MeshConfig):
        return make_mesh(mesh)
    return mesh


def load_model(
    path_or_name: str | Path,
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    mesh: Mesh | MeshConfig | None = None,
    tokenizer: str | Path | None = "auto",
    remat: str = "none",
) -> Model:
    """Loads a Llama-family model from a Hugging Face folder, a `.gguf` file, an embedded name, or a
    training run's folder (its latest complete checkpoint; see `sj_jax.loading.runs`).

    dtype: compute dtype ("float32" | "bfloat16"); param_dtype: storage dtype (default: `dtype`).
    mesh: a `Mesh`, a `MeshConfig`, or None for a single device. tokenizer: "auto" (from the same
    folder or GGUF; an error if there is none), a folder, or None (no tokenizer).
    """
    path = resolve(path_or_name)
    if is_run_folder(path):
        return load_run(path, dtype=dtype, param_dtype=param_dtype, mesh=mesh, tokenizer=tokenizer, remat=remat)
    fields = None
    if path.suffix == ".gguf":
        gguf = GGUFSource(path)
        cfg, fields = gguf.model_config(), gguf.file.fields
        root = cache_root()
        source: Any = gguf if root is None else CachedGGUFSource(gguf, root / "weights")
    elif path.is_dir():
        cfg = read_hf_config(path)
        source = SafetensorsSource(path)
    else:
        raise WeightsError(f"{path}: expected a Hugging Face model folder or a .gguf file")
    try:
        cfg = cfg.replace(dtype=dtype, param_dtype=param_dtype or dtype, remat=remat)
    except ConfigError as e:
        raise ConfigError(f"load_model: {e}") from None
    mesh = _resolve_mesh(mesh)
    params = load_params(cfg, source, mesh)
    if isinstance(source, CachedGGUFSource):
        source.save()
    tok = None
    if tokenizer == "auto" and fields is not None:
        tok = gguf_tokenizer(path, fields)
    elif tokenizer is not None:
        tok = load_tokenizer(path if tokenizer == "auto" else tokenizer)
    return Model(cfg, params, tok, mesh, str(path))


def load_run_parts(folder: str | Path, *, dtype: str | None = None, param_dtype: str | None = None,
                   mesh: Any = None, step: int | None = None, tokenizer: Any = "auto",
                   remat: str = "none") -> RunParts:
    """The pieces of a run folder (the latest complete step unless `step`); dtype and param_dtype
    default to the run's own; tokenizer and remat as in `load_model`, for the base."""
    folder = Path(folder)
    run = read_run_model(folder)
    step = run_step(folder, step)
    base = load_model(run.model, dtype=dtype or run.dtype, param_dtype=param_dtype or run.param_dtype, mesh=mesh,
                      tokenizer=tokenizer, remat=remat)
    trained = restore_trained(folder, step, base.params, run.lora, base.mesh)
    return RunParts(base, trained, run.lora, step, folder)


def load_run(folder: str | Path, *, dtype: str | None = None, param_dtype: str | None = None,
             mesh: Any = None, step: int | None = None, tokenizer: Any = "auto", remat: str = "none") -> Model:
    """The model a run trained, as one `Model` (a LoRA adapter merged into the base weights)."""
    parts = load_run_parts(folder, dtype=dtype, param_dtype=param_dtype, mesh=mesh, step=step,
                           tokenizer=tokenizer, remat=remat)
    base = parts.base
    if parts.lora.enabled:
        shardings = jax.tree.map(lambda x: x.sharding, base.params)
        params = lora.jitted_merge(parts.lora, shardings)(base.params, parts.trained)
    else:
        params = parts.trained
    return Model(base.config, params, base.tokenizer, base.mesh, f"{Path(folder)}@step{parts.step}")


def init_model(cfg: ModelConfig, *, seed: int = 0, mesh: Mesh | MeshConfig | None = None,
               tokenizer: Any = None) -> Model:
    """A randomly initialised model (normal(0.02) kernels), built directly in its sharded layout."""
    cache_root()  # the first model of a process configures the compilation cache
    mesh = _resolve_mesh(mesh)
    shardings = param_shardings(abstract_params(cfg), mesh)
    ids = jnp.zeros((1, 1), jnp.int32)

    def init(key):
        return nn.meta.unbox(Transformer(cfg).init(key, ids)["params"])

    params = jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
    return Model(cfg, params, tokenizer, mesh, f"random(seed={seed})")


@functools.lru_cache(maxsize=64)
def jitted_forward(cfg: ModelConfig, mesh: Mesh, shape: tuple[int, int]):
    """(jitted `fwd(params, ids, mask) -> logits` with explicit shardings, the input sharding), cached."""
    module = Transformer(cfg)
    p_shard = param_shardings(abstract_params(cfg), mesh)
    x_shard = batch_sharding(mesh, shape)
    out_shard = logical_sharding(("batch", "seq", "vocab"), shape + (cfg.vocab_size,), mesh)

    def fwd(params, input_ids, attention_mask):
        return module.apply({"params": params}, input_ids, attention_mask)

    return jax.jit(traced_on(mesh, fwd), in_shardings=(p_shard, x_shard, x_shard), out_shardings=out_shard), x_shard


def logits(model: Model, input_ids: Any, attention_mask: Any = None) -> jax.Array:
    """float32 `[batch, seq, vocab]` logits for int32 `input_ids: [batch, seq]`.

    attention_mask: `[batch, seq]`, 1 for tokens and 0 for padding (right padding as a rule;
    left padding works too: positions count real tokens). Logits at padded positions are undefined.
    """
    ids = np.asarray(input_ids, np.int32)
    if ids.ndim != 2:
        raise ValueError(f"input_ids: expected [batch, seq], got shape {ids.shape}")
    if (ids < 0).any() or (ids >= model.config.vocab_size).any():
        raise ValueError(f"input_ids: token ids must lie in [0, {model.config.vocab_size})")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask: shape {mask.shape} differs from input_ids {ids.shape}")
    fn, x_shard = jitted_forward(model.config, model.mesh, ids.shape)
    return fn(model.params, to_global(ids, x_shard), to_global(mask, x_shard))


def save_hf(model: Model, out_dir: str | Path) -> Path:
    """Writes config.json, model.safetensors and the tokenizer files that PyTorch transformers loads."""
    from transformers import AutoConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = to_hf_config_kwargs(model.config)
    hf_config = AutoConfig.for_model(model.config.model_type, **kwargs)
    hf_config.architectures = [
        {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[
            model.config.model_type]
    ]
    hf_config.save_pretrained(str(out))
    save_safetensors(export_tensors(model.config, model.params), out)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out))
    return out
