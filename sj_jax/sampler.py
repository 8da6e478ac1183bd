"""On-policy generation with a KV cache: a jitted prefill, then one jitted `lax.while_loop` decode.

Prompts are left-padded to a length bucket, so every row writes its next key/value at the same
cache slot; positions count real tokens only, so padding changes nothing. Each row draws from its
own PRNG key (seed, prompt index, sample index), so a row's sample does not depend on the batch it
shares. Layers are unrolled over per-layer parameter slices taken once per call: inside the loop
no weight is copied, and each cache is updated in place.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sj_jax.model import _DTYPES, DecoderLayer, Transformer, positions_from_mask
from sj_jax.model_config import ModelConfig
from sj_jax.rope import rotary_tables
from sj_jax.sampling import SamplingConfig, sample
from sj_jax.sharding import batch_sharding, logical_sharding, param_shardings
from sj_jax.weights.loader import abstract_params

PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


def prompt_bucket(length: int, max_new_tokens: int, max_len: int) -> int:
    """The padded prompt length: the smallest bucket >= length that leaves room for the new tokens."""
    if length + max_new_tokens > max_len:
        raise ValueError(
            f"prompt of {length} tokens + max_new_tokens {max_new_tokens} exceeds the cache of {max_len} "
            "positions (the model's max_position_embeddings)"
        )
    for b in PROMPT_BUCKETS:
        if b >= length:
            return min(b, max_len - max_new_tokens)
    return length


def batch_bucket(rows: int, multiple: int) -> int:
    """Rows padded to a power of two (then to a multiple of the data-parallel size)."""
    b = 1 << max(rows - 1, 0).bit_length()
    return -(-b // multiple) * multiple


def left_pad(prompts: list, length: int, rows: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 `ids, mask [rows, length]`: each token-id prompt right-aligned, so every row's last
    token is at -1. Rows past `len(prompts)` are fillers holding one token, so that no attention row
    is empty; their outputs are never read."""
    ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = p
        mask[i, length - len(p):] = 1
    mask[len(prompts):, -1] = 1
    return ids, mask


def unstack_layers(layers: Any, num_layers: int) -> list[Any]:
    """Per-layer parameter trees from the scanned `[layers, ...]` tree."""
    return [jax.tree.map(lambda a, i=i: a[i], layers) for i in range(num_layers)]


@functools.lru_cache(maxsize=64)
def _traced_layer(cfg: ModelConfig):
    """One decoder layer as a jitted function. Called inside the prefill and decode jits, it is traced
    once for all layers (the unrolled layers share its jaxpr), so a start traces one layer, not 30;
    XLA inlines the calls, so the compiled program is the unrolled one."""
    layer = DecoderLayer(cfg)

    def apply(p, x, window, cos, sin, mask, pos_diff, cache):
        return layer.apply({"params": p}, x, window, cos, sin, mask, pos_diff, cache)

    return jax.jit(apply)


def run_layers(cfg, layer_params, x, positions, key_positions, mask, cache, index):
    """All layers over x `[batch, seq, embed]`, reading and writing the cache at slot `index`."""
    cos, sin = rotary_tables(positions, cfg.rope, cfg.head_dim)
    pos_diff = None
    if any(cfg.sliding_windows):
        pos_diff = positions[:, :, None] - key_positions[:, None, :]
    ks, vs = [], []
    layer = _traced_layer(cfg)
    for i, p in enumerate(layer_params):
        x, (k, v) = layer(p, x, jnp.int32(cfg.sliding_windows[i]), cos, sin, mask, pos_diff,
                          (cache["k"][i], cache["v"][i], jnp.asarray(index, jnp.int32)))
        ks.append(k)
        vs.append(v)
    return x, {**cache, "k": tuple(ks), "v": tuple(vs)}


def kv_shapes(cfg: ModelConfig, batch: int, cache_len: int):
    """Per-layer cache shapes, laid out for attention's two matmuls: k `[batch, kv_heads, head_dim,
    slots]`, v `[batch, kv_heads, slots, head_dim]`."""
    return (batch, cfg.num_kv_heads, cfg.head_dim, cache_len), (batch, cfg.num_kv_heads, cache_len, cfg.head_dim)


