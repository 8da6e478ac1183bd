"""Public data formats -> canonical rows: exact rows, counted skips, errors at file:line, round trips."""

import json
import re
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sj_jax.core.errors import DataError
from sj_jax.data.examples import DataReport, pair_example, sft_example
from sj_jax.data.hh_rlhf import format_hh_dialogue, parse_hh_dialogue
from sj_jax.data.loaders import (
    FORMATS,
    UF_PRINCIPLES,
    LoadReport,
    alpaca_prompt,
    load_alpaca,
    load_hh_rlhf,
    load_messages,
    load_rewardbench,
    load_source,
    load_ultrafeedback,
    pairs_to_sft,
    read_rows,
)

LLMBAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "llmbar_natural.jsonl"
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


def write_jsonl(path: Path, rows: list, blank_before: tuple[int, ...] = ()) -> Path:
    """One JSON object per line, with a blank line before the rows at the given indices."""
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            if i in blank_before:
                f.write("\n")
            f.write(json.dumps(row) + "\n")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    """JSON Lines or Parquet, by the path's suffix."""
    return write_jsonl(path, rows) if path.suffix == ".jsonl" else write_parquet(path, rows)


def through_pair_example(tok, rows: list[dict]) -> None:
    report = DataReport()
    for row in rows:
        json.dumps(row)
        ex = pair_example(tok, row, row["id"], 1024, 512, report)
        assert len(ex.chosen_ids) and len(ex.rejected_ids) and len(ex.prompt_ids)
    assert report.examples == len(rows)


def through_sft_example(tok, rows: list[dict]) -> None:
    report = DataReport()
    for row in rows:
        json.dumps(row)
        assert sft_example(tok, row, row["id"], 1024, report) is not None
    assert report.examples == len(rows)


def dialogue(*turns: str) -> str:
    """HH text of alternating Human/Assistant turns, starting with Human."""
    return format_hh_dialogue([{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)])


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# ----------------------------------------------------------------------------------------- HH-RLHF

HH_ROWS = [
    {"chosen": "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.",
     "rejected": "\n\nHuman: What is the capital of France?\n\nAssistant: I am not sure, maybe Lyon?"},
    {"chosen": dialogue("Can you help me write a note to my landlord?", "Sure. What is it about?",
                        "The heating: it has been broken since Monday.\nStart it with \"Dear Sir:\"",
                        "Dear Sir:\nThe heating has been broken since Monday. Human: please fix it."),
     "rejected": dialogue("Can you help me write a note to my landlord?", "Sure. What is it about?",
                          "The heating: it has been broken since Monday.\nStart it with \"Dear Sir:\"",
                          "No.")},
    {"chosen": dialogue("Tell me a joke.", "Why did the chicken cross the road?"),
     "rejected": "\n\nHuman: Tell me a joke.\n\nAssistant:"},  # an empty reply, as in the real data
    {"chosen": dialogue("Hi", "Hello!"), "rejected": dialogue("Hi", "Hello!")},
    {"chosen": "Hi there, how are you?", "rejected": dialogue("Hi", "Hello!")},
    {"chosen": dialogue("Hi", "Hello!", "Bye", "Goodbye."), "rejected": dialogue("Hi", "Hey.", "Bye", "Goodbye.")},
    {"chosen": dialogue("What is 2+2?", "4"), "rejected": dialogue("What is 2+2?", "5"), "id": "custom-7"},
]


def test_hh_rlhf_rows_prompts_and_counted_skips(tmp_path, tok):
    path = write_jsonl(tmp_path / "hh.jsonl", HH_ROWS, blank_before=(1,))
    rows, report = load_hh_rlhf(path)
    landlord = [user("Can you help me write a note to my landlord?"), assistant("Sure. What is it about?"),
                user("The heating: it has been broken since Monday.\nStart it with \"Dear Sir:\"")]
    assert rows == [
        {"prompt": [user("What is the capital of France?")], "chosen": "Paris.",
         "rejected": "I am not sure, maybe Lyon?", "id": "hh-1", "subset": "hh-rlhf"},
        {"prompt": landlord, "chosen": "Dear Sir:\nThe heating has been broken since Monday. Human: please fix it.",
         "rejected": "No.", "id": "hh-3", "subset": "hh-rlhf"},
        {"prompt": [user("What is 2+2?")], "chosen": "4", "rejected": "5", "id": "custom-7", "subset": "hh-rlhf"},
    ]
    assert report.as_dict() == {"rows": 7, "kept": 3, "skipped": {
        "diverging_dialogues": 1, "empty_response": 1, "identical_pair": 1, "unparseable_dialogue": 1}}
    through_pair_example(tok, rows)
    through_sft_example(tok, pairs_to_sft(rows))
    with pytest.raises(DataError, match=r"hh\.jsonl:4: field 'rejected' is empty \(empty_response; strict\)"):
        load_hh_rlhf(path, strict=True)


