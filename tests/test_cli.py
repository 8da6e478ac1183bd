"""The `sj-jax` command line."""

from __future__ import annotations

import json

import pytest

from sj_jax.cli import main


def test_bad_config_key_is_named_and_exits_2(capsys):
    assert main(["generate", "dtyp=bfloat16"]) == 2
    assert "dtyp: unknown key; known: model, dtype" in capsys.readouterr().err


def test_bad_config_file_is_named(tmp_path, capsys):
    path = tmp_path / "gen.yaml"
    path.write_text("max_new_tokens: many\n")
    assert main(["generate", "--config", str(path)]) == 2
    assert f"{path}: max_new_tokens: expected an integer, got 'many'" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_greedy_equals_torch_generate(smollm2_torch, smollm2, capsys):
    """The CLI's greedy chat completion is token for token PyTorch's greedy `generate`."""
    import torch

    prompt = "List three primary colors."
    assert main(["generate", "--json", "--prompt", prompt, "--max-new-tokens", "24"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"][0]
    tok = smollm2.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = smollm2_torch.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=[2],
                                     pad_token_id=2)
    expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert result["text"] == expected
    assert result["token_ids"] == out[0, ids.shape[1]:].tolist()
    assert result["finished"] == (out[0, -1].item() == 2)


def test_malformed_prompts_file_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Sort 3, 1, 2."}\n{"prompt": "ok"\n')
    assert main(["generate", "--prompts-file", str(path)]) == 2
    assert f"{path}:2: not valid JSON" in capsys.readouterr().err
    path.write_text('{"prompt": "fine"}\n\n{"text": "no prompt field"}\n')
    assert main(["generate", "--prompts-file", str(path)]) == 2
    assert f'{path}:3: expected an object with a non-empty string field "prompt"' in capsys.readouterr().err


@pytest.mark.slow
def test_prompts_file_to_out_file_with_samples(smollm2, tmp_path):
    prompts = ["Name a color.", "Count to three.", "Say hello in French."]
    src, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    assert main(["generate", "--prompts-file", str(src), "--out", str(out), "--max-new-tokens", "8",
                 "temperature=1.0", "top_p=0.9", "num_samples=2", "batch_size=4"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    for r in rows:
        assert len(r["samples"]) == 2
        for s in r["samples"]:
            assert 1 <= len(s["token_ids"]) <= 8 and len(s["logprobs"]) == len(s["token_ids"])
            assert all(lp <= 0.0 for lp in s["logprobs"])
            assert s["text"] == smollm2.tokenizer.decode(s["token_ids"], skip_special_tokens=True)
