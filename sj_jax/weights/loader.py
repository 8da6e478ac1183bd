"""Place a checkpoint's tensors straight onto the mesh, and take them back off for export.

Each parameter is built with `jax.make_array_from_callback`: every device asks only for its own
shard, read from the (memory-mapped or dequantised) source layer by layer, so no host ever
assembles a full replicated copy it does not need.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh

from sj_jax.core.errors import WeightsError
from sj_jax.models.config import ModelConfig
from sj_jax.models.sharding import param_shardings
from sj_jax.models.transformer import Transformer
from sj_jax.weights.keymap import IGNORED_SUFFIXES, RULES, KeyRule

log = logging.getLogger(__name__)
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


class TensorSource(Protocol):
    path: str

    def names(self) -> set[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def get(self, name: str) -> np.ndarray: ...
    def file_of(self, name: str) -> str: ...


def abstract_params(cfg: ModelConfig) -> Any:
    """The param tree as `ShapeDtypeStruct`s wrapped in `nn.LogicallyPartitioned` (axis names)."""
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0), ids))["params"]


def _rule(path: tuple[str, ...]) -> KeyRule:
    if path not in RULES:
        raise KeyError(f"no weight-name rule for parameter {'/'.join(path)}")
    return RULES[path]


def _check_source(cfg: ModelConfig, source: TensorSource, flat: dict) -> None:
    """Every expected tensor is there with its expected shape; unused ones are logged."""
    expected: set[str] = set()
    for path, boxed in flat.items():
        rule = _rule(path)
        shape = boxed.value.shape
        layer_shape = shape[1:] if rule.per_layer else shape
        want = rule.hf_shape(layer_shape)
        for i in range(cfg.num_layers) if rule.per_layer else [None]:
            name = rule.hf_name.format(i=i)
            expected.add(name)
            if name not in source.names():
                raise WeightsError(f"{source.path}: tensor {name} is missing")
            got = source.shape(name)
            if got != want:
                raise WeightsError(f"{source.file_of(name)}: tensor {name} has shape {got}, expected {want}")
    unexpected = sorted(n for n in source.names() - expected if not n.endswith(IGNORED_SUFFIXES))
    if unexpected:
        if cfg.tie_word_embeddings and unexpected == ["lm_head.weight"]:
            log.info("%s: lm_head.weight ignored (embeddings are tied)", source.path)
        else:
            log.warning("%s: %d tensors not used by the model, e.g. %s", source.path, len(unexpected), unexpected[:3])


def load_params(cfg: ModelConfig, source: TensorSource, mesh: Mesh) -> dict:
    """The params of `cfg` read from `source`, cast to `cfg.param_dtype`, sharded over `mesh`."""
    boxed = abstract_params(cfg)
    shardings = flatten_dict(param_shardings(boxed, mesh))
    flat = flatten_dict(boxed)
    _check_source(cfg, source, flat)
    dtype = _NP_DTYPES[cfg.param_dtype]
    out = {}
    for path, b in flat.items():
        rule = _rule(path)
        shape = tuple(b.value.shape)
        cache: dict[int | None, np.ndarray] = {}

        def layer(i, rule=rule, shape=shape, cache=cache):
            if i not in cache:
                inner = shape[1:] if rule.per_layer else shape
                cache[i] = rule.to_ours(source.get(rule.hf_name.format(i=i)), inner).astype(dtype)
            return cache[i]

        def shard(index, rule=rule, shape=shape, layer=layer):
            if not rule.per_layer:
                return layer(None)[index]
            layers = range(shape[0])[index[0]]
            return np.stack([layer(i)[index[1:]] for i in layers])

        out[path] = jax.make_array_from_callback(shape, shardings[path], shard)
    return unflatten_dict(out)


def export_tensors(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """Hugging Face-named host tensors (`param_dtype`) from our (possibly sharded) params."""
    tensors = {}
    for path, arr in flatten_dict(params).items():
        rule = _rule(path)
        host = np.asarray(jax.device_get(arr))
        if rule.per_layer:
            for i in range(cfg.num_layers):
                tensors[rule.hf_name.format(i=i)] = rule.to_hf(host[i])
        else:
            tensors[rule.hf_name] = rule.to_hf(host)
    return tensors
