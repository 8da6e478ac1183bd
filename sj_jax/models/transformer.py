"""A Llama-family decoder-only transformer in Flax (linen), layers scanned, every parameter named by axis.

Parameter tree (L = layers, E = hidden, H/K = query/kv heads, D = head dim, F = FFN, V = vocab):
    embed/embedding            [V, E]        (vocab, embed)
    layers/attn/{q,k,v}/kernel [L, E, H|K, D] (layers, embed, heads|kv_heads, head_dim), bias [L, H|K, D]
    layers/attn/o/kernel       [L, H, D, E]  (layers, heads, head_dim, embed), bias [L, E]
    layers/mlp/{gate,up}/kernel[L, E, F]     (layers, embed, mlp);  down/kernel [L, F, E]
    layers/{attn_norm,mlp_norm}/scale [L, E]; final_norm/scale [E]
    lm_head/kernel             [E, V]        (untied models only)
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sj_jax.models.config import ModelConfig
from sj_jax.models.rope import apply_rotary, rotary_tables
from sj_jax.models.sharding import constrain_batch

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _kernel_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """normal(0.02) draws, as `nn.initializers.normal(0.02)`, but made as one flat vector and
    reshaped: XLA compiles the rank-1 draw in half the time (a two-layer model's init: 1.0 s
    instead of 2.1 s on a CPU), and every test and random-weight run starts with an init compile.
    Inside the layer scan the flat draw is one layer's weight, so a weight sharded on its last axis
    costs at most one layer's full weight per device while it is drawn."""
    return (0.02 * jax.random.normal(key, (math.prod(shape),), dtype)).reshape(shape)


def _param(mod: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...], init=_kernel_init):
    return mod.param(name, nn.with_logical_partitioning(init, axes), shape, DTYPES[mod.config.param_dtype])


class RMSNorm(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _param(self, "scale", (x.shape[-1],), ("embed",), nn.initializers.ones)
        dtype = DTYPES[self.config.dtype]
        xf = x.astype(jnp.float32)
        normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.config.rms_norm_eps)
        # As transformers: normalise in float32, cast back, then scale in the compute dtype.
        return scale.astype(dtype) * normed.astype(dtype)


