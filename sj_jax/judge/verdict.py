"""Reading a generative judge's final verdict out of its text, without ever guessing.

A verdict is one of the template's two fixed markers (`[[A]]` / `[[B]]` by default) written outside
quoted text. The text yields:
- "A" or "B": one marker, or the same marker more than once;
- no verdict, with its reason: `missing` (no marker at all), `conflicting` (both markers, as in an
  echo of the instruction "[[A]] if A is better, [[B]] if B is better"), `quoted` (markers only in
  quoted text: "double quotes", “curly quotes”, `code`, fenced code blocks and `>` quoted lines).
An unclosed quote quotes nothing. Markers are matched exactly: `[[a]]`, `[[ A ]]` and `[[C]]` are
not verdicts.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

NO_VERDICT_REASONS = ("missing", "conflicting", "quoted")

_QUOTED = re.compile(r"```.*?```|`[^`\n]*`|\"[^\"\n]*\"|“[^”]*”|^[ \t]*>.*$", re.DOTALL | re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """`label` "A", "B" or None (no verdict); `reason` "ok" or one of `NO_VERDICT_REASONS`."""

    label: Literal["A", "B"] | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.label is not None


def _unquoted(text: str) -> str:
    """`text` with every quoted span blanked (same length, so positions keep their meaning)."""
    return _QUOTED.sub(lambda m: " " * len(m.group(0)), text)


def parse_verdict(text: str, verdict_a: str = "[[A]]", verdict_b: str = "[[B]]") -> Verdict:
    """The verdict of one judgment text (see the module docstring)."""
    if not verdict_a or not verdict_b or verdict_a == verdict_b:
        raise ValueError(f"verdict markers must be two different non-empty strings, got {verdict_a!r}, {verdict_b!r}")
    if verdict_a in verdict_b or verdict_b in verdict_a:
        raise ValueError(f"verdict markers {verdict_a!r} and {verdict_b!r}: one contains the other, so a text "
                         "holding the longer one would hold both")
    free = _unquoted(text)
    a, b = verdict_a in free, verdict_b in free
    if a and b:
        return Verdict(None, "conflicting")
    if a or b:
        return Verdict("A" if a else "B", "ok")
    if verdict_a in text or verdict_b in text:
        return Verdict(None, "quoted")
    return Verdict(None, "missing")
