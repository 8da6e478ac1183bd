"""Tokenizer and chat template, from a Hugging Face folder or a GGUF file, offline, through transformers."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

from sj_jax.errors import TokenizerError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(path: str | Path) -> Any:
    """A transformers tokenizer from a folder (tokenizer files) or a `.gguf` file (its embedded vocab)."""
    from transformers import AutoTokenizer

    path = Path(path)
    try:
        if path.suffix == ".gguf":
            # transformers converts GGUF vocabularies loudly; the conversion is routine here.
            logging.getLogger("transformers").setLevel(logging.ERROR)
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        else:
            if not any((path / f).exists() for f in _TOKENIZER_FILES):
                raise TokenizerError(
                    f"{path}: no tokenizer here (none of {', '.join(_TOKENIZER_FILES)}); "
                    "pass tokenizer=<folder> or tokenizer=None"
                )
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except TokenizerError:
        raise
    except Exception as e:
        raise TokenizerError(f"{path}: cannot load the tokenizer: {e}") from e
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
