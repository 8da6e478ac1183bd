"""The tokenizer built from a GGUF's own vocabulary, without PyTorch, against transformers' GGUF tokenizer."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import pytest

# Chat-rendered ids of three conversations, computed once with transformers 5.24's GGUF tokenizer
# (`AutoTokenizer.from_pretrained(folder, gguf_file=...)`, which needs PyTorch) on SmolLM2-135M-Instruct.
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    [{"role": "system", "content": "You are a strict judge."},
     {"role": "user", "content": "Sort 10, 3, 7.  Then   reverse: «naïve café» 日本語 🤖"},
     {"role": "assistant", "content": "3, 7, 10\n\tdone"},
     {"role": "user", "content": "def f(x):\n    return x**2  # <|im_end|> inside"}],
    [{"role": "user", "content": "12345678901234567890 + 0.5e-3 = ?"}],
]
_SYSTEM = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712,
           8182, 2, 198]
_ASSISTANT = [1, 520, 9531, 198]
EXPECTED_IDS = [
    _SYSTEM + [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 19842, 281, 582, 6330, 30, 2, 198] + _ASSISTANT,
    [1, 9690, 198, 2683, 359, 253, 6844, 8048, 30, 2, 198, 1, 4093, 198, 48762, 216, 33, 32, 28, 216, 35, 28, 216,
     39, 30, 216, 3875, 256, 8535, 42, 23708, 3546, 46494, 37366, 20306, 17097, 241, 115, 40993, 179, 120, 248,
     15107, 114, 240, 2, 198, 1, 520, 9531, 198, 35, 28, 216, 39, 28, 216, 33, 32, 198, 197, 22744, 2, 198, 1, 4093,
     198, 1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 216, 907, 216, 2, 2972, 2, 198] + _ASSISTANT,
    _SYSTEM + [1, 4093, 198, 33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 1232, 216,
               32, 30, 37, 85, 29, 35, 446, 9148, 2, 198] + _ASSISTANT,
]

_NO_TORCH = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # `import torch` now fails, and find_spec("torch") says there is none
    import importlib.util, json
    assert importlib.util.find_spec("torch") is None
    import sj_jax
    from sj_jax.weights.tokenizer import load_tokenizer
    tok = load_tokenizer(sys.argv[1])
    conversations = json.loads(sys.argv[2])
    ids = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True)["input_ids"] for c in conversations]
    print(json.dumps({"ids": ids, "torch_loaded": sys.modules.get("torch") is not None}))
""")