def test_hh_parser_accepts_a_missing_leading_blank_line_and_rejects_prose():
    assert parse_hh_dialogue("Human: hi\n\nAssistant: yo") == [user("hi"), assistant("yo")]
    assert parse_hh_dialogue("\n\nHuman:\n\nAssistant: yo") == [user(""), assistant("yo")]
    with pytest.raises(ValueError, match="no .* turn marker"):
        parse_hh_dialogue("Human said: hi")
    with pytest.raises(ValueError, match="text before the first turn marker"):
        parse_hh_dialogue("Preamble\n\nHuman: hi\n\nAssistant: yo")


# Turn texts full of near-markers: Human/Assistant and colons inside a turn, newlines everywhere.
TURN_TEXT = st.lists(st.one_of(st.sampled_from(["Human", "Assistant", "Human:", "Assistant: ", ":", " ", "\n",
                                                "\n\n", "H", "\t", "é", "Human: hi"]), st.text(max_size=5)),
                     max_size=8).map("".join).filter(lambda t: "\n\nHuman:" not in t and "\n\nAssistant:" not in t)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant"]), TURN_TEXT), min_size=1, max_size=6))
def test_hh_dialogues_round_trip(turns):
    messages = [{"role": role, "content": text} for role, text in turns]
    assert parse_hh_dialogue(format_hh_dialogue(messages)) == messages


@settings(FAST, max_examples=25)
@given(prompt=st.lists(TURN_TEXT.filter(str.strip), min_size=1, max_size=5),
       replies=st.lists(TURN_TEXT.filter(str.strip), min_size=2, max_size=2, unique=True))
