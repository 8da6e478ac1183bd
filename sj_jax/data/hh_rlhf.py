"""Anthropic HH-RLHF dialogues <-> chat messages.

A dialogue is a string of blocks `"\\n\\nHuman: <text>"` and `"\\n\\nAssistant: <text>"`. A marker counts
only at the start of a block: `\\n\\n` then `Human:` or `Assistant:`, then a space (or, for an empty
turn, the next block or the end of the text). "Human:" anywhere else is part of the turn's text,
which is kept exactly, whitespace included.
"""

from __future__ import annotations

import re
from typing import Sequence

_MARKER = re.compile(r"\n\n(Human|Assistant):(?: |(?=\n\n)|$)")
_ROLES = {"Human": "user", "Assistant": "assistant"}
_SPEAKERS = {role: speaker for speaker, role in _ROLES.items()}


def parse_hh_dialogue(text: str) -> list[dict[str, str]]:
    """`[{"role": "user"|"assistant", "content": str}, ...]` for an HH dialogue; `ValueError`
    (saying why) when the text is not one."""
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text  # some copies drop the leading blank line
    marks = list(_MARKER.finditer(text))
    if not marks:
        raise ValueError("no '\\n\\nHuman: ' or '\\n\\nAssistant: ' turn marker")
    if text[:marks[0].start()].strip():
        raise ValueError(f"text before the first turn marker: {text[:marks[0].start()][:40]!r}")
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [{"role": _ROLES[m.group(1)], "content": text[m.end():end]} for m, end in zip(marks, ends)]


def format_hh_dialogue(messages: Sequence[dict[str, str]]) -> str:
    """The HH text of user/assistant messages (the inverse of `parse_hh_dialogue` for contents
    that hold no block-start marker)."""
    out = []
    for m in messages:
        if m["role"] not in _SPEAKERS:
            raise ValueError(f"HH-RLHF dialogues have no {m['role']!r} turns")
        out.append(f"\n\n{_SPEAKERS[m['role']]}: {m['content']}")
    return "".join(out)
