"""Malformed weight files (RELIABILITY.md drill 7): truncated, bit-flipped and spliced GGUF and safetensors
files, and hostile header fields. Every case ends in sj_jax's own error naming the file, within a
second and without allocating more than the file holds; a file that still loads has the very layout
of the original (a flip inside tensor data, which neither format checksums, changes that tensor only).
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from hypothesis import HealthCheck, given, settings, strategies as st

from tiny_files import write_tiny_gguf, write_tiny_hf

from sj_jax.core.errors import SJError
from sj_jax.weights.loader import _check_source, abstract_params

# Python-side bookkeeping (the parsed metadata's objects, an error's traceback) on top of the bytes
# of the file itself; far below what a size taken from a corrupt header would ask for.
SLACK = 512 << 10
# No deadline: tests never assert timings, and a busy 2-core machine made one case take 1.3 s once
# (a flaky failure). What a deadline would catch, a size read off a corrupt header, the memory bound
# (SLACK) catches without depending on the machine.
FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@functools.lru_cache(maxsize=8)
def _flat_params(cfg):
    return flatten_dict(abstract_params(cfg))


def read_gguf(path: Path, decoded: list[int]):
    """What loading a GGUF reads from the file: metadata, the model config, the tokenizer built from
    the vocabulary, and every tensor decoded (their float32 bytes are added to `decoded`). Returns
    (config, source, tensor infos, tensors) for `check_gguf`."""
    from sj_jax.weights.gguf_tokenizer import build_tokenizer, read_vocab
    from sj_jax.weights.gguf_io import GGUFSource

    src = GGUFSource(path)
    cfg = src.model_config()
    build_tokenizer(read_vocab(src.file.fields, str(path)), str(path))
    tensors = {}
    for n in sorted(src.names()):
        tensors[n] = src.get(n)
        decoded[0] += tensors[n].nbytes
    infos = {n: (t.dims, t.type_code, t.offset) for n, t in src.file.tensors.items()}
    return cfg, src, infos, tensors


def read_safetensors(folder: Path, decoded: list[int]):
    from sj_jax.loading.model import read_hf_config
    from sj_jax.weights.safetensors_io import SafetensorsSource

    cfg = read_hf_config(folder)
    src = SafetensorsSource(folder)
    tensors = {}
    for n in sorted(src.names()):
        tensors[n] = src.get(n)
        decoded[0] += tensors[n].nbytes
    return cfg, src, None, tensors


@contextlib.contextmanager
def hang_guard(seconds: int = 60):
    """Fails a read that never ends (a loop a corrupt count drives), without timing a normal one:
    a read takes milliseconds, and a loaded machine must not fail it (tests never assert timings)."""
    def stuck(*_):
        raise AssertionError(f"the read did not end within {seconds} s: a loop on a corrupt field?")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def attempt(read, target: Path, file: Path):
    """Reads `target` as the loader does: (infos, tensors) or None, and the SJError or None.

    The file-reading part runs under tracemalloc: to refuse a file it may allocate no more than the
    file's size (plus SLACK), and to read one no more than that plus the float32 tensors it decoded.
    The loader's check of every tensor against the model's parameter shapes runs after it, untraced:
    it only compares shapes, but traces the model with JAX, whose bookkeeping has nothing to do with
    the file.
    """
    decoded = [0]
    tracemalloc.start()
    try:
        with hang_guard():
            parsed, error = read(target, decoded), None
    except SJError as e:
        parsed, error = None, e
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    size = file.stat().st_size
    assert peak <= size + decoded[0] + SLACK, f"{peak} bytes allocated for a {size}-byte file ({error})"
    result = None
    if error is None:
        cfg, src, infos, tensors = parsed
        try:
            with hang_guard():
                _check_source(cfg, src, _flat_params(cfg))
            result = infos, tensors
        except SJError as e:
            error = e
    if error is not None:
        assert str(file) in str(error), f"the error does not name the file: {error}"
    return result, error


class Original(tuple):
    """A fixture's (bytes, infos, tensors); its repr is kept short for hypothesis' reports."""

    def __repr__(self) -> str:
        return f"<original file of {len(self[0]) if isinstance(self[0], bytes) else len(self[1])} bytes>"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    read_gguf(path, [0])  # first imports outside the traced reads
    (infos, tensors), error = attempt(read_gguf, path, path)
    assert error is None
    return Original((path.read_bytes(), infos, tensors))


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    folder = write_tiny_hf(tmp_path_factory.mktemp("hf") / "tiny")
    data = (folder / "model.safetensors").read_bytes()
    read_safetensors(folder, [0])  # imports transformers' config classes outside the traced reads
    (_, tensors), error = attempt(read_safetensors, folder, folder / "model.safetensors")
    assert error is None
    return Original((folder, data, tensors))


def _gguf_case(tmp_path: Path, data: bytes, name: str = "case.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _assert_same_layout_or_error(original, result, error, touched: range, tensor_ranges: dict):
    """A read either failed cleanly or kept the original layout; then only a tensor whose bytes were
    touched may differ."""
    if error is not None:
        return
    infos, tensors = result
    orig_infos, orig_tensors = original
    if orig_infos is not None:
        assert infos == orig_infos, "a corrupted layout was read without an error"
    assert set(tensors) == set(orig_tensors)
    for n, t in tensors.items():
        start, stop = tensor_ranges[n]
        if stop <= touched.start or start >= touched.stop:
            np.testing.assert_array_equal(t, orig_tensors[n], err_msg=f"{n} changed without its bytes changing")


# --------------------------------------------------------------------------------------------- GGUF

def _hf_ranges(src_file) -> dict:
    """Hugging Face tensor name -> (start, stop) of its bytes in the GGUF."""
    from sj_jax.weights.gguf_io import GGUFSource

    return {GGUFSource._hf_name(t.name): (t.offset, t.offset + t.n_bytes) for t in src_file.tensors.values()}


@pytest.fixture(scope="module")
def gguf_ranges(tiny_gguf, tmp_path_factory):
    from sj_jax.weights.gguf_reader import GGUFFile

    path = _gguf_case(tmp_path_factory.mktemp("ranges"), tiny_gguf[0])
    return _hf_ranges(GGUFFile(path))


@settings(max_examples=600, **FUZZ)
@given(st.data())
def test_gguf_bit_flips(tiny_gguf, gguf_ranges, tmp_path, data):
    raw, infos, tensors = tiny_gguf
    # half the flips in the header and metadata (where sizes live), half anywhere
    first_tensor = min(start for start, _ in gguf_ranges.values())
    limit = data.draw(st.sampled_from([first_tensor, len(raw)]))
    pos = data.draw(st.integers(0, limit - 1))
    bit = data.draw(st.integers(0, 7))
    mutated = bytearray(raw)
    mutated[pos] ^= 1 << bit
    path = _gguf_case(tmp_path, bytes(mutated))
    result, error = attempt(read_gguf, path, path)
    _assert_same_layout_or_error((infos, tensors), result, error, range(pos, pos + 1), gguf_ranges)


@settings(max_examples=200, **FUZZ)
@given(st.data())
def test_gguf_truncations(tiny_gguf, gguf_ranges, tmp_path, data):
    raw, infos, tensors = tiny_gguf
    keep = data.draw(st.integers(0, len(raw) - 1))
    path = _gguf_case(tmp_path, raw[:keep])
    result, error = attempt(read_gguf, path, path)
    if max(stop for _, stop in gguf_ranges.values()) > keep:
        assert error is not None, f"a file cut at {keep} of {len(raw)} bytes was read"
    _assert_same_layout_or_error((infos, tensors), result, error, range(keep, len(raw)), gguf_ranges)


@settings(max_examples=300, **FUZZ)
@given(st.data())
def test_gguf_splices(tiny_gguf, gguf_ranges, tmp_path, data):
    """A run of bytes copied over another place of the file, inserted, or deleted."""
    raw, infos, tensors = tiny_gguf
    n = len(raw)
    kind = data.draw(st.sampled_from(["overwrite", "insert", "delete"]))
    length = data.draw(st.integers(1, 64))
    at = data.draw(st.integers(0, n - length))
    src = data.draw(st.integers(0, n - length))
    chunk = raw[src:src + length]
    if kind == "overwrite":
        mutated = raw[:at] + chunk + raw[at + length:]
        touched = range(at, at + length)
    elif kind == "insert":
        mutated, touched = raw[:at] + chunk + raw[at:], range(at, n)
    else:
        mutated, touched = raw[:at] + raw[at + length:], range(at, n)
    path = _gguf_case(tmp_path, mutated)
    result, error = attempt(read_gguf, path, path)
    if kind != "overwrite":
        # every byte after `at` moves: the tensors no longer tile the file as the header says
        assert error is not None, f"a {kind} of {length} bytes at {at} went unnoticed"
    else:
        _assert_same_layout_or_error((infos, tensors), result, error, touched, gguf_ranges)


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def _gguf_edits(raw: bytes) -> dict[str, tuple[int, bytes]]:
    """Hostile values for the header's fields: name -> (byte position, new bytes)."""
    import tempfile

    from sj_jax.weights.gguf_reader import GGUFFile

    with tempfile.TemporaryDirectory() as d:
        f = GGUFFile(_gguf_case(Path(d), raw))
        infos = sorted(f.tensors.values(), key=lambda t: t.info_pos)
    first, second = infos[0], infos[1]
    name_len = len(first.name.encode())
    n_dims_pos = first.info_pos + 8 + name_len
    dims_pos = n_dims_pos + 4
    type_pos = dims_pos + 8 * len(first.dims)
    offset_pos = type_pos + 4
    tokens_key = raw.index(b"tokenizer.ggml.tokens")
    tokens_count_pos = tokens_key + len(b"tokenizer.ggml.tokens") + 4 + 4
    second_offset_pos = second.info_pos + 8 + len(second.name.encode()) + 4 + 8 * len(second.dims) + 4
    first_key_len_pos = 24
    return {
        "version 1": (4, struct.pack("<I", 1)),
        "version 4": (4, struct.pack("<I", 4)),
        "tensor count 2^63": (8, _u64(1 << 63)),
        "tensor count = file size": (8, _u64(len(raw))),
        "metadata count 2^40": (16, _u64(1 << 40)),
        "metadata count + 1": (16, _u64(struct.unpack_from("<Q", raw, 16)[0] + 1)),
        "key length 2^62": (first_key_len_pos, _u64(1 << 62)),
        "key length past the end": (first_key_len_pos, _u64(len(raw))),
        "token array length 2^60": (tokens_count_pos, _u64(1 << 60)),
        "token array length + 1000": (tokens_count_pos, _u64(struct.unpack_from("<Q", raw, tokens_count_pos)[0] + 1000)),
        "tensor name length 2^63": (first.info_pos, _u64(1 << 63)),
        "dimension count 5": (n_dims_pos, struct.pack("<I", 5)),
        "dimension count 2^32-1": (n_dims_pos, struct.pack("<I", (1 << 32) - 1)),
        "dimension count 0": (n_dims_pos, struct.pack("<I", 0)),
        "dimension 2^62": (dims_pos, _u64(1 << 62)),
        "dimension 2^32": (dims_pos, _u64(1 << 32)),
        "dimension 0": (dims_pos, _u64(0)),
        "type code 4 (removed Q4_2)": (type_pos, struct.pack("<I", 4)),
        "type code 99": (type_pos, struct.pack("<I", 99)),
        "type code 2^31": (type_pos, struct.pack("<I", 1 << 31)),
        "type F16 for F32": (type_pos, struct.pack("<I", 1)),
        "offset past the end": (offset_pos, _u64(len(raw))),
        "offset 2^63": (offset_pos, _u64(1 << 63)),
        "offset misaligned": (offset_pos, _u64(struct.unpack_from("<Q", raw, offset_pos)[0] + 1)),
        "offsets overlap": (second_offset_pos, raw[offset_pos:offset_pos + 8]),
    }


