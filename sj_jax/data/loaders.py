"""Public preference and SFT data sets -> our canonical rows, read through `datasets` from local
JSON Lines (`.jsonl`/`.json`), JSON arrays (`.json`) or Parquet files, offline.

Canonical rows (plain, JSON-serialisable dicts):
- SFT: `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], "id": str}`,
  ending with an assistant turn (what `sft_example` takes).
- Pair: `{"prompt": str | messages, "chosen": str, "rejected": str, "id": str, "subset": str}`,
  plus `"by_principle": {name: +1|-1}` for UltraFeedback (what `pair_example` takes).

Every row read is either kept or counted in a `LoadReport` under the reason it was skipped. A
missing required field (absent or null) or a value of the wrong type is always a `DataError`
naming `file:line` (`file:row N` for Parquet, N from 0) and the field; with `strict=True` so is
every defect that would otherwise be skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import inspect
import json
import logging
import math
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from sj_jax.data.hh_rlhf import parse_hh_dialogue
from sj_jax.data.jsonl import DataError, read_jsonl

JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
ROLES = ("system", "user", "assistant")
# The annotation keys of the UltraFeedback release; the same names as the judge's default principles.
UF_PRINCIPLES = ("helpfulness", "honesty", "truthfulness", "instruction_following")
UF_PAIRINGS = ("all", "best_vs_worst", "best_vs_random")

# Bytes per chunk of the `datasets` JSON reader (its default); a module constant so tests can make
# small files span several chunks.
_JSON_CHUNK_BYTES = 10 << 20


# --------------------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class _Row:
    where: str  # "file:line" or "file:row N"
    number: int  # the line (JSONL) or row index (Parquet): the default id's suffix
    row: dict[str, Any]


def read_rows(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """`(where, row)` for every row of a JSON Lines (`.jsonl`/`.json`: one object per line, blank
    lines allowed), JSON-array (`.json`: one array of objects) or Parquet file, read with
    `datasets`. `where` is `"file:line"` (1-based; for an array, the line its object starts on) or
    `"file:row N"` (0-based). Fields a row lacks come back as None, as `datasets` fills them."""
    return [(r.where, r.row) for r in _read(path)]


def _read(path: str | Path) -> list[_Row]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return _read_json_lines(path)
    if suffix in PARQUET_SUFFIXES:
        try:
            rows = _load_dataset("parquet", path).to_list()
        except Exception as e:  # noqa: BLE001 - a corrupt file fails deep inside pyarrow
            raise DataError(f"{path}: cannot read as Parquet: {_root_message(e)}") from e
        if not rows:
            raise DataError(f"{path}: no rows")
        return [_Row(f"{path}:row {i}", i, row) for i, row in enumerate(rows)]
    known = ", ".join(JSON_SUFFIXES + PARQUET_SUFFIXES)
    raise DataError(f"{path}: unknown file type {path.suffix!r}; expected one of {known}")


def _json_array(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line where the item starts, item) for a file holding one JSON array of objects (e.g. the
    Stanford Alpaca release); errors name the line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{bad_line}: not UTF-8 ({e.reason} at byte {e.start})") from None
    decoder = json.JSONDecoder()

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def line(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    pos = skip(text.index("[") + 1)
    items: list[tuple[int, dict[str, Any]]] = []
    while pos < len(text) and text[pos] != "]":
        try:
            item, end = decoder.raw_decode(text, pos)
        except ValueError as e:
            raise DataError(f"{path}:{line(pos)}: not valid JSON inside the array: {e.msg}") from None
        if not isinstance(item, dict):
            raise DataError(f"{path}:{line(pos)}: expected a JSON object in the array, got {type(item).__name__}")
        items.append((line(pos), item))
        pos = skip(end)
        if pos >= len(text):
            break  # reported as not closed below
        if text[pos] == ",":
            pos = skip(pos + 1)
            if pos < len(text) and text[pos] == "]":
                raise DataError(f"{path}:{line(pos)}: a trailing comma before the end of the JSON array")
        elif text[pos] != "]":
            raise DataError(f"{path}:{line(pos)}: expected ',' or ']' in the JSON array")
    if pos >= len(text):
        raise DataError(f"{path}:{line(pos)}: the JSON array is not closed")
    if skip(pos + 1) < len(text):
        raise DataError(f"{path}:{line(skip(pos + 1))}: text after the end of the JSON array")
    if not items:
        raise DataError(f"{path}: no rows")
    return items


def _read_json_lines(path: Path) -> list[_Row]:
    """JSON Lines, or one JSON array of objects."""
    with open(path, "rb") as f:
        is_array = f.read(4096).lstrip()[:1] == b"["
    # A Python pass first: it gives the line numbers, names malformed and non-UTF-8 lines, and
    # rejects a field whose type changes, which `datasets` does not always report: past its first
    # chunk such a change can silently turn values into JSON text ('x' -> '"x"', 5 -> '5').
    parsed = _json_array(path) if is_array else read_jsonl(path)
    _check_field_types(path, parsed)
    try:
        rows = _load_dataset("json", path).to_list()
    except Exception as e:  # noqa: BLE001 - datasets raises many types; each becomes a located DataError
        raise _explain_json_failure(path, parsed, e) from e
    if len(rows) != len(parsed):
        raise DataError(f"{path}: datasets read {len(rows)} rows from {len(parsed)} "
                        f"{'array items' if is_array else 'non-blank lines'}; expected one JSON object per "
                        f"{'item' if is_array else 'line'}")
    return [_Row(f"{path}:{n}", n, row) for (n, _), row in zip(parsed, rows)]


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars, and no error log for failures that we report ourselves."""
    import datasets

    bars_were_off = datasets.are_progress_bars_disabled()
    logger = logging.getLogger("datasets")
    level = logger.level
    datasets.disable_progress_bars()
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Local files only: without offline mode `load_dataset` makes a network look-up first."""
    import datasets.config as dconf

    saved = {k: getattr(dconf, k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if hasattr(dconf, k)}
    for k in saved:
        setattr(dconf, k, True)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(dconf, k, v)


def _load_dataset(builder: str, path: Path) -> Any:
    """The whole file as one in-memory `datasets.Dataset`. The builder writes an Arrow file even
    with `keep_in_memory`; it goes to a temporary cache removed on return, so nothing is left in
    the user's cache and a stale cache can never answer for an edited file."""
    import datasets
    from datasets.packaged_modules.json.json import JsonConfig

    kwargs: dict[str, Any] = {}
    if builder == "json":
        kwargs["chunksize"] = _JSON_CHUNK_BYTES
        fields = {f.name for f in dataclasses.fields(JsonConfig)}
        if "parse_agent_traces" in fields:
            # Otherwise rows with a string `type` and a free-form `message` are taken for agent
            # traces and rewritten (or fail when the optional converter is not installed).
            kwargs["parse_agent_traces"] = False
    with tempfile.TemporaryDirectory(prefix="sj_jax_datasets_") as cache, _quiet_datasets(), _offline():
        # data_files is a glob pattern: a path with [ ] * ? must be escaped to name itself.
        return datasets.load_dataset(builder, data_files=glob.escape(str(path.resolve())), split="train",
                                     keep_in_memory=True, cache_dir=cache, **kwargs)


