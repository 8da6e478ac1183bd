"""The JSFT mixture: both orders with the right labels, principles, rationales, the mixing ratio,
and loss masks (decoded) of the rows it writes, through the trainer's own example builder."""

from collections import Counter

import numpy as np
import pytest

from sj_jax.core.errors import ConfigError
from sj_jax.data.examples import DataReport, sft_example
from sj_jax.data.jsft import JSFTConfig, build_jsft, judgment_rows, mix
from sj_jax.data.judgment import judgment_text
from sj_jax.judge.generative_template import GenerativeTemplate, render_prompt
from sj_jax.judge.template import DEFAULT_TEMPLATE
from sj_jax.judge.verdict import parse_verdict
from sj_jax.tasks.suite import TaskSuiteConfig, build_split, sft_row, split_pairs


def task_rows(n=6, seed=0):
    sp = build_split(TaskSuiteConfig(train=n, validation=1, test=1), "train", seed)
    return [sft_row(r) for r in sp.rows], split_pairs(sp, ("off_by_one", "truncated", "format_broken"), 2, seed,
                                                      "train")


def test_every_pair_appears_in_both_orders_with_the_right_label():
    _, pairs = task_rows()
    rows = judgment_rows(pairs)
    assert len(rows) == 2 * len(pairs)
    by_pair = {}
    for r in rows:
        by_pair.setdefault(r["pair_id"], []).append(r["judgment"])
    for pair in pairs:
        js = by_pair[pair["id"]]
        assert sorted(j["label"] for j in js) == ["A", "B"]
        for j in js:
            better = j["response_a"] if j["label"] == "A" else j["response_b"]
            worse = j["response_b"] if j["label"] == "A" else j["response_a"]
            assert (better, worse) == (pair["chosen"], pair["rejected"])
            assert j["context"] == pair["prompt"]
    assert Counter(j["judgment"]["label"] for j in rows) == {"A": len(pairs), "B": len(pairs)}


def test_principles_follow_per_principle_preferences_and_count_ties():
    pair = {"id": "p", "prompt": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
                                  {"role": "user", "content": "How are you?"}],
            "chosen": "Fine, thanks.", "rejected": "No.", "by_principle": {"helpfulness": 1, "honesty": -1}}
    counts = Counter()
    rows = judgment_rows([pair], ("helpfulness", "honesty", "truthfulness"), counts=counts)
    assert counts["principle_tie:truthfulness"] == 1 and len(rows) == 4
    for r in rows:
        j = r["judgment"]
        better = j["response_a"] if j["label"] == "A" else j["response_b"]
        assert better == ("Fine, thanks." if j["principle"] == "helpfulness" else "No.")
        assert j["context"] == "User: Hi?\n\nAssistant: Hello.\n\nUser: How are you?"
    # Without per-principle labels every principle takes the pair's own label.
    plain = judgment_rows([{k: v for k, v in pair.items() if k != "by_principle"}], ("helpfulness", "honesty"))
    assert len(plain) == 4 and all((r["judgment"]["label"] == "A") == (r["judgment"]["response_a"] == "Fine, thanks.")
                                   for r in plain)


def test_rationale_letters_follow_the_order():
    _, pairs = task_rows(2)
    rows = judgment_rows(pairs[:1], rationale=True)
    for r in rows:
        j = r["judgment"]
        assert j["rationale"].startswith(f"Response {j['label']} is correct:")
        assert f"Response {'B' if j['label'] == 'A' else 'A'} " in j["rationale"]
        assert "{" not in j["rationale"]


def test_mixing_ratio_keeps_whole_pairs_and_the_shuffle_is_seeded():
    sft, pairs = task_rows(6)
    judg = judgment_rows(pairs)
    assert len(sft) == 48 and len(judg) == 2 * len(pairs)
    counts = Counter()
    rows = mix(sft, judg, 0.5, seed=3, counts=counts)
    kept = [r for r in rows if "judgment" in r]
    assert counts["judgment_rows"] == len(kept) and abs(len(kept) - 24) <= 2 and counts["instruction_rows"] == 48
    per_pair = Counter(r["pair_id"] for r in kept)
    assert set(per_pair.values()) == {2}  # both orders of every kept pair
    rows = mix(sft, judg, 10.0, seed=3, counts=counts)
    assert counts["judgment_rows"] == len(judg) and counts["instruction_rows"] == round(len(judg) / 10)
    a, b, c = (mix(sft, judg, None, seed=s) for s in (1, 1, 2))
    assert a == b and a != c and len(a) == len(sft) + len(judg)
    assert sorted(map(str, a)) == sorted(map(str, sft + judg))


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="jsft.principles: unknown principle 'kindness'"):
        JSFTConfig(principles=("kindness",))
    with pytest.raises(ConfigError, match="jsft.judgment_ratio"):
        JSFTConfig(judgment_ratio=0)