GGUF_EDITS = [
    "version 1", "version 4", "tensor count 2^63", "tensor count = file size", "metadata count 2^40",
    "metadata count + 1", "key length 2^62", "key length past the end", "token array length 2^60",
    "token array length + 1000", "tensor name length 2^63", "dimension count 5", "dimension count 2^32-1",
    "dimension count 0", "dimension 2^62", "dimension 2^32", "dimension 0", "type code 4 (removed Q4_2)",
    "type code 99", "type code 2^31", "type F16 for F32", "offset past the end", "offset 2^63",
    "offset misaligned", "offsets overlap",
]


@pytest.mark.parametrize("gguf_edit", GGUF_EDITS)
def test_gguf_hostile_fields(tiny_gguf, tmp_path, gguf_edit):
    raw = tiny_gguf[0]
    pos, value = _gguf_edits(raw)[gguf_edit]
    mutated = raw[:pos] + value + raw[pos + len(value):]
    path = _gguf_case(tmp_path, mutated)
    _, error = attempt(read_gguf, path, path)
    assert error is not None, f"{gguf_edit}: read without an error"


@pytest.mark.parametrize("edit", ["tensor count 2^63", "dimension 2^62", "type code 99", "offset past the end"])
def test_load_model_refuses_hostile_gguf_in_one_line(tiny_gguf, tmp_path, edit, capsys):
    """The whole front door: `sj-jax info FILE` ends in one line naming the file, exit code 2."""
    from sj_jax.cli import main

    raw = tiny_gguf[0]
    pos, value = _gguf_edits(raw)[edit]
    path = _gguf_case(tmp_path, raw[:pos] + value + raw[pos + len(value):])
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sj-jax: error: {path}: "), err