def _kind(value: Any) -> str:
    """The JSON type of a parsed value, with its article."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _leaves(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(field path, value) for a value and everything nested in it; nulls are skipped."""
    if value is None:
        return
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v, f"{path}[]")


def _check_field_types(path: Path, parsed: Sequence[tuple[int, dict]]) -> None:
    """`DataError` at the first line where a field (at any depth) holds another JSON type than on
    the earlier lines; null goes with every type, integers with fractions."""
    seen: dict[str, tuple[str, int]] = {}
    for n, row in parsed:
        for field, value in _leaves(row, ""):
            kind = _kind(value)
            first = seen.setdefault(field, (kind, n))
            if first[0] != kind:
                raise DataError(f"{path}:{n}: field {field!r} is {kind} here but {first[0]} on line {first[1]}; "
                                "a field must keep one type in every row")


def _root_message(e: BaseException) -> str:
    """The message of the error behind `e`, on one line. Followed through explicit causes, and
    through implicit ones only out of `datasets`' own wrappers: pyarrow's error is the telling one,
    not the pandas fallback `datasets` tried after it."""
    while True:
        inner = e.__cause__ or (e.__context__ if type(e).__module__.startswith("datasets") else None)
        if inner is None:
            break
        e = inner
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def _explain_json_failure(path: Path, parsed: Sequence[tuple[int, dict]], e: Exception) -> DataError:
    """A located `DataError` for a file that parses line by line but not as one `datasets` table.
    Arrow fixes the schema from the first chunk, so what fails there is a field first given a
    value later (a new key, or a value after nulls), or a fraction after integers."""
    cause = _root_message(e)
    finders = [_first_late_field, _first_fraction_after_integers]
    if "truncated" in cause or "type int" in cause:
        finders.reverse()
    if "specified twice" in cause:
        finders.insert(0, lambda _: _first_duplicate_key(path))
    for find in finders:
        found = find(parsed)
        if found:
            n, problem = found
            return DataError(f"{path}:{n}: {problem} (datasets: {cause})")
    return DataError(f"{path}: datasets cannot read this file: {cause}")


