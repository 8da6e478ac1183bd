"""Turning next-token logits into a token: greedy, temperature, top-k and top-p (nucleus), combinable.

Pure functions of arrays. The order is transformers': temperature, then top-k, then top-p over the
renormalised survivors. Top-p never sorts the vocabulary (537 ms a step for 64 x 49152 on a CPU):
the cut-off comes from the top `NUCLEUS_CANDIDATES` tokens when they hold enough mass, else from an
exact radix select over float32 bit patterns.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NUCLEUS_CANDIDATES = 64
_NEG = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static sampling settings (part of the jit key). temperature 0 = greedy."""

    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k: must be >= 0 (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _top_k_mask(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest logits of each row (ties at the k-th value kept too); others -> -inf."""
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, _NEG)


def _nucleus_threshold_radix(probs: jax.Array, top_p: float) -> jax.Array:
    """Per row, the largest p* with sum(probs >= p*) >= top_p, exactly.

    A radix select over the float32 bit patterns (monotone for non-negative floats), 12 + 10 + 10
    bits: three histogram passes instead of a sort (1 s) or a 32-step bisection (39 ms), for 64 x 49152.
    """
    b, v = probs.shape
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)
    rows = jnp.arange(b, dtype=jnp.int32)[:, None]
    above = jnp.zeros((b,), jnp.float32)  # mass of the tokens above the chosen prefix
    prefix = jnp.zeros((b,), jnp.int32)
    for shift, width in ((20, 12), (10, 10), (0, 10)):
        nb = 1 << width
        digit = (bits >> shift) & (nb - 1)
        inside = True if shift == 20 else (bits >> (shift + width)) == prefix[:, None]
        mass = jax.ops.segment_sum(jnp.where(inside, probs, 0.0).reshape(-1), (rows * nb + digit).reshape(-1),
                                   num_segments=b * nb).reshape(b, nb)
        suffix = jnp.cumsum(mass[:, ::-1], axis=-1)[:, ::-1]  # mass of the digits >= d
        d = jnp.maximum(jnp.sum(above[:, None] + suffix >= top_p, axis=-1) - 1, 0)
        above = above + jnp.take_along_axis(jnp.pad(suffix, ((0, 0), (0, 1))), d[:, None] + 1, axis=-1)[:, 0]
        prefix = (prefix << width) | d
    return jax.lax.bitcast_convert_type(prefix, jnp.float32)


def _nucleus(probs: jax.Array, top_p: float):
    """The top-p cut from the `NUCLEUS_CANDIDATES` most likely tokens.

    Returns candidate probs and ids `[batch, K]`, the number kept `n_keep [batch]`, the threshold
    probability `[batch]`, and `exact [batch]`: whether the candidates hold the whole kept set.
    """
    k = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    cand_p, cand_i = jax.lax.top_k(probs, k)
    cum = jnp.cumsum(cand_p, axis=-1)
    n_keep = jnp.sum((cum - cand_p) < top_p, axis=-1)  # tokens whose mass before them is < top_p
    threshold = jnp.take_along_axis(cand_p, n_keep[:, None] - 1, axis=-1)[:, 0]
    covered = cum[:, -1] >= top_p
    exact = covered & (jnp.sum(probs >= threshold[:, None], axis=-1) == n_keep)  # no tie spills out
    return cand_p, cand_i, n_keep, threshold, exact


def _full_threshold(probs: jax.Array, top_p: float, threshold: jax.Array, exact: jax.Array) -> jax.Array:
    return jnp.where(exact, threshold, _nucleus_threshold_radix(probs, top_p))


def _tempered(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
    logits = logits.astype(jnp.float32) / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        logits = _top_k_mask(logits, cfg.top_k)
    return logits


def processed_logits(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """float32 `[..., vocab]` logits of the distribution actually sampled from (-inf = excluded)."""
    if cfg.greedy:
        return logits.astype(jnp.float32)
    z = _tempered(logits, cfg)
    if cfg.top_p < 1.0:
        probs = jax.nn.softmax(z, axis=-1)
        _, _, _, threshold, exact = _nucleus(probs, cfg.top_p)
        threshold = jax.lax.cond(jnp.all(exact), lambda: threshold,
                                 lambda: _full_threshold(probs, cfg.top_p, threshold, exact))
        z = jnp.where(probs >= threshold[:, None], z, _NEG)
    return z


def _first_above(cum: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
    """The first index whose cumulative weight exceeds `target`, kept on a non-zero weight when
    rounding pushes the target past the end."""
    n = weights.shape[-1]
    idx = jnp.sum(cum <= target[:, None], axis=-1)
    last_nonzero = n - 1 - jnp.argmax((weights > 0)[:, ::-1], axis=-1)
    return jnp.minimum(idx, last_nonzero)


_BLOCK = 256


def _inverse_cdf(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Index drawn with probability proportional to non-negative `weights [batch, n]`, u ~ U[0, 1).

    Two levels for large n: a block by its total weight, then a token inside it (a full cumulative
    sum over 64 x 49152 costs 11 ms a step on a CPU).
    """
    b, n = weights.shape
    if n <= 4 * _BLOCK:
        cum = jnp.cumsum(weights, axis=-1)
        return _first_above(cum, u * cum[:, -1], weights)
    blocks = jnp.pad(weights, ((0, 0), (0, -n % _BLOCK))).reshape(b, -1, _BLOCK)
    block_w = blocks.sum(axis=-1)
    block_cum = jnp.cumsum(block_w, axis=-1)
    target = u * block_cum[:, -1]
    j = _first_above(block_cum, target, block_w)
    inner = jnp.take_along_axis(blocks, j[:, None, None], axis=1)[:, 0]
    before = jnp.take_along_axis(block_cum - block_w, j[:, None], axis=-1)[:, 0]
    i = _first_above(jnp.cumsum(inner, axis=-1), target - before, inner)
    return j * _BLOCK + i


def _draw(weights: jax.Array, u: jax.Array):
    idx = _inverse_cdf(weights, u)
    w = jnp.take_along_axis(weights, idx[:, None], axis=-1)[:, 0]
    return idx, jnp.log(w) - jnp.log(jnp.sum(weights, axis=-1))


def sample(logits: jax.Array, keys: jax.Array, cfg: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """One token per row, and its log-probability under the sampling distribution.

    logits: `[batch, vocab]`; keys: one PRNG key per row `[batch]` (so a row's draw does not depend
    on the rest of the batch). Greedy returns the argmax and its log-probability under the model.
    One uniform per row, drawn by inverse CDF: Gumbel noise over the whole vocabulary costs 52 ms a
    step for 64 x 49152 on a CPU. When every row's nucleus lies in the top candidates, only those
    are sampled from.
    """
    if cfg.greedy:
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        token = jnp.argmax(logp, axis=-1)
        return token.astype(jnp.int32), jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
    u = jax.vmap(jax.random.uniform)(keys)
    z = _tempered(logits, cfg)
    probs = jax.nn.softmax(z, axis=-1)
    if cfg.top_p >= 1.0:
        token, logprob = _draw(probs, u)
        return token.astype(jnp.int32), logprob
    cand_p, cand_i, n_keep, threshold, exact = _nucleus(probs, cfg.top_p)

    def among_candidates():
        w = jnp.where(jnp.arange(cand_p.shape[-1])[None] < n_keep[:, None], cand_p, 0.0)
        idx, logprob = _draw(w, u)
        return jnp.take_along_axis(cand_i, idx[:, None], axis=-1)[:, 0], logprob

    def over_vocabulary():
        full = _full_threshold(probs, cfg.top_p, threshold, exact)
        return _draw(jnp.where(probs >= full[:, None], probs, 0.0), u)

    token, logprob = jax.lax.cond(jnp.all(exact), among_candidates, over_vocabulary)
    return token.astype(jnp.int32), logprob
