"""The stage markers the demo and the self-taught loop resume from."""

import json

import pytest

from sj_jax.loops.stages import STAGE_FILE, read_stage, run_stage


def test_a_finished_stage_is_not_run_again(tmp_path):
    calls = []
    started = []

    def fn():
        calls.append(1)
        (tmp_path / "s" / "out.txt").write_text("made")  # the folder exists when the stage starts
        return {"n": len(calls)}

    first = run_stage("one", tmp_path / "s", fn, on_start=lambda: started.append(1))
    assert first.ran and first.result == {"n": 1} and first.seconds >= 0
    again = run_stage("one", tmp_path / "s", fn, on_start=lambda: started.append(1))
    assert not again.ran and again.result == {"n": 1} and again.seconds == first.seconds
    assert calls == [1] and started == [1]
    saved = json.loads((tmp_path / "s" / STAGE_FILE).read_text())
    assert saved["stage"] == "one" and saved["result"] == {"n": 1}
    assert read_stage(tmp_path / "s") == saved


def test_a_stage_that_fails_leaves_no_marker(tmp_path):
    def boom():
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        run_stage("two", tmp_path / "s", boom)
    assert read_stage(tmp_path / "s") is None
    assert not list((tmp_path / "s").glob(STAGE_FILE + "*"))
    assert run_stage("two", tmp_path / "s", lambda: [1, 2]).result == [1, 2]


def test_a_result_that_is_not_json_leaves_no_marker(tmp_path):
    with pytest.raises(TypeError):
        run_stage("three", tmp_path / "s", lambda: {"x": object()})
    assert read_stage(tmp_path / "s") is None