def _first_late_field(parsed: Sequence[tuple[int, dict]]) -> tuple[int, str] | None:
    seen: set[str] = set()
    for n, row in parsed:
        fields = {field for field, _ in _leaves(row, "")}
        late = sorted(fields - seen)
        if seen and late:
            return n, (f"field {late[0]!r} first has a value here, after rows without one; datasets cannot "
                       "read that past its first chunk: give the field in every row, null where it has no value")
        seen |= fields
    return None


def _first_duplicate_key(path: Path) -> tuple[int, str] | None:
    def pairs(items: list[tuple[str, Any]]) -> dict:
        keys = [k for k, _ in items]
        for k in keys:
            if keys.count(k) > 1:
                raise KeyError(k)
        return dict(items)

    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                json.loads(line, object_pairs_hook=pairs)
            except KeyError as e:
                return n, f"key {e.args[0]!r} appears twice in one object"
    return None


def _first_fraction_after_integers(parsed: Sequence[tuple[int, dict]]) -> tuple[int, str] | None:
    integers: set[str] = set()
    for n, row in parsed:
        for field, value in _leaves(row, ""):
            if isinstance(value, float) and field in integers:
                return n, f"field {field!r} holds a fraction here but integers before; write all its values as floats"
            if isinstance(value, int) and not isinstance(value, bool):
                integers.add(field)
    return None


# --------------------------------------------------------------------------------------- report


@dataclasses.dataclass
class LoadReport:
    """What a loader read, kept and skipped. `rows`: source rows read; `kept`: canonical rows
    produced; `skipped`: reason -> count. Source rows are counted, except for UltraFeedback, where
    `empty_response`/`unrated_completion` count completions and `tied_score`/`identical_pair` count
    candidate pairs (one per source row under best_vs_*), since one row yields several pairs."""

    rows: int = 0
    kept: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "kept": self.kept, "skipped": dict(sorted(self.skipped.items()))}


class _Skip(Exception):
    """A row (or completion) left out: `reason` for the report, `detail` for strict mode."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _skip_or_raise(report: LoadReport, skip: _Skip, where: str, strict: bool) -> None:
    if strict:
        raise DataError(f"{where}: {skip.detail} ({skip.reason}; strict)")
    report.skip(skip.reason)


# --------------------------------------------------------------------------------------- fields


def _get(row: dict, field: str, where: str, label: str | None = None) -> Any:
    """`row[field]`; `label` is the field's full path for the message."""
    value = row.get(field)
    if value is None:  # datasets gives absent fields as None: the two cannot be told apart
        raise DataError(f"{where}: missing field {label or field!r}")
    return value


