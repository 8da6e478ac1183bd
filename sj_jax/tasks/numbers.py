"""Integers written in English words (a plausible answer in the wrong format)."""

from __future__ import annotations

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def int_to_words(n: int) -> str:
    """`int_to_words(-1085)` -> "minus one thousand eighty-five"."""
    if n < 0:
        return "minus " + int_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    for size, word in _SCALES:
        if n >= size:
            head, rest = divmod(n, size)
            return f"{int_to_words(head)} {word}" + ("" if rest == 0 else " " + int_to_words(rest))
    raise AssertionError(n)