# --------------------------------------------------------------------------------------- safetensors

def _header(data: bytes) -> dict | None:
    try:
        n = struct.unpack_from("<Q", data, 0)[0]
        header = json.loads(data[8:8 + n])
    except (ValueError, struct.error, UnicodeDecodeError):
        return None
    return {k: v for k, v in header.items() if k != "__metadata__"} if isinstance(header, dict) else None


def _st_ranges(data: bytes) -> dict:
    n = struct.unpack_from("<Q", data, 0)[0]
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in _header(data).items()}


def _st_case(folder: Path, tmp_path: Path, data: bytes) -> Path:
    case = tmp_path / "case"
    case.mkdir(exist_ok=True)
    (case / "config.json").write_bytes((folder / "config.json").read_bytes())
    (case / "model.safetensors").write_bytes(data)
    return case


@settings(max_examples=400, **FUZZ)
@given(st.data())
def test_safetensors_bit_flips(tiny_hf, tmp_path, data):
    folder, raw, tensors = tiny_hf
    header_end = 8 + struct.unpack_from("<Q", raw, 0)[0]
    limit = data.draw(st.sampled_from([header_end, len(raw)]))
    pos = data.draw(st.integers(0, limit - 1))
    mutated = bytearray(raw)
    mutated[pos] ^= 1 << data.draw(st.integers(0, 7))
    case = _st_case(folder, tmp_path, bytes(mutated))
    result, error = attempt(read_safetensors, case, case / "model.safetensors")
    if error is None and pos < header_end:
        assert _header(bytes(mutated)) == _header(raw), "a corrupted header was read without an error"
    _assert_same_layout_or_error((None, tensors), result, error, range(pos, pos + 1), _st_ranges(raw))