def test_embedded_tokenizer_needs_no_torch(smollm2_path):
    """In a process where `import torch` fails, sj_jax imports and the GGUF tokenizer renders the chat
    template to the oracle's ids."""
    out = subprocess.run([sys.executable, "-c", _NO_TORCH, str(smollm2_path), json.dumps(CONVERSATIONS)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not result["torch_loaded"]
    assert result["ids"] == EXPECTED_IDS


def varied_strings(n: int = 240, seed: int = 0) -> list[str]:
    """Hand-picked hard cases, then seeded mixtures of unicode, digits, whitespace runs, code and
    special tokens."""
    fixed = [
        "", " ", "  ", "\n", "\n\n\n", "\t \t", "   leading", "trailing   ", "a  b   c    d",
        "Hello, world!", "HELLO WORLD", "don't won't I'll they're we've", "'s 're 've 'm 'll 'd",
        "12", "123", "1234", "12345678901234567890", "3.14159 2.71828 -0.5 1e-9 0x1F", "١٢٣ ٤٥٦", "Ⅻ ½ ²",
        "naïve café résumé façade", "Straße Größe", "日本語のテキスト", "中文分词测试", "한국어 문장",
        "Привет, мир", "مرحبا بالعالم", "שלום עולם", "🤖🚀✨ emoji 👩‍👩‍👧‍👦 family", "é (e + combining acute)",
        "\u200b zero\u200bwidth", "\u00a0non-breaking\u00a0space", "tab\tseparated\tvalues", "crlf\r\nline",
        "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { a[i] = b[i]; }",
        "<div class=\"x\">&amp;</div>", '{"key": [1, 2, {"nested": null}]}', "SELECT * FROM t WHERE a >= 10;",
        "<|im_start|>user\nhi<|im_end|>\n", "text<|endoftext|>more", "<|im_end|><|im_end|>", "<|im_start",
        "<repo_name>x<file_sep>", "    \n    \n", "!!!???...,,,;;;", "$100 €50 ¥1000 £20", "a" * 300,
    ]
    fragments = [
        "the", " quick", " brown", " fox", "Jumps", " 42", "7", "3.5", "  ", "   ", "\n", "\t", "\n\n",
        "日本", "語", "é", "ü", "ß", "🤖", "👍🏽", "—", "…", "«", "»", "def", " return", "()", "{}", "[]",
        "->", "==", "!=", "x_1", "CamelCase", "snake_case", "'s", "'ll", "<|im_end|>", "<|im_start|>",
        "<|endoftext|>", "0", "00", "000", "0000", "-", "+", "*", "/", "#", "@user", "https://example.org/a?b=c",
    ]
    rng = random.Random(seed)
    mixed = ["".join(rng.choice(fragments) for _ in range(rng.randint(1, 24))) for _ in range(n - len(fixed))]
    return fixed + mixed


@pytest.fixture(scope="module")
def oracle_tokenizer(smollm2_path):
    pytest.importorskip("torch")
    import logging

    from transformers import AutoTokenizer

    logging.getLogger("transformers").setLevel(logging.ERROR)
    return AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name,
                                         local_files_only=True)


def test_same_ids_and_text_as_transformers_gguf_tokenizer(smollm2_tokenizer, oracle_tokenizer):
    ours, ref = smollm2_tokenizer, oracle_tokenizer
    strings = varied_strings()
    assert len(strings) >= 200
    for s in strings:
        ids = ours(s)["input_ids"]
        assert ids == ref(s)["input_ids"], s
        assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids), s
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), s
    batch = ours(strings[:32], padding=True)
    assert batch["input_ids"] == ref(strings[:32], padding=True)["input_ids"]
    assert batch["attention_mask"] == ref(strings[:32], padding=True)["attention_mask"]


def test_same_chat_rendering_as_transformers(smollm2_tokenizer, oracle_tokenizer):
    strings = varied_strings(seed=1)
    rng = random.Random(2)
    for n in range(40):
        turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": rng.choice(strings)}
                 for i in range(rng.randint(1, 4))]
        if n % 3 == 0:
            turns.insert(0, {"role": "system", "content": rng.choice(strings)})
        for gen in (True, False):
            kw = dict(add_generation_prompt=gen)
            assert smollm2_tokenizer.apply_chat_template(turns, tokenize=False, **kw) == \
                oracle_tokenizer.apply_chat_template(turns, tokenize=False, **kw)
            assert smollm2_tokenizer.apply_chat_template(turns, tokenize=True, **kw)["input_ids"] == \
                oracle_tokenizer.apply_chat_template(turns, tokenize=True, **kw)["input_ids"]
    for conversation, ids in zip(CONVERSATIONS, EXPECTED_IDS):
        assert oracle_tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
                                                    tokenize=True)["input_ids"] == ids


def test_same_pipeline_and_special_tokens_as_transformers(smollm2_tokenizer, oracle_tokenizer):
    """Normalizer, pre-tokenizer, model (vocabulary and merges), decoder, post-processor and added
    tokens serialise identically; the special tokens and their ids agree."""
    assert json.loads(smollm2_tokenizer.backend_tokenizer.to_str()) == \
        json.loads(oracle_tokenizer.backend_tokenizer.to_str())
    assert smollm2_tokenizer.special_tokens_map == oracle_tokenizer.special_tokens_map
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "chat_template"):
        assert getattr(smollm2_tokenizer, attr) == getattr(oracle_tokenizer, attr), attr
    assert len(smollm2_tokenizer) == len(oracle_tokenizer) == 49152


def test_tiny_gguf_tokenizer_keeps_control_tokens_whole(tmp_path):
    from tiny_files import write_tiny_gguf

    from sj_jax.weights.tokenizer import load_tokenizer

    tok = load_tokenizer(write_tiny_gguf(tmp_path / "tiny.gguf"))
    ids = tok("<|im_start|>the 12<|im_end|>")["input_ids"]
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids) == "<|im_start|>the 12<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "the 12"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == 2
