"""Turning JSONL rows into token-level training examples, with explicit truncation counts.

SFT/JSFT rows: {"messages": [...]} (every assistant turn is trained), {"prompt", "response"} (one
user turn and its answer), or {"judgment": {...}} (see `sj_jax.data.judgment`). DPO rows:
{"prompt": str or messages, "chosen": str, "rejected": str}.
Context is cut from the left; a response being trained or scored is never cut silently: DPO
responses are cut from the right to `max_response_length` and counted, SFT examples whose last
trained turn does not fit are dropped and counted.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from sj_jax.core.errors import DataError
from sj_jax.data.chat import assistant_spans, render, tokens_with_mask, turn_span


@dataclasses.dataclass
class DataReport:
    """What was read, and what truncation did to it."""

    rows: int = 0
    examples: int = 0
    truncated_context: int = 0  # context cut from the left
    truncated_response: int = 0  # dpo: response cut from the right
    dropped_too_long: int = 0  # the trained part alone does not fit

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SFTExample:
    input_ids: np.ndarray  # int32 [len]
    loss_mask: np.ndarray  # int32 [len]
    segment_ids: np.ndarray | None = None  # int32 [len], 1, 2, ... per packed example; None = one example


@dataclasses.dataclass(frozen=True)
class PairExample:
    prompt_ids: np.ndarray  # int32 [prompt]
    chosen_ids: np.ndarray  # int32 [response], through the end-of-turn token
    rejected_ids: np.ndarray


# What padding a batch needs of an example, as 4 ints (`shape_of`): (0, 0, 0, 0) for a dropped row;
# SFT: (1, tokens, trained tokens, whether the first token is trained); pair: (2, prompt, chosen, rejected).
SHAPE_WIDTH = 4


def shape_of(e: SFTExample | PairExample | None) -> tuple[int, int, int, int]:
    """An example's `SHAPE_WIDTH` ints: all a collate function reads of it to size a batch."""
    if e is None:
        return (0, 0, 0, 0)
    if isinstance(e, PairExample):
        return (2, len(e.prompt_ids), len(e.chosen_ids), len(e.rejected_ids))
    return (1, len(e.input_ids), int(e.loss_mask.sum()), int(e.loss_mask[0]))


def stand_in(shape: tuple[int, ...]) -> SFTExample | PairExample:
    """An example of the same `shape_of` with placeholder tokens: it pads a batch to the buckets
    the real one would, for the rows another process fills in (see `sj_jax.data.shares`)."""
    kind, a, b, c = (int(v) for v in shape)
    if kind == 2:
        return PairExample(np.zeros(a, np.int32), np.zeros(b, np.int32), np.zeros(c, np.int32))
    if kind != 1:
        raise ValueError(f"no stand-in for a dropped example (shape {tuple(shape)})")
    mask = np.zeros(a, np.int32)
    mask[0] = c
    if b - c:
        mask[-(b - c):] = 1  # the trained tokens after the first, counted as collate_sft counts them
    return SFTExample(np.zeros(a, np.int32), mask)


def _messages_of(row: dict, where: str) -> list[dict]:
    if "messages" in row:
        if not isinstance(row["messages"], list) or not row["messages"]:
            raise DataError(f"{where}: field 'messages' must be a non-empty list")
        return row["messages"]
    if "prompt" in row and "response" in row:
        for f in ("prompt", "response"):
            if not isinstance(row[f], str) or not row[f].strip():
                raise DataError(f"{where}: field {f!r} must be a non-empty string")
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    raise DataError(f"{where}: expected 'messages', 'prompt'+'response' or 'judgment'")


