"""`sj-jax data build` end to end: files, summary counts, determinism, truncation reporting, bad
input and config errors; the trainer reads what it writes; own samples on SmolLM2; eval-tasks."""

import json
from pathlib import Path

import pytest

from sj_jax.cli import main
from sj_jax.core.config import from_dict, to_dict
from sj_jax.tasks.families import FAMILIES, check
from sj_jax.tasks.suite import SPLITS

LLMBAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "llmbar_natural.jsonl"
SMALL = ["tasks.train=6", "tasks.validation=2", "tasks.test=3", "pairs.per_problem=2"]


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def hh_file(tmp_path):
    path = tmp_path / "hh.jsonl"
    rows = [{"chosen": "\n\nHuman: Name a fruit.\n\nAssistant: An apple.",
             "rejected": "\n\nHuman: Name a fruit.\n\nAssistant: A car."},
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Say bye.\n\nAssistant: Bye!",
             "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Say bye.\n\nAssistant: No."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build(out, *extra):
    assert main(["data", "build", "--config", "configs/data.yaml", f"output_dir={out}", *SMALL, *extra]) == 0
    return json.loads((Path(out) / "summary.json").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory, smollm2_path):
    tmp = tmp_path_factory.mktemp("build")
    sources = [{"format": "hh_rlhf", "path": str(hh_file(tmp)), "use": "both"}]
    if LLMBAR.exists():
        sources.append({"format": "rewardbench", "path": str(LLMBAR), "use": "eval", "name": "llmbar"})
    out = tmp / "data"
    return out, build(out, f"sources={json.dumps(sources)}")


def test_build_writes_every_file_with_the_counts_the_summary_gives(built):
    out, summary = built
    n_fam = len(FAMILIES)
    for s, n in zip(SPLITS, (6, 2, 3)):
        prompts = read(out / f"prompts_{s}.jsonl")
        assert len(prompts) == n * n_fam
        assert {t: sum(v.values()) for t, v in summary["problems"][s].items()} == {f: n for f in FAMILIES}
        pairs = read(out / f"pairs_{s}.jsonl")
        assert summary["files"][f"pairs_{s}"]["rows"] == len(pairs)
        assert sum(sum(v.values()) for v in summary["pairs"][s].values()) == len(pairs)
        for p in pairs:
            if p["subset"] in FAMILIES:
                assert not check(p["task"], p["chosen"], p["rejected"]) and check(p["task"], p["chosen"], p["chosen"])
    sft = read(out / "sft_train.jsonl")
    pairs = read(out / "pairs_train.jsonl")
    assert len(sft) == 6 * n_fam + 2  # the tasks' answers and the HH chosen dialogues
    assert sum(p["subset"] == "hh-rlhf" for p in pairs) == 2
    jsft = read(out / "jsft_train.jsonl")
    assert len(jsft) == len(sft) + 2 * len(pairs)
    assert summary["jsft"]["judgment_rows"] == 2 * len(pairs)
    md = (out / "summary.md").read_text()
    assert "| arithmetic | 6 | 2 | 3 |" in md and "## Length histograms" in md
    if LLMBAR.exists():
        assert len(read(out / "eval_llmbar.jsonl")) == 100
        assert summary["sources"][1]["kept"] == 100


def test_build_is_deterministic(built, tmp_path):
    out, summary = built
    again = tmp_path / "again"
    build(again, f"sources={json.dumps(summary['config']['sources'])}")
    for f in sorted(out.glob("*.jsonl")):
        assert (again / f.name).read_bytes() == f.read_bytes(), f.name


def test_over_long_examples_are_counted_in_the_summary(smollm2_path, tmp_path):
    summary = build(tmp_path, "max_length=63", "max_prompt_length=40", "max_response_length=4",
                    "tasks.families=[extract_field, sort_numbers]")
    sft = summary["files"]["sft_train"]
    assert sft["tokens"]["max"] > 63
    assert sft["truncation"]["truncated_context"] + sft["truncation"]["dropped_too_long"] == sum(
        n for k, n in sft["tokens"]["histogram"].items() if k in ("64-127", "128-255"))
    pairs = summary["files"]["pairs_train"]["truncation"]
    assert pairs["truncated_context"] > 0 and pairs["truncated_response"] > 0


def test_the_trainer_reads_the_built_files(built, smollm2_tokenizer):
    from sj_jax.train.config import TrainConfig
    from sj_jax.train.trainer import load_data

    out, _ = built
    for kind, name in (("sft", "sft_train"), ("jsft", "jsft_train"), ("dpo", "pairs_train")):
        cfg = from_dict(TrainConfig, {"data": {"train_file": str(out / f"{name}.jsonl")}})
        examples, report = load_data(kind, cfg, smollm2_tokenizer)
        assert len(examples) == len(read(out / f"{name}.jsonl")) == report.examples


@pytest.mark.parametrize("override, match", [
    ("tasks.tset=3", "tasks.tset: unknown key"),
    ("pairs.corruptions=[off_by_two]", "pairs.corruptions: unknown corruption 'off_by_two'"),
    ("jsft.principles=[kindness]", "jsft.principles: unknown principle 'kindness'"),
    ("sources=[{format: alpacca, path: x.jsonl}]", "sources[0].format: unknown data format 'alpacca'"),
    ("sources=[{format: alpaca, path: x.jsonl, use: pairs}]", "sources[0].use: 'alpaca' has no pairs"),
    ("sources=[{format: alpaca, path: nowhere.jsonl}]", "sources[0].path: nowhere.jsonl: no such file"),
    ("own_samples.pairing=mine", "own_samples.pairing: 'mine' is not one of ['answer', 'own']"),
    ("own_samples={pairing: own, samples: 1}", "own_samples.samples: pairing 'own' needs 2 or more"),
])
def test_bad_config_is_named(override, match, tmp_path, capsys):
    assert main(["data", "build", "--config", "configs/data.yaml", f"output_dir={tmp_path}", override]) == 2
    assert match in capsys.readouterr().err


def test_an_sft_format_source_gives_instruction_rows(tmp_path, smollm2_path):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Name a color.", "input": "", "output": "Blue."}], indent=1))
    summary = build(tmp_path / "out", f"sources=[{{format: alpaca, path: {alpaca}}}]", "tasks.families=[uppercase]")
    sft = read(tmp_path / "out" / "sft_train.jsonl")
    assert len(sft) == 7 and sft[-1]["messages"][-1]["content"] == "Blue."
    assert summary["sources"][0]["kept"] == 1


def test_bad_source_line_is_named_and_nothing_is_half_written(tmp_path, capsys, smollm2_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    out = tmp_path / "out"
    code = main(["data", "build", "--config", "configs/data.yaml", f"output_dir={out}", *SMALL,
                 f"sources=[{{format: alpaca, path: {bad}, use: sft}}]"])
    assert code == 2 and f"{bad}:2" in capsys.readouterr().err
    assert not list(out.glob("*.jsonl"))  # sources are read before anything is written


@pytest.mark.slow
def test_own_wrong_samples_make_checked_pairs(smollm2):
    from sj_jax.algorithms.own_samples import own_pairs
    from sj_jax.tasks.suite import TaskSuiteConfig, build_split

    rows = build_split(TaskSuiteConfig(families=("arithmetic", "repeat_word"), train=3), "train").rows
    # Batches of 4, 8 new tokens, temperature 1, top-p 0.9 and prompts in the 64-token bucket: the
    # sampler program of test_cli's prompts-file test, so the two compile SmolLM2's sampler once.
    pairs, stats = own_pairs(smollm2, rows, samples=2, per_problem=2, max_new_tokens=8, seed=0, batch_size=4)
    assert stats.samples == 12 == stats.correct + stats.wrong + stats.empty
    assert stats.pairs == len(pairs) <= stats.wrong - stats.duplicate
    assert stats.wrong > 0  # SmolLM2 never gives the bare answer to these (measured: 0 of 800)
    for p in pairs:
        assert p["rejected"].strip() and not check(p["task"], p["chosen"], p["rejected"])
        format_only = check(p["task"], p["chosen"], p["rejected"], strict=False)
        assert p["corruption"] == ("model_sample_format" if format_only else "model_sample")


def test_own_pairs_are_the_models_answers_labelled_by_the_checker_from_train_problems_only(tmp_path, smollm2_path,
                                                                                        monkeypatch):
    """pairing "own": a correct finished sample against a wrong one of the same train problem, in
    both orders in the JSFT mixture, beside the known-label pairs at `known_per_own`; no validation
    or test problem is ever sampled."""
    from conftest import scripted_generate

    import sj_jax.algorithms.own_samples as own_samples
    from sj_jax.data.build import DataBuildConfig
    from sj_jax.data.build import build as build_files
    from sj_jax.tasks.suite import TaskSuiteConfig, build_split

    tasks = TaskSuiteConfig(families=("arithmetic", "uppercase", "sort_numbers"), train=6, validation=3, test=3)
    every = [r for s in SPLITS for r in build_split(tasks, s, 0).rows]
    monkeypatch.setattr(own_samples, "generate", scripted_generate(every))
    cfg = from_dict(DataBuildConfig, {"output_dir": str(tmp_path), "model": str(smollm2_path), "tasks": to_dict(tasks),
                                      "own_samples": {"enabled": True, "pairing": "own", "problems": 18, "samples": 4,
                                                      "per_problem": 2, "known_per_own": 1.0}})
    sampled: list[dict] = []

    def sample_pairs(problems):
        sampled.extend(problems)
        pairs, stats = own_samples.own_pairs(None, problems, pairing="own", samples=4, per_problem=2)
        return pairs, stats.as_dict()

    summary = build_files(cfg, log=lambda m: None, own_pairs=sample_pairs)
    train = {r["prompt"] for r in read(tmp_path / "prompts_train.jsonl")}
    held_out = {r["prompt"] for s in ("validation", "test") for r in read(tmp_path / f"prompts_{s}.jsonl")}
    assert len(sampled) == 18 and {r["prompt"] for r in sampled} <= train and not train & held_out
    own = [p for p in read(tmp_path / "pairs_train.jsonl") if p.get("pairing") == "own"]
    # two rows in three are answered right and wrong (two distinct wrong texts: two pairs), the rest wrong only
    mixed = sum(every.index(r) % 3 != 0 for r in sampled)
    assert 0 < mixed < len(sampled) and summary["own_samples"]["mixed"] == mixed
    assert len(own) == summary["own_samples"]["pairs"] == 2 * mixed
    answer = {r["prompt"]: r["answer"] for r in every}
    for p in own:  # the labels are the checker's: the chosen sample right, the rejected one wrong
        assert p["prompt"] in train and p["prompt"] not in held_out
        assert check(p["task"], answer[p["prompt"]], p["chosen"])
        assert not check(p["task"], answer[p["prompt"]], p["rejected"]) and p["corruption"] == "model_sample"
    jsft = read(tmp_path / "jsft_train.jsonl")
    by_pair: dict[str, list[dict]] = {}
    for row in jsft:
        if "judgment" in row:
            by_pair.setdefault(row["pair_id"], []).append(row["judgment"])
    for p in own:  # both orders: the correct answer once as A, once as B
        seen = {(j["label"], j["response_a"] if j["label"] == "A" else j["response_b"]) for j in by_pair[p["id"]]}
        assert seen == {("A", p["chosen"]), ("B", p["chosen"])}
    counts = summary["jsft"]
    assert counts["own_judgment_rows"] == 2 * len(own) == counts["known_judgment_rows"]  # known_per_own: 1.0
    assert not {j["context"] for js in by_pair.values() for j in js} & held_out


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A random two-layer model with SmolLM2's tokenizer and chat template, as a Hugging Face folder:
    what eval-tasks reports does not depend on the model, and its programs compile in seconds, not
    the tens of seconds of SmolLM2's 30 unrolled sampler layers."""
    import sj_jax
    from conftest import tiny_chat_config

    cfg = tiny_chat_config(smollm2_tokenizer, tie_word_embeddings=True, max_position_embeddings=2048, bos_token_id=1,
                           eos_token_id=2)
    model = sj_jax.init_model(cfg, seed=0, tokenizer=smollm2_tokenizer)
    return sj_jax.save_hf(model, tmp_path_factory.mktemp("tiny_chat"))


@pytest.mark.slow
def test_eval_tasks_reports_what_the_checkers_say(built, tiny_chat_model, tmp_path, capsys):
    out, _ = built
    res = tmp_path / "eval.json"
    assert main(["eval-tasks", "--config", "configs/eval_tasks.yaml", f"model={tiny_chat_model}",
                 f"prompts_file={out / 'prompts_test.jsonl'}",
                 f"pairs_file={out / 'pairs_test.jsonl'}", "limit=1", "max_new_tokens=24", f"out={res}"]) == 0
    table = capsys.readouterr().out
    result = json.loads(res.read_text())
    rows = result["policy"]["rows"]
    assert len(rows) == len(FAMILIES) and set(result["policy"]["by_task"]) == set(FAMILIES) | {"all"}
    for r in rows:
        assert r["correct"] == check(r["task"], r["answer"], r["response"])
        assert r["answer_correct"] == check(r["task"], r["answer"], r["response"], strict=False)
    judge = result["judge"]
    assert judge["by_subset"]["all"]["n"] == len(judge["p_chosen"]) == len(FAMILIES)
    assert all(0 <= p <= 1 for p in judge["p_chosen"])
    assert "| arithmetic | 1 |" in table