def test_hh_loader_splits_any_dialogue_pair_into_prompt_and_replies(tmp_path, prompt, replies):
    # Odd-length prompts end with the user; even-length ones get a final user turn so the reply follows one.
    turns = prompt + ([] if len(prompt) % 2 else ["And?"])
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": dialogue(*turns, replies[0]),
                                                   "rejected": dialogue(*turns, replies[1])}])
    rows, report = load_hh_rlhf(path)
    assert report.as_dict() == {"rows": 1, "kept": 1, "skipped": {}}
    assert rows[0]["prompt"] == [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
    assert (rows[0]["chosen"], rows[0]["rejected"]) == tuple(replies)


# ---------------------------------------------------------------------------------- UltraFeedback


def uf_completion(model: str, response: str, helpfulness, honesty, instruction_following, truthfulness) -> dict:
    ratings = {"helpfulness": helpfulness, "honesty": honesty, "instruction_following": instruction_following,
               "truthfulness": truthfulness}
    numeric = [float(r) for r in ratings.values() if r != "N/A"]
    return {"model": model, "response": response,
            "annotations": {p: {"Rating": str(r), "Rationale": f"{p} rationale"} for p, r in ratings.items()},
            "fine-grained_score": sum(numeric) / max(len(numeric), 1), "overall_score": 7.5}


UF_ROWS = [
    {"instruction": "Write a haiku about autumn.", "source": "evol_instruct", "completions": [
        uf_completion("gpt-4", "Leaves drift slowly down", 4, 5, 3, "N/A"),  # 4.0
        uf_completion("alpaca-7b", "Autumn is a season.", 2, 2, 4, 2),  # 2.5
        uf_completion("llama-2-70b", "Crisp air, amber light", 5, 5, 4, 5),  # 4.75
        uf_completion("falcon-40b", "Red maple whispers", 4, 4, 4, 4),  # 4.0, ties with gpt-4
    ]},
    {"instruction": "What is 2+2?", "completions": [
        uf_completion("a", "Four.", "N/A", "N/A", "N/A", "N/A"),  # unrated
        uf_completion("b", "", 5, 5, 5, 5),  # empty response
        uf_completion("c", "4", 5, 5, 5, 5),
    ]},
    {"instruction": "Name a colour.", "source": "sharegpt", "completions": [
        uf_completion("a", "Blue.", 4, 4, 4, 4), uf_completion("b", "Red.", 4, 4, 4, 4)]},
    {"instruction": "Say hi.", "source": "flan", "id": "uf-given", "completions": [
        uf_completion("a", "Hi!", 5, 5, 5, 5), uf_completion("b", "Hi!", 3, 3, 3, 3)]},
]


def test_ultrafeedback_all_pairs_scores_and_principles(tmp_path, tok):
    path = write_jsonl(tmp_path / "uf.jsonl", UF_ROWS, blank_before=(1,))
    rows, report = load_ultrafeedback(path)
    texts = [c["response"] for c in UF_ROWS[0]["completions"]]

    def pair(good: int, bad: int, by_principle: dict) -> dict:
        return {"prompt": "Write a haiku about autumn.", "chosen": texts[good], "rejected": texts[bad],
                "id": f"uf-1-{good}-{bad}", "subset": "evol_instruct", "by_principle": by_principle}

    assert rows == [
        pair(0, 1, {"helpfulness": 1, "honesty": 1, "instruction_following": -1}),  # truthfulness N/A
        pair(2, 0, {"helpfulness": 1, "instruction_following": 1}),  # honesty tied
        pair(2, 1, {"helpfulness": 1, "honesty": 1, "truthfulness": 1}),
        pair(3, 1, {"helpfulness": 1, "honesty": 1, "truthfulness": 1}),
        pair(2, 3, {"helpfulness": 1, "honesty": 1, "truthfulness": 1}),
    ]
    assert report.as_dict() == {"rows": 4, "kept": 5, "skipped": {
        "empty_response": 1, "identical_pair": 1, "tied_score": 2, "too_few_completions": 1,
        "unrated_completion": 1}}
    through_pair_example(tok, rows)
    with pytest.raises(DataError, match=r"uf\.jsonl:3: field 'completions\[0\]' has no numeric rating"):
        load_ultrafeedback(path, strict=True)


def test_ultrafeedback_best_vs_worst_and_best_vs_random(tmp_path):
    path = write_jsonl(tmp_path / "uf.jsonl", UF_ROWS)
    rows, report = load_ultrafeedback(path, pairs="best_vs_worst")
    assert [(r["chosen"], r["rejected"], r["id"]) for r in rows] == [
        ("Crisp air, amber light", "Autumn is a season.", "uf-1-2-1")]
    assert report.as_dict()["skipped"] == {"empty_response": 1, "identical_pair": 1, "tied_score": 1,
                                           "too_few_completions": 1, "unrated_completion": 1}
    drawn = {load_ultrafeedback(path, pairs="best_vs_random", seed=s)[0][0]["id"] for s in range(12)}
    assert drawn == {"uf-1-2-0", "uf-1-2-1", "uf-1-2-3"}  # the best against each lower-scored one
    assert load_ultrafeedback(path, pairs="best_vs_random", seed=3) == load_ultrafeedback(
        path, pairs="best_vs_random", seed=3)
    with pytest.raises(DataError, match="pairs='worst'; expected one of all, best_vs_worst, best_vs_random"):
        load_ultrafeedback(path, pairs="worst")


def test_ultrafeedback_principles_are_the_judges_principles():
    from sj_jax.judge.template import DEFAULT_PRINCIPLES

    assert set(UF_PRINCIPLES) == {p.name for p in DEFAULT_PRINCIPLES}


def test_ultrafeedback_bad_nested_fields_name_the_line_and_path(tmp_path):
    bad = json.loads(json.dumps(UF_ROWS[2]))
    del bad["completions"][1]["response"]
    path = write_jsonl(tmp_path / "uf.jsonl", [UF_ROWS[0], bad])
    with pytest.raises(DataError, match=r"uf\.jsonl:2: missing field 'completions\[1\]\.response'"):
        load_ultrafeedback(path)
    bad = json.loads(json.dumps(UF_ROWS[2]))
    bad["completions"][0]["annotations"]["honesty"]["Rating"] = "great"
    path = write_jsonl(tmp_path / "uf.jsonl", [UF_ROWS[0], bad])
    with pytest.raises(DataError, match=r"uf\.jsonl:2: field 'completions\[0\]\.annotations\.honesty\.Rating' "
                                        r"must be a number or 'N/A', got 'great'"):
        load_ultrafeedback(path)


# ---------------------------------------------------------------------------------- RewardBench

RB_ROWS = [
    {"prompt": "Explain recursion briefly.", "chosen": "A function that calls itself on a smaller input.",
     "rejected": "Recursion is a loop.", "subset": "alpacaeval-easy", "id": 30},
    {"prompt": "Fix: print('hi'", "chosen": "print('hi')", "rejected": "", "subset": "hep-python", "id": 31},
    {"prompt": "Say yes.", "chosen": "Yes.", "rejected": "Yes.", "subset": "refusals-dangerous", "id": 32},
    {"prompt": "Name a prime.", "chosen": "7", "rejected": "8"},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_rewardbench_rows_from_jsonl_and_parquet(tmp_path, tok, suffix):
    path = tmp_path / f"rb{suffix}"
    write_rows(path, RB_ROWS)
    rows, report = load_rewardbench(path)
    last_id = "rb-4" if suffix == ".jsonl" else "rb-3"  # the line, or the 0-based Parquet row
    assert rows == [
        {"prompt": "Explain recursion briefly.", "chosen": "A function that calls itself on a smaller input.",
         "rejected": "Recursion is a loop.", "id": "30", "subset": "alpacaeval-easy"},
        {"prompt": "Name a prime.", "chosen": "7", "rejected": "8", "id": last_id, "subset": "rewardbench"},
    ]
    assert report.as_dict() == {"rows": 4, "kept": 2, "skipped": {"empty_response": 1, "identical_pair": 1}}
    through_pair_example(tok, rows)
    where = r"rb\.jsonl:2" if suffix == ".jsonl" else r"rb\.parquet:row 1"
    with pytest.raises(DataError, match=rf"{where}: field 'rejected' is empty \(empty_response; strict\)"):
        load_rewardbench(path, strict=True)


def test_llmbar_natural_loads_as_rewardbench(tok):
    if not LLMBAR.exists():
        pytest.skip(f"{LLMBAR} is not here")
    rows, report = load_rewardbench(LLMBAR)
    assert report.as_dict() == {"rows": 100, "kept": 100, "skipped": {}}
    assert {r["subset"] for r in rows} == {"llmbar-natural"}
    assert [r["id"] for r in rows] == [f"llmbar-natural-{i}" for i in range(100)]
    through_pair_example(tok, rows)


# --------------------------------------------------------------------------------- SFT formats


def test_alpaca_rows(tmp_path, tok):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Summarise.", "input": "   ", "output": "Nothing to summarise."},
        {"instruction": "Write a poem.", "output": ""},
        {"instruction": "Count to three.", "output": "1, 2, 3", "id": "a-9"},
    ])
    rows, report = load_alpaca(path)
    assert rows == [
        {"messages": [user("Give three tips for staying healthy."), assistant("Eat well, sleep, move.")],
         "id": "alpaca-1"},
        {"messages": [user("Translate to French.\n\nGood morning"), assistant("Bonjour")], "id": "alpaca-2"},
        {"messages": [user("Summarise."), assistant("Nothing to summarise.")], "id": "alpaca-3"},
        {"messages": [user("Count to three."), assistant("1, 2, 3")], "id": "a-9"},
    ]
    assert report.as_dict() == {"rows": 5, "kept": 4, "skipped": {"empty_response": 1}}
    through_sft_example(tok, rows)


