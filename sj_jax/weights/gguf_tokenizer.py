"""A `tokenizers.Tokenizer` built from the vocabulary a GGUF file carries, without PyTorch.

transformers can build this tokenizer too, but its GGUF path imports torch (5.24) and converts in
Python for seconds. The file already holds all a byte-level BPE needs: tokens, merges, token types,
special ids, the pre-tokenizer's name and the chat template. We assemble the same pipeline that
transformers' GGUF conversion assembles (its ids are the oracle in the tests): a BPE model over the
byte alphabet, the pre-tokenizer's split rule, byte-level decoding, control tokens as special
added tokens and user-defined ones as plain added tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

from sj_jax.core.errors import TokenizerError

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types

# The split rules that some vocabularies' merges were learned with (`tokenizer.ggml.pre`), as
# llama.cpp and transformers name them; any other name uses GPT-2's own rule (ByteLevel's regex).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLITS = {
    **{name: _LLAMA3_SPLIT for name in ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx")},
    **{name: _QWEN2_SPLIT for name in ("qwen2", "deepseek-r1-qwen")},
}


@dataclasses.dataclass(frozen=True)
class GGUFVocab:
    """What a GGUF says of its tokenizer, checked: everything a fast tokenizer needs."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) is the one built here
    pre: str | None
    tokens: list[str]
    merges: list[str]
    token_types: list[int]
    special: dict[str, str | None]  # bos_token, eos_token, unk_token, pad_token -> token text
    chat_template: str | None
    add_bos_token: bool
    add_eos_token: bool


def read_vocab(fields: dict[str, Any], path: str) -> GGUFVocab:
    """The tokenizer metadata of a parsed GGUF (`GGUFFile.fields`), with errors naming the field."""
    def get(key: str, kind: type | tuple, default: Any = ...) -> Any:
        v = fields.get(key, default)
        if v is ...:
            raise TokenizerError(f"{path}: metadata field {key} is missing, so there is no tokenizer to build")
        if v is not default and not isinstance(v, kind):
            raise TokenizerError(f"{path}: metadata field {key} has the wrong type ({type(v).__name__})")
        return v

    def strings(key: str, default: Any = ...) -> list[str]:
        v = get(key, list, default)
        if v is not default and not all(isinstance(s, str) for s in v):
            raise TokenizerError(f"{path}: metadata field {key} should be a list of strings")
        return v

    model = get("tokenizer.ggml.model", str)
    tokens = strings("tokenizer.ggml.tokens")
    if not tokens:
        raise TokenizerError(f"{path}: metadata field tokenizer.ggml.tokens is empty")
    types = fields.get("tokenizer.ggml.token_type")
    if types is None:
        types = [1] * len(tokens)
    elif getattr(types, "ndim", 0) != 1 or getattr(types, "dtype", None) is None or types.dtype.kind not in "iu" \
            or len(types) != len(tokens):
        raise TokenizerError(f"{path}: tokenizer.ggml.token_type should hold one integer per token "
                             f"({len(tokens)})")
    special = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        tid = get(f"tokenizer.ggml.{key}", int, None)
        if tid is not None and (isinstance(tid, bool) or not 0 <= tid < len(tokens)):
            raise TokenizerError(f"{path}: tokenizer.ggml.{key} = {tid!r} is not a token id below {len(tokens)}")
        special[name] = None if tid is None else tokens[tid]
    return GGUFVocab(
        model=model,
        pre=get("tokenizer.ggml.pre", str, None),
        tokens=tokens,
        merges=strings("tokenizer.ggml.merges", []),
        token_types=[int(t) for t in types],
        special=special,
        chat_template=get("tokenizer.chat_template", str, None),
        add_bos_token=bool(get("tokenizer.ggml.add_bos_token", bool, False)),
        add_eos_token=bool(get("tokenizer.ggml.add_eos_token", bool, False)),
    )


def build_tokenizer(vocab: GGUFVocab, path: str) -> Any:
    """A `tokenizers.Tokenizer` for a byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`)."""
    if vocab.model != "gpt2":
        raise TokenizerError(f"{path}: tokenizer.ggml.model {vocab.model!r} is not built without transformers' "
                             "GGUF path (only 'gpt2', byte-level BPE, is)")
    byte_char = _byte_chars()
    spelled = set(byte_char.values())
    table: dict[str, int] = {}
    for i, tok in enumerate(vocab.tokens):
        # a token outside the byte alphabet (llama.cpp writes some as plain text) is respelled byte by byte
        key = tok if set(tok) <= spelled else "".join(byte_char[b] for b in tok.encode("utf-8"))
        table[key] = i
    merges = []
    for n, m in enumerate(vocab.merges):
        parts = m.split(" ")
        if len(parts) != 2:
            raise TokenizerError(f"{path}: tokenizer.ggml.merges[{n}] = {m!r} is not two tokens")
        merges.append((parts[0], parts[1]))
    try:
        tok = Tokenizer(BPE(vocab=table, merges=merges, dropout=None, continuing_subword_prefix="",
                            end_of_word_suffix="", fuse_unk=False))
    except Exception as e:  # tokenizers raises a bare Exception for merges outside the vocabulary
        raise TokenizerError(f"{path}: the vocabulary and merges do not make a BPE tokenizer: {e}") from None
    split = SPLITS.get(vocab.pre or "")
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    control = [AddedToken(t, normalized=False, special=True)
               for t, kind in zip(vocab.tokens, vocab.token_types) if kind == CONTROL and set(t) <= spelled]
    if control:
        tok.add_special_tokens(control)
    user = [AddedToken(t, normalized=False, special=False)
            for t, kind in zip(vocab.tokens, vocab.token_types) if kind == USER_DEFINED and t in table]
    if user:
        tok.add_tokens(user)
    return tok


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte-to-character table: printable bytes stand for themselves, the rest for chr(256 + n)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(rest)}}
