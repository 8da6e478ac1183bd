"""The caches that make a second start fast: dequantised GGUF weights and JAX's compiled executables.
A cache that is corrupt, truncated or from another format is ignored with a warning: never a crash,
never other weights than decoding the GGUF gives."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from tiny_files import write_tiny_gguf

from sj_jax.core.cache import resolve_cache_dir
from sj_jax.weights.dequant_cache import FORMAT, CachedGGUFSource
from sj_jax.weights.gguf_io import GGUFSource


@pytest.fixture()
def gguf(tmp_path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf", seed=4)


def _decode_all(source) -> dict[str, np.ndarray]:
    return {n: np.array(source.get(n)) for n in sorted(source.names())}


def _filled_cache(gguf: Path, folder: Path) -> CachedGGUFSource:
    first = CachedGGUFSource(GGUFSource(gguf), folder)
    _decode_all(first)
    first.save()
    assert first.cache_path.exists()
    return first


def test_second_load_reads_the_cache_and_gets_the_same_tensors(gguf, tmp_path):
    expected = _decode_all(GGUFSource(gguf))
    first = _filled_cache(gguf, tmp_path / "weights")
    assert first.hits == 0
    second = CachedGGUFSource(GGUFSource(gguf), tmp_path / "weights")
    got = _decode_all(second)
    assert second.complete_hit and second.hits == len(expected)
    assert got.keys() == expected.keys()
    for n in expected:
        np.testing.assert_array_equal(got[n], expected[n])
    with safe_open(str(second.cache_path), framework="numpy") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT and meta["source_sha256"] == second.sha


def _flip_tensor_byte(path: Path, name: str) -> None:
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    start = json.loads(data[8:8 + header_len])[name]["data_offsets"][0]
    data[8 + header_len + start + 5] ^= 0x10
    path.write_bytes(bytes(data))


def _corrupt(kind: str, path: Path) -> None:
    if kind == "bit flip in a tensor":
        _flip_tensor_byte(path, "model.layers.1.mlp.up_proj.weight")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "another format version":
        import safetensors.numpy

        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = dict(f.metadata())
        safetensors.numpy.save_file(tensors, str(path), metadata={**meta, "format": "sj_jax-dequant-0"})
    elif kind == "another source":
        import safetensors.numpy

        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) * 2 for k in f.keys()}
            meta = dict(f.metadata())
        safetensors.numpy.save_file(tensors, str(path), metadata={**meta, "source_sha256": "0" * 64})


@pytest.mark.parametrize("kind", ["bit flip in a tensor", "truncated", "garbage", "another format version",
                                  "another source"])
def test_a_bad_cache_is_ignored_with_a_warning(gguf, tmp_path, kind, caplog):
    expected = _decode_all(GGUFSource(gguf))
    cache_path = _filled_cache(gguf, tmp_path / "weights").cache_path
    _corrupt(kind, cache_path)
    with caplog.at_level(logging.WARNING, logger="sj_jax.weights.dequant_cache"):
        source = CachedGGUFSource(GGUFSource(gguf), tmp_path / "weights")
        got = _decode_all(source)
    assert any("ignoring the weights cache" in r.getMessage() for r in caplog.records), kind
    for n in expected:
        np.testing.assert_array_equal(got[n], expected[n], err_msg=f"{kind}: {n}")
    # the bad file is gone; a load that decodes everything writes a good one, which the next reads
    source.save()
    again = CachedGGUFSource(GGUFSource(gguf), tmp_path / "weights")
    _decode_all(again)
    again.save()
    third = CachedGGUFSource(GGUFSource(gguf), tmp_path / "weights")
    _decode_all(third)
    assert third.complete_hit


def test_an_unwritable_cache_folder_is_a_warning_not_an_error(gguf, tmp_path, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    source = CachedGGUFSource(GGUFSource(gguf), blocker / "weights")
    _decode_all(source)
    with caplog.at_level(logging.WARNING, logger="sj_jax.weights.dequant_cache"):
        source.save()
    assert any("could not write the weights cache" in r.getMessage() for r in caplog.records)


def test_cache_dir_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("SJ_JAX_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir("auto") == tmp_path / "xdg" / "sj_jax"
    monkeypatch.setenv("SJ_JAX_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir("auto") == tmp_path / "env"
    assert resolve_cache_dir(str(tmp_path / "mine")) == tmp_path / "mine"
    monkeypatch.setenv("SJ_JAX_CACHE_DIR", "off")
    assert resolve_cache_dir("auto") is None
    assert resolve_cache_dir("off") is None and resolve_cache_dir(None) is None


def _generate(gguf: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SJ_JAX_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "sj_jax.cli", "generate", "--model", str(gguf), "--json",
                           "--prompt", "the cat", "max_new_tokens=6"],
                          capture_output=True, text=True, env=env, timeout=300)


def test_second_run_reads_both_caches_and_corrupt_entries_are_recompiled(gguf, tmp_path):
    """Three runs of `sj-jax generate` in new processes: the first fills the caches, the second reads
    them, and after every cache file is damaged the third warns, recompiles, decodes again and
    prints the same tokens."""
    cache = tmp_path / "cache"
    first = _generate(gguf, cache)
    assert first.returncode == 0, first.stderr[-3000:]
    entries = sorted((cache / "xla").iterdir())
    assert entries and list((cache / "weights").glob("*.safetensors"))
    second = _generate(gguf, cache)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert sorted((cache / "xla").iterdir()) == entries  # nothing new to compile
    for entry in entries:
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0xFF
        entry.write_bytes(bytes(data[: len(data) - 7]))
    for weights in (cache / "weights").glob("*.safetensors"):
        _flip_tensor_byte(weights, "model.embed_tokens.weight")
    third = _generate(gguf, cache)
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout == first.stdout
    assert "Error reading persistent compilation cache entry" in third.stderr
    assert "ignoring the weights cache" in third.stderr
