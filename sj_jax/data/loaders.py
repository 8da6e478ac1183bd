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
import itertools
import json
import logging
import math
import random
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

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

# datasets takes a JSON file's schema from its first chunk: the whole file, up to what pyarrow parses at once
# (an int32 of bytes), so that a field first given, or changing type, late in the file is read, or located.
_JSON_CHUNK_BYTES = 1 << 30
_BETWEEN_ITEMS = re.compile(r"[\s,]*")  # what may stand between the items of a valid JSON array
_JSON_KINDS = ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array"),
               (dict, "an object"))
_KIND_NAMES = {str: "a string", list: "a list", dict: "an object"}
_REQUIRED = object()


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
        except Exception as e:  # a corrupt file fails deep inside pyarrow
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
    the file in one chunk, strictly first: by default a field whose JSON type changes may come back
    as JSON text ('x' -> '"x"'). Strictly, objects lacking keys that others at their place have get
    those keys as None: a file with such is read again the default way, which gives them back as
    they are. Rows that look like agent traces are read as they are, not rewritten."""
    with open(path, "rb") as f:
        is_array = f.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()[:1] == b"["
    if is_array:  # `json` reads it first: datasets' ujson names no line for a syntax error
        items = _array_items(path)
        lines = [n for n, _ in items]
    else:
        with open(path, "rb") as f:
            items, lines = None, [n for n, line in enumerate(f, 1) if line.strip()]
    if not lines:
        raise DataError(f"{path}: no rows")
    read = functools.partial(_dataset_rows, datasets.Dataset.from_json, path, parse_agent_traces=False,
                             chunksize=min(path.stat().st_size + 1, _JSON_CHUNK_BYTES))
    try:
        rows = read(on_mixed_types=None)
        if any(_none_inside(row) for row in rows):
            rows = read()
    except Exception as e:  # datasets raises many types; each becomes a DataError
        raise _json_error(path, items, e) from e
    if len(rows) != len(lines):
        raise DataError(f"{path}: datasets read {len(rows)} rows from {len(lines)} "
                        f"{'array items' if is_array else 'non-blank lines'}; expected one JSON object each")
    return rows, lines


def _dataset_rows(read: Callable[..., datasets.Dataset], path: Path, **config: Any) -> list[dict]:
    """The file's rows by `read` (`Dataset.from_json`/`from_parquet`: offline, unlike `load_dataset`),
    with no progress bars nor error log (we report failures), in a temporary cache: the builder
    writes an Arrow file even `keep_in_memory`, to be left in no cache, stale for an edited file."""
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


def _array_items(path: Path) -> list[tuple[int, dict]]:
    """(line it starts on, item) for each object of a file holding one JSON array, by `json`; an
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
        line, counted = line + text.count("\n", counted, pos), pos  # counted on from the last item: linear
        item, pos = decoder.raw_decode(text, pos)
        if not isinstance(item, dict):
            raise DataError(f"{path}:{line}: expected a JSON object in the array, got {type(item).__name__}")
        items.append((line, item))
    return items


def _none_inside(value: Any, nested: bool = False) -> bool:
    """Whether an object below the top level holds a None (pyarrow gives the objects at one place
    all keys any of them has, None where one lacks a key)."""
    if isinstance(value, dict):
        return any((nested and v is None) or _none_inside(v, True) for v in value.values())
    return isinstance(value, list) and any(_none_inside(v, True) for v in value)