@settings(FAST, max_examples=30)
@given(st.lists(st.tuples(st.text(min_size=1).filter(str.strip), st.text(), st.text(min_size=1).filter(str.strip)),
                min_size=1, max_size=4))
def test_alpaca_prompt_composition(tmp_path, rows):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": i, "input": x, "output": o} for i, x, o in rows])
    loaded, report = load_alpaca(path)
    assert report.kept == len(rows)
    for (instruction, extra, output), row in zip(rows, loaded):
        expected = instruction + "\n\n" + extra if extra.strip() else instruction
        assert alpaca_prompt(instruction, extra) == expected
        assert row["messages"] == [user(expected), assistant(output)]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_messages_rows(tmp_path, tok, suffix):
    chat = [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello."), user("Bye"),
            assistant("Goodbye.")]
    source = [
        {"messages": chat, "id": "chat-a"},
        {"messages": [{**user("Name a fruit."), "name": "ann"}, assistant("Apple.")]},
        {"messages": [user("Hello?")]},
        {"messages": [user("Hi"), assistant(" "), user("?"), assistant("Sorry.")]},
        {"messages": []},
    ]
    path = tmp_path / f"chat{suffix}"
    write_rows(path, source)
    rows, report = load_messages(path)
    second_id = "chat-2" if suffix == ".jsonl" else "chat-1"
    assert rows == [{"messages": chat, "id": "chat-a"},
                    {"messages": [user("Name a fruit."), assistant("Apple.")], "id": second_id}]
    assert report.as_dict() == {"rows": 5, "kept": 2, "skipped": {
        "empty_conversation": 1, "empty_response": 1, "no_final_assistant": 1}}
    through_sft_example(tok, rows)


