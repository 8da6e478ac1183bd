"""On-policy generation with a KV cache: a jitted prefill, then one jitted `lax.while_loop` decode.

The cache, the left padding and the unrolled layer stack are `sj_jax.kv_cache`'s (the judge shares
them). Each row draws from its own PRNG key (seed, prompt index, sample index), so a row's sample
does not depend on the batch it shares.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sj_jax.kv_cache import batch_bucket, decode_step, kv_shapes, left_pad, prefill, unstack_layers
from sj_jax.model_config import ModelConfig
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
