"""One-pass pairwise judging: the template, verdict tokens, both orders, principles, PyTorch oracle."""

from __future__ import annotations

import dataclasses
import jax
import numpy as np
import pytest

import sj_jax
from sj_jax.core.errors import ConfigError, SJError
from sj_jax.judge import (DEFAULT_TEMPLATE, JudgeTemplate, Principle, VerdictTokenError, judge_pairs,
                          judge_pairs_detailed, majority_probability, render_prompt, verdict_token_ids)
from sj_jax.judge import scoring
from sj_jax.models.config import ModelConfig

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

WORDS = "cat dog seven blue run quickly because the sum is eight not nine yes no maybe".split()
SYSTEMS = [
    "Judge the two answers.", "Prefer the shorter answer.", "Prefer the longer answer.", "Be strict.",
    "Compare correctness only.", "You grade homework.", "Pick the friendlier reply.", "Pick the clearer reply.",
]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A byte-level BPE trained in memory (1000 tokens) with a ChatML template: fast, no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [DEFAULT_TEMPLATE.system, DEFAULT_TEMPLATE.user, DEFAULT_TEMPLATE.assistant_prefix,
              "Response A", "Response B", " ".join(WORDS), *SYSTEMS] * 10
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer):
    cfg = ModelConfig(model_type="llama", vocab_size=1000, hidden_size=48, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=12, max_position_embeddings=1024, pad_token_id=0)
    model = sj_jax.init_model(cfg, seed=5, tokenizer=tiny_tokenizer)
    # normal(0.02) weights give a near-uniform next token; a sharper head spreads the verdicts.
    model.params = {**model.params, "lm_head": {"kernel": model.params["lm_head"]["kernel"] * 40}}
    return model


