"""Log-probabilities of target tokens, with the output projection taken in vocabulary chunks.

The full float32 logits `[batch, seq, vocab]` are the first thing that runs out of memory in
preference training (SmolLM2: 49152 x 4 bytes per token; a 128k-vocabulary model: 0.5 MB per token).
Here they never exist at once: the log-normaliser is accumulated chunk by chunk, and the backward
pass recomputes each chunk's logits from the hidden states (a custom VJP), so the residuals kept
for the gradient are the hidden states and one float per token.

Chunks are strided (chunk j holds tokens j, j + n, j + 2n, ...): the log-sum-exp does not care about
order, and a vocabulary axis sharded over the mesh stays sharded inside every chunk.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

DEFAULT_CHUNK = 8192


def _n_chunks(vocab: int, chunk: int) -> int:
    n = max(1, -(-vocab // max(chunk, 1)))
    while vocab % n:  # strided chunks need equal sizes
        n += 1
    return n


def _chunk_logits(h: jax.Array, w3: jax.Array, j) -> jax.Array:
    """float32 logits `[N, C]` of chunk j; h `[N, E]`, w3 `[C, n, E]`."""
    wj = jax.lax.dynamic_index_in_dim(w3, j, axis=1, keepdims=False)
    return jnp.einsum("ne,ce->nc", h, wj.astype(h.dtype), preferred_element_type=jnp.float32)


def _lse(h: jax.Array, w3: jax.Array) -> jax.Array:
    n = w3.shape[1]

    def body(j, carry):
        m, s = carry
        z = _chunk_logits(h, w3, j)
        m_new = jnp.maximum(m, z.max(axis=-1))
        s = s * jnp.exp(m - m_new) + jnp.exp(z - m_new[:, None]).sum(axis=-1)
        return m_new, s

    init = (jnp.full(h.shape[:1], -jnp.inf, jnp.float32), jnp.zeros(h.shape[:1], jnp.float32))
    m, s = jax.lax.fori_loop(0, n, body, init)
    return m + jnp.log(s)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _chunked_logprobs(h: jax.Array, w: jax.Array, targets: jax.Array, n: int) -> jax.Array:
    return _forward(h, w, targets, n)[0]


def _forward(h, w, targets, n):
    v, e = w.shape
    w3 = w.reshape(v // n, n, e)
    lse = _lse(h, w3)
    target_logit = jnp.einsum("ne,ne->n", h, w[targets].astype(h.dtype), preferred_element_type=jnp.float32)
    return target_logit - lse, lse


def _fwd(h, w, targets, n):
    out, lse = _forward(h, w, targets, n)
    return out, (h, w, targets, lse)


def _bwd(n, res, g):
    h, w, targets, lse = res
    v, e = w.shape
    c = v // n
    w3 = w.reshape(c, n, e)
    g = g.astype(jnp.float32)

    def body(j, carry):
        dh, dw3 = carry
        p = jnp.exp(_chunk_logits(h, w3, j) - lse[:, None]) * g[:, None]  # [N, C]: d(-lse)/dlogits * g, negated
        wj = jax.lax.dynamic_index_in_dim(w3, j, axis=1, keepdims=False).astype(jnp.float32)
        dh = dh - p @ wj
        dwj = -jnp.einsum("nc,ne->ce", p, h.astype(jnp.float32))
        return dh, jax.lax.dynamic_update_index_in_dim(dw3, dwj, j, axis=1)

    dh, dw3 = jax.lax.fori_loop(
        0, n, body, (jnp.zeros(h.shape, jnp.float32), jnp.zeros((c, n, e), jnp.float32)))
    # The target logit's own term: +g * w[target] for h, +g * h for the target's row of w.
    dh = dh + g[:, None] * w[targets].astype(jnp.float32)
    dw = dw3.reshape(v, e).at[targets].add(g[:, None] * h.astype(jnp.float32))
    return dh.astype(h.dtype), dw.astype(w.dtype), None


_chunked_logprobs.defvjp(_fwd, _bwd)


def token_logprobs(hidden: jax.Array, w: jax.Array, targets: jax.Array, *, chunk: int = DEFAULT_CHUNK) -> jax.Array:
    """log p(target | hidden) under logits = hidden . w^T, in vocabulary chunks.

    hidden: `[..., embed]` (compute dtype); w: `[vocab, embed]` (the tied embedding, or the
    transposed untied head); targets: int32 `[...]`. Returns float32 `[...]`. `chunk` bounds the
    logits held at once to `[tokens, chunk]` float32; chunk >= vocab is one chunk.
    """
    lead = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    n = _n_chunks(w.shape[0], chunk)
    return _chunked_logprobs(h, w, targets.reshape(-1).astype(jnp.int32), n).reshape(lead)


def head_weight(params: dict, tie_word_embeddings: bool) -> jax.Array:
    """The output projection as `[vocab, embed]`."""
    if tie_word_embeddings:
        return params["embed"]["embedding"]
    return params["lm_head"]["kernel"].T
