"""Checkers: does a response state the expected answer, in the requested format (strict), or at all (lenient)?

A response is normalised first (surrounding whitespace, quotes, backticks and bold markers, a
leading "Answer:" or "The answer is", one trailing period, runs of spaces), then compared exactly
with the answer's own form. Anything else in the response (a second line, words around a number,
another separator) fails: every task asks for the bare answer, and following that request is part
of what is measured.
"""

from __future__ import annotations

import re

_WRAPPERS = ("**", "`", '"', "'")
_LEAD = re.compile(r"^(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*[:=]?\s*", re.IGNORECASE)
_INT = re.compile(r"[+-]?\d+")


def normalise(response: str) -> str:
    """The response with harmless decoration removed (see the module docstring)."""
    text = response.strip()
    text = _LEAD.sub("", text, count=1).strip()
    changed = True
    while changed and text:
        changed = False
        for w in _WRAPPERS:
            if len(text) >= 2 * len(w) and text.startswith(w) and text.endswith(w):
                text, changed = text[len(w):-len(w)].strip(), True
        if text.endswith(".") and not text.endswith(".."):
            text, changed = text[:-1].rstrip(), True
    return re.sub(r"[ \t]+", " ", text)


def parse_int(text: str) -> int | None:
    """The integer a whole normalised response states, or None."""
    text = normalise(text)
    return int(text) if _INT.fullmatch(text) else None


def parse_list(text: str) -> list[str] | None:
    """The comma-separated items of a normalised one-line response, or None if it is not one."""
    text = normalise(text)
    if not text or "\n" in text:
        return None
    items = [s.strip() for s in text.split(",")]
    return items if all(items) else None


def check_int(answer: str, response: str) -> bool:
    return parse_int(response) == int(answer)


def check_int_list(answer: str, response: str) -> bool:
    items = parse_list(response)
    if items is None or not all(_INT.fullmatch(s) for s in items):
        return False
    return [int(s) for s in items] == [int(s) for s in answer.split(",")]


def check_word_list(answer: str, response: str) -> bool:
    items = parse_list(response)
    return items is not None and [s.lower() for s in items] == [s.strip().lower() for s in answer.split(",")]


def check_text(answer: str, response: str) -> bool:
    """Exact, case-sensitive match after normalising."""
    return normalise(response) == answer


def check_text_nocase(answer: str, response: str) -> bool:
    return normalise(response).lower() == answer.lower()


# --- lenient checks: is the right answer stated, whatever the wording around it? -----------------
# These ignore the requested format (a number inside a sentence counts), so a format-only corruption
# passes them; every other corruption fails both.

_INT_ANY = re.compile(r"(?<![\w.])[+-]?\d+(?!\w)(?!\.\d)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_INT_LIST = re.compile(r"[+-]?\d+(?:\s*,\s*[+-]?\d+)*")
_WORD_LIST = re.compile(r"[A-Za-z]+(?:\s*,\s*(?:and\s+)?[A-Za-z]+)*")
_AND = re.compile(r"^and\s+", re.IGNORECASE)


def answer_int(answer: str, response: str) -> bool:
    """The last integer in the response is the answer."""
    found = _INT_ANY.findall(_THOUSANDS.sub("", response))
    return bool(found) and int(found[-1]) == int(answer)


def answer_int_list(answer: str, response: str) -> bool:
    """The last comma-separated run of integers is the answer list."""
    found = _INT_LIST.findall(response)
    return bool(found) and [int(s) for s in found[-1].split(",")] == [int(s) for s in answer.split(",")]


def answer_word_list(answer: str, response: str) -> bool:
    """The last comma-separated run of words ("a, b, and c" too) is the answer list (case-insensitive)."""
    found = _WORD_LIST.findall(response)
    want = [s.strip().lower() for s in answer.split(",")]
    return bool(found) and [_AND.sub("", s.strip()).lower() for s in found[-1].split(",")] == want


def answer_suffix_nocase(answer: str, response: str) -> bool:
    """The response ends with the answer (after normalising; case-insensitive, on a word boundary)."""
    text, want = normalise(response).lower(), answer.lower()
    return text.endswith(want) and (len(text) == len(want) or not text[-len(want) - 1].isalnum())


def answer_contains(answer: str, response: str) -> bool:
    """The answer appears in the response, case-sensitive, on word boundaries."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", response) is not None


def answer_repeated(answer: str, response: str) -> bool:
    """Somewhere the response repeats the answer's unit exactly as often as the answer does, no more."""
    unit, n = _repeat_unit(answer)
    runs = re.finditer(rf"(?:(?<!\w){re.escape(unit)}(?!\w)[ \t]*)+", response, re.IGNORECASE)
    return any(len(re.findall(rf"(?<!\w){re.escape(unit)}(?!\w)", m.group(0), re.IGNORECASE)) == n for m in runs)


def _repeat_unit(answer: str) -> tuple[str, int]:
    words = answer.split()
    for k in range(1, len(words) + 1):
        if len(words) % k == 0 and words == words[:k] * (len(words) // k):
            return " ".join(words[:k]), len(words) // k
    return answer, 1
