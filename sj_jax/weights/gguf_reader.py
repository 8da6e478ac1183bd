"""A strict, bounded reader of GGUF files (llama.cpp's format): metadata and tensor layout.

Every count, length, dimension and offset read from the file is checked against the bytes that are
really there before anything is allocated or sliced, so a truncated, bit-flipped or hostile file ends
in one `WeightsError` naming the file and what is wrong, and no read is larger than the file. GGUF
parsers have had integer-overflow bugs (CVE-2024-25664 and others); this one never trusts a size.

Layout (version 2 and 3, little-endian): magic "GGUF", uint32 version, uint64 tensor count, uint64
key-value count, the key-values, the tensor infos (name, uint32 n_dims, uint64 dims[n_dims], uint32
ggml type, uint64 offset), padding to `general.alignment`, then the tensor data.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES

from sj_jax.core.errors import WeightsError

MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NESTING = 3  # arrays of arrays: none in practice; bounded so that recursion is too
_MAX_ELEMENTS = 1 << 40

# value type code -> (struct format, numpy dtype); strings (8) and arrays (9) are handled apart
_SCALARS = {
    0: ("<B", np.uint8), 1: ("<b", np.int8), 2: ("<H", np.uint16), 3: ("<h", np.int16),
    4: ("<I", np.uint32), 5: ("<i", np.int32), 6: ("<f", np.float32), 7: ("<?", np.bool_),
    10: ("<Q", np.uint64), 11: ("<q", np.int64), 12: ("<d", np.float64),
}
_STRING, _ARRAY = 8, 9


def _ggml_types() -> dict[int, tuple[str, int, int]]:
    """ggml type code -> (name, elements per block, bytes per block), from the gguf package."""
    return {int(t): (t.name, int(b), int(s)) for t, (b, s) in GGML_QUANT_SIZES.items()}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor's layout. `dims` is GGUF order (fastest first); `offset` is absolute in the file."""

    name: str
    dims: tuple[int, ...]
    type_code: int
    type_name: str
    offset: int
    n_bytes: int
    info_pos: int  # where the tensor's info (its name's length) starts in the file

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n


class _Cursor:
    """Reads little-endian values from a buffer, refusing any read past its end."""

    def __init__(self, buf: Any, path: str):
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    def fail(self, what: str) -> WeightsError:
        return WeightsError(f"{self.path}: {what} (at byte {self.pos}; the file has {self.size})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} runs past the end of the file (truncated or corrupt?)")

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        self.need(n, f"{what} ({n} bytes)")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def strings(self, count: int, what: str) -> list[str]:
        """`count` strings in a row: the vocabulary's 50k-200k tokens, so the loop is kept tight."""
        self.need(count * 8, f"{what} ({count} items)")  # each takes at least its 8-byte length
        buf, pos, size, out = self.buf, self.pos, self.size, []
        length = struct.Struct("<Q").unpack_from
        for i in range(count):
            if pos + 8 > size:
                self.pos = pos
                raise self.fail(f"{what}[{i}] runs past the end of the file (truncated or corrupt?)")
            (n,) = length(buf, pos)
            pos += 8
            if pos + n > size:
                self.pos = pos
                raise self.fail(f"{what}[{i}] ({n} bytes) runs past the end of the file (truncated or corrupt?)")
            try:
                out.append(buf[pos:pos + n].decode("utf-8"))
            except UnicodeDecodeError:
                self.pos = pos
                raise self.fail(f"{what}[{i}] is not valid UTF-8") from None
            pos += n
        self.pos = pos
        return out

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            v = self.unpack(_SCALARS[vtype][0], what)
            return bool(v) if vtype == 7 else v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth >= _MAX_NESTING:
                raise self.fail(f"{what}: arrays nested deeper than {_MAX_NESTING}")
            itype = self.u32(f"the item type of {what}")
            count = self.u64(f"the length of {what}")
            if itype in _SCALARS:
                fmt, dtype = _SCALARS[itype]
                self.need(count * struct.calcsize(fmt), f"{what} ({count} items)")
                arr = np.frombuffer(self.buf, dtype=np.dtype(dtype).newbyteorder("<"), count=count,
                                    offset=self.pos).copy()
                self.pos += arr.nbytes
                return arr
            if itype == _STRING:
                return self.strings(count, what)
            if itype == _ARRAY:
                # each item takes at least 12 bytes (a type and a length): bound the loop first
                self.need(count * 12, f"{what} ({count} items)")
                return [self.value(itype, f"{what}[{i}]", depth + 1) for i in range(count)]
            raise self.fail(f"{what}: unknown array item type {itype}")
        raise self.fail(f"{what}: unknown value type {vtype}")


