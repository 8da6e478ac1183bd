"""Checkpoints survive kill -9, failed commits and corruption; they restore bit for bit; no NaN is ever saved.

RELIABILITY.md drills 1 (kill during a save), 4 (background commit error), 5 (corrupt step), 8 (retention)
and the NaN rule; plus the SIGTERM guard.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.path import async_path

from ckpt_child import make_meta, make_state
from sj_jax.core.errors import ConfigError, SJError
from sj_jax.weights.checkpoint import (CHECKSUMS, COMMIT_MARKER, TMP_SUFFIX, TRASH, Checkpointer, CheckpointError,
                                     CorruptCheckpointError)
from sj_jax.train.preemption import PreemptionGuard

CHILD = Path(__file__).with_name("ckpt_child.py")


def _abstract(tree):
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=dev), tree)


def _assert_bitwise(restored, expected) -> None:
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for r, e in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        r, e = np.asarray(r), np.asarray(e)
        assert r.dtype == e.dtype and r.shape == e.shape and r.tobytes() == e.tobytes()


def _save(ckpt: Checkpointer, step: int, **kw) -> dict:
    state = make_state(step, **kw)
    assert ckpt.save(step, jax.tree.map(jnp.asarray, state), make_meta(step), force=True)
    return state


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if TMP_SUFFIX in p.name or p.name == TRASH)


def test_round_trip_is_bit_for_bit_with_meta_and_run_info(tmp_path):
    rng = np.random.default_rng(0)
    state = {"params": {"w": jnp.asarray(rng.standard_normal((8, 5), np.float32)),
                        "e": jnp.asarray(rng.standard_normal((3, 4)), jnp.bfloat16)},
             "step": jnp.int32(41), "key_data": jax.random.key_data(jax.random.key(7)),
             "key": jax.random.key(11)}  # a typed key round-trips too
    meta = {"data": {"epoch": 1, "index": 123}, "losses": [0.7, 0.3], "note": "ünï"}
    info = Checkpointer.run_info({"lr": 1e-5}, seed=3)
    with Checkpointer(tmp_path, run_info=info) as ckpt:
        assert ckpt.save(41, state, meta, force=True)
        ckpt.wait()
        restored, got_meta = ckpt.restore(target=_abstract(state))
        assert ckpt.run_info_of(41) == json.loads(json.dumps(info))
    assert got_meta == meta
    assert jax.random.key_data(restored.pop("key")).tolist() == jax.random.key_data(state.pop("key")).tolist()
    _assert_bitwise(restored, state)
    assert restored["key_data"].dtype == jnp.uint32 and restored["params"]["e"].dtype == jnp.bfloat16


def test_run_info_names_config_seed_versions_and_commit():
    info = Checkpointer.run_info({"model": "tiny"}, seed=5)
    assert info["config"] == {"model": "tiny"} and info["seed"] == 5
    assert info["versions"]["jax"] == jax.__version__
    assert {"python", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "sj_jax"} <= set(info["versions"])
    assert info["git_commit"] == "unknown" or len(info["git_commit"]) == 40
    json.dumps(info)


def test_restore_onto_a_different_sharding_and_device_count(tmp_path):  # a subprocess, 8 fake devices: ~3 s
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.run([sys.executable, str(CHILD), str(tmp_path), "mesh"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])
    # Saved over mesh (x=8), restored over mesh (a=2, b=4) with other specs: same bits, target layout.
    assert r == {"devices": 8, "bitwise": True, "placed": True, "meta_ok": True, "w_shards": 8,
                 "w_spec": [["b", "a"]]}
    # And the 8-device checkpoint restores onto this process's single device.
    with Checkpointer(tmp_path) as ckpt:
        state, meta = ckpt.restore(target=_abstract(make_state(7, n=8 * 128)))
    _assert_bitwise(state, make_state(7, n=8 * 128))
    assert meta == make_meta(7)


def test_should_save_every_n_and_a_step_is_never_rewritten(tmp_path):
    with Checkpointer(tmp_path, save_every=5, async_save=False) as ckpt:
        assert [s for s in range(12) if ckpt.should_save(s)] == [0, 5, 10]
        state = jax.tree.map(jnp.asarray, make_state(1))
        assert not ckpt.save(7, state, {})
        assert ckpt.save(10, state, {"a": 1}) and ckpt.all_steps() == [10]
        assert not ckpt.save(10, state, {"a": 2}, force=True)  # e.g. a preemption save right after a periodic one
        assert ckpt.restore(target=_abstract(make_state(1)))[1] == {"a": 1}
    assert not Checkpointer(tmp_path).should_save(10)  # save_every=0: explicit saves only
    with pytest.raises(ConfigError, match="max_to_keep >= 1"):
        Checkpointer(tmp_path, max_to_keep=0)


def test_keeps_last_n_and_never_deletes_before_the_new_step_commits(tmp_path, monkeypatch):
    gate, reached = threading.Event(), threading.Event()
    real_rename = async_path.rename

    async def slow_rename(src, dst):
        if Path(dst).name == "5":
            reached.set()
            gate.wait(30)
        return await real_rename(src, dst)

    monkeypatch.setattr(async_path, "rename", slow_rename)
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    for step in range(1, 5):
        _save(ckpt, step)
    ckpt.wait()
    assert ckpt.all_steps() == [3, 4]
    _save(ckpt, 5)
    assert reached.wait(30)
    # Step 5 is written but not committed: it is not listed, and 3 and 4 are both still whole on disk.
    assert ckpt.all_steps() == [3, 4] and ckpt.latest_step() == 4
    assert (tmp_path / f"5{TMP_SUFFIX}").is_dir() and (tmp_path / "3" / COMMIT_MARKER).is_file()
    gate.set()
    ckpt.wait()
    assert ckpt.all_steps() == [4, 5]
    _save(ckpt, 6)
    ckpt.close()
    assert ckpt.all_steps() == [5, 6] and _leftovers(tmp_path) == []
    with Checkpointer(tmp_path) as reopened:
        _assert_bitwise(reopened.restore(target=_abstract(make_state(6)))[0], make_state(6))


def _largest_data_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(step_dir: Path) -> Path:
    p = _largest_data_file(step_dir)
    os.truncate(p, p.stat().st_size // 2)
    return p


def _bitflip(step_dir: Path) -> Path:
    p = _largest_data_file(step_dir)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))
    return p


def _drop(name: str):
    def corrupt(step_dir: Path) -> Path:
        p = step_dir / name if name != "array_metadata" else next((step_dir / "state").rglob("process_0"))
        p.unlink()
        return p
    return corrupt


@pytest.mark.parametrize("corrupt", [_truncate, _bitflip, _drop(COMMIT_MARKER), _drop(CHECKSUMS),
                                     _drop("array_metadata")],
                         ids=["truncated", "bitflip", "no_commit_marker", "no_checksums", "missing_file"])
def test_corrupt_step_is_an_error_naming_the_path_or_falls_back(tmp_path, caplog, corrupt):
    with Checkpointer(tmp_path) as ckpt:
        _save(ckpt, 1, n=1 << 16)
        _save(ckpt, 2, n=1 << 16)
    bad = corrupt(tmp_path / "2")
    target = _abstract(make_state(1, n=1 << 16))
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 2
        for kw in ({}, {"step": 2}):
            with pytest.raises(CorruptCheckpointError, match=str(bad)):
                ckpt.restore(target=target, **kw)
        with caplog.at_level(logging.WARNING):
            state, meta = ckpt.restore(target=target, fallback=True)
        # The corrupt step is moved aside (kept for inspection): no longer the latest, its number reusable.
        assert ckpt.all_steps() == [1] and len(list(tmp_path.glob("2.corrupt-*"))) == 1
        _save(ckpt, 2, n=1 << 16)
        ckpt.wait()
        _assert_bitwise(ckpt.restore(target=target)[0], make_state(2, n=1 << 16))
    _assert_bitwise(state, make_state(1, n=1 << 16))
    assert meta == make_meta(1)
    assert any(str(bad) in r.getMessage() and "falling back" in r.getMessage() for r in caplog.records)


def test_no_checkpoint_is_an_error_naming_the_directory(tmp_path):
    ckpt = Checkpointer(tmp_path / "empty", async_save=False)
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    with pytest.raises(CheckpointError, match=str(tmp_path / "empty")):
        ckpt.restore(target=_abstract(make_state(1)), fallback=True)
    with pytest.raises(CheckpointError, match=str(tmp_path / "empty" / "3")):
        ckpt.restore(3, target=_abstract(make_state(1)))
    assert issubclass(CheckpointError, SJError)


async def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# Orbax's event loop complains on the way out of the injected failure; harmless.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("surfaces_at", ["wait", "next_save"])
@pytest.mark.parametrize("fails", ["rename", "write_text"])  # the commit rename / the commit marker
def test_background_commit_error_surfaces_and_never_lists_the_step(tmp_path, monkeypatch, fails, surfaces_at):
    ckpt = Checkpointer(tmp_path, max_to_keep=1)  # a successful step 2 would delete step 1
    _save(ckpt, 1)
    ckpt.wait()
    with monkeypatch.context() as m:
        m.setattr(async_path, fails, _no_space)
        _save(ckpt, 2)  # returns at once; the failure happens in Orbax's background thread
        with pytest.raises(CheckpointError, match=r"step 2 .*No space left on device"):
            if surfaces_at == "wait":
                ckpt.wait()
            else:
                ckpt.save(3, jax.tree.map(jnp.asarray, make_state(3)), make_meta(3), force=True)
    assert ckpt.all_steps() == [1]
    state, meta = ckpt.restore(target=_abstract(make_state(1)))
    _assert_bitwise(state, make_state(1))
    ckpt.wait()  # the error is reported once
    _save(ckpt, 4)  # and saving works again afterwards, with retention back in force
    ckpt.close()
    assert ckpt.all_steps() == [4] and _leftovers(tmp_path) == []


@pytest.mark.parametrize("dtype,bad", [(jnp.float32, jnp.nan), (jnp.bfloat16, -jnp.inf)])
def test_a_non_finite_leaf_is_never_checkpointed(tmp_path, dtype, bad):
    with Checkpointer(tmp_path) as ckpt:
        _save(ckpt, 1)
        state = jax.tree.map(jnp.asarray, make_state(2))
        state["opt"]["nu"] = jnp.asarray(np.random.default_rng(2).standard_normal(32), dtype).at[17].set(bad)
        with pytest.raises(CheckpointError, match="'opt/nu' holds NaN or Inf"):
            ckpt.save(2, state, make_meta(2), force=True)
        with pytest.raises(CheckpointError, match="meta of step 2 is not JSON"):
            ckpt.save(2, jax.tree.map(jnp.asarray, make_state(2)), {"loss": float("nan")}, force=True)
        ckpt.wait()
        assert ckpt.all_steps() == [1]
        _assert_bitwise(ckpt.restore(target=_abstract(make_state(1)))[0], make_state(1))


def _kill_during_save(directory: Path, mode: str, marker: str, delay: float = 0.0,
                      appears: str | None = None) -> None:
    """Start the child, wait for its `marker` line (and for `directory/appears` to exist), then SIGKILL it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    with open(directory.parent / f"{mode}.stderr", "w+") as err:
        child = subprocess.Popen([sys.executable, "-u", str(CHILD), str(directory), mode], stdout=subprocess.PIPE,
                                 stderr=err, text=True, env=env)
        try:
            lines = []
            while not any(ln.startswith(marker) for ln in lines):
                line = child.stdout.readline()
                if not line:
                    err.seek(0)
                    pytest.fail(f"child exited before {marker!r}: {lines}\n{err.read()[-3000:]}")
                lines.append(line.strip())
            deadline = time.monotonic() + 30
            while appears and not (directory / appears).exists() and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(delay)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
            child.stdout.close()


