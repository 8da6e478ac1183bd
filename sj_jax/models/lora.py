"""LoRA: low-rank adapters on the scanned layer kernels.

A train step runs them beside the kernels (`adapter_variables`: y = x W + alpha/r (x A) B, the
model's "lora" collection), so its backward never forms a kernel-sized gradient; sampling,
judging and export merge them into the weights once (`merge`, `jitted_merge`: W + alpha/r A B).
The adapter tree mirrors the kernels it adapts: `layers/attn/q/{a [L, in, r], b [L, r, out]}`
where in/out are the kernel's flattened input/output axes. B starts at zero, so the adapted model
starts exactly at the base model (and a DPO reference that is "the base with the adapter off"
starts equal to the policy).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from sj_jax.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters; off by default. With LoRA, the DPO reference is the base weights, adapter off."""

    enabled: bool = False
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")


# kernel name -> (its module path under layers, number of input axes after the layer axis)
_TARGETS = {
    "q": (("attn", "q"), 1), "k": (("attn", "k"), 1), "v": (("attn", "v"), 1), "o": (("attn", "o"), 2),
    "gate": (("mlp", "gate"), 1), "up": (("mlp", "up"), 1), "down": (("mlp", "down"), 1),
}


def _kernel(params: dict, path: tuple[str, ...]) -> jax.Array:
    node = params["layers"]
    for p in path:
        node = node[p]
    return node["kernel"]


def init_lora(cfg: LoraConfig, params: dict, key: jax.Array) -> dict:
    """Adapters for `cfg.targets`: a ~ N(0, 1/in) float32, b = 0."""
    if cfg.rank < 1:
        raise ConfigError(f"lora.rank: must be >= 1, got {cfg.rank}")
    unknown = [t for t in cfg.targets if t not in _TARGETS]
    if unknown:
        raise ConfigError(f"lora.targets: unknown {unknown}; known: {', '.join(_TARGETS)}")
    adapters: dict = {}
    for i, name in enumerate(cfg.targets):
        path, n_in = _TARGETS[name]
        w = _kernel(params, path)
        layers, d_in = w.shape[0], math.prod(w.shape[1:1 + n_in])
        d_out = math.prod(w.shape[1 + n_in:])
        a = jax.random.normal(jax.random.fold_in(key, i), (layers, d_in, cfg.rank), jnp.float32) / math.sqrt(d_in)
        adapters[name] = {"a": a, "b": jnp.zeros((layers, cfg.rank, d_out), jnp.float32)}
    return adapters


def merge(cfg: LoraConfig, base: dict, adapters: dict) -> dict:
    """The base params with every adapted kernel replaced by W + alpha/rank * A B (in W's dtype)."""
    scale = cfg.alpha / cfg.rank
    layers = jax.tree.map(lambda x: x, base["layers"])  # a fresh container tree; leaves shared
    for name, ab in adapters.items():
        path, _ = _TARGETS[name]
        node = layers
        for p in path:
            node = node[p]
        w = node["kernel"]
        delta = jnp.einsum("lir,lro->lio", ab["a"], ab["b"]).reshape(w.shape)
        node["kernel"] = (jax.lax.stop_gradient(w) + scale * delta).astype(w.dtype)
    return {**base, "layers": layers}


def adapter_variables(cfg: LoraConfig, adapters: dict) -> dict:
    """The adapters as the model's "lora" variable collection: `a * alpha/rank` `[L, in, r]` and `b`
    `[L, r, out]` under each adapted projection's path, for `{"params": base, "lora": ...}`. The
    forward then adds `(x a) b` beside `x W`: the same function as `merge`, but the backward into the
    adapters costs two rank-r matmuls instead of a kernel-sized gradient (`x^T dy`)."""
    scale = cfg.alpha / cfg.rank
    tree: dict = {}
    for name, ab in adapters.items():
        node = tree.setdefault("layers", {})
        for p in _TARGETS[name][0]:
            node = node.setdefault(p, {})
        node["a"], node["b"] = ab["a"] * scale, ab["b"]
    return tree


def jitted_merge(cfg: LoraConfig, shardings):
    """`merge(cfg, base, adapters)` jitted, its output laid out as `shardings` (the base's), as the
    sampler and judge expect the weights they are given."""
    return jax.jit(functools.partial(merge, cfg), out_shardings=shardings)