class Projection(nn.Module):
    """y = x . kernel (+ bias), contracting the last `in_dims` axes of x with the first of kernel."""

    config: ModelConfig
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    axes: tuple[str, ...]
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = DTYPES[self.config.dtype]
        kernel = _param(self, "kernel", self.in_shape + self.out_shape, self.axes).astype(dtype)
        n_in = len(self.in_shape)
        lead = x.shape[:x.ndim - n_in]
        # One 2-D matmul over flattened axes: with multi-axis dot_generals, XLA's CPU backward
        # transposes operands through slow strided copies (forward + backward 5.4 s vs 3.7 s, SmolLM2, 8 x 128).
        d_in = math.prod(self.in_shape)
        x2 = x.reshape(-1, d_in).astype(dtype)
        y = x2 @ kernel.reshape(d_in, -1)
        if self.has_variable("lora", "a"):
            # A LoRA adapter beside the kernel (its scale folded into a): y += (x a) b. Unmerged, the
            # backward never forms a kernel-sized gradient: a LoRA step costs 2 forwards, not 3.
            a, b = self.get_variable("lora", "a"), self.get_variable("lora", "b")
            y = y + (x2 @ a.astype(dtype)) @ b.astype(dtype)
        y = y.reshape(lead + self.out_shape)
        if self.use_bias:
            bias = _param(self, "bias", self.out_shape, self.axes[n_in:], nn.initializers.zeros)
            y = y + bias.astype(dtype)
        return y


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Scaled dot-product attention with grouped KV heads.

    q: [batch, seq, heads, head_dim]; k, v: [batch, kv_seq, kv_heads, head_dim];
    mask: bool [batch, 1, seq, kv_seq] (True = attend). Returns [batch, seq, heads, head_dim].
    """
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=q.shape[-1] ** -0.5)


# Attention over a cache holds float32 scores `[batch, heads, queries, slots]`: for a prefill, rows x L^2
# (a 2,048-token prompt at SmolLM2's 9 heads: 151 MB a row, and a few copies of it). Longer query
# blocks are taken in chunks whose scores stay under this many bytes, so memory grows as rows x L.
ATTENTION_SCORE_BYTES = 64 << 20


def query_chunk(queries: int, bytes_per_query: int) -> int:
    """Queries a chunk: all of them if their scores fit `ATTENTION_SCORE_BYTES`, else the largest power
    of two that does (at least 1)."""
    if queries * bytes_per_query <= ATTENTION_SCORE_BYTES:
        return queries
    return 1 << max(0, (ATTENTION_SCORE_BYTES // bytes_per_query).bit_length() - 1)


def attend_cached(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, mask: jax.Array) -> jax.Array:
    """Attention of q `[batch, seq, heads, head_dim]` over a KV cache laid out for the two matmuls
    (k: `[batch, kv_heads, head_dim, slots]`, v: `[batch, kv_heads, slots, head_dim]`), so that no
    step transposes (copies) the whole cache. mask: bool `[batch, 1, seq, slots]`.

    A long `seq` (a prefill) runs in query chunks (`query_chunk`), one after another: the same
    numbers, with the scores of one chunk alive at a time."""
    b, t, h, d = q.shape
    c = query_chunk(t, b * h * k_cache.shape[-1] * 4)
    if c >= t:
        return _attend_cached(q, k_cache, v_cache, mask)
    mask = jnp.broadcast_to(mask, (b, 1, t, mask.shape[-1]))
    n = t // c
    qs = q[:, :n * c].reshape(b, n, c, h, d).swapaxes(0, 1)
    ms = mask[:, :, :n * c].reshape(b, 1, n, c, -1).transpose(2, 0, 1, 3, 4)
    out = jax.lax.map(lambda qm: _attend_cached(qm[0], k_cache, v_cache, qm[1]), (qs, ms))
    out = out.swapaxes(0, 1).reshape(b, n * c, h, d)
    if n * c < t:
        out = jnp.concatenate([out, _attend_cached(q[:, n * c:], k_cache, v_cache, mask[:, :, n * c:])], axis=1)
    return out


def _attend_cached(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, mask: jax.Array) -> jax.Array:
    b, t, h, d = q.shape
    kv = k_cache.shape[1]
    g = h // kv
    # Query head j reads kv head j // g, as transformers' repeat_kv.
    qg = q.reshape(b, t, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, d)
    scores = jnp.einsum("bkqd,bkds->bkqs", qg, k_cache.astype(q.dtype)).astype(jnp.float32) * d**-0.5
    scores = scores.reshape(b, kv, g, t, -1)
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype).reshape(b, kv, g * t, -1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v_cache.astype(q.dtype))
    return out.reshape(b, kv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask, cache=None):
        """x: [batch, seq, embed]. With `cache = (k, v, index)` (k: [batch, kv_heads, head_dim, cache_len],
        v: [batch, kv_heads, cache_len, head_dim]), this step's keys and values are written at slot
        `index` and attention runs over the whole cache (`mask`: [batch, 1, seq, cache_len]); the
        updated (k, v) are returned."""
        c = self.config
        e, h, k, d = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        q = Projection(c, (e,), (h, d), ("embed", "heads", "head_dim"), c.qkv_bias, name="q")(x)
        key = Projection(c, (e,), (k, d), ("embed", "kv_heads", "head_dim"), c.qkv_bias, name="k")(x)
        value = Projection(c, (e,), (k, d), ("embed", "kv_heads", "head_dim"), c.qkv_bias, name="v")(x)
        q, key = apply_rotary(q, cos, sin), apply_rotary(key, cos, sin)
        if cache is not None:
            k_cache, v_cache, index = cache
            k_cache = jax.lax.dynamic_update_slice(
                k_cache, key.transpose(0, 2, 3, 1).astype(k_cache.dtype), (0, 0, 0, index))
            v_cache = jax.lax.dynamic_update_slice(
                v_cache, value.transpose(0, 2, 1, 3).astype(v_cache.dtype), (0, 0, index, 0))
            cache = (k_cache, v_cache)
            out = attend_cached(q, k_cache, v_cache, mask)
        else:
            out = attend(q, key, value, mask)
        return Projection(c, (h, d), (e,), ("heads", "head_dim", "embed"), c.o_bias, name="o")(out), cache


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        e, f = c.hidden_size, c.intermediate_size
        gate = Projection(c, (e,), (f,), ("embed", "mlp"), c.mlp_bias, name="gate")(x)
        up = Projection(c, (e,), (f,), ("embed", "mlp"), c.mlp_bias, name="up")(x)
        return Projection(c, (f,), (e,), ("mlp", "embed"), c.mlp_bias, name="down")(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, window, cos, sin, mask, pos_diff, cache=None):
        """x: [batch, seq, embed]; window: int32 scalar (0 = none); pos_diff: query minus key positions
        [batch, seq, keys] or None. Returns (x, updated cache or None), the form `nn.scan` wants."""
        x = constrain_batch(x)  # FSDP gathers the layer's weights; the activations keep their rows
        if pos_diff is not None:
            mask = mask & ((window <= 0) | (pos_diff < window))[:, None]
        attn, cache = Attention(self.config, name="attn")(
            RMSNorm(self.config, name="attn_norm")(x), cos, sin, mask, cache)
        x = x + attn
        x = x + MLP(self.config, name="mlp")(RMSNorm(self.config, name="mlp_norm")(x))
        return x, cache


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """int32 `[batch, seq]` positions counting real tokens only (padding on either side takes 0).

    `mask` may hold segment ids instead of 1s (packed rows: 1 1 1 2 2 3 0 0): each segment then
    counts from 0. Ids must not decrease along a row; a 0/1 mask is one segment.
    """
    seg = mask.astype(jnp.int32)
    valid = seg > 0
    count = jnp.cumsum(valid.astype(jnp.int32), axis=1)  # real tokens up to and including t
    before = jnp.concatenate([jnp.zeros_like(seg[:, :1]), jax.lax.cummax(seg, axis=1)[:, :-1]], axis=1)
    start = valid & (seg > before)  # the first token of each segment
    base = jax.lax.cummax(jnp.where(start, count - 1, 0), axis=1)
    return jnp.maximum(count - 1 - base, 0)


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Transformer(nn.Module):
    """The causal LM. `__call__` returns float32 logits `[batch, seq, vocab]`."""

    config: ModelConfig

    def setup(self):
        c = self.config
        layer_cls: Any = DecoderLayer
        if c.remat != "none":
            layer_cls = nn.remat(layer_cls, prevent_cse=False, policy=_REMAT_POLICIES[c.remat])
        self.layers = nn.scan(
            layer_cls,
            variable_axes={"params": 0, "lora": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(c)
        self.embed = nn.Embed(
            c.vocab_size, c.hidden_size,
            embedding_init=nn.with_logical_partitioning(_kernel_init, ("vocab", "embed")),
            param_dtype=DTYPES[c.param_dtype], dtype=DTYPES[c.dtype],
        )
        self.final_norm = RMSNorm(c)
        if not c.tie_word_embeddings:
            self.lm_head = Projection(c, (c.hidden_size,), (c.vocab_size,), ("embed", "vocab"))

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                      positions: jax.Array | None = None, shared_prefix: bool = False) -> jax.Array:
        """Final-norm hidden states `[batch, seq, embed]` (compute dtype) for int32 `input_ids: [batch, seq]`.

        `attention_mask` (1 = token, 0 = padding) may pad on either side; positions count real tokens.
        Packed rows give segment ids instead of 1s (1 1 2 2 2 0): a token attends only to its own
        segment, and each segment's positions start at 0 (`positions_from_mask`). With
        `shared_prefix` (static), segment 1 is a prefix that every later segment also sees (a prompt
        and its two responses in one row: 1 1 1 2 2 0 3 3 3); pass the positions then, since each
        response continues the prompt's.
        """
        c = self.config
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        seg = attention_mask.astype(jnp.int32)
        valid = seg > 0
        if positions is None:
            positions = positions_from_mask(seg)
        causal = jnp.tril(jnp.ones((t, t), bool))
        # Padding queries (segment 0) keep seeing every real key, as with a plain 0/1 mask.
        same = (seg[:, :, None] == seg[:, None, :]) | (seg[:, :, None] == 0)
        if shared_prefix:
            same = same | (seg[:, None, :] == 1)
        mask = causal[None, None] & valid[:, None, None, :] & same[:, None]
        pos_diff = None
        if any(c.sliding_windows):
            pos_diff = positions[:, :, None] - positions[:, None, :]
        cos, sin = rotary_tables(positions, c.rope, c.head_dim)
        x = self.embed(input_ids)
        windows = jnp.asarray(c.sliding_windows, jnp.int32)
        x, _ = self.layers(x, windows, cos, sin, mask, pos_diff)
        return self.final_norm(x)

    def logits_from_hidden(self, h: jax.Array) -> jax.Array:
        """float32 `[..., vocab]` logits from hidden states `[..., embed]`."""
        if self.config.tie_word_embeddings:
            logits = self.embed.attend(h)
        else:
            logits = self.lm_head(h)
        return logits.astype(jnp.float32)

    def embed_ids(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings `[batch, seq, embed]` (compute dtype)."""
        return self.embed(input_ids)

    def head(self, x: jax.Array) -> jax.Array:
        """float32 logits from the last layer's output (before the final norm)."""
        return self.logits_from_hidden(self.final_norm(x))

    def __call__(self, input_ids, attention_mask=None, positions=None):
        return self.logits_from_hidden(self.hidden_states(input_ids, attention_mask, positions))
