"""Checkpoints that survive preemption: Orbax steps, verified by checksums, never holding a NaN.

Layout of `directory` (Orbax's, plus two files of ours):
    <step>/                      a complete step: Orbax writes `<step>.orbax-checkpoint-tmp`, then renames it
        state/ meta/ info/       the pytree (OCDBT/zarr), the caller's JSON meta, the run info JSON
        sj_checksums.json        size and CRC32 of every file, written just before the rename
        commit_success.txt       Orbax's commit marker
    .trash/<step>/               old steps are renamed here (atomic), then deleted; never read
    <step>.corrupt-<time>/       a step that failed verification in a fallback restore, kept for inspection
A `kill -9` at any point leaves at most a tmp dir and a trash dir (both removed on the next open) and
the earlier complete steps untouched. Restore checks the marker and every checksum first: a truncated
or bit-flipped file is an error naming it, never a silent load (Orbax alone loads a bit flip silently).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import platform
import shutil
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from sj_jax.core.errors import ConfigError, SJError

log = logging.getLogger(__name__)

TMP_SUFFIX = ocp.path.atomicity.TMP_DIR_SUFFIX  # ".orbax-checkpoint-tmp"
COMMIT_MARKER = ocp.path.atomicity.COMMIT_SUCCESS_FILE  # "commit_success.txt"
CHECKSUMS = "sj_checksums.json"
TRASH = ".trash"
# Orbax rewrites these after our checksums are taken (commit timestamp, marker): not covered.
_UNCHECKED = {CHECKSUMS, COMMIT_MARKER, "_CHECKPOINT_METADATA"}
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "sj_jax")


class CheckpointError(SJError):
    """A checkpoint is missing, truncated, corrupt, failed to commit, or would hold a non-finite value."""


class CorruptCheckpointError(CheckpointError):
    """A step directory exists but its commit marker, checksum file or a checksummed file is wrong."""


def _is_primary() -> bool:
    return jax.process_index() == 0


def _leaf_name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
    """bool[n_leaves]: whether each floating leaf is all-finite (one device round trip for the tree)."""
    return jnp.stack([jnp.isfinite(x).all() for x in leaves])


def check_finite(state: Any, what: str) -> None:
    """Raise CheckpointError naming the first floating leaf of `state` holding a NaN or Inf."""
    named = [(_leaf_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]]
    named = [(n, x) for n, x in named if isinstance(x, float) or (hasattr(x, "dtype") and
                                                                  jnp.issubdtype(x.dtype, jnp.floating))]
    dev = [(n, x) for n, x in named if isinstance(x, jax.Array)]
    host = [(n, x) for n, x in named if not isinstance(x, jax.Array)]
    flags = list(np.asarray(_finite_flags([x for _, x in dev]))) if dev else []
    flags += [bool(np.isfinite(np.asarray(x)).all()) for _, x in host]
    for (name, _), ok in zip(dev + host, flags):
        if not ok:
            raise CheckpointError(f"refusing to checkpoint {what}: leaf '{name}' holds NaN or Inf")


def _crc32(path: Path) -> str:
    # CRC32 catches every single-bit flip and burst up to 32 bits, at ~2 GB/s; the size catches truncation.
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def write_checksums(step_dir: Path) -> None:
    """Write `sj_checksums.json`: {relative path: [size, crc32]} for every file under `step_dir`."""
    files = {str(p.relative_to(step_dir)): [p.stat().st_size, _crc32(p)]
             for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name not in _UNCHECKED}
    (step_dir / CHECKSUMS).write_text(json.dumps({"algorithm": "crc32", "files": files}, indent=0))


def verify_step(step_dir: Path) -> None:
    """Raise CheckpointError naming the first missing, truncated or corrupt file of a step directory."""
    if not step_dir.is_dir():
        raise CheckpointError(f"no checkpoint directory {step_dir}")
    if not (step_dir / COMMIT_MARKER).is_file():
        raise CorruptCheckpointError(f"checkpoint {step_dir} has no commit marker {step_dir / COMMIT_MARKER}")
    try:
        files = json.loads((step_dir / CHECKSUMS).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(f"checkpoint {step_dir}: unreadable checksum file {step_dir / CHECKSUMS}: "
                                     f"{e}") from e
    for rel, (size, crc) in files.items():
        p = step_dir / rel
        if not p.is_file():
            raise CorruptCheckpointError(f"checkpoint file {p} is missing")
        if p.stat().st_size != size:
            raise CorruptCheckpointError(f"checkpoint file {p} is truncated or grown: {p.stat().st_size} "
                                         f"bytes, expected {size}")
        if _crc32(p) != crc:
            raise CorruptCheckpointError(f"checkpoint file {p} is corrupt: CRC32 {_crc32(p)}, expected {crc}")


def complete_steps(directory: str | Path) -> list[int]:
    """The complete steps in a checkpoint directory, ascending, read without touching it (a run may
    be writing there: unlike `Checkpointer`, nothing is cleaned)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and p.is_dir())