def test_bad_message_roles_and_contents_are_errors(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [user("q"), assistant("a")]},
                                                  {"messages": [user("q"), {"role": "bot", "content": "a"}]}])
    with pytest.raises(DataError, match=r"chat\.jsonl:2: field 'messages\[1\]\.role' is 'bot'; expected one of"):
        load_messages(path)
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [user("q"), {"role": "assistant", "content": None}]}])
    with pytest.raises(DataError, match=r"chat\.jsonl:1: missing field 'messages\[1\]\.content'"):
        load_messages(path)


def test_pairs_to_sft_keeps_prompt_and_chosen(tok):
    pairs = [{"prompt": "Q?", "chosen": "A.", "rejected": "B.", "id": "p1", "subset": "s"},
             {"prompt": [user("Hi"), assistant("Hey"), user("Q?")], "chosen": "A.", "rejected": "B.", "id": "p2",
              "subset": "s", "by_principle": {"honesty": 1}}]
    sft = pairs_to_sft(pairs)
    assert sft == [{"messages": [user("Q?"), assistant("A.")], "id": "p1"},
                   {"messages": [user("Hi"), assistant("Hey"), user("Q?"), assistant("A.")], "id": "p2"}]
    assert pairs[1]["prompt"] == [user("Hi"), assistant("Hey"), user("Q?")]  # not mutated
    through_sft_example(tok, sft)


# ------------------------------------------------------------------------------------ reading


@FAST
@given(st.data())
def test_read_rows_round_trips_json_lines_with_their_line_numbers(tmp_path, data):
    # One type per field (datasets needs it), any values, fields missing or null in some rows.
    value_of = {"string": st.text(), "int": st.integers(-2 ** 53, 2 ** 53), "bool": st.booleans(),
                "float": st.floats(allow_nan=False, allow_infinity=False),
                "strings": st.lists(st.text(max_size=5), max_size=3),
                "object": st.fixed_dictionaries({"x": st.text(max_size=5), "y": st.integers(0, 9)})}
    schema = data.draw(st.dictionaries(st.text("abcdefghé_ -:", min_size=1, max_size=6),
                                       st.sampled_from(sorted(value_of)), min_size=1, max_size=5))
    first, *rest = schema  # every row has the first field (a row of only "{}" is no data to datasets)
    rows = data.draw(st.lists(st.fixed_dictionaries(
        {first: st.none() | value_of[schema[first]]},
        optional={k: st.none() | value_of[schema[k]] for k in rest}), min_size=1, max_size=8))
    # Before each row: no line, or a blank one (empty, spaces, a tab, a carriage return).
    blanks = data.draw(st.lists(st.sampled_from([None, "", "  ", "\t", "\r"]), min_size=len(rows),
                                max_size=len(rows)))
    path, lines, n = tmp_path / "any.jsonl", [], 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        for row, blank in zip(rows, blanks):
            for text in ([] if blank is None else [blank]) + [json.dumps(row)]:
                f.write(text + "\n")
                n += 1
            lines.append(n)
    fields = {k for row in rows for k in row}
    assert read_rows(path) == [(f"{path}:{n}", {k: row.get(k) for k in fields}) for n, row in zip(lines, rows)]


def test_type_change_between_rows_names_the_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "rb.jsonl", RB_ROWS[:1] + [{**RB_ROWS[3], "chosen": 7}], blank_before=(1,))
    with pytest.raises(DataError, match=r"rb\.jsonl:3: field 'chosen' is a number here but a string on line 1"):
        load_rewardbench(path)
    path = write_jsonl(tmp_path / "uf.jsonl", [UF_ROWS[0], {**UF_ROWS[2], "completions": [{"response": ["x"]}]}])
    with pytest.raises(DataError, match=r"uf\.jsonl:2: field 'completions\[\]\.response' is an array here"):
        read_rows(path)


