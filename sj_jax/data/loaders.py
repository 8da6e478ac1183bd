"""Public preference and SFT data sets -> our canonical rows. `datasets` reads the files, offline:
JSON Lines (`.jsonl`/`.json`), one JSON array of objects (`.json`) or Parquet.

Canonical rows (plain, JSON-serialisable dicts):
- SFT: `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], "id": str}`,
  ending with an assistant turn (what `sft_example` takes).
- Pair: `{"prompt": str | messages, "chosen": str, "rejected": str, "id": str, "subset": str}`,
  plus `"by_principle": {name: +1|-1}` for UltraFeedback (what `pair_example` takes).

Every row read is either kept or counted in a `LoadReport` under the reason it was skipped. A file
`datasets` cannot read, a missing required field (absent or null) and a value of the wrong type
are each a `DataError` naming `file:line` (`file:row N` for Parquet, N from 0) and the field; with
`strict=True` so is every defect that would otherwise be skipped.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import glob
import inspect
import json
import logging
import math
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import datasets

from sj_jax.core.errors import DataError
from sj_jax.core.jsonl import read_jsonl
from sj_jax.data.hh_rlhf import parse_hh_dialogue

JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
ROLES = ("system", "user", "assistant")
# The annotation keys of the UltraFeedback release; the same names as the judge's default principles.
UF_PRINCIPLES = ("helpfulness", "honesty", "truthfulness", "instruction_following")
UF_PAIRINGS = ("all", "best_vs_worst", "best_vs_random")

# Bytes per chunk of the `datasets` JSON reader (its default); a module constant so tests can make
# small files span several chunks.
_JSON_CHUNK_BYTES = 10 << 20
_BETWEEN_ITEMS = re.compile(r"[\s,]*")  # what may stand between the items of a valid JSON array
_KINDS = ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array"), (dict, "an object"))


# --------------------------------------------------------------------------------------- reading


class _Row(NamedTuple):
    where: str  # "file:line" or "file:row N"
    number: int  # the line (JSON) or row index (Parquet): the default id's suffix
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
    if path.suffix.lower() in JSON_SUFFIXES:
        rows, numbers, where = *_read_json(path), f"{path}:"
    elif path.suffix.lower() in PARQUET_SUFFIXES:
        try:
            rows = _dataset_rows(datasets.Dataset.from_parquet, path)
        except Exception as e:  # noqa: BLE001 - a corrupt file fails deep inside pyarrow
            raise DataError(f"{path}: cannot read as Parquet: {_cause(e)}") from e
        numbers, where = range(len(rows)), f"{path}:row "
    else:
        known = ", ".join(JSON_SUFFIXES + PARQUET_SUFFIXES)
        raise DataError(f"{path}: unknown file type {path.suffix!r}; expected one of {known}")
    if not rows:
        raise DataError(f"{path}: no rows")
    return [_Row(f"{where}{n}", n, row) for n, row in zip(numbers, rows, strict=True)]


def _read_json(path: Path) -> tuple[list[dict], list[int]]:
    """The rows of a JSON Lines file or JSON array, and the line each starts on. `datasets` reads
    strictly first: a field whose JSON type changes fails, where by default it may turn values into
    JSON text ('x' -> '"x"'). Strictly, objects lacking keys that others at their place have come
    back with those keys as None; a file with such is read again the default way, which gives
    them back as they are. Rows that look like agent traces are read as they are, not rewritten."""
    with open(path, "rb") as f:
        is_array = f.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()[:1] == b"["
    read = functools.partial(_dataset_rows, datasets.Dataset.from_json, path, chunksize=_JSON_CHUNK_BYTES,
                             parse_agent_traces=False)
    try:
        rows = read(on_mixed_types=None)
        if any(_none_inside(row) for row in rows):
            rows = read()
    except Exception as e:  # noqa: BLE001 - datasets raises many types; each becomes a DataError
        raise _json_error(path, is_array, e) from e
    if is_array:
        lines = [n for n, _ in _array_items(path)]
    else:
        with open(path, "rb") as f:
            lines = [n for n, line in enumerate(f, 1) if line.strip()]
    if len(rows) != len(lines):
        raise DataError(f"{path}: datasets read {len(rows)} rows from {len(lines)} "
                        f"{'array items' if is_array else 'non-blank lines'}; expected one JSON object each")
    return rows, lines


def _dataset_rows(read: Callable[..., datasets.Dataset], path: Path, **config: Any) -> list[dict]:
    """The file's rows by `read`, `datasets.Dataset.from_json` or `from_parquet` (offline: unlike
    `load_dataset`, they make no network call), with no progress bars, and no error log for
    failures that we report ourselves. The builder writes an Arrow file even with
    `keep_in_memory`; it goes to a temporary cache removed on return, so nothing is left in the
    user's cache and a stale cache never answers for an edited file."""
    bars_were_off, logger = datasets.are_progress_bars_disabled(), logging.getLogger("datasets")
    level = logger.level
    datasets.disable_progress_bars()
    logger.setLevel(logging.CRITICAL)
    try:
        with tempfile.TemporaryDirectory(prefix="sj_jax_datasets_") as cache:
            # The path is a glob pattern to datasets: one with [ ] * ? must be escaped to name itself.
            return read(glob.escape(str(path.resolve())), keep_in_memory=True, cache_dir=cache, **config).to_list()
    finally:
        logger.setLevel(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _none_inside(value: Any, nested: bool = False) -> bool:
    """Whether an object below the top level holds a None (pyarrow gives the objects at one place
    all keys any of them has, None where one lacks a key)."""
    if isinstance(value, dict):
        return any((nested and v is None) or _none_inside(v, True) for v in value.values())
    return isinstance(value, list) and any(_none_inside(v, True) for v in value)


def _array_items(path: Path) -> list[tuple[int, Any]]:
    """(line it starts on, item) for each item of a file holding one JSON array, by `json`; an
    error names its line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
        json.loads(text)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        problem = "the JSON array is not closed" if e.pos >= len(text.rstrip()) else e.msg
        raise DataError(f"{path}:{e.lineno}: not valid JSON: {problem}") from None
    decoder, items, line, counted, pos = json.JSONDecoder(), [], 1, 0, text.index("[") + 1
    while (pos := _BETWEEN_ITEMS.match(text, pos).end()) < len(text) and text[pos] != "]":
        line, counted = line + text.count("\n", counted, pos), pos
        item, pos = decoder.raw_decode(text, pos)
        if not isinstance(item, dict):
            raise DataError(f"{path}:{line}: expected a JSON object in the array, got {type(item).__name__}")
        items.append((line, item))
    if not items:
        raise DataError(f"{path}: no rows")
    return items


def _json_error(path: Path, is_array: bool, e: Exception) -> DataError:
    """The `DataError` for a JSON file `datasets` cannot read, read again with `json` to name the
    line: one that is no JSON object or not UTF-8 (`read_jsonl`), else the first that breaks the
    schema `datasets` keeps, or gives a key twice."""
    if is_array:  # datasets reads an array as one chunk
        found = _schema_problem(_array_items(path), math.inf)
    else:
        with open(path, "rb") as f:  # datasets takes the schema from its first chunk: these lines
            head = f.read(_JSON_CHUNK_BYTES) + f.readline()
        first_chunk = head.count(b"\n") + (not head.endswith(b"\n"))
        found = _schema_problem(read_jsonl(path), first_chunk) or _duplicate_key(path)
    if found:
        return DataError(f"{path}:{found[0]}: {found[1]} (datasets: {_cause(e)})")
    return DataError(f"{path}: datasets cannot read this file: {_cause(e)}")


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


def _schema_problem(parsed: Sequence[tuple[int, dict]], first_chunk: float) -> tuple[int, str] | None:
    """(line, problem) for the first row that breaks the schema `datasets` holds to: a field (at any
    depth) of another JSON type than on an earlier line (null goes with all, integers with
    fractions), or, past the lines of its first chunk, whose types it keeps, a field first given a
    value, or a fraction where the first chunk held integers."""
    seen: dict[str, tuple[str, int]] = {}
    fractions: set[str] = set()
    for n, row in parsed:
        for field, value in _leaves(row, ""):
            kind = next(name for types, name in _KINDS if isinstance(value, types))
            if field not in seen and n > first_chunk:
                return n, (f"field {field!r} first has a value here, after rows without one; datasets cannot "
                           "read that past its first chunk: give the field in every row, null where it has no value")
            first = seen.setdefault(field, (kind, n))
            if first[0] != kind:
                return n, (f"field {field!r} is {kind} here but {first[0]} on line {first[1]}; a field must keep "
                           "one type in every row")
            if isinstance(value, float) and n <= first_chunk:
                fractions.add(field)
            elif isinstance(value, float) and field not in fractions:
                return n, f"field {field!r} holds a fraction here but integers before; write all its values as floats"
    return None


def _duplicate_key(path: Path) -> tuple[int, str] | None:
    """(line, problem) for the first object giving a key twice: `json` keeps the last, `datasets` fails."""
    twice: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict:
        keys = [k for k, _ in items]
        twice.extend(k for k in keys if keys.count(k) > 1)
        return dict(items)

    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                json.loads(line, object_pairs_hook=pairs)
            if twice:
                return n, f"key {twice[0]!r} appears twice in one object"
    return None


def _cause(e: BaseException) -> str:
    """The message of the error behind `e`, on one line. Followed through explicit causes, and
    through implicit ones only out of `datasets`' own wrappers: pyarrow's error is the telling one,
    not the pandas fallback `datasets` tried after it."""
    while inner := e.__cause__ or (e.__context__ if type(e).__module__.startswith("datasets") else None):
        e = inner
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


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