def _json_error(path: Path, items: list[tuple[int, dict]] | None, e: Exception) -> DataError:
    """The `DataError` for a JSON file `datasets` failed on (`e`), naming the line (`items`: an
    array's, else JSON Lines): one no JSON object or not UTF-8 (`read_jsonl`), giving a key twice,
    or a field (at any depth) of another JSON type than before (null goes with all, int with float)."""
    if items is None:
        items = read_jsonl(path)
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    if line.strip():
                        json.loads(line, object_pairs_hook=_unique_keys)
                except ValueError as twice:
                    return DataError(f"{path}:{n}: {twice} (datasets: {_cause(e)})")
    seen: dict[str, tuple[str, int]] = {}
    for n, row in items:
        for field, value in _leaves(row):
            kind = next(name for types, name in _JSON_KINDS if isinstance(value, types))
            first, line = seen.setdefault(field, (kind, n))
            if kind != first:
                return DataError(f"{path}:{n}: field {field!r} is {kind} here but {first} on line {line}; a field "
                                 f"must keep one type in every row (datasets: {_cause(e)})")
    return DataError(f"{path}: datasets cannot read this file: {_cause(e)}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A `json` object hook: a key given twice is an error (`json` keeps the last; pyarrow fails)."""
    keys = [k for k, _ in pairs]
    if twice := [k for k in keys if keys.count(k) > 1]:
        raise ValueError(f"key {twice[0]!r} appears twice in one object")
    return dict(pairs)


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(field path, value) for a value and everything nested in it; nulls are left out."""
    if value is not None:
        yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v, f"{path}[]")


def _cause(e: BaseException) -> str:
    """The message of the error behind `e`, on one line: through explicit causes, and implicit ones only out of
    `datasets`' wrappers (pyarrow's error tells, not the pandas fallback datasets tried after it)."""
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
    """A row (or completion) left out: `reason` for the report, the message for strict mode."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _skip_or_raise(report: LoadReport, skip: _Skip, where: str, strict: bool) -> None:
    if strict:
        raise DataError(f"{where}: {skip} ({skip.reason}; strict)")
    report.skip(skip.reason)


def _load(path: str | Path, strict: bool, convert: Callable[[_Row, str], list[dict]],
          report: LoadReport | None = None) -> tuple[list[dict], LoadReport]:
    """Every row through `convert(row, its id)`; a `_Skip` is counted (or raised when strict).
    `report`: one `convert` also counts into (skips below the row level)."""
    stem, report, out = Path(path).stem, LoadReport() if report is None else report, []
    for r in _read(path):
        report.rows += 1
        try:
            out.extend(convert(r, _row_id(r, stem)))
        except _Skip as skip:
            _skip_or_raise(report, skip, r.where, strict)
    report.kept = len(out)
    return out, report


# --------------------------------------------------------------------------------------- fields


def _typed(value: Any, kind: type | None, where: str, label: str, what: str = "") -> Any:
    """`value` if it is a `kind` (None: any); `label` is the field's full path for the message."""
    if kind is not None and not isinstance(value, kind):
        raise DataError(f"{where}: field {label!r} must be {what or _KIND_NAMES[kind]}, got {type(value).__name__}")
    return value


def _field(row: dict, name: str, where: str, kind: type | None = str, label: str | None = None,
           default: Any = _REQUIRED) -> Any:
    """`row[name]`, a `kind`. Absent and null are one to `datasets`: either gives `default`, an
    error where there is none."""
    value = row.get(name)
    if value is None and default is _REQUIRED:
        raise DataError(f"{where}: missing field {label or name!r}")
    return default if value is None else _typed(value, kind, where, label or name)


def _row_id(r: _Row, stem: str) -> str:
    """The row's `id` (a string or number), else `"<file stem>-<line or row>"`."""
    value = r.row.get("id")
    if value is None:
        return f"{stem}-{r.number}"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{r.where}: field 'id' must be a string or a number, got {type(value).__name__}")
    # datasets turns integer ids into floats when one row has a fraction
    return str(int(value) if isinstance(value, float) and value.is_integer() else value)


def _nonempty(text: str, reason: str, label: str) -> str:
    if not text.strip():
        raise _Skip(reason, f"field {label!r} is empty")
    return text


def _messages(value: Any, where: str, label: str) -> list[dict[str, str]]:
    """Validated `{"role", "content"}` copies (other keys, e.g. datasets' None fillers, dropped)."""
    out = []
    for j, m in enumerate(_typed(value, list, where, label, "a list of messages")):
        at = f"{label}[{j}]"
        _typed(m, dict, where, at)
        role, content = (_field(m, k, where, label=f"{at}.{k}") for k in ("role", "content"))
        if role not in ROLES:
            raise DataError(f"{where}: field '{at}.role' is {role!r}; expected one of {', '.join(ROLES)}")
        out.append({"role": role, "content": content})
    return out


def _pair(prompt: str | list, chosen: str, rejected: str, row_id: str, subset: str) -> dict:
    _nonempty(chosen, "empty_response", "chosen")
    _nonempty(rejected, "empty_response", "rejected")
    if chosen == rejected:
        raise _Skip("identical_pair", "fields 'chosen' and 'rejected' are the same text")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "id": row_id, "subset": subset}


