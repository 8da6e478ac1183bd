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
