"""A cache of a GGUF file's dequantised tensors, so that the second load reads float32 instead of decoding.

The cache file is `<cache>/weights/<sha256 of the GGUF>.safetensors`: the tensors exactly as
`GGUFSource.get` returns them (Hugging Face names and layout, float32), with the format version,
the source's hash and a CRC-32 of every tensor in its metadata. A tensor is checked as it is read;
a file that is unreadable, from another format version or source, or whose checksum fails is
ignored with a warning and the GGUF is decoded instead. The cache never gives other weights than
decoding the GGUF would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from pathlib import Path

import numpy as np
import safetensors.numpy
from safetensors import safe_open

from sj_jax.core.errors import WeightsError
from sj_jax.weights.gguf_io import GGUFSource

log = logging.getLogger(__name__)

FORMAT = "sj_jax-dequant-1"
MAX_BYTES = 4 << 30  # larger models are decoded every time rather than filling the disk with float32


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1))


class CachedGGUFSource:
    """A `TensorSource` over a GGUF that reads its dequantised cache when one is valid, and writes one
    (`save()`) after a load that had to decode."""

    def __init__(self, gguf: GGUFSource, folder: Path):
        self.gguf = gguf
        self.path = gguf.path
        try:
            self.sha = file_sha256(gguf.path)
        except OSError as e:
            raise WeightsError(f"{gguf.path}: cannot read: {e}") from None
        self.cache_path = folder / f"{self.sha}.safetensors"
        self._handle = None
        self._checksums: dict[str, int] = {}
        self._decoded: dict[str, np.ndarray] = {}
        self.hits = 0
        if self.cache_path.exists():
            self._open()

    def _warn_and_drop(self, why: str) -> None:
        log.warning("ignoring the weights cache %s (%s); decoding %s instead", self.cache_path, why, self.path)
        self._handle = None
        try:
            self.cache_path.unlink()
        except OSError:
            pass

    def _open(self) -> None:
        try:
            handle = safe_open(str(self.cache_path), framework="numpy")
            meta = handle.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("source_sha256") != self.sha:
                return self._warn_and_drop(f"format {meta.get('format')!r}, not {FORMAT!r}, or another source")
            checksums = {k: int(v) for k, v in json.loads(meta["crc32"]).items()}
            if set(checksums) != set(handle.keys()) or set(checksums) != self.gguf.names():
                return self._warn_and_drop("it lists other tensors than the GGUF")
        except Exception as e:  # any unreadable header: the cache is only ever a shortcut
            return self._warn_and_drop(f"unreadable: {e}")
        self._handle, self._checksums = handle, checksums

    # TensorSource
    def names(self) -> set[str]:
        return self.gguf.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.gguf.shape(name)

    def file_of(self, name: str) -> str:
        return self.path

    def get(self, name: str) -> np.ndarray:
        if self._handle is not None:
            try:
                w = self._handle.get_tensor(name)
                ok = w.dtype == np.float32 and w.shape == self.gguf.shape(name) and _crc(w) == self._checksums[name]
            except Exception as e:
                ok, w = False, e
            if ok:
                self.hits += 1
                return w
            self._warn_and_drop(f"tensor {name} fails its checksum" if not isinstance(w, Exception) else str(w))
        w = self.gguf.get(name)
        self._decoded[name] = w
        return w

    @property
    def complete_hit(self) -> bool:
        return self._handle is not None and not self._decoded

    def save(self) -> None:
        """Writes the cache from the tensors this load decoded, when it decoded all of them. Atomic; a
        failure to write (a full disk, a read-only folder) is a warning, never an error."""
        if self.complete_hit or set(self._decoded) != self.gguf.names():
            self._decoded.clear()
            return
        total = sum(w.nbytes for w in self._decoded.values())
        if total > MAX_BYTES:
            log.info("%s: %.1f GB dequantised is over the cache's limit; not cached", self.path, total / 1e9)
            self._decoded.clear()
            return
        tmp = self.cache_path.with_suffix(f".tmp{os.getpid()}")
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in self._decoded.items()}
            meta = {"format": FORMAT, "source_sha256": self.sha, "source": self.path,
                    "crc32": json.dumps({k: _crc(v) for k, v in tensors.items()})}
            safetensors.numpy.save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, self.cache_path)
        except Exception as e:
            log.warning("could not write the weights cache %s: %s", self.cache_path, e)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        finally:
            self._decoded.clear()