def sft_tokens(tokenizer: Any, row: dict, where: str,
               judgment: Callable[[Any, dict, str], tuple[str, list]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The whole example, not yet cut: int32 ids and 0/1 loss mask `[len]`."""
    if "judgment" in row:
        if judgment is None:
            raise DataError(f"{where}: judgment rows need a judge template")
        text, spans = judgment(tokenizer, row["judgment"], where)
    else:
        text, spans = assistant_spans(tokenizer, _messages_of(row, where), where)
    return tokens_with_mask(tokenizer, text, spans)


def cut_sft(ids: np.ndarray, mask: np.ndarray, where: str, max_length: int, report: DataReport) -> SFTExample | None:
    """The example cut to `max_length` from the left; None (and counted) if the last trained span
    does not fit."""
    if len(ids) > max_length:
        last_span_start = int(np.flatnonzero(mask)[-1]) if mask.any() else 0
        # the last trained span starts at the first masked token after an unmasked one, scanning back
        k = last_span_start
        while k > 0 and mask[k - 1]:
            k -= 1
        cut = len(ids) - max_length
        if cut >= k:  # the first trained token needs at least one token before it
            report.dropped_too_long += 1
            return None
        ids, mask = ids[cut:], mask[cut:]
        report.truncated_context += 1
    if not mask.any():
        raise DataError(f"{where}: no token to train on after rendering")
    report.examples += 1
    return SFTExample(ids, mask)


def sft_example(tokenizer: Any, row: dict, where: str, max_length: int, report: DataReport,
                judgment: Callable[[Any, dict, str], tuple[str, list]] | None = None) -> SFTExample | None:
    """One tokenised example, cut to `max_length` from the left; None (and counted) if the last
    trained span does not fit."""
    return cut_sft(*sft_tokens(tokenizer, row, where, judgment), where, max_length, report)


def _prompt_messages(row: dict, where: str) -> list[dict]:
    p = row["prompt"]
    if isinstance(p, str):
        if not p.strip():
            raise DataError(f"{where}: field 'prompt' is empty")
        return [{"role": "user", "content": p}]
    if isinstance(p, list) and p:
        return p
    raise DataError(f"{where}: field 'prompt' must be a string or a list of messages")


def _response_ids(tokenizer: Any, messages: list[dict], response: str, where: str) -> np.ndarray:
    full = messages + [{"role": "assistant", "content": response}]
    text, (s, e) = turn_span(tokenizer, full, len(messages), where)
    return np.asarray(tokenizer(text[s:e], add_special_tokens=False)["input_ids"], np.int32)


def pair_tokens(tokenizer: Any, row: dict, where: str) -> PairExample:
    """The whole pair, not yet cut."""
    for f in ("prompt", "chosen", "rejected"):
        if f not in row:
            raise DataError(f"{where}: missing field {f!r}")
    for f in ("chosen", "rejected"):
        if not isinstance(row[f], str) or not row[f].strip():
            raise DataError(f"{where}: field {f!r} must be a non-empty string")
    messages = _prompt_messages(row, where)
    prompt = np.asarray(tokenizer(render(tokenizer, messages, add_generation_prompt=True),
                                  add_special_tokens=False)["input_ids"], np.int32)
    chosen, rejected = (_response_ids(tokenizer, messages, row[f], f"{where} ({f})") for f in ("chosen", "rejected"))
    return PairExample(prompt, chosen, rejected)


def cut_pair(pair: PairExample, max_prompt: int, max_response: int, report: DataReport) -> PairExample:
    """The prompt cut from the left to `max_prompt`, each response from the right to `max_response`; counted."""
    prompt = pair.prompt_ids
    if len(prompt) > max_prompt:
        prompt = prompt[-max_prompt:]
        report.truncated_context += 1
    out = []
    for r in (pair.chosen_ids, pair.rejected_ids):
        if len(r) > max_response:
            r = r[:max_response]
            report.truncated_response += 1
        out.append(r)
    report.examples += 1
    return PairExample(prompt, out[0], out[1])


def pair_example(tokenizer: Any, row: dict, where: str, max_prompt: int, max_response: int,
                 report: DataReport) -> PairExample:
    """One tokenised pair, cut to the limits (see `cut_pair`)."""
    return cut_pair(pair_tokens(tokenizer, row, where), max_prompt, max_response, report)
