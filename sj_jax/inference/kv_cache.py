"""The KV-cache forward that the sampler and the judge share: left-padded prompts, per-layer caches.

Prompts are left-padded to a length bucket, so every row writes its next key/value at the same
cache slot; positions count real tokens only, so padding changes nothing. Layers are unrolled over
per-layer parameter slices taken once per call: no weight is copied inside a loop, and each cache
is updated in place. Models deeper than `UNROLL_LAYERS` scan their layers instead (compile time).
`prefill` runs prompts into a fresh cache, `decode_step` feeds one token per
row, `run_layers` is the layer stack over any cache slot (the judge runs each order's suffix over a
shared prefix with it).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from sj_jax.models.config import ModelConfig
from sj_jax.models.rope import rotary_tables
from sj_jax.models.transformer import DTYPES, DecoderLayer, Transformer, positions_from_mask


def left_pad(prompts: list, length: int, rows: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 `ids, mask [rows, length]`: each token-id prompt right-aligned, so every row's last
    token is at -1. Rows past `len(prompts)` are fillers holding one token, so that no attention row
    is empty; their outputs are never read."""
    ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = p
        mask[i, length - len(p):] = 1
    if length:  # zero-length ids (an absent part of a prompt) have no slot to hold a filler's token
        mask[len(prompts):, -1] = 1
    return ids, mask


def common_prefix_len(prompts: Any) -> int:
    """Tokens that the token-id prompts all begin with, leaving each at least one of its own."""
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for other in prompts[1:]:
        n = next((i for i in range(n) if other[i] != first[i]), n)
    return n


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


# Deeper models than this decode with their layers in a `lax.scan` (one layer compiled, the weights
# and the stacked cache sliced a layer a step); shallower ones unroll (`layer_stack`). Measured on CPU
# (hidden 256, 8 prompts, 64 new tokens): 32 layers compile in 19.0 s unrolled and 6.8 s scanned, 80
# layers in 57.5 s and 9.2 s; the scanned decode ran 1.5x (32) and 1.75x (80) slower there.
UNROLL_LAYERS = 40


class SliceWhenRun:
    """An unrolled stack's stacked `[layers, ...]` weights, each layer's slice taken only when the
    layer runs. XLA computes slices that depend on nothing first and holds them: every layer's copy
    at once (0.43 GB for SmolLM2-135M, float32), beside the activations. A program that runs the
    stack once (a prefill) takes this; a decode loop keeps the per-layer trees (`layer_stack`), whose
    slices XLA hoists out of the loop, as it should: sliced inside, every step would copy every
    layer's weights. The cost is compile time: SmolLM2's first `generate` call took 8.4 s against 8.0
    (compilation cache off).

    An `optimization_barrier` does not hold the slices back on CPU (XLA drops it before it schedules),
    and a dynamic index read off the activations compiled slower (8.7 s)."""

    def __init__(self, stacked: Any):
        self.stacked = stacked


def layer_stack(cfg: ModelConfig, layers: Any, once: bool = False) -> Any:
    """What `run_layers` takes: per-layer trees (unrolled; `SliceWhenRun` for a program that runs the
    stack `once`), or the stacked `[layers, ...]` tree itself for models deeper than
    `UNROLL_LAYERS` (scanned)."""
    if cfg.num_layers > UNROLL_LAYERS:
        return layers
    return SliceWhenRun(layers) if once else unstack_layers(layers, cfg.num_layers)


def is_scanned(layer_params: Any) -> bool:
    """Whether `layer_params` (from `layer_stack`) runs scanned, over a stacked cache (k, v `[layers, ...]`)."""
    return not isinstance(layer_params, (list, tuple, SliceWhenRun))


def _run_layers_scanned(cfg, layers, x, cos, sin, mask, pos_diff, cache, index):
    """`run_layers` over the stacked weights and a stacked cache (k, v `[layers, ...]`): one layer
    a scan step, its cache slice read and written back in the carry (updated in place)."""
    layer = DecoderLayer(cfg)
    windows = jnp.asarray(cfg.sliding_windows, jnp.int32)
    index = jnp.asarray(index, jnp.int32)

    def body(carry, xs):
        x, ks, vs = carry
        i, p = xs
        x, (k, v) = layer.apply({"params": p}, x, windows[i], cos, sin, mask, pos_diff, (ks[i], vs[i], index))
        return (x, ks.at[i].set(k), vs.at[i].set(v)), None

    (x, ks, vs), _ = jax.lax.scan(body, (x, cache["k"], cache["v"]), (jnp.arange(cfg.num_layers), layers))
    return x, {**cache, "k": ks, "v": vs}