def prefill(cfg: ModelConfig, params: dict, layer_params: list, ids: jax.Array, mask: jax.Array,
            cache_len: int, kv_sharding: Any = None):
    """Runs the left-padded prompts `ids, mask: [batch, prompt]` and builds the cache.

    Returns (logits of the next token `[batch, vocab]` float32, cache). The cache holds k, v (one
    per layer, shapes from `kv_shapes`), `valid` bool `[batch, cache_len]`,
    `key_pos` int32 `[batch, cache_len]`, `pos` (next position per row) and `index` (next slot).
    """
    b, p = ids.shape
    model = Transformer(cfg)
    dtype = _DTYPES[cfg.dtype]
    mask = mask.astype(bool)
    positions = positions_from_mask(mask)
    lengths = mask.sum(axis=1).astype(jnp.int32)
    new = cache_len - p
    key_pos = jnp.concatenate([positions, lengths[:, None] + jnp.arange(new, dtype=jnp.int32)[None]], axis=1)
    valid = jnp.concatenate([mask, jnp.zeros((b, new), bool)], axis=1)
    k_shape, v_shape = kv_shapes(cfg, b, cache_len)

    def empty(shape):
        z = jnp.zeros(shape, dtype)
        return z if kv_sharding is None else jax.lax.with_sharding_constraint(z, kv_sharding)

    cache = {"k": tuple(empty(k_shape) for _ in range(cfg.num_layers)),
             "v": tuple(empty(v_shape) for _ in range(cfg.num_layers)),
             "valid": valid, "key_pos": key_pos, "pos": lengths, "index": jnp.int32(p)}
    causal = jnp.arange(cache_len)[None, :] <= jnp.arange(p)[:, None]  # [prompt, cache_len]
    attn_mask = (causal[None] & valid[:, None, :])[:, None]
    x = model.apply({"params": params}, ids, method=Transformer.embed_ids)
    x, cache = run_layers(cfg, layer_params, x, positions, key_pos, attn_mask, cache, 0)
    logits = model.apply({"params": params}, x[:, -1], method=Transformer.head)
    return logits, cache


def decode_step(cfg: ModelConfig, params: dict, layer_params: list, cache: dict, tokens: jax.Array):
    """Feeds one token per row (`tokens: int32 [batch]`); returns (next logits `[batch, vocab]`, cache)."""
    model = Transformer(cfg)
    index = cache["index"]
    slots = jnp.arange(cache["valid"].shape[1])
    valid = cache["valid"] | (slots == index)[None, :]
    cache = {**cache, "valid": valid}
    x = model.apply({"params": params}, tokens[:, None], method=Transformer.embed_ids)
    positions = cache["pos"][:, None]
    x, cache = run_layers(cfg, layer_params, x, positions, cache["key_pos"], valid[:, None, None, :], cache, index)
    logits = model.apply({"params": params}, x[:, 0], method=Transformer.head)
    return logits, {**cache, "pos": cache["pos"] + 1, "index": index + 1}


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """Everything static about one compiled generation: shapes and sampling settings."""

    batch: int
    prompt_len: int
    max_new_tokens: int
    sampling: SamplingConfig
    pad_id: int


def _row_keys(keys: jax.Array, step) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)


def _prefill_and_first(cfg, plan, kv_sharding, params, ids, mask, keys, active, stop_ids):
    layer_params = unstack_layers(params["layers"], cfg.num_layers)
    logits, cache = prefill(cfg, params, layer_params, ids, mask, plan.prompt_len + plan.max_new_tokens,
                            kv_sharding)
    token, logprob = sample(logits, _row_keys(keys, 0), plan.sampling)
    b, n = plan.batch, plan.max_new_tokens
    done = ~active | jnp.isin(token, stop_ids)
    return {
        "cache": cache,
        "tokens": jnp.full((b, n), plan.pad_id, jnp.int32).at[:, 0].set(token),
        "logprobs": jnp.zeros((b, n), jnp.float32).at[:, 0].set(logprob),
        "stopped": jnp.isin(token, stop_ids),
        "done": done,
        "last": token,
        "step": jnp.int32(1),
        "keys": keys,
    }


