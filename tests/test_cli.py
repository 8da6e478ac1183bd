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
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tok = smollm2.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = smollm2_torch.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=[2],
                                     pad_token_id=2)
    expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert result["completion"] == expected
    assert result["new_tokens"] == out.shape[1] - ids.shape[1]
