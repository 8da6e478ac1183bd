"""The `sj-jax` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sj_jax.cli
from sj_jax.cli import main


def test_bad_config_key_is_named_and_exits_2(capsys):
    assert main(["generate", "dtyp=bfloat16"]) == 2
    assert "dtyp: unknown key; known: dtype, cache_dir, matmul_precision, distributed, model" in capsys.readouterr().err


def test_bad_config_file_is_named(tmp_path, capsys):
    path = tmp_path / "gen.yaml"
    path.write_text("max_new_tokens: many\n")
    assert main(["generate", "--config", str(path)]) == 2
    assert f"{path}: max_new_tokens: expected an integer, got 'many'" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_greedy_equals_torch_generate(smollm2, smollm2_torch_greedy, tmp_path, capsys):
    """The CLI's greedy chat completions are token for token PyTorch's greedy `generate`."""
    from conftest import GREEDY_NEW_TOKENS, GREEDY_QUESTIONS

    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in GREEDY_QUESTIONS))
    assert main(["generate", "--json", "--prompts-file", str(src), "--max-new-tokens", str(GREEDY_NEW_TOKENS)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["prompt"] for r in rows] == GREEDY_QUESTIONS
    tok = smollm2.tokenizer
    for r, ref in zip(rows, smollm2_torch_greedy):
        sample = r["samples"][0]
        assert sample["token_ids"] == ref
        assert sample["text"] == tok.decode(ref, skip_special_tokens=True)
        assert sample["finished"] == (ref[-1] == 2)


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


def _front_door_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, the start of the one line the command must end in)."""
    empty = tmp / "empty.jsonl"
    empty.write_text("")
    no_weights = tmp / "no_weights"
    no_weights.mkdir()
    config_only = tmp / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_text(json.dumps({"model_type": "llama"}))
    not_gguf = tmp / "notes.gguf"
    not_gguf.write_text("these are notes, not weights\n" * 10)
    text = tmp / "notes.txt"
    text.write_text("plain text\n")
    return {
        "no arguments": ([], "sj-jax: error: the following arguments are required: command (see sj-jax --help)"),
        "unknown subcommand": (["frobnicate"], "sj-jax: error: argument command: invalid choice: 'frobnicate'"),
        "unknown data subcommand": (["data", "shred"], "sj-jax data: error: argument data_command: invalid choice"),
        "missing config file": (["generate", "--config", str(tmp / "nope.yaml")],
                                f"sj-jax: error: {tmp / 'nope.yaml'}: config file not found"),
        "missing train config": (["dpo", "--config", str(tmp / "nope.yaml")],
                                 f"sj-jax: error: {tmp / 'nope.yaml'}: config file not found"),
        "empty prompts file": (["generate", "--prompts-file", str(empty)],
                               f"sj-jax: error: {empty}: the file holds no rows (expected one JSON object per line)"),
        "folder without weights": (["generate", "--model", str(no_weights)],
                                   f"sj-jax: error: {no_weights / 'config.json'}: missing"),
        "config but no weights": (["info", str(config_only)], f"sj-jax: error: {config_only}: neither model.safetensors"),
        "not a GGUF file": (["generate", "--model", str(not_gguf)],
                            f"sj-jax: error: {not_gguf}: not a GGUF file (it does not start with the bytes 'GGUF')"),
        "a file of another kind": (["info", str(text)],
                                   f"sj-jax: error: {text}: expected a Hugging Face model folder or a .gguf file"),
        "unknown model name": (["generate", "--model", "smollm9-1t"],
                               "sj-jax: error: smollm9-1t: no such file or folder, and not a known model name"),
        "unknown config key": (["generate", "max_new_tokns=3"], "sj-jax: error: max_new_tokns: unknown key"),
        **_unusable_folder_cases(tmp, text),
    }


def _unusable_folder_cases(tmp: Path, text: Path) -> dict[str, tuple[list[str], str]]:
    """Output folders that cannot be made or written: the demo names its run folder (its own check),
    and any other command names the path from the OSError (the command line's last resort)."""
    cases = {
        "demo run folder is a file": (["demo", "--out", str(text)],
                                      f"sj-jax: error: out: {text}: is a file, not a folder"),
        "demo run folder under a file": (["demo", "--out", str(text / "run")],
                                         f"sj-jax: error: out: {text / 'run'}: cannot make or read the run folder"),
        "data output under a file": (["data", "build", f"output_dir={text / 'data'}"],
                                     f"sj-jax: error: {text / 'data'}: Not a directory"),
        "train output under a file": (["dpo", f"output_dir={text / 'dpo'}"],
                                      f"sj-jax: error: {text / 'dpo'}: Not a directory"),
    }
    if Path("/proc/self").exists():  # the report's own example: nothing can be made in /proc
        cases["demo run folder in /proc"] = (["demo", "--out", "/proc/forbidden"],
                                             "sj-jax: error: out: /proc/forbidden: cannot make or read the run folder")
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root may write anywhere
        locked = tmp / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        cases["demo run folder without permission"] = (
            ["demo", "--out", str(locked / "run")],
            f"sj-jax: error: out: {locked / 'run'}: cannot make or read the run folder (Permission denied)")
    return cases


def test_an_os_error_on_a_path_is_one_line_naming_it_and_others_are_not_hidden(tmp_path, monkeypatch, capsys):
    def unwritable(cfg, **_):
        raise PermissionError(13, "Permission denied", str(tmp_path / "run" / "report.md"))

    monkeypatch.setattr(sj_jax.cli, "demo", unwritable)
    assert main(["demo", "--out", str(tmp_path / "run")]) == 2  # cache_dir auto: the session's caches
    assert capsys.readouterr().err == f"sj-jax: error: {tmp_path / 'run' / 'report.md'}: Permission denied\n"

    def no_path(cfg, **_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sj_jax.cli, "demo", no_path)
    with pytest.raises(OSError, match="No space left"):  # no path to name: not a bad input, a traceback
        main(["demo", "--out", str(tmp_path / "run")])


def test_front_door_errors_are_one_line(tmp_path):
    """Each mistake a new user makes at the command line ends in exit code 2 and one line on stderr
    (run as the real command, in its own process, so nothing a library prints at import hides)."""
    cases = _front_door_cases(tmp_path)
    env = {**os.environ, "SJ_JAX_CACHE_DIR": "off"}
    procs = {name: subprocess.Popen([sys.executable, "-m", "sj_jax.cli", *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for name, (args, _) in cases.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, (name, proc.returncode, err[-2000:])
        assert out == "", (name, out)
        assert len(lines) == 1, (name, lines)
        assert lines[0].startswith(cases[name][1]), (name, lines[0])
