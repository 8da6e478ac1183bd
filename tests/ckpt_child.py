"""Run as a subprocess by test_checkpoint.py: a process that saves checkpoints and gets killed, or a mesh.

Usage: python tests/ckpt_child.py DIR MODE. It prints marker lines (`SAVED 1`, `SAVING 2`, `HOOK ...`)
that the parent waits for before sending SIGKILL. Modes:
  random         step 1 complete, then a large step 2 that the parent kills at a random moment
  before_rename  step 2 fully written, killed just before its tmp directory is renamed (the commit)
  deleting       max_to_keep=1: killed while step 1 is being moved out after step 2 committed
  purging        max_to_keep=1: steps 1, 2; killed halfway through deleting step 1's files in .trash
  mesh           8 fake CPU devices: save sharded, restore onto another layout, print RESULT json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__" and sys.argv[2] == "mesh":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"

import numpy as np  # noqa: E402

SMALL, BIG = 1 << 12, 1 << 24  # float32 elements: 16 KiB, 64 MiB


def make_state(step: int, n: int = SMALL) -> dict[str, np.ndarray]:
    """A train-state-like tree of numpy arrays, the same in every process for the same (step, n)."""
    rng = np.random.default_rng(step)
    import ml_dtypes

    return {
        "params": {"w": rng.standard_normal(n, dtype=np.float32),
                   "b": rng.standard_normal((16, 8)).astype(ml_dtypes.bfloat16)},
        "opt": {"count": np.int32(step), "mu": rng.standard_normal(64).astype(np.float32)},
        "rng": rng.integers(0, 2**32, size=2, dtype=np.uint32),
    }


def make_meta(step: int) -> dict:
    return {"step": step, "data": {"epoch": 0, "index": 10 * step}, "losses": [0.5, 0.25 * step]}


def _hang(marker: str) -> None:
    print(f"HOOK {marker}", flush=True)
    time.sleep(600)


def _save(ckpt, step: int, n: int, marker: str | None = None) -> None:
    import jax

    state = jax.block_until_ready(jax.tree.map(jax.numpy.asarray, make_state(step, n)))
    if marker:
        print(marker, flush=True)
    ckpt.save(step, state, make_meta(step), force=True)


def run(directory: Path, mode: str) -> None:
    from sj_jax.weights import checkpoint as ck

    if mode == "before_rename":
        from orbax.checkpoint._src.path import async_path

        real_rename = async_path.rename

        async def rename(src, dst):
            if Path(dst).name == "2":
                _hang("rename 2")
            return await real_rename(src, dst)

        async_path.rename = rename
    if mode == "deleting":
        from orbax.checkpoint._src.path import deleter

        deleter.PathDeleter.delete = lambda self, path, **kw: _hang(f"delete {Path(path).name}")
    if mode == "purging":
        import shutil

        real_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            if Path(path).name == ck.TRASH and Path(path).exists():
                files = sorted(p for p in Path(path).rglob("*") if p.is_file())
                for p in files[: len(files) // 2]:
                    p.unlink()
                _hang(f"purge {len(files)}")
            return real_rmtree(path, *args, **kwargs)

        ck.shutil.rmtree = rmtree
    keep = 1 if mode in ("deleting", "purging") else 3
    ckpt = ck.Checkpointer(directory, max_to_keep=keep, run_info={"mode": mode})
    _save(ckpt, 1, SMALL)
    ckpt.wait()
    print("SAVED 1", flush=True)
    _save(ckpt, 2, BIG if mode == "random" else SMALL, marker="SAVING 2")
    ckpt.wait()
    print("SAVED 2", flush=True)
    if mode == "purging":
        _save(ckpt, 3, SMALL)  # purges .trash (step 1) first: the hook hangs there
    _hang("end")


def mesh(directory: Path) -> dict:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from sj_jax.weights.checkpoint import Checkpointer

    devs = np.array(jax.devices())
    assert devs.size == 8, devs
    save_mesh, load_mesh = jax.sharding.Mesh(devs, ("x",)), jax.sharding.Mesh(devs.reshape(2, 4), ("a", "b"))
    state = make_state(7, n=8 * 128)
    save_specs = {"params": {"w": P("x"), "b": P("x", None)}, "opt": {"count": P(), "mu": P("x")}, "rng": P()}
    load_specs = {"params": {"w": P(("b", "a")), "b": P("a", "b")}, "opt": {"count": P(), "mu": P("b")},
                  "rng": P()}
    put = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(save_mesh, s)), state, save_specs)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(load_mesh, s)),
                          state, load_specs)
    with Checkpointer(directory) as ckpt:
        ckpt.save(7, put, make_meta(7), force=True)
        ckpt.wait()
        restored, meta = ckpt.restore(target=target)
    same = jax.tree.map(lambda r, x: np.asarray(r).tobytes() == x.tobytes() and r.dtype == x.dtype, restored, state)
    placed = jax.tree.map(lambda r, t: r.sharding == t.sharding, restored, target)
    w = restored["params"]["w"]
    return {"devices": devs.size, "bitwise": all(jax.tree.leaves(same)), "placed": all(jax.tree.leaves(placed)),
            "meta_ok": meta == make_meta(7), "w_shards": len(w.addressable_shards),
            "w_spec": [list(s) if isinstance(s, tuple) else s for s in w.sharding.spec]}


if __name__ == "__main__":
    if sys.argv[2] == "mesh":
        print("RESULT " + json.dumps(mesh(Path(sys.argv[1]))), flush=True)
    else:
        run(Path(sys.argv[1]), sys.argv[2])