def test_a_file_past_datasets_first_chunk_is_read_as_one_chunk(tmp_path):
    # datasets takes the schema from its first chunk (10 MiB by default): past it a new field or a fraction where
    # there were integers would fail, and a type change would come back as JSON text ('x' -> '"x"').
    rows = [{"a": "x", "n": 1, "pad": "p" * (1 << 18)}] * 41 + [{"a": "y", "b": 1}, {"a": "z", "n": 2.5}]
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    assert path.stat().st_size > 10 << 20
    fields = ("a", "n", "pad", "b")
    assert read_rows(path) == [(f"{path}:{i}", {k: row.get(k) for k in fields}) for i, row in enumerate(rows, 1)]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows + [{"a": 5}])
    with pytest.raises(DataError, match=r"mixed\.jsonl:44: field 'a' is a number here but a string on line 1"):
        read_rows(path)


def test_malformed_and_non_utf8_lines_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RB_ROWS[0]) + "\n\n" + '{"prompt": "q", "chosen": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        load_rewardbench(path)
    path.write_bytes(json.dumps(RB_ROWS[0]).encode() + b'\n{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not UTF-8"):
        load_rewardbench(path)
    path.write_text(json.dumps(RB_ROWS[0]) + '\n{"prompt": "q", "prompt": "r", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: key 'prompt' appears twice"):
        load_rewardbench(path)


def test_missing_and_null_fields_are_missing_even_though_datasets_fills_them(tmp_path):
    path = write_jsonl(tmp_path / "rb.jsonl", [RB_ROWS[0], {"prompt": "q", "chosen": "a"}], blank_before=(1,))
    assert read_rows(path)[1][1]["rejected"] is None  # what datasets gives for an absent field
    with pytest.raises(DataError, match=r"rb\.jsonl:3: missing field 'rejected'"):
        load_rewardbench(path)
    path = write_jsonl(tmp_path / "rb.jsonl", [RB_ROWS[0], {**RB_ROWS[3], "chosen": None}])
    with pytest.raises(DataError, match=r"rb\.jsonl:2: missing field 'chosen'"):
        load_rewardbench(path)
    path = write_parquet(tmp_path / "hh.parquet", [HH_ROWS[0], {"chosen": HH_ROWS[0]["chosen"]}])
    with pytest.raises(DataError, match=r"hh\.parquet:row 1: missing field 'rejected'"):
        load_hh_rlhf(path)


def test_wrong_types_name_the_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "rb.jsonl", [{**RB_ROWS[0], "chosen": 3}, {**RB_ROWS[3], "chosen": 4}])
    with pytest.raises(DataError, match=r"rb\.jsonl:1: field 'chosen' must be a string, got int"):
        load_rewardbench(path)
    path = write_parquet(tmp_path / "alpaca.parquet", [{"instruction": "a", "output": "b"},
                                                       {"instruction": "c", "output": "d", "input": None}])
    assert load_alpaca(path)[1].kept == 2
    path = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": ["a"], "output": "b"}])
    with pytest.raises(DataError, match=r"alpaca\.jsonl:1: field 'instruction' must be a string, got list"):
        load_alpaca(path)
    # A row that would be skipped (empty prompt) still has its wrong types reported.
    path = write_jsonl(tmp_path / "rb.jsonl", [{"prompt": " ", "chosen": 1, "rejected": 2}])
    with pytest.raises(DataError, match=r"rb\.jsonl:1: field 'chosen' must be a string, got int"):
        load_rewardbench(path)
    bad = json.loads(json.dumps(UF_ROWS[2]))
    bad["instruction"] = ""
    del bad["completions"][1]["annotations"]
    path = write_jsonl(tmp_path / "uf.jsonl", [bad])
    with pytest.raises(DataError, match=r"uf\.jsonl:1: missing field 'completions\[1\]\.annotations'"):
        load_ultrafeedback(path)


def test_unknown_format_option_extension_and_missing_file(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "output": "b"}])
    with pytest.raises(DataError, match="unknown data format 'sharegpt'; known formats: alpaca, hh_rlhf, messages, "
                                        "rewardbench, ultrafeedback"):
        load_source("sharegpt", path)
    hh = write_jsonl(tmp_path / "hh.jsonl", HH_ROWS[:1])
    assert load_source("hh-rlhf", hh) == load_source("hh_rlhf", hh) == load_hh_rlhf(hh)
    with pytest.raises(DataError, match=r"alpaca: unknown option\(s\) pairs; known: strict"):
        load_source("alpaca", path, pairs="all")
    rows, report = load_source("alpaca", path, strict=True)
    assert len(rows) == 1 and isinstance(report, LoadReport) and set(FORMATS) >= {"alpaca", "ultrafeedback"}
    csv = tmp_path / "a.csv"
    csv.write_text("instruction,output\na,b\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(csv))}: unknown file type '\.csv'"):
        load_alpaca(csv)
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'none.jsonl'))}: no such file"):
        load_alpaca(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: (no rows|the file holds no rows)"):
        load_alpaca(tmp_path / "empty.jsonl")



def test_a_json_array_file_reads_like_json_lines_with_item_lines(tmp_path, tok):
    """The Stanford Alpaca release is one JSON array (alpaca_data.json), indented."""
    items = [{"instruction": "Name a color.", "input": "", "output": "Blue."},
             {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}]
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(items, indent=4))
    text = path.read_text()
    # the line of each item's "instruction" key
    lines = [text[:text.index(json.dumps(it["instruction"]))].count("\n") for it in items]
    got = read_rows(path)
    assert [r for _, r in got] == items
    assert [w for w, _ in got] == [f"{path}:{n}" for n in lines]  # each object's "{" is one line up
    rows, report = load_alpaca(path)
    assert report.kept == 2 and rows[1]["messages"][0]["content"] == "Add the numbers.\n\n2 and 3"
    for i, row in enumerate(rows):
        sft_example(tok, row, f"a:{i}", 256, DataReport())
    bad = tmp_path / "bad.json"
    # json's own message, at the line json names (the first: the "]" where a value should be)
    for body, line, match in [('[\n {"a": 1},\n {"a": \n]', 4, "not valid JSON: Expecting value"),
                              ('[\n {"a": 1},\n 5\n]', 3, "expected a JSON object"),
                              ('[\n {"a": 1},\n]', 3, "not valid JSON: Expecting value"),  # a trailing comma
                              ('[\n {"a": 1}\n {"a": 2}]', 3, "not valid JSON: Expecting ',' delimiter"),
                              ('[\n {"a": 1}\n', 3, "not valid JSON: the JSON array is not closed"),
                              ('[{"a": 1}]\n[{"a": 2}]', 2, "not valid JSON: Extra data")]:  # text after the array
        bad.write_text(body)
        with pytest.raises(DataError, match=rf"bad\.json:{line}: {match}"):
            read_rows(bad)


