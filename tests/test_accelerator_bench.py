"""`python -m benchmarks.accelerator --tiny`: the accelerator benchmark's every number, on any machine."""

import json
import math

import pytest

from benchmarks.accelerator import main


@pytest.mark.slow
def test_the_accelerator_benchmark_runs_a_tiny_model_here_and_reports_every_figure(tmp_path, capsys):
    # the decode step is a difference of two medians (full run minus prefill-only): the tiny spec decodes
    # 512 tokens so that the difference stands well above the noise of a loaded machine
    out = main(["--tiny", "--rounds", "3", "--json", str(tmp_path / "acc.json")])
    printed = capsys.readouterr().out
    assert printed.startswith("device: ")  # the device first
    assert json.loads((tmp_path / "acc.json").read_text()) == json.loads(json.dumps(out))
    for part, keys in (("dpo", ("step_s", "compile_s", "mfu", "estimated_bytes")), ("sft", ("step_s", "mfu")),
                       ("sampling", ("tokens_per_s", "decode_step_s", "bound_step_s", "first_call_compile_s")),
                       ("peer", ("dpo_step_s", "sample_tokens_per_s", "dpo_ratio", "sample_ratio"))):
        for k in keys:
            v = out[part][k]
            assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (part, k, v)
    assert 0 < out["dpo"]["mfu"] < 1 and 0 < out["sft"]["mfu"] < 1
    assert "MFU" in printed and "bound" in printed and "PyTorch" in printed