class GGUFFile:
    """A GGUF file's metadata (`fields`: key -> Python value or numpy array) and tensor layout.

    The file is memory-mapped; `tensor_bytes(info)` is a read-only uint8 view, never a copy.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 24:
                    raise WeightsError(f"{self.path}: not a GGUF file (only {size} bytes)")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise WeightsError(f"{self.path}: cannot read: {e.strerror or e}") from None
        self.size = size
        cur = _Cursor(self._map, self.path)
        if bytes(self._map[:4]) != MAGIC:
            raise WeightsError(f"{self.path}: not a GGUF file (it does not start with the bytes 'GGUF')")
        cur.pos = 4
        self.version = cur.u32("the version")
        if self.version not in (2, 3):
            raise WeightsError(f"{self.path}: GGUF version {self.version} is not supported (2 and 3 are)")
        n_tensors = cur.u64("the tensor count")
        n_kv = cur.u64("the metadata count")
        # a key-value takes at least 12 bytes, a tensor info at least 24: bound both loops by the file
        cur.need(n_kv * 12 + n_tensors * 24, f"{n_kv} metadata entries and {n_tensors} tensor infos")
        self.fields: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key {i}")
            if key in self.fields:
                raise cur.fail(f"metadata key {key!r} appears twice")
            self.fields[key] = cur.value(cur.u32(f"the type of {key}"), f"metadata {key}")
        alignment = self.fields.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or not 0 < alignment <= 1 << 20 \
                or alignment & (alignment - 1):
            raise WeightsError(f"{self.path}: general.alignment = {alignment!r} is not a power of two")
        types = _ggml_types()
        infos = []
        for i in range(n_tensors):
            info_pos = cur.pos
            name = cur.string(f"the name of tensor {i}")
            n_dims = cur.u32(f"the dimension count of {name}")
            if not 0 < n_dims <= _MAX_DIMS:
                raise cur.fail(f"tensor {name} has {n_dims} dimensions (at most {_MAX_DIMS})")
            dims = tuple(cur.u64(f"a dimension of {name}") for _ in range(n_dims))
            code = cur.u32(f"the type of {name}")
            rel = cur.u64(f"the data offset of {name}")
            if code not in types:
                raise cur.fail(f"tensor {name} has unknown ggml type code {code}")
            tname, block, bsize = types[code]
            n = 1
            for d in dims:
                if not 0 < d < _MAX_ELEMENTS:
                    raise cur.fail(f"tensor {name} has absurd dimensions {list(dims)}")
                n *= d
            if n >= _MAX_ELEMENTS or dims[0] % block:
                raise cur.fail(f"tensor {name}: dimensions {list(dims)} do not fit type {tname} "
                               f"(blocks of {block})")
            if rel % alignment:
                raise cur.fail(f"tensor {name}: data offset {rel} is not a multiple of the alignment {alignment}")
            infos.append((name, dims, code, tname, rel, n // block * bsize, info_pos))
        data_start = -(-cur.pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, code, tname, rel, n_bytes, info_pos in infos:
            if name in self.tensors:
                raise WeightsError(f"{self.path}: tensor {name} appears twice")
            start = data_start + rel
            if start + n_bytes > size:
                raise WeightsError(f"{self.path}: tensor {name} ({n_bytes} bytes at offset {start}) runs past "
                                   f"the end of the file ({size} bytes; truncated?)")
            self.tensors[name] = TensorInfo(name, dims, code, tname, start, n_bytes, info_pos)
        # Writers lay the tensors end to end, each starting at the next multiple of the alignment,
        # with zero bytes between, and end the file with the last one (padded or not). Holding files
        # to that catches what sizes alone cannot: a corrupted type or dimension that still fits in the
        # file, or a byte inserted into padding, which would shift every tensor after it.
        end, prev = cur.pos, "the header"
        for t in sorted(self.tensors.values(), key=lambda t: t.offset):
            if t.offset < end:
                raise WeightsError(f"{self.path}: tensors {prev} and {t.name} overlap in the file")
            if t.offset != -(-end // alignment) * alignment or any(self._map[end:t.offset]):
                raise WeightsError(f"{self.path}: the bytes between {prev} and tensor {t.name} are not the "
                                   "alignment's zero padding: an offset or a size is corrupt")
            end, prev = t.offset + t.n_bytes, f"tensor {t.name}"
        if self.tensors and (size not in (end, -(-end // alignment) * alignment) or any(self._map[end:size])):
            raise WeightsError(f"{self.path}: {size - end} bytes follow the last tensor, which should end the "
                               "file: a size or an offset is corrupt")

    def tensor_bytes(self, info: TensorInfo) -> np.ndarray:
        """uint8 `[n_bytes]`: a read-only view of the tensor's data in the mapped file."""
        return np.frombuffer(self._map, dtype=np.uint8, count=info.n_bytes, offset=info.offset)
