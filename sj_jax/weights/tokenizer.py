"""Tokenizer and chat template, offline: from a Hugging Face folder through transformers, or from a GGUF
file's own vocabulary through `tokenizers` (no PyTorch), wrapped in transformers' fast-tokenizer API."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

from sj_jax.core.errors import TokenizerError, WeightsError
from sj_jax.weights.gguf_reader import GGUFFile
from sj_jax.weights.gguf_tokenizer import build_tokenizer, read_vocab

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(path: str | Path) -> Any:
    """A transformers tokenizer from a folder (tokenizer files) or a `.gguf` file (its embedded vocab)."""
    path = Path(path)
    if path.suffix == ".gguf":
        return gguf_tokenizer(path)
    if not any((path / f).exists() for f in _TOKENIZER_FILES):
        raise TokenizerError(
            f"{path}: no tokenizer here (none of {', '.join(_TOKENIZER_FILES)}); "
            "pass tokenizer=<folder> or tokenizer=None"
        )
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise TokenizerError(f"{path}: cannot load the tokenizer: {e}") from e
    return _with_pad(tok)


def gguf_tokenizer(path: str | Path, fields: dict | None = None) -> Any:
    """The fast tokenizer a GGUF file describes; `fields` are its parsed metadata, if already read."""
    path = str(path)
    if fields is None:

        try:
            fields = GGUFFile(path).fields
        except WeightsError as e:
            raise TokenizerError(str(e)) from None
    vocab = read_vocab(fields, path)
    if vocab.model != "gpt2":
        return _transformers_gguf_tokenizer(Path(path))
    backend = build_tokenizer(vocab, path)
    from transformers import PreTrainedTokenizerFast

    try:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=backend, chat_template=vocab.chat_template, add_bos_token=vocab.add_bos_token,
            add_eos_token=vocab.add_eos_token, name_or_path=path,
            **{k: v for k, v in vocab.special.items() if v is not None})
    except Exception as e:
        raise TokenizerError(f"{path}: transformers refuses the tokenizer built from this file: {e}") from None
    return _with_pad(tok)


def _transformers_gguf_tokenizer(path: Path) -> Any:
    """Vocabularies other than byte-level BPE (sentencepiece, unigram) go through transformers' GGUF
    conversion, which needs PyTorch in transformers 5.24."""
    from transformers import AutoTokenizer

    # transformers converts GGUF vocabularies loudly; the conversion is routine here.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except Exception as e:
        raise TokenizerError(f"{path}: cannot load the tokenizer (this vocabulary type goes through "
                             f"transformers' GGUF conversion, which needs PyTorch): {e}") from e
    return _with_pad(tok)


def _with_pad(tok: Any) -> Any:
    """Batches need a pad token; a tokenizer without one pads with EOS (its positions are masked)."""
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn: EOS and the chat template's end-of-turn marker."""
    cached = _EOT_CACHE.get(tokenizer)
    if cached is None or cached[0] != tokenizer.eos_token_id:
        # get_vocab builds the whole vocabulary dict (~10 ms); data building asks once per example.
        vocab = tokenizer.get_vocab()
        ids = {tokenizer.eos_token_id}
        for marker in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<|endoftext|>"):
            tid = vocab.get(marker)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                ids.add(tid)
        cached = (tokenizer.eos_token_id, sorted(i for i in ids if i is not None))
        _EOT_CACHE[tokenizer] = cached
    return list(cached[1])


_EOT_CACHE: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()