def _check_restart(directory: Path, expect_steps: list[int]) -> None:
    with Checkpointer(directory, max_to_keep=1) as ckpt:
        assert _leftovers(directory) == []  # the killed save's tmp dir and half-deleted steps are gone
        assert ckpt.all_steps() == expect_steps
        latest = ckpt.latest_step()
        state, meta = ckpt.restore(target=_abstract(make_state(latest)))
        _assert_bitwise(state, make_state(latest))
        assert meta == make_meta(latest)
        _save(ckpt, 10)  # training resumes and retention cleans the rest
    assert ckpt.all_steps() == [10] and _leftovers(directory) == []


def test_kill_9_between_write_and_commit_keeps_the_last_complete_step(tmp_path):
    _kill_during_save(tmp_path / "run", "before_rename", "HOOK rename 2")
    assert (tmp_path / "run" / f"2{TMP_SUFFIX}").is_dir()
    _check_restart(tmp_path / "run", [1])


@pytest.mark.slow  # two subprocesses: ~6 s
@pytest.mark.parametrize("mode,marker,expect", [("deleting", "HOOK delete 1", [1, 2]),
                                                ("purging", "HOOK purge", [2])])
def test_kill_9_while_old_steps_are_deleted(tmp_path, mode, marker, expect):
    _kill_during_save(tmp_path / "run", mode, marker)
    _check_restart(tmp_path / "run", expect)


