"""Long prompts in bounded memory: attention over a cache in query chunks gives the same numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sj_jax.models import transformer
from sj_jax.models.transformer import attend_cached, query_chunk


def test_query_chunk_keeps_the_scores_under_the_budget():
    budget = transformer.ATTENTION_SCORE_BYTES
    assert query_chunk(100, 1000) == 100  # fits whole
    for per_query in (budget // 3, budget // 1000 + 7, budget + 1):
        c = query_chunk(10_000, per_query)
        assert c & (c - 1) == 0 and (c * per_query <= budget or c == 1) and 2 * c * per_query > budget


@pytest.mark.parametrize("t, slots, budget", [(37, 53, 4096), (64, 64, 20_000), (5, 40, 1)])
def test_attention_in_query_chunks_equals_one_block(t, slots, budget, monkeypatch):
    rng = np.random.default_rng(t)
    b, h, kv, d = 3, 6, 2, 8
    q = jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((b, kv, d, slots)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((b, kv, slots, d)), jnp.float32)
    mask = rng.random((b, 1, t, slots)) < 0.7
    mask[..., 0] = True  # no query without a key
    mask = jnp.asarray(mask)
    whole = jax.jit(attend_cached)(q, k, v, mask)
    monkeypatch.setattr(transformer, "ATTENTION_SCORE_BYTES", budget)
    assert query_chunk(t, b * h * slots * 4) < t  # really chunked, with a remainder for t = 37
    chunked = jax.jit(attend_cached)(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=1e-6, atol=1e-6)


def test_prefill_chunk_divides_the_prompt():
    from sj_jax.inference.kv_cache import PREFILL_TOKENS, prefill_chunk

    assert prefill_chunk(PREFILL_TOKENS) == PREFILL_TOKENS
    for length in (768, 1024, 1536, 2048, 3072, 520):
        c = prefill_chunk(length)
        assert length % c == 0 and c <= PREFILL_TOKENS


@pytest.mark.parametrize("scanned", [False, True])
def test_a_prefill_in_chunks_of_tokens_equals_one_pass(scanned, monkeypatch):
    """Tokens a chunk at a time, each over the cache the earlier chunks wrote: the same next-token
    logits and the same cache as the whole prompt at once (left padding, windows)."""
    import sj_jax
    from sj_jax.inference import kv_cache
    from sj_jax.models.config import ModelConfig

    cfg = ModelConfig(model_type="mistral", vocab_size=59, hidden_size=32, intermediate_size=48, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, sliding_windows=(0, 7), eos_token_id=0)
    model = sj_jax.init_model(cfg, seed=4)
    rng = np.random.default_rng(2)
    prompts = [rng.integers(1, cfg.vocab_size, n).tolist() for n in (48, 17, 33)]
    ids, mask = kv_cache.left_pad(prompts, 48, 3, 0)
    if scanned:
        monkeypatch.setattr(kv_cache, "UNROLL_LAYERS", 0)
    layers = kv_cache.layer_stack(cfg, model.params["layers"])

    def run():
        return jax.jit(lambda p, i, m: kv_cache.prefill(cfg, p, layers, i, m, 60))(model.params, ids, mask)

    whole_logits, whole_cache = run()
    monkeypatch.setattr(kv_cache, "PREFILL_TOKENS", 16)
    assert kv_cache.prefill_chunk(48) == 16
    logits, cache = run()
    np.testing.assert_allclose(np.asarray(logits), np.asarray(whole_logits), rtol=1e-5, atol=1e-5)
    valid = np.asarray(whole_cache["valid"])  # padding slots hold what padding computed: never read
    np.testing.assert_array_equal(np.asarray(cache["valid"]), valid)
    for name, slot_axis in (("k", -1), ("v", -2)):
        for a, b in zip(jax.tree.leaves(cache[name]), jax.tree.leaves(whole_cache[name])):
            a, b = np.moveaxis(np.asarray(a), slot_axis, -1), np.moveaxis(np.asarray(b), slot_axis, -1)
            keep = np.broadcast_to(valid.reshape((1,) * (a.ndim - 4) + (valid.shape[0], 1, 1, -1)), a.shape)
            np.testing.assert_allclose(a[keep], b[keep], rtol=1e-5, atol=1e-5)
    for name in ("key_pos", "pos", "index"):
        np.testing.assert_array_equal(np.asarray(cache[name]), np.asarray(whole_cache[name]))
