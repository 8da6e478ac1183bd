"""The KV-cached sampler: exact against full forwards and PyTorch generate, sampling laws, shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sj_jax
from sj_jax.inference import kv_cache
from sj_jax.inference.sampling import NUCLEUS_CANDIDATES, SamplingConfig, processed_logits, sample
from sj_jax.models.config import ModelConfig

TINY = ModelConfig(model_type="llama", vocab_size=61, hidden_size=48, intermediate_size=72, num_layers=2,
                   num_heads=6, num_kv_heads=2, head_dim=8, max_position_embeddings=256, eos_token_id=0)
WINDOWED = ModelConfig(model_type="mistral", vocab_size=53, hidden_size=32, intermediate_size=40, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=8, sliding_windows=(5, 5), eos_token_id=0)


@pytest.fixture(scope="module", params=["llama", "mistral-window"])
def tiny(request):
    return sj_jax.init_model(TINY if request.param == "llama" else WINDOWED, seed=21)


def _prompts(rng, vocab, lengths):
    return [rng.integers(1, vocab, n).tolist() for n in lengths]


def test_every_decode_step_equals_a_full_forward_over_the_prefix(tiny):
    """The cache path (left-padded prefill, then one token at a time) gives the full forward's logits."""
    cfg = tiny.config
    rng = np.random.default_rng(0)
    prompts = _prompts(rng, cfg.vocab_size, [7, 3, 12])
    plen, new = 16, 9
    ids = np.zeros((3, plen), np.int32)
    mask = np.zeros((3, plen), np.int32)
    for i, p in enumerate(prompts):
        ids[i, plen - len(p):], mask[i, plen - len(p):] = p, 1
    layers = kv_cache.unstack_layers(tiny.params["layers"], cfg.num_layers)
    logits, cache = kv_cache.prefill(cfg, tiny.params, layers, jnp.asarray(ids), jnp.asarray(mask), plen + new)
    seqs = [list(p) for p in prompts]
    width = max(len(p) for p in prompts) + new  # one right-padded shape for every step: one compile
    for step in range(new):
        ids_full = np.zeros((len(seqs), width), np.int32)
        mask_full = np.zeros_like(ids_full)
        for i, s in enumerate(seqs):
            ids_full[i, :len(s)], mask_full[i, :len(s)] = s, 1
        full = np.asarray(sj_jax.logits(tiny, ids_full, mask_full))
        for i, s in enumerate(seqs):
            np.testing.assert_allclose(np.asarray(logits[i]), full[i, len(s) - 1], rtol=1e-5, atol=1e-5)
        nxt = rng.integers(1, cfg.vocab_size, 3).astype(np.int32)  # random continuations, not greedy ones
        for i, s in enumerate(seqs):
            s.append(int(nxt[i]))
        logits, cache = kv_cache.decode_step(cfg, tiny.params, layers, cache, jnp.asarray(nxt))


def test_same_seed_same_samples_different_seed_different(tiny):
    prompts = _prompts(np.random.default_rng(1), tiny.config.vocab_size, [5, 9])
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=0.95, num_samples=2, stop=[])
    a = sj_jax.generate(tiny, prompts, seed=3, **kw)
    b = sj_jax.generate(tiny, prompts, seed=3, **kw)
    c = sj_jax.generate(tiny, prompts, seed=4, **kw)
    assert a.token_ids == b.token_ids and a.logprobs == b.logprobs
    assert a.token_ids != c.token_ids
    assert a.token_ids[0][0] != a.token_ids[0][1]  # the two samples of a prompt differ
    assert all(len(t) == 12 for row in a.token_ids for t in row) and not any(sum(a.finished, []))