def _pairs(rng: np.random.Generator, n: int, words: int = 10):
    """(contexts, responses_a, responses_b): n random word strings each; responses of words/2 to words
    words, so that most calls share a few length buckets (each new bucket is a compile)."""

    def text(k):
        return " ".join(rng.choice(WORDS, k))

    return ([text(words) for _ in range(n)], [text(rng.integers(words // 2, words + 1)) for _ in range(n)],
            [text(rng.integers(words // 2, words + 1)) for _ in range(n)])


def _by_hand(model, template, triples, system=None) -> np.ndarray:
    """float64 `[len(triples), 2]`: p(verdict_a), p(verdict_b) after the prompt of each (context,
    first, second), from one right-padded full forward (`sj_jax.logits`), not the judge's path."""
    tok = model.tokenizer
    rows, verdicts = [], []
    for context, first, second in triples:
        user = template.user.format(context=context, response_a=first, response_b=second)
        messages = [{"role": "system", "content": system or template.system}, {"role": "user", "content": user}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + template.assistant_prefix
        rows.append(tok(text, add_special_tokens=False)["input_ids"])
        verdicts.append([tok(text + v, add_special_tokens=False)["input_ids"][-1]
                         for v in (template.verdict_a, template.verdict_b)])
    t = -(-max(map(len, rows)) // 128) * 128
    ids = np.array([r + [0] * (t - len(r)) for r in rows], np.int32)
    mask = (np.arange(t)[None] < np.array([len(r) for r in rows])[:, None]).astype(np.int32)
    logits = np.asarray(sj_jax.logits(model, ids, mask), np.float64)
    out = np.zeros((len(rows), 2))
    for i, r in enumerate(rows):
        x = logits[i, len(r) - 1]
        logp = x - x.max() - np.log(np.exp(x - x.max()).sum())
        out[i] = np.exp(logp[verdicts[i]])
    return out


# --------------------------------------------------------------------------- template


def test_template_names_a_missing_or_unknown_placeholder():
    with pytest.raises(ConfigError, match=r"judge.user: placeholder \{response_b\} is missing"):
        JudgeTemplate("s", "{context} {response_a}", "Response")
    with pytest.raises(ConfigError, match=r"judge.user: unknown placeholder \{answer\}"):
        JudgeTemplate("s", "{context} {response_a} {response_b} {answer}", "Response")
    with pytest.raises(ConfigError, match=r"placeholder \{context\} appears 2 times"):
        JudgeTemplate("s", "{context} {response_a} {response_b} {context}", "Response")
    with pytest.raises(ConfigError, match="judge.user: malformed"):
        JudgeTemplate("s", "{context} {response_a} {response_b} {", "Response")
    JudgeTemplate("s", "{{literal}} {context} {response_a} {response_b}", "Response")  # escaped braces are fine


def test_template_from_dict_rejects_unknown_keys_by_name():
    t = JudgeTemplate.from_dict({"system": "s", "user": "{context}|{response_a}|{response_b}",
                                 "assistant_prefix": "Better:", "verdict_b": " 2"})
    assert t.verdict_a == " A" and t.verdict_b == " 2"
    with pytest.raises(ConfigError, match="judge.verdict_c: unknown key"):
        JudgeTemplate.from_dict({"system": "s", "user": "{context}{response_a}{response_b}",
                                 "assistant_prefix": "x", "verdict_c": " C"})
    with pytest.raises(ConfigError, match="judge.assistant_prefix: required key is missing"):
        JudgeTemplate.from_dict({"system": "s", "user": "{context}{response_a}{response_b}"})


def test_render_fills_the_template_and_ends_at_the_prefix(tiny_tokenizer):
    text = render_prompt(tiny_tokenizer, DEFAULT_TEMPLATE, "ctx {response_a}", "first {}", "second",
                         principle=Principle("brevity", "Prefer short."))
    assert text.endswith("<|im_start|>assistant\n" + DEFAULT_TEMPLATE.assistant_prefix)
    assert text.startswith("<|im_start|>system\nPrefer short.<|im_end|>")
    # Braces inside the texts are kept as they are, never substituted again.
    assert "[Context]\nctx {response_a}\n\n[Response A]\nfirst {}\n\n[Response B]\nsecond" in text


def test_a_verdict_of_two_tokens_fails_at_start_up(tiny, tiny_tokenizer):
    bad = JudgeTemplate(DEFAULT_TEMPLATE.system, DEFAULT_TEMPLATE.user, DEFAULT_TEMPLATE.assistant_prefix,
                        verdict_a=" A!?")
    with pytest.raises(VerdictTokenError, match=r"judge.verdict_a: ' A!\?' is not exactly one token") as e:
        verdict_token_ids(tiny_tokenizer, bad)
    assert "alone it is" in str(e.value) and isinstance(e.value, SJError)
    c, a, b = _pairs(np.random.default_rng(0), 1)
    with pytest.raises(VerdictTokenError):
        judge_pairs(tiny, c, a, b, template=bad)


def test_a_verdict_that_is_one_token_alone_but_not_in_context_fails(tiny_tokenizer):
    """With a trailing space in the prefix, "A" alone is one token, but after "Response " the space
    and the letter merge into " A": the prompt's own last token changes."""
    t = JudgeTemplate(DEFAULT_TEMPLATE.system, DEFAULT_TEMPLATE.user, "The better one is Response ",
                      verdict_a="A", verdict_b="B")
    assert len(tiny_tokenizer("A", add_special_tokens=False)["input_ids"]) == 1
    with pytest.raises(VerdictTokenError, match="judge.verdict_a: 'A' is not exactly one token"):
        verdict_token_ids(tiny_tokenizer, t)


# --------------------------------------------------------------------------- scoring on a tiny model


def test_both_orders_averaged_equals_full_forwards_by_hand(tiny):
    c, a, b = _pairs(np.random.default_rng(1), 3)
    ref = _by_hand(tiny, DEFAULT_TEMPLATE, [t for i in range(3) for t in ((c[i], a[i], b[i]), (c[i], b[i], a[i]))])
    ref = ref.reshape(3, 2, 2)  # [pair, order, verdict]
    sa, sb = (ref[:, 0, 0] + ref[:, 1, 1]) / 2, (ref[:, 0, 1] + ref[:, 1, 0]) / 2
    for share in (True, False):
        d = judge_pairs_detailed(tiny, c, a, b, share_prefix=share)
        np.testing.assert_allclose(d.probs[:, 0], ref, rtol=1e-5)
        np.testing.assert_allclose(judge_pairs(tiny, c, a, b, share_prefix=share), sa / (sa + sb), rtol=1e-5)
    assert np.ptp(sa / (sa + sb)) > 1e-3  # the verdicts differ: the check above is not 0.5 == 0.5


def test_swapping_the_responses_gives_one_minus_p(tiny):
    c, a, b = _pairs(np.random.default_rng(2), 5)
    p, q = judge_pairs(tiny, c, a, b), judge_pairs(tiny, c, b, a)
    np.testing.assert_allclose(p + q, 1.0, atol=1e-6)
    assert np.abs(p - 0.5).max() > 1e-3


def test_a_pair_alone_equals_the_pair_in_a_padded_batch(tiny):
    """Alone, the pair fills a 2-row batch of its own length bucket; batched with longer pairs it is
    left-padded into a larger bucket among 8 rows. Neither changes its probabilities."""
    c, a, b = _pairs(np.random.default_rng(3), 1, words=4)
    lc, la, lb = _pairs(np.random.default_rng(4), 5, words=30)
    for share in (True, False):
        alone = judge_pairs_detailed(tiny, c, a, b, share_prefix=share).probs
        batched = judge_pairs_detailed(tiny, lc[:2] + c + lc[2:], la[:2] + a + la[2:], lb[:2] + b + lb[2:],
                                       batch_size=8, share_prefix=share).probs
        np.testing.assert_allclose(batched[2], alone[0], rtol=1e-5, atol=1e-7)


def test_the_shared_prefix_cache_gives_the_full_forwards_numbers(tiny_tokenizer):
    """On a sliding-window model (windows shorter than the prompts), and with a template that shows
    the responses before the context (so the orders share only the system message and a header)."""
    cfg = ModelConfig(model_type="mistral", vocab_size=1000, hidden_size=32, intermediate_size=48, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, sliding_windows=(7, 7), pad_token_id=0)
    model = sj_jax.init_model(cfg, seed=3, tokenizer=tiny_tokenizer)
    model.params = {**model.params, "lm_head": {"kernel": model.params["lm_head"]["kernel"] * 40}}
    late = JudgeTemplate("Judge.", "A: {response_a}\nB: {response_b}\nTask: {context}", "Better: Response")
    c, a, b = _pairs(np.random.default_rng(10), 5)
    for template in (DEFAULT_TEMPLATE, late):
        shared = judge_pairs_detailed(model, c, a, b, template=template).probs
        plain = judge_pairs_detailed(model, c, a, b, template=template, share_prefix=False).probs
        np.testing.assert_allclose(shared, plain, rtol=1e-5)


def test_the_header_every_pair_of_a_batch_starts_with_runs_once_and_gives_the_full_forwards_numbers(
        tiny, monkeypatch):
    """The template's system message and instructions begin every prompt of a batch: they run once,
    as a cache level of their own under each pair's prefix (a batch of one pair has none)."""
    # A model of its own shape: its programs are not `tiny`'s, which other tests count compiles of.
    model = sj_jax.init_model(dataclasses.replace(tiny.config, intermediate_size=80), seed=6,
                              tokenizer=tiny.tokenizer)
    model.params = {**model.params, "lm_head": {"kernel": model.params["lm_head"]["kernel"] * 40}}
    shapes = []
    real = scoring.compiled_shared_verdict_logprobs
    monkeypatch.setattr(scoring, "compiled_shared_verdict_logprobs",
                        lambda cfg, mesh, shape: shapes.append(shape) or real(cfg, mesh, shape))
    c, a, b = _pairs(np.random.default_rng(11), 5)
    ref = _by_hand(model, DEFAULT_TEMPLATE, [t for i in range(5) for t in ((c[i], a[i], b[i]), (c[i], b[i], a[i]))])
    tok = model.tokenizer
    ids = [tok(render_prompt(tok, DEFAULT_TEMPLATE, c[i], a[i], b[i]), add_special_tokens=False)["input_ids"]
           for i in range(5)]
    header = next(n for n in range(min(map(len, ids))) if len({tuple(x[:n + 1]) for x in ids}) > 1)
    assert header >= scoring.MIN_HEADER_TOKENS
    np.testing.assert_allclose(judge_pairs_detailed(model, c, a, b).probs[:, 0], ref.reshape(5, 2, 2), rtol=1e-5)
    assert [s[1] for s in shapes] == [scoring.bucket(header, fine=True)]  # one batch, its header apart
    shapes.clear()
    np.testing.assert_allclose(judge_pairs_detailed(model, c, a, b, batch_size=2).probs[:, 0],
                               ref.reshape(5, 2, 2), rtol=1e-5)
    assert len(shapes) == 5 and all(s[1] == 0 for s in shapes)  # a pair a batch: nothing to share across pairs


def test_a_second_call_in_the_same_buckets_does_not_recompile(tiny):
    events = []

    def listen(name, secs, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for share in (True, False):
            judge_pairs(tiny, *_pairs(np.random.default_rng(6), 3), share_prefix=share)
            before = len(events)
            judge_pairs(tiny, *_pairs(np.random.default_rng(7), 3), share_prefix=share)  # other texts, same buckets
            assert len(events) == before, "a second call in the same buckets compiled again"
        judge_pairs(tiny, *_pairs(np.random.default_rng(7), 9))  # more rows: a new bucket, a compile
        assert len(events) > before  # so the listener does hear compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_majority_vote_and_its_tie_break():
    p = np.array([
        [0.6, 0.55, 0.01],    # 2 votes for the first outweigh a confident vote for the second
        [0.3, 0.4, 0.9],      # 2 votes for the second
        [0.52, 0.1, 0.5],     # 1 - 1 with one abstention: the mean over all (0.373) breaks the tie
        [0.5, 0.5, 0.5],      # nobody prefers anything
    ])
    got = majority_probability(p)
    np.testing.assert_allclose(got, [0.575, 0.35, (0.52 + 0.1 + 0.5) / 3, 0.5])
    np.testing.assert_allclose(majority_probability(1 - p), 1 - got)  # swap symmetry
    np.testing.assert_allclose(majority_probability(p[:, :1]), p[:, 0])  # one principle: itself


def test_principles_vote_and_a_tie_is_broken_by_the_mean(tiny):
    """Each principle is asked with its own system message; then a majority vote. A 1-1 split between
    two principles is found among fixed system messages, so the tie-break path runs for certain."""
    n = 24
    c, a, b = _pairs(np.random.default_rng(8), n)
    principles = [(f"p{i}", s) for i, s in enumerate(SYSTEMS)]
    d = judge_pairs_detailed(tiny, c, a, b, principles=principles, batch_size=64)
    assert d.principles == tuple(f"p{i}" for i in range(len(SYSTEMS)))
    per = d.prob_first_by_principle
    for k in (0, 5):  # a principle alone is the template with that system message
        np.testing.assert_allclose(judge_pairs(tiny, c, a, b, batch_size=64, template=JudgeTemplate(
            SYSTEMS[k], DEFAULT_TEMPLATE.user, DEFAULT_TEMPLATE.assistant_prefix)), per[:, k], rtol=1e-5)
    np.testing.assert_allclose(d.prob_first, majority_probability(per))
    split = [(i, j, k) for i in range(n) for j in range(len(SYSTEMS)) for k in range(len(SYSTEMS))
             if per[i, j] > 0.5 > per[i, k]]
    assert split, "no two principles disagree on any pair"
    i, j, k = split[0]
    tie = judge_pairs(tiny, c[i:i + 1], a[i:i + 1], b[i:i + 1], principles=[principles[j], principles[k]])
    np.testing.assert_allclose(tie, [(per[i, j] + per[i, k]) / 2], rtol=1e-5)
    three = judge_pairs(tiny, c[i:i + 1], a[i:i + 1], b[i:i + 1],
                        principles=[principles[j], principles[k], (f"p{j}again", SYSTEMS[j])])
    np.testing.assert_allclose(three, [per[i, j]], rtol=1e-5)  # 2 - 1: the mean of the winning side


def test_bad_inputs_name_what_is_wrong(tiny):
    c, a, b = _pairs(np.random.default_rng(9), 3)
    with pytest.raises(ValueError, match=r"responses_b\[1\]: empty text"):
        judge_pairs(tiny, c, a, [b[0], "  ", b[2]])
    with pytest.raises(ValueError, match=r"contexts\[2\]: empty text"):
        judge_pairs(tiny, [c[0], c[1], ""], a, b)
    with pytest.raises(ValueError, match="responses_a: 2 items, but contexts has 3"):
        judge_pairs(tiny, c, a[:2], b)
    with pytest.raises(ConfigError, match=r"principles\[1\]: expected \(name, system message\)"):
        judge_pairs(tiny, c, a, b, principles=[("x", "y"), "z"])
    with pytest.raises(ConfigError, match="'x' appears twice"):
        judge_pairs(tiny, c, a, b, principles=[("x", "y"), ("x", "z")])
    with pytest.raises(ValueError, match="pair 1: its judge prompt has .* tokens, more than"):
        judge_pairs(tiny, c, [a[0], "word " * 1000, a[2]], b)
    no_tok = sj_jax.Model(tiny.config, tiny.params, None, tiny.mesh)
    with pytest.raises(ValueError, match="needs a model loaded with a tokenizer"):
        judge_pairs(no_tok, c, a, b)


# --------------------------------------------------------------------------- SmolLM2 vs PyTorch


SHORT = [
    ("What is 17 + 25?", "17 + 25 = 42.", "17 + 25 = 43, because seven and five make thirteen."),
    ("Reverse the list [3, 1, 2].", "[2, 1, 3]", "The reversed list is [1, 2, 3]."),
    ("Name a primary colour.", "Red.", "Green is a primary colour of paint, so green."),
]


@pytest.mark.slow
def test_smollm2_equals_pytorch_by_hand(smollm2, smollm2_torch):
    """Rendered with the tokenizer, a PyTorch forward, softmax over the full vocabulary at the last
    position, p(" A") and p(" B") by token id, both orders averaged: the same numbers."""
    import torch

    tok = smollm2.tokenizer
    c, a, b = (list(x) for x in zip(*SHORT))
    d = judge_pairs_detailed(smollm2, c, a, b)
    va, vb = tok(" A", add_special_tokens=False)["input_ids"][0], tok(" B", add_special_tokens=False)["input_ids"][0]
    ref = np.zeros((len(c), 2, 2))
    for i in range(len(c)):
        for order, (x, y) in enumerate(((a[i], b[i]), (b[i], a[i]))):
            user = DEFAULT_TEMPLATE.user.format(context=c[i], response_a=x, response_b=y)
            text = tok.apply_chat_template([{"role": "system", "content": DEFAULT_TEMPLATE.system},
                                            {"role": "user", "content": user}], tokenize=False,
                                           add_generation_prompt=True) + DEFAULT_TEMPLATE.assistant_prefix
            ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
            with torch.no_grad():
                probs = torch.softmax(smollm2_torch(input_ids=ids).logits[0, -1].double(), dim=-1)
            ref[i, order] = [probs[va].item(), probs[vb].item()]
    np.testing.assert_allclose(d.probs[:, 0], ref, atol=1e-5)
    sa, sb = (ref[:, 0, 0] + ref[:, 1, 1]) / 2, (ref[:, 0, 1] + ref[:, 1, 0]) / 2
    np.testing.assert_allclose(d.prob_first, sa / (sa + sb), atol=1e-5)
    np.testing.assert_allclose(d.prob_first + judge_pairs(smollm2, c, b, a), 1.0, atol=1e-6)


@pytest.mark.slow
def test_smollm2_pair_alone_equals_the_pair_among_longer_ones(smollm2):
    """Alone, the pair runs in a 1-row batch of its own buckets; among the others it is left-padded
    to the longest. Real activations, float32: the probabilities move by rounding only."""
    c, a, b = (list(x) for x in zip(*SHORT))
    batched = judge_pairs_detailed(smollm2, c, a, b).probs
    alone = judge_pairs_detailed(smollm2, c[2:], a[2:], b[2:]).probs
    np.testing.assert_allclose(alone[0], batched[2], atol=2e-6)


@pytest.mark.slow
def test_smollm2_verdicts_are_checked_in_context(smollm2):
    assert verdict_token_ids(smollm2.tokenizer, DEFAULT_TEMPLATE) == tuple(
        smollm2.tokenizer(v, add_special_tokens=False)["input_ids"][0] for v in (" A", " B"))
    two = JudgeTemplate(DEFAULT_TEMPLATE.system, DEFAULT_TEMPLATE.user, DEFAULT_TEMPLATE.assistant_prefix,
                        verdict_b=" Bxq")
    with pytest.raises(VerdictTokenError, match=r"judge.verdict_b: ' Bxq' is not exactly one token"):
        verdict_token_ids(smollm2.tokenizer, two)
    spaced = JudgeTemplate(DEFAULT_TEMPLATE.system, DEFAULT_TEMPLATE.user, "The better one is Response ", "A", "B")
    with pytest.raises(VerdictTokenError, match="judge.verdict_a: 'A'"):
        verdict_token_ids(smollm2.tokenizer, spaced)
