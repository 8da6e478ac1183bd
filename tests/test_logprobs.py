"""Masked log-probabilities in vocabulary chunks, against float64 references written from the formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sj_jax import ModelConfig, init_model
from sj_jax.models.transformer import Transformer
from sj_jax.objectives.logprobs import head_weight, token_logprobs
from sj_jax.objectives.sequence import sequence_logprobs
from sj_jax.objectives.sft import sft_loss


def _log_softmax64(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _reference(h, w, t, g):
    """float64 log p(t) and the gradients of sum(g * logp) w.r.t. h and w."""
    h, w, g = (np.asarray(x, np.float64) for x in (h, w, g))
    logp = _log_softmax64(h @ w.T)
    out = logp[np.arange(len(t)), t]
    p = np.exp(logp)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(t)), t] = 1.0
    d_logits = g[:, None] * (onehot - p)
    return out, d_logits @ w, d_logits.T @ h


@pytest.mark.parametrize("chunk", [1000, 96, 37, 1])
@pytest.mark.parametrize("seed", [0, 1])
def test_token_logprobs_and_gradients_match_float64(chunk, seed):
    rng = np.random.default_rng(seed)
    n, e, v = 13, 24, 1000
    h = rng.normal(size=(n, e)).astype(np.float32)
    w = (rng.normal(size=(v, e)) * 0.5).astype(np.float32)
    t = rng.integers(0, v, n).astype(np.int32)
    g = rng.normal(size=n).astype(np.float32)
    ref, ref_dh, ref_dw = _reference(h, w, t, g)

    def f(h, w):
        return jnp.sum(token_logprobs(h, w, jnp.asarray(t), chunk=chunk) * g)

    out = token_logprobs(jnp.asarray(h), jnp.asarray(w), jnp.asarray(t), chunk=chunk)
    dh, dw = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(h), jnp.asarray(w))
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(dh, ref_dh, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-4, atol=1e-5)


def test_chunked_equals_unchunked_with_leading_axes():
    rng = np.random.default_rng(3)
    h = jnp.asarray(rng.normal(size=(2, 5, 16)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(512, 16)).astype(np.float32))
    t = jnp.asarray(rng.integers(0, 512, (2, 5)).astype(np.int32))
    one = token_logprobs(h, w, t, chunk=512)
    many = token_logprobs(h, w, t, chunk=64)
    assert one.shape == (2, 5)
    np.testing.assert_allclose(many, one, rtol=1e-6, atol=1e-6)


TINY = ModelConfig(model_type="llama", vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=False)


def _batch(rng, b=3, t=12):
    ids = rng.integers(0, TINY.vocab_size, (b, t)).astype(np.int32)
    att = np.ones((b, t), np.int32)
    att[0, 9:] = 0  # right padding
    loss = (rng.random((b, t)) < 0.5).astype(np.int32) * att
    loss[:, 0] = 0
    return ids, att, loss


@pytest.mark.parametrize("tied", [True, False])
def test_sequence_logprobs_match_float64_from_full_logits(tied):
    cfg = TINY.replace(tie_word_embeddings=tied)
    model = init_model(cfg, seed=4)
    ids, att, loss = _batch(np.random.default_rng(5))
    logits = np.asarray(Transformer(cfg).apply({"params": model.params}, ids, att), np.float64)
    logp = _log_softmax64(logits[:, :-1])
    tok = np.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    ref_sum = (tok * loss[:, 1:]).sum(axis=1)
    s, c = sequence_logprobs(cfg, model.params, ids, att, loss, chunk=64)
    np.testing.assert_allclose(s, ref_sum, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(c, loss[:, 1:].sum(axis=1))


def test_last_window_equals_full_when_targets_are_at_the_end():
    model = init_model(TINY, seed=6)
    ids, att, loss = _batch(np.random.default_rng(7))
    att[:] = 1
    loss[:, :7] = 0
    full = sequence_logprobs(TINY, model.params, ids, att, loss)
    window = sequence_logprobs(TINY, model.params, ids, att, loss, last=5)
    np.testing.assert_allclose(window[0], full[0], rtol=1e-6)
    np.testing.assert_array_equal(window[1], full[1])


def test_sft_gradient_equals_masked_full_logits_reference():
    """The loss, and its gradient, are those of the masked-token mean computed from full logits:
    masked-out tokens contribute nothing."""
    model = init_model(TINY, seed=8)
    ids, att, loss = _batch(np.random.default_rng(9))
    batch = {"input_ids": ids, "attention_mask": att, "loss_mask": loss}

    def reference(params):
        logits = Transformer(TINY).apply({"params": params}, ids, att)
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        tok = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        return -jnp.sum(tok * loss[:, 1:]) / loss[:, 1:].sum()

    # jitted: run eagerly, each call would trace and compile the scanned layers op by op
    ours, ours_g = jax.jit(jax.value_and_grad(lambda p: sft_loss(TINY, p, batch, chunk=50)[0]))(model.params)
    ref, ref_g = jax.jit(jax.value_and_grad(reference))(model.params)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ours_g), jax.tree.leaves(ref_g)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_tokens_after_the_last_target_do_not_touch_the_gradient():
    model = init_model(TINY, seed=10)
    rng = np.random.default_rng(11)
    ids, att, loss = _batch(rng)
    att[:] = 1
    loss[:, 8:] = 0
    changed = ids.copy()
    changed[:, 8:] = rng.integers(0, TINY.vocab_size, (ids.shape[0], ids.shape[1] - 8))
    grad = jax.jit(jax.grad(
        lambda p, i: sft_loss(TINY, p, {"input_ids": i, "attention_mask": att, "loss_mask": loss})[0]))
    for a, b in zip(jax.tree.leaves(grad(model.params, ids)), jax.tree.leaves(grad(model.params, changed))):
        np.testing.assert_array_equal(a, b)


def test_head_weight_layouts():
    tied = init_model(TINY.replace(tie_word_embeddings=True), seed=0)
    untied = init_model(TINY, seed=0)
    assert head_weight(tied.params, True).shape == (TINY.vocab_size, TINY.hidden_size)
    np.testing.assert_array_equal(head_weight(untied.params, False), np.asarray(untied.params["lm_head"]["kernel"]).T)