def test_rows_that_look_like_agent_traces_are_read_as_they_are(tmp_path):
    rows = [{"type": "note", "message": {"x": 1}}, {"type": "note", "message": {"y": "s"}}]
    assert [r for _, r in read_rows(write_jsonl(tmp_path / "t.jsonl", rows))] == rows


def test_reading_is_offline_quiet_and_leaves_no_cache(tmp_path, monkeypatch, capfd):
    import datasets.config

    data = tmp_path / "data"
    data.mkdir()
    jsonl = write_jsonl(data / "odd [name]*.jsonl", RB_ROWS)  # data_files is a glob: this must be escaped
    parquet = write_parquet(data / "rb.parquet", RB_ROWS)
    for d in ("hf_cache", "tmp"):
        (tmp_path / d).mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))

    attempts = []  # recorded too: datasets swallows some failures (e.g. of load_dataset's download counter)

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    twice = data / "twice.jsonl"
    twice.write_text('{"a": 1}\n{"a": 1, "a": 2}\n')
    capfd.readouterr()
    assert len(read_rows(jsonl)) == len(read_rows(parquet)) == 4
    with pytest.raises(DataError, match="twice.jsonl:2: key 'a' appears twice"):  # datasets logs such failures
        read_rows(twice)
    assert capfd.readouterr().err == ""
    assert [p.name for p in data.iterdir()] and sorted(p.name for p in data.iterdir()) == [
        "odd [name]*.jsonl", "rb.parquet", "twice.jsonl"]
    assert not any((tmp_path / "hf_cache").iterdir()) and not any((tmp_path / "tmp").iterdir())
    assert attempts == []