@pytest.mark.slow  # three subprocesses writing 64 MiB: ~12 s
@pytest.mark.parametrize("trial", range(3))
def test_kill_9_at_a_random_moment_of_a_large_save(tmp_path, trial):
    # Killed 0-0.25 s after step 2's tmp dir appears; writing 64 MiB takes ~0.3 s here: mostly mid-write,
    # sometimes just after the commit. Either way the latest step is whole.
    _kill_during_save(tmp_path / "run", "random", "SAVING 2", delay=random.Random(trial).uniform(0.0, 0.25),
                      appears=f"2{TMP_SUFFIX}")
    steps = [p.name for p in (tmp_path / "run").iterdir()]
    with Checkpointer(tmp_path / "run") as ckpt:
        latest = ckpt.latest_step()
        assert latest in (1, 2), steps
        n = 1 << 24 if latest == 2 else 1 << 12
        state, _ = ckpt.restore(target=_abstract(make_state(latest, n)))
    _assert_bitwise(state, make_state(latest, n))
    assert _leftovers(tmp_path / "run") == []


def test_preemption_guard_turns_sigterm_into_a_flag_and_restores_the_handler():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *a: seen.append("old"))
    # Python's default, or SIG_IGN where the run was started in the background: whichever it was.
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        with PreemptionGuard(sigint=True) as guard:
            assert not guard.requested and not guard.should_stop(0)
            os.kill(os.getpid(), signal.SIGTERM)
            assert guard.requested and guard.signal_name == "SIGTERM" and guard.should_stop(1)
            with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C still quits at once
                os.kill(os.getpid(), signal.SIGINT)
        assert seen == []
        assert signal.getsignal(signal.SIGINT) is previous_int
        os.kill(os.getpid(), signal.SIGTERM)  # the previous handler is back
        assert seen == ["old"]
    finally:
        signal.signal(signal.SIGTERM, previous)