def test_a_row_does_not_depend_on_its_batch(tiny):
    """Per-row keys and padding-free positions: a prompt alone or batched gives the same sample,
    though batched with a 20-token prompt it is padded into the 32 bucket instead of the 16 one."""
    prompts = _prompts(np.random.default_rng(2), tiny.config.vocab_size, [4, 11, 6, 20])
    kw = dict(max_new_tokens=10, temperature=0.8, top_k=20, seed=9, stop=[])
    batched = sj_jax.generate(tiny, prompts, **kw)
    calls = []
    split = sj_jax.generate(tiny, prompts, batch_size=1, progress=lambda rows, new: calls.append((rows, new)), **kw)
    assert batched.token_ids == split.token_ids
    assert calls == [(1, 10)] * len(prompts)  # one report a batch: its rows and new tokens
    np.testing.assert_allclose(sum(batched.logprobs, []), sum(split.logprobs, []), rtol=1e-5, atol=1e-6)


def test_rows_that_stop_early_do_not_change_rows_that_continue(tiny):
    prompts = _prompts(np.random.default_rng(3), tiny.config.vocab_size, [6, 8])
    free = sj_jax.generate(tiny, prompts, max_new_tokens=16, temperature=0.0, stop=[])
    # Stop on a token that row 0 emits early but row 1 never emits.
    row0, row1 = free.token_ids[0][0], free.token_ids[1][0]
    stop_tok = next(t for t in row0[1:6] if t not in row1)
    cut = row0.index(stop_tok)
    stopped = sj_jax.generate(tiny, prompts, max_new_tokens=16, temperature=0.0, stop=[stop_tok])
    assert stopped.token_ids[0][0] == row0[: cut + 1] and stopped.finished[0][0]
    assert stopped.token_ids[1][0] == row1 and not stopped.finished[1][0]
    assert stopped.logprobs[1][0] == pytest.approx(free.logprobs[1][0], abs=1e-6)


def test_greedy_logprobs_are_the_models(tiny):
    prompt = _prompts(np.random.default_rng(4), tiny.config.vocab_size, [5])[0]
    g = sj_jax.generate(tiny, [prompt], max_new_tokens=4, temperature=0.0, stop=[])
    seq = prompt + g.token_ids[0][0]
    logp = jax.nn.log_softmax(np.asarray(sj_jax.logits(tiny, [seq]))[0], axis=-1)
    want = [float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(g.token_ids[0][0])]
    np.testing.assert_allclose(g.logprobs[0][0], want, rtol=1e-5, atol=1e-5)


def test_no_recompilation_for_a_second_batch_in_the_same_bucket(tiny):
    events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: events.append(name) if name == "/jax/core/compile/backend_compile_duration" else None)
    rng = np.random.default_rng(5)
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=0.9, stop=[])
    sj_jax.generate(tiny, _prompts(rng, tiny.config.vocab_size, [3, 9, 14]), **kw)
    before = len(events)
    sj_jax.generate(tiny, _prompts(rng, tiny.config.vocab_size, [12, 2, 5, 7]), seed=1, **kw)
    assert len(events) == before, "a second batch in the same bucket compiled again"
    # six rows in batches of four: the last batch of two reuses the four-row program
    sj_jax.generate(tiny, _prompts(rng, tiny.config.vocab_size, [4, 8, 11, 3, 6, 10]), batch_size=4, **kw)
    assert len(events) == before, "the last, smaller batch compiled a program of its own"
    sj_jax.generate(tiny, _prompts(rng, tiny.config.vocab_size, [40]), **kw)  # a new bucket compiles
    assert len(events) > before


# ---------------------------------------------------------------- sampling laws