def _decode_loop(cfg, plan, params, state, stop_ids):
    layer_params = unstack_layers(params["layers"], cfg.num_layers)

    def cond(s):
        return (s["step"] < plan.max_new_tokens) & ~jnp.all(s["done"])

    def body(s):
        logits, cache = decode_step(cfg, params, layer_params, s["cache"], s["last"])
        token, logprob = sample(logits, _row_keys(s["keys"], s["step"]), plan.sampling)
        token = jnp.where(s["done"], plan.pad_id, token)
        logprob = jnp.where(s["done"], 0.0, logprob)
        hit = ~s["done"] & jnp.isin(token, stop_ids)
        return {
            **s,
            "cache": cache,
            "tokens": jax.lax.dynamic_update_slice(s["tokens"], token[:, None], (0, s["step"])),
            "logprobs": jax.lax.dynamic_update_slice(s["logprobs"], logprob[:, None], (0, s["step"])),
            "stopped": s["stopped"] | hit,
            "done": s["done"] | hit,
            "last": token,
            "step": s["step"] + 1,
        }

    return jax.lax.while_loop(cond, body, state)


@functools.lru_cache(maxsize=32)
def compiled(cfg: ModelConfig, mesh: Mesh, plan: DecodePlan):
    """The jitted (prefill, decode loop) pair for one plan, with explicit shardings; the loop's state
    (cache included) is donated."""
    p_shard = param_shardings(abstract_params(cfg), mesh)
    x_shard = batch_sharding(mesh, (plan.batch, plan.prompt_len))
    row_shard = batch_sharding(mesh, (plan.batch,))
    k_shape, _ = kv_shapes(cfg, plan.batch, plan.prompt_len + plan.max_new_tokens)
    kv_shard = logical_sharding(("batch", "kv_heads", None, None), k_shape, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    first = jax.jit(
        functools.partial(_prefill_and_first, cfg, plan, kv_shard),
        in_shardings=(p_shard, x_shard, x_shard, row_shard, row_shard, replicated),
    )
    loop = jax.jit(functools.partial(_decode_loop, cfg, plan), donate_argnums=(1,))
    return first, loop


def run(cfg: ModelConfig, mesh: Mesh, params: dict, prompts: list[list[int]], *, max_new_tokens: int,
        sampling: SamplingConfig, row_ids: list[int], seed: int, stop_ids: list[int], pad_id: int,
        min_rows: int = 0) -> dict:
    """Generates for token-id prompts (one row each). Returns host arrays: `tokens` and `logprobs`
    `[rows, max_new_tokens]`, `stopped` and the number of tokens per row `lengths` (stop included).
    min_rows: compile for at least this many rows (the last, smaller batch of a run then reuses the
    full batches' program instead of compiling its own)."""
    rows = len(prompts)
    longest = max(len(p) for p in prompts)
    plen = prompt_bucket(longest, max_new_tokens, cfg.max_position_embeddings)
    data_size = mesh.shape["data"] * mesh.shape["fsdp"]
    b = batch_bucket(max(rows, min_rows), data_size)
    ids, mask = left_pad(prompts, plen, b, pad_id)
    active = np.arange(b) < rows
    base = jax.random.key(seed)
    keys = jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.asarray(list(row_ids) + [-1] * (b - rows), jnp.int32))
    plan = DecodePlan(b, plen, max_new_tokens, sampling, pad_id)
    first, loop = compiled(cfg, mesh, plan)
    stops = jnp.asarray(sorted(set(stop_ids)) or [-1], jnp.int32)
    state = first(params, ids, mask, keys, active, stops)
    state = loop(params, state, stops)
    tokens = np.asarray(state["tokens"])[:rows]
    logprobs = np.asarray(state["logprobs"])[:rows]
    stopped = np.asarray(state["stopped"])[:rows]
    is_stop = np.isin(tokens, np.asarray(stop_ids, np.int32)) if stop_ids else np.zeros_like(tokens, bool)
    lengths = np.where(stopped, is_stop.argmax(axis=1) + 1, max_new_tokens)
    return {"tokens": tokens, "logprobs": logprobs, "stopped": stopped, "lengths": lengths}