# --------------------------------------------------------------------------------------- formats


def load_hh_rlhf(path: str | Path, strict: bool = False) -> tuple[list[dict], LoadReport]:
    """Anthropic HH-RLHF: rows `{"chosen": dialogue, "rejected": dialogue}` (optionally `id`), each
    dialogue `"\\n\\nHuman: ...\\n\\nAssistant: ..."`. The turns both share are the prompt (a
    messages list); the final assistant turns are chosen and rejected. Subset "hh-rlhf"; id from
    the row or `"<file stem>-<line>"`. Skips: unparseable_dialogue, diverging_dialogues,
    identical_pair, empty_response."""
    def convert(r: _Row, row_id: str) -> list[dict]:
        texts = {f: _field(r.row, f, r.where) for f in ("chosen", "rejected")}
        chosen, rejected = (_dialogue(text, f) for f, text in texts.items())
        if chosen == rejected:
            raise _Skip("identical_pair", "fields 'chosen' and 'rejected' hold the same dialogue")
        shared = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
        if not shared == len(chosen) - 1 == len(rejected) - 1:
            raise _Skip("diverging_dialogues", f"fields 'chosen' and 'rejected' differ before their last turn "
                                               f"(turn {shared} of {len(chosen)} and {len(rejected)})")
        return [_pair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], row_id, "hh-rlhf")]

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