def _typed(value: Any, types: type | tuple[type, ...], what: str, where: str, label: str) -> Any:
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise DataError(f"{where}: field {label!r} must be {what}, got {type(value).__name__}")
    return value


def _string(row: dict, field: str, where: str, label: str | None = None) -> str:
    label = label or field
    return _typed(_get(row, field, where, label), str, "a string", where, label)


def _optional_string(row: dict, field: str, where: str, default: str) -> str:
    value = row.get(field)
    return default if value is None else _typed(value, str, "a string", where, field)


def _nonempty(text: str, reason: str, label: str) -> str:
    if not text.strip():
        raise _Skip(reason, f"field {label!r} is empty")
    return text


def _row_id(row: dict, where: str, stem: str, number: int) -> str:
    value = row.get("id")
    if value is None:
        return f"{stem}-{number}"
    _typed(value, (str, int, float), "a string or a number", where, "id")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # datasets turns integer ids into floats when one row has a fraction
    return str(value)


def _messages(value: Any, where: str, label: str) -> list[dict[str, str]]:
    """Validated `{"role", "content"}` copies (other keys, e.g. datasets' None fillers, dropped)."""
    _typed(value, list, "a list of messages", where, label)
    out = []
    for j, m in enumerate(value):
        _typed(m, dict, "an object", where, f"{label}[{j}]")
        role = _string(m, "role", where, f"{label}[{j}].role")
        content = _string(m, "content", where, f"{label}[{j}].content")
        if role not in ROLES:
            raise DataError(f"{where}: field '{label}[{j}].role' is {role!r}; expected one of {', '.join(ROLES)}")
        out.append({"role": role, "content": content})
    return out


def _sft_conversation(messages: list[dict[str, str]], label: str) -> list[dict[str, str]]:
    """The conversation if it is trainable: not empty, no empty assistant turn, ends with one."""
    if not messages:
        raise _Skip("empty_conversation", f"field {label!r} has no messages")
    for j, m in enumerate(messages):
        if m["role"] == "assistant":
            _nonempty(m["content"], "empty_response", f"{label}[{j}].content")
    if messages[-1]["role"] != "assistant":
        raise _Skip("no_final_assistant", f"field {label!r} does not end with an assistant message")
    return messages


def _load(path: str | Path, strict: bool, convert: Callable[[_Row, str], list[dict]],
          report: LoadReport | None = None) -> tuple[list[dict], LoadReport]:
    """Every row through `convert(row, file stem)`; a `_Skip` is counted (or raised when strict).
    `report`: one `convert` also counts into (skips below the row level)."""
    stem = Path(path).stem
    report = LoadReport() if report is None else report
    out: list[dict] = []
    for r in _read(path):
        report.rows += 1
        try:
            out.extend(convert(r, stem))
        except _Skip as skip:
            _skip_or_raise(report, skip, r.where, strict)
    report.kept = len(out)
    return out, report


# --------------------------------------------------------------------------------------- formats


def load_hh_rlhf(path: str | Path, strict: bool = False) -> tuple[list[dict], LoadReport]:
    """Anthropic HH-RLHF: rows `{"chosen": dialogue, "rejected": dialogue}` (optionally `id`), each
    dialogue `"\\n\\nHuman: ...\\n\\nAssistant: ..."`. The turns both share are the prompt (a
    messages list); the final assistant turns are chosen and rejected. Subset "hh-rlhf"; id from
    the row or `"<file stem>-<line>"`. Skips: unparseable_dialogue, diverging_dialogues,
    identical_pair, empty_response."""

    def convert(r: _Row, stem: str) -> list[dict]:
        texts = {f: _string(r.row, f, r.where) for f in ("chosen", "rejected")}
        row_id = _row_id(r.row, r.where, stem, r.number)
        turns = {f: _dialogue(text, f) for f, text in texts.items()}
        prompt, chosen, rejected = _split_pair(turns["chosen"], turns["rejected"])
        return [{"prompt": prompt, "chosen": chosen, "rejected": rejected, "id": row_id, "subset": "hh-rlhf"}]

    return _load(path, strict, convert)


