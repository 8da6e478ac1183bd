"""Chat rendering with exact loss masks: character spans of the rendered template -> token masks.

The spans come from rendering the conversation up to each trained turn (the template's own
boundaries), never from searching token subsequences; tokens are mapped to characters through the
fast tokenizer's offsets.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sj_jax.core.errors import DataError
from sj_jax.weights.tokenizer import end_of_turn_ids

Span = tuple[int, int]


def render(tokenizer: Any, messages: Sequence[dict], *, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _end_markers(tokenizer: Any) -> list[str]:
    return [tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(tokenizer)]


def turn_span(tokenizer: Any, messages: Sequence[dict], i: int, where: str) -> tuple[str, Span]:
    """(text of messages[:i+1], character span of assistant turn i: its content through the
    end-of-turn marker, without what the template puts after the marker)."""
    prefix = render(tokenizer, messages[:i], add_generation_prompt=True)
    upto = render(tokenizer, messages[:i + 1])
    if not upto.startswith(prefix):
        raise DataError(f"{where}: the chat template does not render message {i} after its generation prompt; "
                        "cannot locate the assistant turn")
    end = len(upto)
    body = upto[len(prefix):]
    cuts = [body.rfind(m) + len(m) for m in _end_markers(tokenizer) if m and body.rfind(m) >= 0]
    if cuts:
        end = len(prefix) + max(cuts)
    return upto, (len(prefix), end)


def assistant_spans(tokenizer: Any, messages: Sequence[dict], where: str) -> tuple[str, list[Span]]:
    """The rendered conversation and the character spans of every assistant turn."""
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{j}] must be an object with string 'role' and 'content'")
        if m["role"] == "assistant" and not m["content"].strip():
            raise DataError(f"{where}: messages[{j}] is an empty assistant response")
    turns = [j for j, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise DataError(f"{where}: no assistant message to train on")
    text = render(tokenizer, messages)
    spans = []
    for j in turns:
        upto, span = turn_span(tokenizer, messages, j, where)
        if not text.startswith(upto):
            raise DataError(f"{where}: the chat template renders a prefix of the conversation differently")
        spans.append(span)
    return text, spans


def tokens_with_mask(tokenizer: Any, text: str, spans: Sequence[Span]) -> tuple[np.ndarray, np.ndarray]:
    """int32 ids and a 0/1 mask of the tokens that overlap any character span."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], np.int32)
    offsets = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
    mask = np.zeros(len(ids), np.int32)
    for s, e in spans:
        mask |= ((offsets[:, 0] < e) & (offsets[:, 1] > s)).astype(np.int32)
    return ids, mask


def context_text(prompt: str | Sequence[dict]) -> str:
    """The judge's context for a prompt: the text itself, or a conversation as "Role: content" blocks."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)
