"""The verifiable task suite: checkers against answers and corruptions, disjoint seeded splits, the
difficulty knob, and property tests of the answer parsers."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sj_jax.core.config import from_dict
from sj_jax.core.errors import ConfigError, DataError
from sj_jax.tasks import checks
from sj_jax.tasks.families import FAMILIES, FLAWS, FORMAT_ONLY, MAX_DIFFICULTY, check
from sj_jax.tasks.numbers import int_to_words
from sj_jax.tasks.suite import SPLITS, TaskSuiteConfig, build_split, draw_problems, split_of, split_pairs

ISSUE_KINDS = ("off_by_one", "wrong_order", "format_broken", "truncated")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_checker_accepts_the_answer_and_rejects_every_corruption(family):
    f = FAMILIES[family]
    rng = np.random.default_rng(123)
    kinds = set()
    for d in range(1, MAX_DIFFICULTY + 1):
        for _ in range(150):
            p = f.draw(rng, d)
            assert p.family == family and p.difficulty == d
            assert check(family, p.answer, p.answer) and check(family, p.answer, p.answer, strict=False)
            # Harmless decoration passes the strict check too.
            assert check(family, p.answer, f"  **{p.answer}**.\n")
            for kind, wrong in p.wrong.items():
                assert kind in FLAWS
                assert wrong != p.answer
                assert not check(family, p.answer, wrong), (kind, p.answer, wrong)
                if kind not in FORMAT_ONLY:
                    assert not check(family, p.answer, wrong, strict=False), (kind, p.answer, wrong)
            kinds |= set(p.wrong)
    assert len(kinds) >= 2, kinds


def test_the_corruptions_the_issue_names_are_all_made():
    rng = np.random.default_rng(0)
    made = {k for f in FAMILIES.values() for d in (1, 3) for _ in range(30) for k in f.draw(rng, d).wrong}
    assert set(ISSUE_KINDS) <= made
    assert len(FAMILIES) >= 6


def test_lenient_check_reads_the_answer_out_of_a_sentence():
    assert check("arithmetic", "85", "37 + 48 = 85.", strict=False)
    assert not check("arithmetic", "85", "37 + 48 = 85.")
    assert check("count_letter", "3", 'The letter "r" appears 3 times in "strawberry".', strict=False)
    assert not check("count_letter", "3", 'It appears 3 times, not 4.', strict=False)  # the last number counts
    assert check("sort_numbers", "1, 3, 9", "Sorted: 1, 3, 9", strict=False)
    assert check("reverse_words", "sun, dog, apple", "Reversed: sun, dog, and apple.", strict=False)
    assert check("extract_field", "Lyon", 'The value of "City" is Lyon.', strict=False)
    assert check("uppercase", "BIG DOG", 'Here it is: "BIG DOG"', strict=False)
    assert check("repeat_word", "cat cat cat", "Sure! cat cat cat", strict=False)
    assert not check("repeat_word", "cat cat cat", "cat cat cat cat", strict=False)
    assert check("unit_conversion", "3000", "3 kilometers are 3,000 meters.", strict=False)
    assert not check("unit_conversion", "3000", "3.5", strict=False)


def test_difficulty_knob_makes_problems_bigger():
    rng = np.random.default_rng(1)
    for name, f in FAMILIES.items():
        easy = np.mean([len(f.draw(rng, 1).prompt) for _ in range(200)])
        hard = np.mean([len(f.draw(rng, MAX_DIFFICULTY).prompt) for _ in range(200)])
        assert hard > easy, name
    assert all(len(FAMILIES["sort_numbers"].draw(rng, d).answer.split(",")) == 2 + d for d in range(1, 6))


def test_splits_are_disjoint_seeded_and_stable():
    cfg = TaskSuiteConfig(train=60, validation=15, test=30)
    built = {s: build_split(cfg, s, seed=0) for s in SPLITS}
    for family in cfg.families:
        keys = {s: {p.key for p in built[s].problems if p.family == family} for s in SPLITS}
        assert all(len(keys[s]) == getattr(cfg, s) for s in SPLITS)  # distinct within a split
        assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
        assert not keys["validation"] & keys["test"]
        prompts = {s: {p.prompt for p in built[s].problems if p.family == family} for s in SPLITS}
        assert not prompts["train"] & prompts["test"]
    # Every problem's split is a function of its content, whatever the seed or count asked for.
    other = build_split(TaskSuiteConfig(train=10, validation=5, test=80), "test", seed=7)
    assert all(split_of(p.family, p.key) == "test" for p in other.problems)
    train_keys = {(p.family, p.key) for p in built["train"].problems}
    assert not train_keys & {(p.family, p.key) for p in other.problems}
    # Same seed, same rows; another seed, other rows.
    assert build_split(cfg, "test", seed=0).rows == built["test"].rows
    assert build_split(cfg, "test", seed=1).rows != built["test"].rows
    ids = [r["id"] for s in SPLITS for r in built[s].rows]
    assert len(ids) == len(set(ids))


def test_pairs_carry_the_answer_as_chosen_and_a_checked_wrong_answer():
    sp = build_split(TaskSuiteConfig(train=20, validation=1, test=1), "train")
    pairs = split_pairs(sp, ISSUE_KINDS, per_problem=2, seed=0, name="train")
    assert len(pairs) <= 2 * len(sp.rows) and len(pairs) >= len(sp.rows)
    answers = {r["prompt"]: r["answer"] for r in sp.rows}
    for p in pairs:
        assert p["corruption"] in ISSUE_KINDS and p["subset"] == p["task"]
        assert p["chosen"] == answers[p["prompt"]]
        assert check(p["task"], p["chosen"], p["chosen"]) and not check(p["task"], p["chosen"], p["rejected"])
        assert "{chosen}" in p["rationale"] and "{rejected}" in p["rationale"]
    assert len({p["id"] for p in pairs}) == len(pairs)


def test_a_problem_space_too_small_for_the_count_is_a_clear_error():
    cfg = TaskSuiteConfig(families=("uppercase",), difficulties=(1,), train=1, validation=1, test=200)
    with pytest.raises(DataError, match=r"uppercase.*too few distinct test problems for 200"):
        draw_problems(cfg, "uppercase", "test", seed=0)


@pytest.mark.parametrize("data, match", [
    ({"families": ["arithmetc"]}, r"tasks.families: unknown family 'arithmetc'; known: arithmetic"),
    ({"difficulties": [0]}, r"tasks.difficulties: 0 is outside 1..5"),
    ({"split_fractions": [0.5, 0.2, 0.2]}, r"tasks.split_fractions"),
    ({"tset": 3}, r"tset: unknown key"),
])
def test_suite_config_names_the_bad_key(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(TaskSuiteConfig, data, "tasks")


# --- property-based tests of the parsers -------------------------------------------------------

FAST = settings(max_examples=80, deadline=None)
decoration = st.sampled_from(["{}", " {} ", "**{}**", "`{}`", "{}.", '"{}"', "Answer: {}", "The answer is {}.",
                              "\n{}\n", "'{}'"])


@FAST
@given(st.integers(-10**9, 10**9), decoration)
def test_int_check_sees_through_decoration(n, deco):
    text = deco.format(n)
    assert checks.check_int(str(n), text)
    assert checks.answer_int(str(n), text)
    assert not checks.check_int(str(n), deco.format(n + 1))
    assert not checks.check_int(str(n), int_to_words(n))


@FAST
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_normalise_is_idempotent_and_never_raises(text):
    once = checks.normalise(text)
    assert checks.normalise(once) == once
    checks.parse_int(text), checks.parse_list(text)


@FAST
@given(st.lists(st.integers(-999, 999), min_size=1, max_size=8), st.sampled_from([",", ", ", " , ", ",  "]),
       st.sampled_from(["", "Sorted: ", "Here you go: "]))
def test_int_list_parsing_round_trips(xs, sep, lead):
    answer = ", ".join(map(str, xs))
    assert checks.check_int_list(answer, sep.join(map(str, xs)))
    assert checks.answer_int_list(answer, lead + sep.join(map(str, xs)))
    if len(xs) > 1:
        assert not checks.check_int_list(answer, " ".join(map(str, xs)))
        assert not checks.check_int_list(answer, sep.join(map(str, xs[::-1]))) or xs == xs[::-1]


@FAST
@given(st.integers(0, 10**12))
def test_int_to_words_is_digit_free_and_injective_on_a_sample(n):
    words = int_to_words(n)
    assert not re.search(r"\d", words)
    assert words == int_to_words(n) and (n == n + 1 or words != int_to_words(n + 1))


@FAST
@given(st.sampled_from(["cat", "red fox", "sun"]), st.integers(1, 7), st.integers(0, 3))
def test_repeat_check_counts_runs_exactly(unit, n, extra):
    answer = " ".join([unit] * n)
    assert checks.answer_repeated(answer, f"Here: {answer}.")
    assert checks.answer_repeated(answer, answer.upper())
    more = " ".join([unit] * (n + 1 + extra))
    assert not checks.answer_repeated(answer, more)


def test_unit_conversion_explanation_names_one_unit_in_the_singular():
    """The explanation is a judge's rationale and a generative judge's worked answer: "1 foot is 12
    inches", never "1 fee"."""
    rng = np.random.default_rng(5)
    singular = {"kilometer", "meter", "kilogram", "liter", "centimeter", "hour", "minute", "day", "foot", "week",
                "dozen"}
    seen = set()
    for _ in range(400):
        p = FAMILIES["unit_conversion"].draw(rng, 3)
        unit = re.match(r"1 (\w+) is ", p.explanation).group(1)
        assert unit in singular, p.explanation
        seen.add(unit)
    assert seen == singular