def run_layers(cfg, layer_params, x, positions, key_positions, mask, cache, index):
    """All layers over x `[batch, seq, embed]`, reading and writing the cache at slot `index`.
    layer_params: per-layer trees or `SliceWhenRun` (unrolled; cache k, v tuples of per-layer
    arrays), or the stacked tree (scanned; cache k, v stacked `[layers, ...]`), as `layer_stack`
    chooses."""
    cos, sin = rotary_tables(positions, cfg.rope, cfg.head_dim)
    pos_diff = None
    if any(cfg.sliding_windows):
        pos_diff = positions[:, :, None] - key_positions[:, None, :]
    if is_scanned(layer_params):
        return _run_layers_scanned(cfg, layer_params, x, cos, sin, mask, pos_diff, cache, index)
    ks, vs = [], []
    layer = _traced_layer(cfg)
    late = isinstance(layer_params, SliceWhenRun)
    for i in range(cfg.num_layers):
        if late:  # each slice adds a zero read off x, so it waits for the previous layer (and fuses with it)
            zero = (x[0, 0, 0] != x[0, 0, 0]).astype(jnp.float32) * 0.0  # XLA does not fold a float x 0
            p = jax.tree.map(lambda a: a[i] + zero.astype(a.dtype), layer_params.stacked)
        else:
            p = layer_params[i]
        x, (k, v) = layer(p, x, jnp.int32(cfg.sliding_windows[i]), cos, sin, mask, pos_diff,
                          (cache["k"][i], cache["v"][i], jnp.asarray(index, jnp.int32)))
        ks.append(k)
        vs.append(v)
    return x, {**cache, "k": tuple(ks), "v": tuple(vs)}


def kv_shapes(cfg: ModelConfig, batch: int, cache_len: int):
    """Per-layer cache shapes, laid out for attention's two matmuls: k `[batch, kv_heads, head_dim,
    slots]`, v `[batch, kv_heads, slots, head_dim]`."""
    return (batch, cfg.num_kv_heads, cfg.head_dim, cache_len), (batch, cfg.num_kv_heads, cache_len, cfg.head_dim)


# Prompts longer than this run through the layers PREFILL_TOKENS tokens at a time (into the cache they
# build), so a prefill's activations grow with rows x PREFILL_TOKENS, not with the prompt's length.
PREFILL_TOKENS = 512


def prefill_chunk(length: int) -> int:
    """Tokens a prefill step takes of a `length`-token (bucketed) prompt: all of them up to
    `PREFILL_TOKENS`, else the largest power of two that divides `length`, at most `PREFILL_TOKENS`."""
    if length <= PREFILL_TOKENS:
        return length
    return min(PREFILL_TOKENS, length & -length)


def _empty_kv(cfg: ModelConfig, layer_params: Any, batch: int, cache_len: int, kv_sharding: Any):
    """Zero k, v caches for `batch` rows of `cache_len` slots: per-layer tuples (unrolled), or one
    stacked array each with the layer axis in front (scanned)."""
    dtype = DTYPES[cfg.dtype]
    k_shape, v_shape = kv_shapes(cfg, batch, cache_len)
    if not is_scanned(layer_params):
        def empty(shape):
            z = jnp.zeros(shape, dtype)
            return z if kv_sharding is None else jax.lax.with_sharding_constraint(z, kv_sharding)

        layers = range(cfg.num_layers)
        return tuple(empty(k_shape) for _ in layers), tuple(empty(v_shape) for _ in layers)

    def stacked(shape):
        z = jnp.zeros((cfg.num_layers,) + shape, dtype)
        if kv_sharding is None:
            return z
        spec = PartitionSpec(None, *kv_sharding.spec)
        return jax.lax.with_sharding_constraint(z, NamedSharding(kv_sharding.mesh, spec))

    return stacked(k_shape), stacked(v_shape)


def extend(cfg: ModelConfig, params: dict, layer_params: Any, cache: dict, ids: jax.Array, positions: jax.Array,
           start: int):
    """Runs tokens `ids, positions: int32 [batch, n]` through the layers into the cache's slots
    `start .. start + n`, which `cache["valid"]` and `cache["key_pos"]` already describe; each token
    attends to the valid slots up to its own. More than `PREFILL_TOKENS` tokens run in chunks
    (`prefill_chunk`), each over the cache the earlier ones wrote: the same numbers in bounded memory.
    Returns (cache, the last token's hidden state `[batch, embed]`)."""
    model = Transformer(cfg)
    b, n = ids.shape
    valid, key_pos = cache["valid"], cache["key_pos"]
    cache_len = valid.shape[1]

    def chunk(cache, at, ids, positions):
        rows = at + jnp.arange(ids.shape[1])
        causal = jnp.arange(cache_len)[None, :] <= rows[:, None]  # [c, cache_len]
        attn_mask = (causal[None] & valid[:, None, :])[:, None]
        x = model.apply({"params": params}, ids, method=Transformer.embed_ids)
        x, cache = run_layers(cfg, layer_params, x, positions, key_pos, attn_mask, cache, at)
        return cache, x[:, -1]

    c = prefill_chunk(n)
    if c >= n:
        return chunk(cache, start, ids, positions)
    # one chunk of tokens at a time: the activations of c tokens a row, not n
    k = n // c
    cache, lasts = jax.lax.scan(lambda cache, xs: chunk(cache, *xs), cache,
                                (start + jnp.arange(k, dtype=jnp.int32) * c, ids.reshape(b, k, c).swapaxes(0, 1),
                                 positions.reshape(b, k, c).swapaxes(0, 1)))
    return cache, lasts[-1]


