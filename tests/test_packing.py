"""Packed rows: each example attends to itself only and restarts its positions, so packing changes
no log-prob, loss or gradient; 0/1 masks keep their old positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sj_jax import ModelConfig, init_model
from sj_jax.data.batches import collate_sft
from sj_jax.data.examples import SFTExample
from sj_jax.data.packing import pack
from sj_jax.models.transformer import positions_from_mask
from sj_jax.objectives import sequence, sft

# jitted: run eagerly, every call would trace and compile the scanned layers again
sequence_logprobs = jax.jit(sequence.sequence_logprobs, static_argnums=0)
sft_loss = sft.sft_loss

TINY = ModelConfig(model_type="llama", vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=256)


def random_examples(rng, n, lo=3, hi=40):
    out = []
    for _ in range(n):
        k = int(rng.integers(lo, hi))
        ids = rng.integers(1, TINY.vocab_size, size=k).astype(np.int32)
        loss = np.zeros(k, np.int32)
        loss[int(rng.integers(1, k)):] = 1  # a response at the end, as chat examples have
        out.append(SFTExample(ids, loss))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0, 1]), min_size=1, max_size=12), min_size=1, max_size=4)
       .filter(lambda rows: len({len(r) for r in rows}) == 1))
def test_plain_masks_keep_their_positions(rows):
    mask = jnp.asarray(rows, jnp.int32)
    old = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    np.testing.assert_array_equal(positions_from_mask(mask), old)
    np.testing.assert_array_equal(positions_from_mask(mask.astype(bool)), old)


def test_segments_restart_positions():
    got = positions_from_mask(jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0]]))
    np.testing.assert_array_equal(got, [[0, 1, 2, 0, 1, 0, 0, 0]])


def test_pack_places_every_example_once_within_the_row_length():
    rng = np.random.default_rng(0)
    examples = random_examples(rng, 300, 3, 120)
    rows, report = pack(examples, 128)
    assert report.examples == 300 and report.rows == len(rows) and report.fill > 0.9
    total = sum(len(e.input_ids) for e in examples)
    assert sum(len(r.input_ids) for r in rows) == total == report.tokens
    seen = []
    for r in rows:
        assert len(r.input_ids) <= 128
        seg = r.segment_ids
        assert seg[0] == 1 and np.all(np.diff(seg) >= 0) and np.all(np.diff(seg) <= 1)
        for s in range(1, seg.max() + 1):
            seen.append((tuple(r.input_ids[seg == s]), tuple(r.loss_mask[seg == s])))
    assert sorted(seen) == sorted((tuple(e.input_ids), tuple(e.loss_mask)) for e in examples)
    assert pack(examples, 128)[0][3].input_ids.tolist() == rows[3].input_ids.tolist()  # deterministic
    with pytest.raises(ValueError, match="more than the packed row length"):
        pack(examples, 64)


def test_packing_changes_no_logprob_loss_or_gradient():
    rng = np.random.default_rng(1)
    params = init_model(TINY, seed=2).params
    examples = random_examples(rng, 12)
    rows, _ = pack(examples, 96)
    assert len(rows) < len(examples)
    packed = {k: jnp.asarray(v) for k, v in collate_sft(rows, 96, pad_id=0).items()}
    plain = {k: jnp.asarray(v) for k, v in collate_sft(examples, 96, pad_id=0).items()}
    # Per example: its own segment's log-prob in the packed row equals its log-prob alone.
    alone = sequence_logprobs(TINY, params, plain["input_ids"], plain["attention_mask"], plain["loss_mask"])[0]
    by_key = {tuple(e.input_ids): float(alone[i]) for i, e in enumerate(examples)}
    for r, row in enumerate(rows):
        for s in range(1, row.segment_ids.max() + 1):
            only = packed["loss_mask"].at[r].set(packed["loss_mask"][r] * (packed["attention_mask"][r] == s))
            got = sequence_logprobs(TINY, params, packed["input_ids"], packed["attention_mask"], only)[0][r]
            np.testing.assert_allclose(got, by_key[tuple(row.input_ids[row.segment_ids == s])], rtol=2e-5)
    # The batch loss and its gradient: the same masked tokens, so the same mean.
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p, b: sft_loss(TINY, p, b)[0]))
    loss_p, grad_p = loss_and_grad(params, packed)
    loss_u, grad_u = loss_and_grad(params, plain)
    np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grad_p), jax.tree.leaves(grad_u)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