def load_rewardbench(path: str | Path, strict: bool = False) -> tuple[list[dict], LoadReport]:
    """RewardBench: rows `prompt` (str or messages), `chosen`, `rejected` (str), `subset`, `id`
    (kept; defaults "rewardbench" and `"<file stem>-<line>"`). Skips: empty_prompt,
    empty_response, identical_pair."""
    def convert(r: _Row, row_id: str) -> list[dict]:
        prompt = _field(r.row, "prompt", r.where, None)
        chosen, rejected = (_field(r.row, f, r.where) for f in ("chosen", "rejected"))
        subset = _field(r.row, "subset", r.where, default="rewardbench")
        prompt = prompt if isinstance(prompt, str) else _messages(prompt, r.where, "prompt")
        if not (prompt.strip() if isinstance(prompt, str) else any(m["content"].strip() for m in prompt)):
            raise _Skip("empty_prompt", "field 'prompt' is empty")
        return [_pair(prompt, chosen, rejected, row_id, subset)]

    return _load(path, strict, convert)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The user turn of an Alpaca row: the instruction, then a blank line and the input if any."""
    return f"{instruction}\n\n{input}" if input.strip() else instruction


def load_alpaca(path: str | Path, strict: bool = False) -> tuple[list[dict], LoadReport]:
    """Alpaca: rows `instruction`, `input` (optional, may be ""), `output` -> SFT rows
    [user: `alpaca_prompt(instruction, input)`, assistant: output]. Skips: empty_prompt, empty_response."""
    def convert(r: _Row, row_id: str) -> list[dict]:
        instruction, output = (_field(r.row, f, r.where) for f in ("instruction", "output"))
        extra = _field(r.row, "input", r.where, default="")
        return [{"messages": [
            {"role": "user", "content": alpaca_prompt(_nonempty(instruction, "empty_prompt", "instruction"), extra)},
            {"role": "assistant", "content": _nonempty(output, "empty_response", "output")}], "id": row_id}]

    return _load(path, strict, convert)


def load_messages(path: str | Path, strict: bool = False) -> tuple[list[dict], LoadReport]:
    """Chat rows `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`
    (optionally `id`) -> SFT rows. Skips: empty_conversation, empty_response (an empty assistant
    turn), no_final_assistant."""
    def convert(r: _Row, row_id: str) -> list[dict]:
        messages = _messages(_field(r.row, "messages", r.where, None), r.where, "messages")
        if not messages:
            raise _Skip("empty_conversation", "field 'messages' has no messages")
        for j, m in enumerate(messages):
            if m["role"] == "assistant":
                _nonempty(m["content"], "empty_response", f"messages[{j}].content")
        if messages[-1]["role"] != "assistant":
            raise _Skip("no_final_assistant", "field 'messages' does not end with an assistant message")
        return [{"messages": messages, "id": row_id}]

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


class _Completion(NamedTuple):
    index: int
    response: str
    ratings: dict[str, float]  # numeric ratings only
    score: float  # their mean


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
    return _load(path, strict, lambda r, row_id: _uf_pairs(r, row_id, pairs, seed, report, strict), report)


def _uf_pairs(r: _Row, base_id: str, pairs: str, seed: int, report: LoadReport, strict: bool) -> list[dict]:
    instruction = _field(r.row, "instruction", r.where)
    subset = _field(r.row, "source", r.where, default="ultrafeedback")
    raw = _field(r.row, "completions", r.where, list)
    # Every completion is checked for missing fields and wrong types before anything is skipped.
    completions = [_uf_completion(c, i, r.where) for i, c in enumerate(raw)]
    _nonempty(instruction, "empty_prompt", "instruction")
    for skip in (c for c in completions if isinstance(c, _Skip)):
        _skip_or_raise(report, skip, r.where, strict)
    usable = [c for c in completions if isinstance(c, _Completion)]
    if len(usable) < 2:
        raise _Skip("too_few_completions", f"field 'completions' has {len(usable)} usable (of {len(raw)}); need 2")
    if pairs == "all":
        candidates = list(itertools.combinations(usable, 2))
    else:  # the first of equal bests: deterministic; with all tied, a tie is counted below
        best = max(usable, key=lambda c: c.score)
        worse = [c for c in usable if c.score < best.score] or [c for c in usable if c is not best]
        other = min(worse, key=lambda c: c.score) if pairs == "best_vs_worst" else \
            random.Random(f"{seed}:{r.number}").choice(worse)
        candidates = [(best, other)]
    out = []
    for a, b in candidates:
        good, bad = (a, b) if a.score > b.score else (b, a)
        if a.score == b.score:
            report.skip("tied_score")
        elif good.response == bad.response:
            _skip_or_raise(report, _Skip("identical_pair", f"completions {good.index} and {bad.index} are the "
                                                           "same text"), r.where, strict)
        else:
            out.append({"prompt": instruction, "chosen": good.response, "rejected": bad.response,
                        "id": f"{base_id}-{good.index}-{bad.index}", "subset": subset, "by_principle": {
                            p: 1 if good.ratings[p] > bad.ratings[p] else -1 for p in UF_PRINCIPLES
                            if p in good.ratings and p in bad.ratings and good.ratings[p] != bad.ratings[p]}})
    return out


def _uf_completion(c: Any, i: int, where: str) -> _Completion | _Skip:
    """A completion with its numeric ratings, or the `_Skip` saying why it cannot be paired."""
    label = f"completions[{i}]"
    _typed(c, dict, where, label)
    response = _field(c, "response", where, label=f"{label}.response")
    annotations = _field(c, "annotations", where, dict, f"{label}.annotations")
    ratings = {}
    for p in UF_PRINCIPLES:
        entry = _field(annotations, p, where, dict, f"{label}.annotations.{p}", default={})
        if (rating := _uf_rating(entry.get("Rating"), where, f"{label}.annotations.{p}.Rating")) is not None:
            ratings[p] = rating
    if not response.strip():
        return _Skip("empty_response", f"field '{label}.response' is empty")
    if not ratings:
        return _Skip("unrated_completion", f"field {label!r} has no numeric rating")
    return _Completion(i, response, ratings, sum(ratings.values()) / len(ratings))


def _uf_rating(value: Any, where: str, label: str) -> float | None:
    """A numeric rating, or None for "N/A", "" or null."""
    if value is None or (isinstance(value, str) and value.strip().upper() in ("", "N/A", "NA")):
        return None
    try:
        if not isinstance(value, bool) and math.isfinite(number := float(value)):
            return number
    except (TypeError, ValueError):
        pass
    raise DataError(f"{where}: field {label!r} must be a number or 'N/A', got {value!r}")


# --------------------------------------------------------------------------------------- registry

FORMATS: dict[str, Callable[..., tuple[list[dict], LoadReport]]] = {
    "hh_rlhf": load_hh_rlhf, "ultrafeedback": load_ultrafeedback, "rewardbench": load_rewardbench,
    "alpaca": load_alpaca, "messages": load_messages}
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
    allowed = [p for p in inspect.signature(FORMATS[name]).parameters if p != "path"]
    if unknown := sorted(set(options) - set(allowed)):
        raise DataError(f"{name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
    return FORMATS[name](path, **options)
