"""The stage markers the demo and the self-taught loop resume from."""

import json
import time

import pytest

from sj_jax.core.stages import STAGE_FILE, read_stage, run_stage


def test_a_finished_stage_is_not_run_again(tmp_path):
    calls = []
    started = []

    def fn():
        calls.append(1)
        (tmp_path / "s" / "out.txt").write_text("made")  # the folder exists when the stage starts
        time.sleep(0.2)
        return {"n": len(calls)}

    first = run_stage("one", tmp_path / "s", fn, on_start=lambda: started.append(1))
    assert first.ran and first.result == {"n": 1} and first.seconds >= 0.1  # measured: fn slept 0.2 s
    again = run_stage("one", tmp_path / "s", fn, on_start=lambda: started.append(1))
    assert not again.ran and again.result == {"n": 1} and again.seconds == first.seconds
    assert calls == [1] and started == [1]
    saved = json.loads((tmp_path / "s" / STAGE_FILE).read_text())
    assert saved == {"stage": "one", "seconds": first.seconds, "result": {"n": 1}}  # no machine: none asked for
    assert read_stage(tmp_path / "s") == saved
    assert first.machine is None and again.machine is None


def test_the_machine_is_asked_only_when_the_stage_runs_and_saved_with_its_time(tmp_path, monkeypatch):
    import types

    from sj_jax.core import stages

    asked, clock = [], [100.0]  # a clock that moves only when the work or the measurement does
    monkeypatch.setattr(stages, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def machine():
        asked.append(1)
        clock[0] += 5.0  # a measurement takes time: not the stage's
        return {"matmul_gflops_float32": 139.2}

    def work():
        clock[0] += 0.2
        return 1

    def boom():
        raise RuntimeError("stopped")

    first = run_stage("one", tmp_path / "s", work, machine=machine)
    assert first.ran and first.machine == {"matmul_gflops_float32": 139.2} and asked == [1]
    assert first.seconds == 0.2  # asked before the clock started
    again = run_stage("one", tmp_path / "s", lambda: 2, machine=machine)
    assert not again.ran and again.result == 1 and again.machine == {"matmul_gflops_float32": 139.2}
    assert asked == [1]  # a stage done already measures nothing
    assert read_stage(tmp_path / "s")["machine"] == {"matmul_gflops_float32": 139.2}
    with pytest.raises(RuntimeError):
        run_stage("two", tmp_path / "t", boom, machine=machine)
    assert read_stage(tmp_path / "t") is None


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