def prefill(cfg: ModelConfig, params: dict, layer_params: list, ids: jax.Array, mask: jax.Array,
            cache_len: int, kv_sharding: Any = None):
    """Runs the left-padded prompts `ids, mask: [batch, prompt]` and builds the cache (`extend`:
    long prompts in chunks of tokens).

    Returns (logits of the next token `[batch, vocab]` float32, cache). The cache holds k, v (one
    per layer, shapes from `kv_shapes`), `valid` bool `[batch, cache_len]`,
    `key_pos` int32 `[batch, cache_len]`, `pos` (next position per row) and `index` (next slot).
    """
    b, p = ids.shape
    mask = mask.astype(bool)
    positions = positions_from_mask(mask)
    lengths = mask.sum(axis=1).astype(jnp.int32)
    new = cache_len - p
    key_pos = jnp.concatenate([positions, lengths[:, None] + jnp.arange(new, dtype=jnp.int32)[None]], axis=1)
    valid = jnp.concatenate([mask, jnp.zeros((b, new), bool)], axis=1)
    ks, vs = _empty_kv(cfg, layer_params, b, cache_len, kv_sharding)
    cache = {"k": ks, "v": vs, "valid": valid, "key_pos": key_pos, "pos": lengths, "index": jnp.int32(p)}
    cache, last = extend(cfg, params, layer_params, cache, ids, positions, 0)
    return Transformer(cfg).apply({"params": params}, last, method=Transformer.head), cache


def extend_shared(cfg: ModelConfig, params: dict, layer_params: Any, head: dict, suffix_ids: jax.Array,
                  suffix_mask: jax.Array, cache_len: int, fan: int, kv_sharding: Any = None):
    """The rest of a `prefill` of rows that share their first tokens: `head` is `prefill`'s cache of
    the prefixes alone (`[groups, L]`, left-padded, `cache_len` L); it is repeated for each prefix's
    `fan` rows, and each row's own rest `suffix_ids, suffix_mask: [groups * fan, S]` (left-padded)
    runs over it (rows fan * g .. continue prefix g). Row r is prompt prefix[r // fan] + suffix[r],
    and the padding between the two is masked, so the logits and the cache's valid slots are those
    of `prefill` on the whole prompts. The prefixes run in a program of their own (the caller's), so
    that their activations and the rows' cache are never alive at once.

    Returns (logits `[groups * fan, vocab]`, cache of `cache_len` slots, `index` L + S)."""
    L = head["valid"].shape[1]
    rows, s = suffix_ids.shape
    stacked = is_scanned(layer_params)

    def widen(x, slot_axis):
        """A prefix cache `[groups, ...]` as the rows' cache: repeated `fan` times, slots padded to cache_len."""
        x = jnp.repeat(x, fan, axis=1 if stacked else 0)
        pad = [(0, 0)] * x.ndim
        pad[slot_axis + (1 if stacked else 0)] = (0, cache_len - L)
        x = jnp.pad(x, pad)
        if kv_sharding is None:
            return x
        spec = PartitionSpec(None, *kv_sharding.spec) if stacked else kv_sharding.spec
        return jax.lax.with_sharding_constraint(x, NamedSharding(kv_sharding.mesh, spec))

    if stacked:
        ks, vs = widen(head["k"], 3), widen(head["v"], 2)
    else:
        ks, vs = tuple(widen(k, 3) for k in head["k"]), tuple(widen(v, 2) for v in head["v"])
    suffix_mask = suffix_mask.astype(bool)
    start = jnp.repeat(head["pos"], fan)  # each row's prefix length: its rest's first position
    positions = start[:, None] + positions_from_mask(suffix_mask)
    lengths = start + suffix_mask.sum(axis=1).astype(jnp.int32)
    new = cache_len - L - s
    key_pos = jnp.concatenate([jnp.repeat(head["key_pos"], fan, axis=0), positions,
                               lengths[:, None] + jnp.arange(new, dtype=jnp.int32)[None]], axis=1)
    valid = jnp.concatenate([jnp.repeat(head["valid"], fan, axis=0), suffix_mask, jnp.zeros((rows, new), bool)],
                            axis=1)
    cache = {"k": ks, "v": vs, "valid": valid, "key_pos": key_pos, "pos": lengths, "index": jnp.int32(L + s)}
    cache, last = extend(cfg, params, layer_params, cache, suffix_ids, positions, L)
    return Transformer(cfg).apply({"params": params}, last, method=Transformer.head), cache


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