def _dialogue(text: str, field: str) -> list[dict[str, str]]:
    try:
        turns = parse_hh_dialogue(text)
    except ValueError as e:
        raise _Skip("unparseable_dialogue", f"field {field!r}: {e}") from None
    if turns[-1]["role"] != "assistant":
        raise _Skip("unparseable_dialogue", f"field {field!r} does not end with an Assistant turn")
    if turns[0]["role"] != "user":
        raise _Skip("unparseable_dialogue", f"field {field!r} does not start with a Human turn")
    return turns


def _split_pair(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    """(shared prompt, chosen reply, rejected reply) of two dialogues that differ in their last turn only."""
    if chosen == rejected:
        raise _Skip("identical_pair", "fields 'chosen' and 'rejected' hold the same dialogue")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if not (shared == len(chosen) - 1 == len(rejected) - 1):
        raise _Skip("diverging_dialogues", f"fields 'chosen' and 'rejected' differ before their last turn "
                                           f"(turn {shared} of {len(chosen)} and {len(rejected)})")
    prompt = chosen[:-1]
    return (prompt, _nonempty(chosen[-1]["content"], "empty_response", "chosen"),
            _nonempty(rejected[-1]["content"], "empty_response", "rejected"))


def load_rewardbench(path: str | Path, strict: bool = False) -> tuple[list[dict], LoadReport]:
    """RewardBench: rows `prompt` (str or messages), `chosen`, `rejected` (str), `subset`, `id`
    (kept; defaults "rewardbench" and `"<file stem>-<line>"`). Skips: empty_prompt,
    empty_response, identical_pair."""

    def convert(r: _Row, stem: str) -> list[dict]:
        prompt = _get(r.row, "prompt", r.where)
        chosen, rejected = (_string(r.row, f, r.where) for f in ("chosen", "rejected"))
        subset = _optional_string(r.row, "subset", r.where, "rewardbench")
        row_id = _row_id(r.row, r.where, stem, r.number)
        return [_pair(_prompt(prompt, r.where), chosen, rejected, row_id, subset)]

    return _load(path, strict, convert)


def _prompt(value: Any, where: str) -> str | list[dict[str, str]]:
    if isinstance(value, str):
        return _nonempty(value, "empty_prompt", "prompt")
    messages = _messages(value, where, "prompt")
    if not messages or not any(m["content"].strip() for m in messages):
        raise _Skip("empty_prompt", "field 'prompt' is empty")
    return messages


def _pair(prompt: str | list, chosen: str, rejected: str, row_id: str, subset: str) -> dict:
    _nonempty(chosen, "empty_response", "chosen")
    _nonempty(rejected, "empty_response", "rejected")
    if chosen == rejected:
        raise _Skip("identical_pair", "fields 'chosen' and 'rejected' are the same text")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "id": row_id, "subset": subset}


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The user turn of an Alpaca row: the instruction, then a blank line and the input if any."""
    return f"{instruction}\n\n{input}" if input.strip() else instruction


def load_alpaca(path: str | Path, strict: bool = False) -> tuple[list[dict], LoadReport]:
    """Alpaca: rows `instruction`, `input` (optional, may be ""), `output` -> SFT rows
    [user: `alpaca_prompt(instruction, input)`, assistant: output]. Skips: empty_prompt, empty_response."""

    def convert(r: _Row, stem: str) -> list[dict]:
        instruction, output = (_string(r.row, f, r.where) for f in ("instruction", "output"))
        extra = _optional_string(r.row, "input", r.where, "")
        row_id = _row_id(r.row, r.where, stem, r.number)
        _nonempty(instruction, "empty_prompt", "instruction")
        _nonempty(output, "empty_response", "output")
        messages = [{"role": "user", "content": alpaca_prompt(instruction, extra)},
                    {"role": "assistant", "content": output}]
        return [{"messages": messages, "id": row_id}]

    return _load(path, strict, convert)


def load_messages(path: str | Path, strict: bool = False) -> tuple[list[dict], LoadReport]:
    """Chat rows `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`
    (optionally `id`) -> SFT rows. Skips: empty_conversation, empty_response (an empty assistant
    turn), no_final_assistant."""

    def convert(r: _Row, stem: str) -> list[dict]:
        messages = _messages(_get(r.row, "messages", r.where), r.where, "messages")
        row_id = _row_id(r.row, r.where, stem, r.number)
        return [{"messages": _sft_conversation(messages, "messages"), "id": row_id}]

    return _load(path, strict, convert)


def pairs_to_sft(pair_rows: Sequence[dict]) -> list[dict]:
    """SFT rows (prompt + the chosen response) from canonical pair rows, keeping their ids."""
    out = []
    for row in pair_rows:
        prompt = row["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        out.append({"messages": messages + [{"role": "assistant", "content": row["chosen"]}], "id": row["id"]})
    return out


# ----------------------------------------------------------------------------------- UltraFeedback


@dataclasses.dataclass(frozen=True)
class _Completion:
    index: int
    response: str
    ratings: dict[str, float]  # numeric ratings only

    @property
    def score(self) -> float:
        return sum(self.ratings.values()) / len(self.ratings)


def load_ultrafeedback(path: str | Path, pairs: str = "all", seed: int = 0,
                       strict: bool = False) -> tuple[list[dict], LoadReport]:
    """openbmb/UltraFeedback: rows `{"instruction": str, "source": str, "completions": [{"model",
    "response": str, "annotations": {principle: {"Rating": "1".."5" or "N/A", ...}}, ...}]}`.
    A completion's score is the mean of its numeric ratings over `UF_PRINCIPLES`. `pairs`: "all"
    (every pair of different scores), "best_vs_worst", or "best_vs_random" (the best against a
    lower-scored one drawn with `seed`). `by_principle[p]` is +1 (chosen rated higher under p) or
    -1, omitted on ties and missing ratings. Subset: `source`, else "ultrafeedback"; ids
    `"<row id or file stem-line>-<chosen index>-<rejected index>"`. Skips: empty_prompt,
    too_few_completions; per completion empty_response, unrated_completion; per candidate pair
    identical_pair, tied_score (never an error: ties are no defect of the data)."""
    if pairs not in UF_PAIRINGS:
        raise DataError(f"ultrafeedback: pairs={pairs!r}; expected one of {', '.join(UF_PAIRINGS)}")
    report = LoadReport()
    return _load(path, strict, lambda r, stem: _uf_pairs(r, stem, pairs, seed, report, strict), report)


def _uf_pairs(r: _Row, stem: str, pairs: str, seed: int, report: LoadReport, strict: bool) -> list[dict]:
    instruction = _string(r.row, "instruction", r.where)
    subset = _optional_string(r.row, "source", r.where, "ultrafeedback")
    base_id = _row_id(r.row, r.where, stem, r.number)
    raw = _typed(_get(r.row, "completions", r.where), list, "a list", r.where, "completions")
    # Every completion is checked for missing fields and wrong types before anything is skipped.
    completions = [_uf_completion(c, i, r.where) for i, c in enumerate(raw)]
    _nonempty(instruction, "empty_prompt", "instruction")
    usable = []
    for c in completions:
        if isinstance(c, _Skip):
            _skip_or_raise(report, c, r.where, strict)
        else:
            usable.append(c)
    if len(usable) < 2:
        raise _Skip("too_few_completions", f"field 'completions' has {len(usable)} usable (of {len(raw)}); need 2")
    out = []
    for good, bad in _uf_candidates(usable, pairs, random.Random(f"{seed}:{r.number}"), report):
        if good.response == bad.response:
            _skip_or_raise(report, _Skip("identical_pair", f"completions {good.index} and {bad.index} are the "
                                                           "same text"), r.where, strict)
            continue
        row = _pair(instruction, good.response, bad.response, f"{base_id}-{good.index}-{bad.index}", subset)
        row["by_principle"] = {p: 1 if good.ratings[p] > bad.ratings[p] else -1 for p in UF_PRINCIPLES
                               if p in good.ratings and p in bad.ratings and good.ratings[p] != bad.ratings[p]}
        out.append(row)
    return out


def _uf_candidates(usable: list[_Completion], pairs: str, rng: random.Random,
                   report: LoadReport) -> list[tuple[_Completion, _Completion]]:
    """(better, worse) completion pairs by score; ties are counted, never paired."""
    if pairs == "all":
        out = []
        for i, a in enumerate(usable):
            for b in usable[i + 1:]:
                if a.score == b.score:
                    report.skip("tied_score")
                else:
                    out.append((a, b) if a.score > b.score else (b, a))
        return out
    best = max(usable, key=lambda c: c.score)  # the first of equal bests: deterministic
    worse = [c for c in usable if c.score < best.score]
    if not worse:
        report.skip("tied_score")
        return []
    if pairs == "best_vs_worst":
        return [(best, min(worse, key=lambda c: c.score))]
    return [(best, rng.choice(worse))]


def _uf_completion(c: Any, i: int, where: str) -> _Completion | _Skip:
    """A completion with its numeric ratings, or the `_Skip` saying why it cannot be paired."""
    label = f"completions[{i}]"
    _typed(c, dict, "an object", where, label)
    response = _string(c, "response", where, f"{label}.response")
    annotations = _typed(_get(c, "annotations", where, f"{label}.annotations"), dict, "an object", where,
                         f"{label}.annotations")
    ratings = {}
    for p in UF_PRINCIPLES:
        entry = annotations.get(p)
        if entry is None:
            continue
        _typed(entry, dict, "an object", where, f"{label}.annotations.{p}")
        rating = _uf_rating(entry.get("Rating"), where, f"{label}.annotations.{p}.Rating")
        if rating is not None:
            ratings[p] = rating
    if not response.strip():
        return _Skip("empty_response", f"field '{label}.response' is empty")
    if not ratings:
        return _Skip("unrated_completion", f"field {label!r} has no numeric rating")
    return _Completion(i, response, ratings)


def _uf_rating(value: Any, where: str, label: str) -> float | None:
    """A numeric rating, or None for "N/A", "" or null."""
    if value is None or (isinstance(value, str) and value.strip().upper() in ("", "N/A", "NA")):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
    else:
        number = math.nan
    if not math.isfinite(number):
        raise DataError(f"{where}: field {label!r} must be a number or 'N/A', got {value!r}")
    return number


# --------------------------------------------------------------------------------------- registry

FORMATS: dict[str, Callable[..., tuple[list[dict], LoadReport]]] = {
    "hh_rlhf": load_hh_rlhf,
    "ultrafeedback": load_ultrafeedback,
    "rewardbench": load_rewardbench,
    "alpaca": load_alpaca,
    "messages": load_messages,
}
# Formats whose rows are preference pairs; the others give SFT rows.
PAIR_FORMATS = frozenset({"hh_rlhf", "ultrafeedback", "rewardbench"})


def format_name(format: str) -> str:
    """The `FORMATS` key a format is written as (`-` may stand for `_`: "hh-rlhf")."""
    return format.strip().lower().replace("-", "_")


def load_source(format: str, path: str | Path, **options: Any) -> tuple[list[dict], LoadReport]:
    """`FORMATS[format_name(format)](path, **options)`; an unknown format or option is a
    `DataError` listing the known ones."""
    name = format_name(format)
    if name not in FORMATS:
        raise DataError(f"unknown data format {format!r}; known formats: {', '.join(sorted(FORMATS))}")
    loader = FORMATS[name]
    allowed = [p for p in inspect.signature(loader).parameters if p != "path"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(f"{name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
    return loader(path, **options)