@settings(max_examples=200, **FUZZ)
@given(st.data())
def test_safetensors_truncations_and_splices(tiny_hf, tmp_path, data):
    folder, raw, tensors = tiny_hf
    n = len(raw)
    kind = data.draw(st.sampled_from(["truncate", "overwrite", "insert", "delete"]))
    length = data.draw(st.integers(1, 64))
    at = data.draw(st.integers(0, n - length))
    chunk = raw[data.draw(st.integers(0, n - length)):][:length]
    mutated = {"truncate": raw[:at], "overwrite": raw[:at] + chunk + raw[at + length:],
               "insert": raw[:at] + chunk + raw[at:], "delete": raw[:at] + raw[at + length:]}[kind]
    case = _st_case(folder, tmp_path, mutated)
    result, error = attempt(read_safetensors, case, case / "model.safetensors")
    if kind != "overwrite":
        assert error is not None, f"a {kind} at {at} of a {n}-byte file went unnoticed"
    elif error is None:
        header_end = 8 + struct.unpack_from("<Q", raw, 0)[0]
        if at < header_end:
            assert _header(mutated) == _header(raw)
        _assert_same_layout_or_error((None, tensors), result, error, range(at, at + length), _st_ranges(raw))


def _st_with_header(header: dict | bytes, tail: bytes, length: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + tail


def _hostile_st(raw: bytes) -> dict[str, bytes]:
    n = struct.unpack_from("<Q", raw, 0)[0]
    header = json.loads(raw[8:8 + n])
    tail = raw[8 + n:]
    name = next(k for k in header if k != "__metadata__" and header[k]["shape"] == [64])
    big = next(k for k in header if k != "__metadata__" and len(header[k]["shape"]) == 2)

    def edit(key, field, value):
        h = json.loads(json.dumps(header))
        h[key][field] = value
        return _st_with_header(h, tail)

    return {
        "header length 2^63": _st_with_header(raw[8:8 + n], tail, 1 << 63),
        "header length past the end": _st_with_header(raw[8:8 + n], tail, len(raw)),
        "header length 0": _st_with_header(b"", raw[8:]),
        "header not JSON": _st_with_header(b"{" * n, tail),
        "header a list": _st_with_header(b"[1, 2, 3]", tail),
        "dtype X99": edit(name, "dtype", "X99"),
        "dtype F16 for F32": edit(name, "dtype", "F16"),
        "shape with 2^40 elements": edit(big, "shape", [1 << 20, 1 << 20]),
        "shape with 64 dimensions": edit(name, "shape", [1] * 63 + [64]),
        "negative dimension": edit(name, "shape", [-64]),
        "offsets past the end": edit(name, "data_offsets", [len(tail), len(tail) + 256]),
        "offsets reversed": edit(name, "data_offsets", header[name]["data_offsets"][::-1]),
        "offsets overlap": edit(name, "data_offsets", header[big]["data_offsets"][:1] + [
            header[big]["data_offsets"][0] + 256]),
        "offsets 2^64": edit(name, "data_offsets", [0, 1 << 64]),
    }


ST_EDITS = ["header length 2^63", "header length past the end", "header length 0", "header not JSON",
            "header a list", "dtype X99", "dtype F16 for F32", "shape with 2^40 elements",
            "shape with 64 dimensions", "negative dimension", "offsets past the end", "offsets reversed",
            "offsets overlap", "offsets 2^64"]


@pytest.mark.parametrize("edit", ST_EDITS)
def test_safetensors_hostile_fields(tiny_hf, tmp_path, edit):
    folder, raw, _ = tiny_hf
    case = _st_case(folder, tmp_path, _hostile_st(raw)[edit])
    _, error = attempt(read_safetensors, case, case / "model.safetensors")
    assert error is not None, f"{edit}: read without an error"