def restore_subtree(step_dir: Path, target: Any) -> Any:
    """The part of a step's state that `target` names (e.g. `{"params": ...}`), verified against the
    step's checksums first and placed as the target's shardings say; the rest (optimizer moments)
    is never read. Read-only."""
    step_dir = Path(step_dir).absolute()  # Orbax restores from absolute paths only
    verify_step(step_dir)
    try:
        with ocp.PyTreeCheckpointer() as ck:
            return ck.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
                target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    except Exception as e:
        raise CheckpointError(f"cannot restore {step_dir}: {e!r}") from e


class Checkpointer:
    """Orbax CheckpointManager at `directory`: keeps `max_to_keep` complete steps, saves asynchronously.

    Every process calls every method (Orbax synchronises them); side files are process 0's job.
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3, save_every: int = 0,
                 async_save: bool = True, run_info: dict | None = None):
        if max_to_keep < 1 or save_every < 0:
            raise ConfigError(f"checkpoint: need max_to_keep >= 1 and save_every >= 0, got {max_to_keep}, "
                              f"{save_every}")
        self.directory = Path(directory).absolute()
        self.save_every, self._async = save_every, async_save
        self._run_info = dict(run_info or {})
        _check_json(self._run_info, "run_info")
        self._pending: int | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._clean()  # leftovers of a killed run: unfinished saves and half-deleted old steps
        # Always Orbax's async checkpointer: its post-finalization hook is where checksums are written
        # (before the rename); a synchronous save is an async one followed by wait().
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=True, todelete_subdir=TRASH, create=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._before_commit))
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    def _before_commit(self) -> None:
        # Runs on process 0 in Orbax's background thread, after all processes wrote, before the rename.
        tmp = self.directory / f"{self._pending}{TMP_SUFFIX}"
        if not tmp.is_dir():
            raise CheckpointError(f"expected Orbax's temporary directory {tmp}; the Orbax layout changed")
        write_checksums(tmp)

    def _clean(self) -> None:
        # Only called when no save is in flight: every tmp dir is a dead save, everything in .trash is done for.
        if not _is_primary():
            return
        for p in self.directory.iterdir():
            if TMP_SUFFIX in p.name:
                log.warning("removing unfinished checkpoint %s", p)
                shutil.rmtree(p, ignore_errors=True)
        shutil.rmtree(self.directory / TRASH, ignore_errors=True)

    def should_save(self, step: int) -> bool:
        """Whether `step` is a periodic save step (`save_every > 0` and `step % save_every == 0`)."""
        return self.save_every > 0 and step % self.save_every == 0

    def all_steps(self) -> list[int]:
        """Complete steps on disk, ascending (a step is complete once its directory is renamed from tmp)."""
        return complete_steps(self.directory)

    def latest_step(self) -> int | None:
        """The last complete step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Start saving `state` (a pytree of arrays) and `meta` (JSON) as `step`; True if a save started.

        Refuses (CheckpointError) a non-finite floating leaf or non-JSON meta, and re-raises an earlier
        background failure. A step already on disk is not rewritten (returns False).
        """
        if not (force or self.should_save(step)):
            return False
        _check_json(meta, f"meta of step {step}")
        check_finite(state, f"step {step} to {self.directory}")
        self.wait()
        if step in self._mngr.all_steps():  # Orbax's list, the same on every process (the disk may lag)
            log.info("step %d is already checkpointed in %s", step, self.directory)
            return False
        self._clean()
        self._pending = step
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
                                  info=ocp.args.JsonSave(self._run_info))
        try:
            self._mngr.save(step, args=args, force=True)
        except Exception as e:
            self._recover()
            raise CheckpointError(f"saving step {step} to {self.directory / str(step)} failed: {e!r}") from e
        if not self._async:
            self.wait()
        return True

    def wait(self) -> None:
        """Block until the background save is committed; a failure there raises CheckpointError here."""
        try:
            self._mngr.wait_until_finished()
        except Exception as e:
            step = self._pending
            self._recover()
            raise CheckpointError(f"background save of step {step} to {self.directory / str(step)} failed, "
                                  f"the step was not committed (earlier steps are intact): {e!r}") from e
        self._pending = None

    def _recover(self) -> None:
        # The failed step never became complete. Its tmp dir goes at the next save or close (writes of it
        # may still be landing now); Orbax re-reads the disk, since it had already forgotten the old
        # steps it meant to delete after this commit.
        self._pending = None
        self._mngr.reload()

    def restore(self, step: int | None = None, *, target: Any, fallback: bool = False) -> tuple[Any, dict]:
        """(state, meta) of `step` (default: the latest), placed as `target` says.

        target: pytree of jax.ShapeDtypeStruct with `.sharding` (any layout, not only the saved one).
        A missing or corrupt step raises CheckpointError naming the path; with `fallback=True` it logs
        a warning, renames a corrupt step to `<step>.corrupt-<time>` and tries the earlier steps, newest first.
        """
        steps = self.all_steps()
        if step is None:
            step = steps[-1] if steps else -1
        first = _same_on_all_processes(step)
        if first < 0:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        candidates = [first] + ([s for s in reversed(steps) if s < first] if fallback else [])
        errors = []
        for s in candidates:
            try:
                return self._restore_step(s, target)
            except CheckpointError as e:
                if not fallback:
                    raise
                log.warning("%s; falling back to an earlier step", e)
                errors.append(str(e))
                if isinstance(e, CorruptCheckpointError):
                    self._quarantine(self.directory / str(s))
        raise CheckpointError(f"no restorable checkpoint in {self.directory}: " + "; ".join(errors))

    def _restore_step(self, step: int, target: Any) -> tuple[Any, dict]:
        step_dir = self.directory / str(step)
        verify_step(step_dir)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        try:
            out = self._mngr.restore(step, args=args)
        except Exception as e:
            raise CheckpointError(f"cannot restore {step_dir}: {e!r}") from e
        return out.state, out.meta

    def _quarantine(self, step_dir: Path) -> None:
        # Left in place, a corrupt step stays the latest: every restart would trip on it and a new save of
        # that step number would be skipped. Renamed, not deleted, so it can still be examined.
        if _is_primary():
            dest = step_dir.with_name(f"{step_dir.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            try:
                step_dir.rename(dest)
                log.warning("moved corrupt checkpoint %s to %s", step_dir, dest)
            except OSError as e:
                log.warning("could not move corrupt checkpoint %s aside: %s", step_dir, e)
        self._mngr.reload()

    def run_info_of(self, step: int) -> dict:
        """The run info JSON saved with `step`."""
        path = self.directory / str(step) / "info" / "metadata"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read run info {path}: {e}") from e

    def close(self) -> None:
        """Wait for the last save (raising its error, if any) and release Orbax's threads."""
        try:
            self.wait()
        finally:
            self._mngr.close()
            self._clean()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def run_info(config: dict, seed: int) -> dict:
        """What makes a step self-describing: config, seed, package versions, git commit, host and time."""
        versions = {"python": platform.python_version()}
        for name in _VERSIONED:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                versions[name] = "not installed"
        return {"config": config, "seed": seed, "versions": versions, "git_commit": _git_commit(),
                "hostname": socket.gethostname(), "argv": list(sys.argv),
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _same_on_all_processes(value: int) -> int:
    """Process 0's `value` everywhere, so that every process restores the same step."""
    if jax.process_count() == 1:
        return value

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _check_json(obj: Any, what: str) -> None:
    try:
        json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what} is not JSON-serialisable: {e}") from e
