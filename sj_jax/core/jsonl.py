"""Reading JSONL files with errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sj_jax.core.errors import DataError


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line. Malformed JSON, non-objects and non-UTF-8
    bytes raise `DataError` naming `file:line`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{n}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}:{n}: not valid JSON: {e}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append((n, row))
    if not rows:
        raise DataError(f"{path}: the file holds no rows (expected one JSON object per line)")
    return rows
