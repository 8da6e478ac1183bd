"""The verifiable task families: each draws a problem at a difficulty, checks a response, and
makes plausible wrong answers (corruptions) that its checker rejects.

Difficulty is an integer from 1 (a 135M instruct model often solves it) to 5 (it rarely does); each
family says what the knob changes. A problem's `key` is its canonical content: the split a problem
belongs to is a function of (family, key), so train, validation and test never share a problem.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from sj_jax.tasks import checks
from sj_jax.tasks.numbers import int_to_words
from sj_jax.tasks.words import CITIES, COLORS, JOBS, NAMES, NOUNS, SURNAMES

MAX_DIFFICULTY = 5

# Why each kind of wrong answer is wrong, for code-written judge rationales.
FLAWS = {
    "off_by_one": "is off by one",
    "wrong_order": "has the right items in the wrong order",
    "format_broken": "does not give the answer in the requested format",
    "truncated": "is cut short",
    "wrong_operation": "applies the wrong operation",
    "wrong_field": "gives the value of a different field",
    "model_sample": "is wrong",
    "model_sample_format": "states the answer, but not in the requested format",
}
# Corruptions that only break the requested format: the lenient check accepts them.
FORMAT_ONLY = frozenset({"format_broken", "model_sample_format"})
# Wrong answers the model itself wrote (sampled, then checked), not made by code.
MODEL_KINDS = frozenset({"model_sample", "model_sample_format"})


@dataclasses.dataclass(frozen=True)
class Problem:
    """One task instance. `answer` is the exact expected response; `explanation` says why (one
    sentence, used in rationales); `wrong` maps a corruption kind to a wrong answer."""

    family: str
    difficulty: int
    key: str
    prompt: str
    answer: str
    explanation: str
    wrong: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    description: str  # what the difficulty knob changes
    draw: Callable[[np.random.Generator, int], Problem]
    check: Callable[[str, str], bool]  # (answer, response) -> correct, in the requested format?
    check_answer: Callable[[str, str], bool]  # lenient: the answer is stated, whatever the format


def _join(items) -> str:
    return ", ".join(str(x) for x in items)


def _problem(family: str, difficulty: int, key: str, prompt: str, answer: str, explanation: str,
             wrong: dict[str, str]) -> Problem:
    # Keep only corruptions that really are wrong answers (e.g. reversing "44" changes nothing), and
    # wrong in content too unless they are format-only.
    f = FAMILIES[family]
    kept: dict[str, str] = {}
    for k, v in wrong.items():
        if (v.strip() and v not in kept.values() and not f.check(answer, v)
                and (k in FORMAT_ONLY or not f.check_answer(answer, v))):
            kept[k] = v
    return Problem(family, difficulty, key, prompt, answer, explanation, kept)


def _digits(rng: np.random.Generator, n: int) -> int:
    return int(rng.integers(10 ** (n - 1) if n > 1 else 0, 10**n))


def _drop_last_char(s: str) -> str:
    return s[:-1] if len(s) > 1 else ""


# --- arithmetic: operand digits grow with difficulty; multiplication from difficulty 2 -------------

def draw_arithmetic(rng: np.random.Generator, d: int) -> Problem:
    ops = ["+", "-"] + (["*"] if d >= 2 else [])
    op = ops[int(rng.integers(len(ops)))]
    a = _digits(rng, d)
    b = _digits(rng, d - 1 if op == "*" else d)
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    shown = {"*": "×"}.get(op, op)
    answer = str(value)
    wrong = {
        "off_by_one": str(value + (1 if rng.random() < 0.5 else -1)),
        "wrong_order": str(b - a) if op == "-" else str(value)[::-1].lstrip("0") or "0",
        "format_broken": int_to_words(value),
        "truncated": _drop_last_char(answer),
    }
    return _problem("arithmetic", d, f"{a}{op}{b}",
                    f"What is {a} {shown} {b}? Answer with only the number.", answer,
                    f"{a} {shown} {b} = {value}.", wrong)


# --- sort_numbers: 2 + difficulty distinct numbers, larger with difficulty ---------------------

def draw_sort_numbers(rng: np.random.Generator, d: int) -> Problem:
    n = 2 + d
    xs = [int(x) for x in rng.choice(np.arange(1, 20 * d + 10), size=n, replace=False)]
    s = sorted(xs)
    bumped = list(s)
    bumped[int(rng.integers(n))] += 1
    swapped = list(s)
    i = int(rng.integers(n - 1))
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    wrong = {
        "off_by_one": _join(sorted(bumped)),
        "wrong_order": _join(swapped),
        "format_broken": " ".join(map(str, s)),
        "truncated": _join(s[:-1]),
    }
    return _problem("sort_numbers", d, _join(xs),
                    f"Sort these numbers from smallest to largest: {_join(xs)}. "
                    "Answer with only the sorted numbers, separated by commas.", _join(s),
                    f"From smallest to largest the numbers are {_join(s)}.", wrong)


# --- reverse_words: 1 + difficulty distinct words ---------------------------------------------

def draw_reverse_words(rng: np.random.Generator, d: int) -> Problem:
    n = 1 + d
    ws = [str(w) for w in rng.choice(NOUNS, size=n, replace=False)]
    r = ws[::-1]
    wrong = {
        "wrong_order": _join(ws),
        "off_by_one": _join(r[1:] + r[:1]),  # every word one place off
        "format_broken": " ".join(r),
        "truncated": _join(r[:-1]),
    }
    return _problem("reverse_words", d, _join(ws),
                    f"Reverse the order of these words: {_join(ws)}. "
                    "Answer with only the words in reverse order, separated by commas.", _join(r),
                    f"In reverse order the words are {_join(r)}.", wrong)


# --- count_letter: a phrase of `difficulty` words; the letter usually occurs ------------------

def draw_count_letter(rng: np.random.Generator, d: int) -> Problem:
    words = [str(w) for w in rng.choice(NOUNS, size=d, replace=False)]
    text = " ".join(words)
    letters = sorted(set(text.replace(" ", "")))
    letter = (letters[int(rng.integers(len(letters)))] if rng.random() < 0.85
              else chr(ord("a") + int(rng.integers(26))))
    count = text.count(letter)
    what = "word" if d == 1 else "phrase"
    wrong = {
        "off_by_one": str(count + 1 if count == 0 or rng.random() < 0.5 else count - 1),
        "format_broken": int_to_words(count),
    }
    return _problem("count_letter", d, f"{letter}|{text}",
                    f"How many times does the letter \"{letter}\" appear in the {what} \"{text}\"? "
                    "Answer with only the number.", str(count),
                    f"\"{letter}\" appears {count} time{'s' if count != 1 else ''} in \"{text}\".", wrong)


# --- unit_conversion: bigger quantities with difficulty; metric factors only at difficulty 1 ---

_UNITS = (  # (from, to, factor, metric)
    ("kilometers", "meters", 1000, True), ("meters", "centimeters", 100, True),
    ("kilograms", "grams", 1000, True), ("liters", "milliliters", 1000, True),
    ("centimeters", "millimeters", 10, True), ("hours", "minutes", 60, False),
    ("minutes", "seconds", 60, False), ("days", "hours", 24, False), ("feet", "inches", 12, False),
    ("weeks", "days", 7, False), ("dozens", "items", 12, False),
)
_ONE = {"feet": "foot", "dozens": "dozen"}  # the singulars that are not the plural less its "s"


def draw_unit_conversion(rng: np.random.Generator, d: int) -> Problem:
    units = [u for u in _UNITS if u[3] or d >= 2]
    src, dst, factor, _ = units[int(rng.integers(len(units)))]
    q = int(rng.integers(max(2, 10 ** (d - 1)), 10**d))
    value = q * factor
    answer = str(value)
    wrong = {
        "off_by_one": str(value + (1 if rng.random() < 0.5 else -1)),
        "wrong_operation": str(q + factor),
        "format_broken": f"{value} {dst}",
        "truncated": _drop_last_char(answer),
    }
    return _problem("unit_conversion", d, f"{q}|{src}|{dst}",
                    f"Convert {q} {src} to {dst}. Answer with only the number.", answer,
                    f"1 {_ONE.get(src, src[:-1])} is {factor} {dst}, so {q} {src} "
                    f"are {q} × {factor} = {value} {dst}.", wrong)


# --- extract_field: a record of 2 + difficulty fields; one is asked for -----------------------

def draw_extract_field(rng: np.random.Generator, d: int) -> Problem:
    pools = {
        "Name": [f"{a} {b}" for a in NAMES[:12] for b in SURNAMES[:8]],
        "Age": [str(x) for x in range(18, 90)],
        "City": list(CITIES),
        "Job": list(JOBS),
        "Favorite color": list(COLORS),
        "Pet": ["cat", "dog", "parrot", "hamster", "rabbit", "turtle", "goldfish"],
        "Employee ID": [str(x) for x in range(1000, 10000)],
    }
    names = list(pools)
    chosen = [names[0]] + [names[i] for i in sorted(rng.choice(np.arange(1, len(names)), size=1 + d, replace=False))]
    record = {k: str(pools[k][int(rng.integers(len(pools[k])))]) for k in chosen}
    field = chosen[int(rng.integers(len(chosen)))]
    other = [k for k in chosen if k != field and record[k].lower() != record[field].lower()]
    value = record[field]
    wrong = {
        "wrong_field": record[other[int(rng.integers(len(other)))]] if other else "",
        "format_broken": f"{field}: {value}",
        "truncated": value.split(" ")[0] if " " in value else value[: max(1, len(value) // 2)],
    }
    lines = "\n".join(f"{k}: {v}" for k, v in record.items())
    return _problem("extract_field", d, f"{field}|{lines}",
                    f"Here is a record:\n{lines}\n\nWhat is the value of the field \"{field}\"? "
                    "Answer with only the value.", value,
                    f"The record says {field}: {value}.", wrong)


# --- uppercase (a formatting constraint): difficulty words ------------------------------------

def draw_uppercase(rng: np.random.Generator, d: int) -> Problem:
    words = [str(w) for w in rng.choice(NOUNS, size=d, replace=False)]
    text = " ".join(words)
    up = text.upper()
    i = int(rng.integers(d))
    partial = " ".join(w.capitalize() if j == i else w.upper() for j, w in enumerate(words))
    wrong = {
        "format_broken": text if rng.random() < 0.5 else text.title(),
        "off_by_one": partial if d > 1 else words[0][:-1].upper() + words[0][-1],  # one word (letter) missed
        "truncated": " ".join(w.upper() for w in words[:-1]) if d > 1 else up[:-2],
    }
    return _problem("uppercase", d, text,
                    f"Rewrite \"{text}\" in capital letters. Answer with only the rewritten text.", up,
                    f"\"{text}\" in capital letters is \"{up}\".", wrong)


# --- repeat_word: a word (difficulty <= 2) or a two-word phrase written n times ----------------

def draw_repeat_word(rng: np.random.Generator, d: int) -> Problem:
    noun = str(NOUNS[int(rng.integers(len(NOUNS)))])
    text = noun if d <= 2 else f"{COLORS[int(rng.integers(len(COLORS)))]} {noun}"
    n = int(rng.integers(2, 2 + 2 * d + 1)) if d <= 2 else int(rng.integers(2, d + 3))
    answer = " ".join([text] * n)
    what = "word" if d <= 2 else "phrase"
    wrong = {
        "off_by_one": " ".join([text] * (n + (1 if rng.random() < 0.5 or n == 2 else -1))),
        "format_broken": ", ".join([text] * n),
        "truncated": " ".join([text] * (n - 1) + [text[: len(text) // 2].rstrip()]),
    }
    return _problem("repeat_word", d, f"{text}|{n}",
                    f"Write the {what} \"{text}\" exactly {n} times, separated by single spaces. "
                    "Answer with only the repeated text.", answer,
                    f"\"{text}\" written {n} times is \"{answer}\".", wrong)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("arithmetic", "operand digits; multiplication from 2", draw_arithmetic, checks.check_int,
           checks.answer_int),
    Family("sort_numbers", "list length 2 + d, values up to 20d + 9", draw_sort_numbers, checks.check_int_list,
           checks.answer_int_list),
    Family("reverse_words", "list length 1 + d", draw_reverse_words, checks.check_word_list,
           checks.answer_word_list),
    Family("count_letter", "words in the phrase", draw_count_letter, checks.check_int, checks.answer_int),
    Family("unit_conversion", "digits of the quantity; non-metric units from 2", draw_unit_conversion,
           checks.check_int, checks.answer_int),
    Family("extract_field", "fields in the record: 2 + d", draw_extract_field, checks.check_text_nocase,
           checks.answer_suffix_nocase),
    Family("uppercase", "words to capitalise", draw_uppercase, checks.check_text, checks.answer_contains),
    Family("repeat_word", "repetitions (2 to 2d + 2) of a word; from 3, of a two-word phrase",
           draw_repeat_word, checks.check_text_nocase, checks.answer_repeated),
)}


def check(family: str, answer: str, response: str, strict: bool = True) -> bool:
    """Is `response` a correct answer to a problem of `family` whose expected answer is `answer`?
    strict: also in the requested format (the bare answer)."""
    f = FAMILIES[family]
    return f.check(answer, response) if strict else f.check_answer(answer, response)