def masked_text(tok, ex):
    return tok.decode(np.asarray(ex.input_ids)[np.asarray(ex.loss_mask) == 1])


@pytest.mark.parametrize("rationale", [False, True])
def test_masks_cover_exactly_the_answer_or_the_verdict(smollm2_tokenizer, rationale):
    tok = smollm2_tokenizer
    sft, pairs = task_rows(1)
    rows, _ = build_jsft(sft, pairs, JSFTConfig(rationale=rationale, principles=("helpfulness",)), seed=0)
    judge = lambda t, row, w: judgment_text(t, DEFAULT_TEMPLATE, row, w)  # noqa: E731
    report = DataReport()
    seen = Counter()
    for i, row in enumerate(rows):
        ex = sft_example(tok, row, f"jsft:{i + 1}", 1024, report, judgment=judge)
        if "judgment" in row:
            j = row["judgment"]
            want = f" {j['label']}" + (f"\n{j['rationale']}<|im_end|>" if rationale else "")
            assert masked_text(tok, ex) == want
            # The verdict is the last trained token span and the prompt the judge scores precedes it.
            assert tok.decode(ex.input_ids).endswith(DEFAULT_TEMPLATE.assistant_prefix + want)
            seen["judgment"] += 1
        else:
            assert masked_text(tok, ex) == row["response"] + "<|im_end|>"
            seen["instruction"] += 1
    assert seen["instruction"] == len(sft) and seen["judgment"] == 2 * len(pairs)
    assert report.truncated_context == 0 and report.dropped_too_long == 0


def test_over_long_judgment_loses_context_from_the_left_never_the_verdict(smollm2_tokenizer):
    tok = smollm2_tokenizer
    _, pairs = task_rows(1)
    long = dict(pairs[0], prompt="Background. " * 200 + pairs[0]["prompt"])
    judge = lambda t, row, w: judgment_text(t, DEFAULT_TEMPLATE, row, w)  # noqa: E731
    report = DataReport()
    for i, row in enumerate(judgment_rows([long])):
        ex = sft_example(tok, row, f"jsft:{i + 1}", 256, report, judgment=judge)
        assert len(ex.input_ids) == 256 and masked_text(tok, ex) == f" {row['judgment']['label']}"
    assert report.truncated_context == 2 and report.dropped_too_long == 0
    # The trained part alone cannot fit: dropped and counted, not cut.
    tiny = DataReport()
    assert sft_example(tok, judgment_rows([long])[0], "jsft:1", 1, tiny, judgment=judge) is None
    assert tiny.dropped_too_long == 1


@pytest.mark.parametrize("prefix", ["\n\nFinal verdict: [[", ""])
def test_generative_rows_work_the_problem_then_give_the_verdict_the_judge_reads(smollm2_tokenizer, prefix):
    """Each pair's two generative rows train exactly the judgment after the prompt the generative
    judge is given (same text), the worked answer before the verdict, and the verdict the parser
    reads is the pair's label in either order."""
    tok = smollm2_tokenizer
    template = GenerativeTemplate(verdict_prefix=prefix)
    sft, pairs = task_rows(1)
    bare = dict(pairs[0], id="no-explanation")
    del bare["explanation"]
    rows, counts = build_jsft(sft, pairs + [bare], JSFTConfig(generative_rows=True), seed=0, generative=template)
    gen = [r for r in rows if "messages" in r]
    assert counts["generative_judgment"] == len(gen) == 2 * len(pairs) and counts["generative_no_explanation"] == 1
    assert sum("judgment" in r for r in rows) == 2 * len(pairs) + 2  # the bare pair keeps its one-pass rows
    by_id = {p["id"]: p for p in pairs}
    report = DataReport()
    for i, row in enumerate(gen):
        pair = by_id[row["pair_id"]]
        label = "A" if row["id"].endswith("-ab-generative") else "B"
        a, b = (pair["chosen"], pair["rejected"]) if label == "A" else (pair["rejected"], pair["chosen"])
        ex = sft_example(tok, row, f"jsft:{i + 1}", 1024, report)
        trained = masked_text(tok, ex)
        judgment = trained.removesuffix("<|im_end|>")
        assert trained.endswith("<|im_end|>") and judgment.startswith(pair["explanation"])
        assert f"Response A says {a}. Response B says {b}. So Response {label} is correct." in judgment
        assert judgment.endswith(template.verdict_text(label))
        assert parse_verdict(judgment, template.verdict_a, template.verdict_b).label == label
        prompt = render_prompt(tok, template, pair["prompt"], a, b)
        assert tok.decode(ex.input_ids).startswith(prompt + trained)  # then the turn's newline, untrained
    assert GenerativeTemplate().verdict_text("B") == "\n\nFinal verdict: [[B]]"
    assert GenerativeTemplate(verdict_prefix="", max_evaluation_tokens=8).verdict_text("A") == " [[A]]"