def _reference_kept(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """float64 reference of the kept set: temperature, top-k, then top-p over the survivors."""
    z = logits.astype(np.float64) / cfg.temperature
    if cfg.top_k:
        kth = np.sort(z)[-cfg.top_k]
        z = np.where(z >= kth, z, -np.inf)
    if cfg.top_p >= 1.0:
        return np.isfinite(z)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    cum_before = np.cumsum(p[order]) - p[order]
    keep = np.zeros_like(p, bool)
    keep[order[cum_before < cfg.top_p]] = True
    return keep


@pytest.mark.parametrize("vocab, scale, cfg", [
    (50, 2.0, SamplingConfig(temperature=0.7, top_p=0.8)),
    (50, 2.0, SamplingConfig(temperature=1.3, top_k=7)),
    (50, 2.0, SamplingConfig(temperature=1.0, top_k=12, top_p=0.6)),
    # Flat over many tokens: the top candidates do not reach top_p, so the bisection path runs.
    (4 * NUCLEUS_CANDIDATES, 0.3, SamplingConfig(temperature=1.0, top_p=0.9)),
])
def test_truncation_keeps_exactly_the_reference_set(vocab, scale, cfg):
    logits = np.random.default_rng(vocab).standard_normal((64, vocab)).astype(np.float32) * scale
    kept = np.isfinite(np.asarray(processed_logits(jnp.asarray(logits), cfg)))
    for row in range(len(logits)):
        np.testing.assert_array_equal(kept[row], _reference_kept(logits[row], cfg), err_msg=f"row {row}")


@pytest.mark.parametrize("cfg", [SamplingConfig(temperature=0.9, top_k=5),
                                 SamplingConfig(temperature=1.0, top_p=0.7),
                                 SamplingConfig(temperature=1.5, top_k=6, top_p=0.8)])
def test_samples_follow_the_truncated_renormalised_distribution(cfg):
    """Chi-square goodness of fit on 40 000 draws from a 12-token vocabulary; excluded never drawn."""
    from scipy import stats

    logits = np.random.default_rng(7).standard_normal(12).astype(np.float32) * 1.5
    keep = _reference_kept(logits, cfg)
    z = np.where(keep, logits.astype(np.float64) / cfg.temperature, -np.inf)
    want = np.exp(z - z.max())
    want /= want.sum()
    n = 40_000
    keys = jax.random.split(jax.random.key(11), n)
    tokens, logprobs = sample(jnp.broadcast_to(jnp.asarray(logits), (n, 12)), keys, cfg)
    counts = np.bincount(np.asarray(tokens), minlength=12)
    assert counts[~keep].sum() == 0
    chi2 = stats.chisquare(counts[keep], n * want[keep])
    assert chi2.pvalue > 1e-3, (counts, n * want)
    np.testing.assert_allclose(np.asarray(logprobs), np.log(want[np.asarray(tokens)]), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- bad input


def test_bad_input_is_refused_clearly(tiny):
    with pytest.raises(ValueError, match="non-empty list"):
        sj_jax.generate(tiny, [])
    with pytest.raises(ValueError, match=r"prompts\[1\]: the prompt is empty"):
        sj_jax.generate(tiny, [[1, 2], []])
    with pytest.raises(ValueError, match="exceeds the cache of"):
        sj_jax.generate(tiny, [[1] * (tiny.config.max_position_embeddings - 8)], max_new_tokens=16)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"top_p: must lie in \(0, 1\]"):
            sj_jax.generate(tiny, [[1, 2]], top_p=bad)
    with pytest.raises(ValueError, match="token id 999"):
        sj_jax.generate(tiny, [[1, 999]])
    with pytest.raises(ValueError, match="text prompts need a model loaded with a tokenizer"):
        sj_jax.generate(tiny, ["hello"])


# ---------------------------------------------------------------- the real model


@pytest.mark.slow
def test_greedy_equals_torch_generate_on_smollm2(smollm2, smollm2_torch_greedy):
    """A batch of different-length chat prompts, 64 new tokens: token for token PyTorch's greedy."""
    from conftest import GREEDY_NEW_TOKENS, GREEDY_QUESTIONS

    ours = sj_jax.generate(smollm2, GREEDY_QUESTIONS, max_new_tokens=GREEDY_NEW_TOKENS, temperature=0.0)
    for i, (q, ref) in enumerate(zip(GREEDY_QUESTIONS, smollm2_torch_greedy)):
        assert ours.token_ids[i][0] == ref, q
        assert ours.finished[i][0] == (ref[-1] == 2)


def test_inverse_cdf_draws_follow_the_weights_over_a_large_vocabulary():
    """The two-level draw (blocks, then a token) is the plain categorical over sparse weights."""
    from scipy import stats

    from sj_jax.inference.sampling import _inverse_cdf

    rng = np.random.default_rng(13)
    n, rows = 3000, 60_000  # not a multiple of the block size; zero weights scattered
    w = rng.random(n) * (rng.random(n) < 0.01)
    w[[0, n - 1]] = 0.0
    u = jax.random.uniform(jax.random.key(2), (rows,))
    idx = np.asarray(_inverse_cdf(jnp.broadcast_to(jnp.asarray(w, jnp.float32), (rows, n)), u))
    assert (w[idx] > 0).all()
    counts = np.bincount(idx, minlength=n)[w > 0]
    assert stats.chisquare(counts, rows * w[w > 0] / w.sum()).pvalue > 1e-3
    # u = 0 and u just below 1 land on the first and last non-zero weights.
    edge = np.asarray(_inverse_cdf(jnp.asarray(np.stack([w, w]), jnp.float32), jnp.asarray([0.0, 1 - 2**-24])))
    assert edge[0] == np.flatnonzero(w)[0] and edge[1] == np.flatnonzero(w)[-1]


def test_a_prompt_prefilled_once_for_its_samples_gives_the_samples_of_one_row_each(tiny):
    """batch_size a multiple of num_samples: one prefill per prompt, its cache repeated; the samples
    are those drawn with every row prefilled on its own (batch_size 1)."""
    prompts = _prompts(np.random.default_rng(5), tiny.config.vocab_size, [6, 13, 3])
    kw = dict(max_new_tokens=9, temperature=1.0, top_p=0.9, num_samples=4, seed=2, stop=[])
    grouped = sj_jax.generate(tiny, prompts, batch_size=8, **kw)
    alone = sj_jax.generate(tiny, prompts, batch_size=1, **kw)
    assert grouped.token_ids == alone.token_ids
    np.testing.assert_allclose(sum(grouped.logprobs, []), sum(alone.logprobs, []), rtol=1e-5, atol=1e-6)
    assert len({tuple(t) for t in grouped.token_ids[1]}) > 1  # the samples of one prompt still differ


def test_forced_tokens_follow_the_budget_or_a_stop_and_the_row_then_ends_at_its_next_stop(tiny):
    """Free phase, then the fed tokens (log-prob 0; a stop drawn in the free phase dropped), then the
    model's own tokens up to a stop: each part checked against a greedy continuation of the prefix."""
    cfg = tiny.config
    prompt = _prompts(np.random.default_rng(6), cfg.vocab_size, [7])[0]
    forced = [5, 9, 17]
    free = sj_jax.generate(tiny, [prompt], max_new_tokens=4, temperature=0.0, stop=[])
    out = sj_jax.generate(tiny, [prompt], max_new_tokens=12, temperature=0.0, stop=[], forced=forced, budget=4)
    toks = out.token_ids[0][0]
    assert toks[:4] == free.token_ids[0][0] and toks[4:7] == forced
    assert out.logprobs[0][0][4:7] == [0.0, 0.0, 0.0]
    after = sj_jax.generate(tiny, [prompt + toks[:7]], max_new_tokens=5, temperature=0.0, stop=[])
    assert toks[7:] == after.token_ids[0][0]  # the verdict part is the model's own continuation
    # A stop met in the free phase starts the fed tokens at once and is dropped; the next one ends the row.
    stop_tok = toks[1]
    cut = sj_jax.generate(tiny, [prompt], max_new_tokens=12, temperature=0.0, stop=[stop_tok], forced=forced,
                          budget=8)
    t = cut.token_ids[0][0]
    assert t[:4] == [toks[0]] + forced
    cont = sj_jax.generate(tiny, [prompt + t[:4]], max_new_tokens=8, temperature=0.0, stop=[stop_tok])
    assert t[4:] == cont.token_ids[0][0] and cut.finished[0][0] == cont.finished[0][0]
    capped = sj_jax.generate(tiny, [prompt], max_new_tokens=12, temperature=0.0, stop=[], forced=forced, budget=4,
                             after=2)
    assert capped.token_ids[0][0] == toks[:9] and not capped.finished[0][0]  # 2 of the model's tokens after the fed ones
    with pytest.raises(ValueError, match="no room"):
        sj_jax.generate(tiny, [prompt], max_new_tokens=6, forced=forced, budget=3, stop=[])


def test_scanned_layers_give_the_unrolled_samples(tiny, monkeypatch):
    """Models deeper than `UNROLL_LAYERS` decode with their layers scanned over a stacked cache: the
    same tokens and log-probs as unrolled (both orders of grouped prefill, windows, stops)."""
    from sj_jax.inference import sampler

    prompts = _prompts(np.random.default_rng(8), tiny.config.vocab_size, [6, 13, 3])
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=0.9, num_samples=4, seed=5, stop=[1, 2], batch_size=8)
    sampler.compiled.cache_clear()
    unrolled = sj_jax.generate(tiny, prompts, **kw)
    monkeypatch.setattr(kv_cache, "UNROLL_LAYERS", 0)
    sampler.compiled.cache_clear()  # the plan does not hold the layer layout: compile again
    try:
        scanned = sj_jax.generate(tiny, prompts, **kw)
    finally:
        sampler.compiled.cache_clear()
    assert not isinstance(kv_cache.layer_stack(tiny.config, tiny.params["layers"]), list)  # it did scan
    assert scanned.token_ids == unrolled.token_ids
    flat = lambda g: [x for prompt in g.logprobs for sample in prompt for x in sample]  # noqa: E731
    np.testing.assert_allclose(flat(scanned), flat(unrolled), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scanned", [False, True])
def test_prompts_that_begin_alike_prefill_their_common_start_once_with_the_same_samples(tiny, scanned, monkeypatch):
    """Runs of two prompts with a common start (a judge pair's two orders): that start is prefilled
    once a run, its cache repeated, each prompt's rest run over it; the samples (several a prompt,
    the forced phase, windows, the scanned layout) are those of every prompt prefilled whole."""
    from sj_jax.inference import sampler

    cfg = tiny.config
    rng = np.random.default_rng(12)
    prompts = []
    for n_common, tails in ((40, (5, 9)), (52, (3, 12)), (45, (7, 7))):  # prompts of 45 to 64 tokens
        head = rng.integers(1, cfg.vocab_size, n_common).tolist()
        prompts += [head + rng.integers(1, cfg.vocab_size, t).tolist() for t in tails]
        assert kv_cache.common_prefix_len(prompts[-2:]) == n_common
    monkeypatch.setattr(sampler, "SHARED_PREFIX_MIN", 16)
    monkeypatch.setattr(kv_cache, "PREFILL_TOKENS", 16)  # the common start and the rests in chunks too
    if scanned:
        monkeypatch.setattr(kv_cache, "UNROLL_LAYERS", 0)
    kw = dict(max_new_tokens=12, sampling=SamplingConfig(temperature=1.0, top_p=0.9), row_ids=list(range(12)),
              seed=4, stop_ids=[1, 2], pad_id=0, group=2, forced=(7, 8), budget=5)
    sampler.compiled.cache_clear()
    try:
        whole = sampler.run(cfg, tiny.mesh, tiny.params, prompts, **kw)
        shared = sampler.run(cfg, tiny.mesh, tiny.params, prompts, fan=2, **kw)
        odd = sampler.run(cfg, tiny.mesh, tiny.params, prompts[:5], fan=2, **{**kw, "row_ids": list(range(10))})
    finally:
        sampler.compiled.cache_clear()
    assert whole["prefix_len"] == 0 and odd["prefix_len"] == 0  # not in runs of two: prefilled whole
    # each run's whole common start, left-padded to the bucket of the longest (52); each rest to that of 12
    assert sampler.shared_prefixes(prompts, 2, 64) == (64, 16, [40, 52, 45]) and shared["prefix_len"] == 64
    for k in ("tokens", "stopped", "lengths"):
        np.testing.assert_array_equal(shared[k], whole[k])
    np.testing.assert_allclose(shared["logprobs"], whole["logprobs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(odd["tokens"], whole["tokens"][:10])
    assert sampler.shared_prefixes(prompts, 2, 56) is None  # it would save under a quarter of the tokens


def _compacted_row_steps(lengths: np.ndarray, max_new: int) -> int:
    """The decode row-steps the compaction rule gives for rows of these lengths (tokens, stop included)."""
    from sj_jax.core.buckets import bucket
    from sj_jax.inference import sampler

    rows, step, total = len(lengths), 1, 0
    while True:
        until = rows // 2 if rows // 2 >= sampler.COMPACT_MIN_ROWS else 0
        end = step
        while end < max_new and np.sum(lengths > end) > until:
            end += 1  # a row of length n is done once n tokens are written (step n)
        total += rows * (end - step)
        step, active = end, int(np.sum(lengths > end))
        if active == 0 or step >= max_new:
            return total
        if until == 0 or max_new - step < sampler.COMPACT_MIN_STEPS:
            return total + rows * (int(lengths.max()) - step)
        rows = bucket(active, minimum=1)


@pytest.mark.parametrize("scanned, forced", [(False, False), (True, True)])
def test_unfinished_rows_go_on_in_a_smaller_batch_with_the_same_samples(scanned, forced, monkeypatch):
    """Once most rows have stopped, the rest decode in a smaller batch: the same tokens and log-probs
    as one batch to the end, in fewer row-steps (the scanned layout and the forced phase too)."""
    from sj_jax.inference import sampler

    tiny = sj_jax.init_model(TINY, seed=21)  # one model: each case compiles a program per batch size
    cfg = tiny.config
    prompts = _prompts(np.random.default_rng(11), cfg.vocab_size, [int(n) for n in np.arange(16) % 7 + 3])
    kw = dict(max_new_tokens=64, sampling=SamplingConfig(temperature=1.0, top_p=0.95), row_ids=list(range(32)),
              seed=3, stop_ids=[1, 2, 3], pad_id=0, group=2)
    if forced:
        kw.update(forced=(7, 8), budget=4, after=30)
    if scanned:
        monkeypatch.setattr(kv_cache, "UNROLL_LAYERS", 0)
    sampler.compiled.cache_clear()
    try:
        whole = sampler.run(cfg, tiny.mesh, tiny.params, prompts, compact=False, **kw)
        parts = sampler.run(cfg, tiny.mesh, tiny.params, prompts, **kw)
    finally:
        sampler.compiled.cache_clear()
    lengths = whole["lengths"]
    half = np.sort(lengths)[15]  # most rows end early, one goes on
    assert half + sampler.COMPACT_MIN_STEPS < 64 and half + 8 < lengths.max()
    assert whole["row_steps"] == whole["row_steps_full"] == 32 * (lengths.max() - 1)
    assert parts["row_steps_full"] == whole["row_steps_full"]
    assert parts["row_steps"] == _compacted_row_steps(lengths, 64)
    assert parts["row_steps"] < 0.8 * whole["row_steps"]
    for k in ("tokens", "stopped", "lengths"):
        np.testing.assert_array_equal(parts[k], whole[k], err_msg=k)
    np.testing.assert_allclose(parts["logprobs"], whole["logprobs"], rtol=1e-5, atol=1e-6)
