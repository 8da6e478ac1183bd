"""`sj_jax.inference.generate`: prompts in (strings or token ids), samples out (ids, text, log-probs, finished)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from sj_jax.core.allocator import release_free_memory
from sj_jax.inference.sampler import run
from sj_jax.inference.sampling import SamplingConfig
from sj_jax.loading.model import Model
from sj_jax.weights.tokenizer import end_of_turn_ids


@dataclasses.dataclass
class Generations:
    """Per prompt i and sample j: `texts[i][j]`, `token_ids[i][j]` (up to and including the stop
    token), `logprobs[i][j]` (log-probability of each token under the distribution it was drawn
    from; for greedy, under the model) and `finished[i][j]` (stopped, as opposed to cut)."""

    texts: list[list[str]]
    token_ids: list[list[list[int]]]
    logprobs: list[list[list[float]]]
    finished: list[list[bool]]


def encode_prompts(model: Model, prompts: Sequence[Any], chat: bool) -> list[list[int]]:
    """Token ids for each prompt: id lists as given; strings (a user turn) and lists of messages
    (`{"role", "content"}` dicts) through the chat template with its generation prompt when `chat`,
    strings as raw text otherwise."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts: expected a non-empty list of strings or of token-id lists")
    out = []
    for i, p in enumerate(prompts):
        messages = _messages(p, i)
        if isinstance(p, str) or messages is not None:
            if model.tokenizer is None:
                raise ValueError("prompts: text prompts need a model loaded with a tokenizer")
            if chat or messages is not None:
                if messages is None:
                    messages = [{"role": "user", "content": p}]
                if not chat:
                    raise ValueError(f"prompts[{i}]: a list of messages needs chat=True")
                ids = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                          return_dict=True)["input_ids"]
            else:
                ids = model.tokenizer(p)["input_ids"]
        else:
            ids = [int(t) for t in p]
            bad = [t for t in ids if not 0 <= t < model.config.vocab_size]
            if bad:
                raise ValueError(f"prompts[{i}]: token id {bad[0]} is outside [0, {model.config.vocab_size})")
        if not ids:
            raise ValueError(f"prompts[{i}]: the prompt is empty")
        out.append(list(ids))
    return out


def _messages(p: Any, i: int) -> list[dict] | None:
    """`p` as a conversation when it is a list of message dicts, else None (a string or token ids)."""
    if isinstance(p, Sequence) and not isinstance(p, str) and p and all(isinstance(m, dict) for m in p):
        for m in p:
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"prompts[{i}]: each message needs string fields \"role\" and \"content\"")
        return list(p)
    return None


def length_batches(lengths: Sequence[int], new_tokens: int, *, rows_per_prompt: int = 1, max_rows: int = 64,
                   max_tokens: int = 32768) -> list[list[int]]:
    """Prompt indices in batches of similar length, shortest first: each batch holds at most
    `max_rows` rows (prompts x rows_per_prompt) and at most `max_tokens` cache positions (rows x
    (longest prompt + new tokens)), so a few long prompts neither pad every batch nor exhaust memory
    (64 rows of a 2048-position SmolLM2 cache alone are 12 GB)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out:
            rows = (len(out[-1]) + 1) * rows_per_prompt
            if rows <= max_rows and rows * (lengths[i] + new_tokens) <= max_tokens:  # lengths only grow
                out[-1].append(i)
                continue
        out.append([i])
    return out


def generate(
    model: Model,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_samples: int = 1,
    seed: int = 0,
    chat: bool = True,
    stop: Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    key_ids: Sequence[int] | None = None,
    forced: Sequence[int] = (),
    budget: int = 0,
    after: int = 0,
    fan: int = 1,
) -> Generations:
    """Samples `num_samples` continuations of each prompt with the KV-cached sampler.

    temperature 0 = greedy. stop: token ids that end a sample (default: the tokenizer's EOS and the
    chat template's end of turn). batch_size: rows (prompts x samples) per compiled batch (default all);
    the samples do not depend on it. progress: called after each batch with (rows, new tokens).
    key_ids: the number each prompt's sampling keys are drawn from (default: its position), so a
    prompt can keep its samples whatever else shares the call: sample j of prompt i draws from
    (seed, key_ids[i] * num_samples + j). forced, budget: after `budget` free tokens (or at a stop
    token, which is dropped) the `forced` token ids are fed, then the sample goes on to its next stop
    or for at most `after` tokens (0 = no limit) (`sj_jax.inference.sampler`); a template's fixed verdict
    prefix is reached this way.

    When a batch holds whole prompts (batch_size a multiple of num_samples), each prompt is
    prefilled once for all of its samples. fan: the prompts come in runs of `fan` that begin alike
    (a judge pair's two orders); where a batch holds whole runs, their common first tokens are
    prefilled once a run where that pays (`sj_jax.inference.sampler.shared_prefixes`).
    """
    sampling = SamplingConfig(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be at least 1, got {max_new_tokens}")
    if num_samples < 1:
        raise ValueError(f"num_samples: must be at least 1, got {num_samples}")
    ids = encode_prompts(model, prompts, chat)
    keys = list(range(len(ids))) if key_ids is None else [int(k) for k in key_ids]
    if len(keys) != len(ids):
        raise ValueError(f"key_ids: {len(keys)} numbers for {len(ids)} prompts")
    if stop is None:
        if model.tokenizer is not None:
            stop = end_of_turn_ids(model.tokenizer)
        else:
            stop = [model.config.eos_token_id] if model.config.eos_token_id is not None else []
    stop = [int(s) for s in stop]
    pad = stop[0] if stop else (model.config.pad_token_id or 0)
    rows = [(i, j) for i in range(len(ids)) for j in range(num_samples)]
    step = batch_size or len(rows)
    group = num_samples if num_samples > 1 and step % num_samples == 0 else 1
    if fan < 1:
        raise ValueError(f"fan: must be at least 1, got {fan}")
    fan = fan if step % (fan * num_samples) == 0 and len(ids) % fan == 0 else 1
    result = Generations([[None] * num_samples for _ in ids], [[None] * num_samples for _ in ids],
                         [[None] * num_samples for _ in ids], [[None] * num_samples for _ in ids])
    for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        prompts = [ids[i] for i, j in chunk if j == 0] if group > 1 else [ids[i] for i, _ in chunk]
        out = run(model.config, model.mesh, model.params, prompts,
                  max_new_tokens=max_new_tokens, sampling=sampling,
                  row_ids=[keys[i] * num_samples + j for i, j in chunk], seed=seed, stop_ids=stop, pad_id=pad,
                  min_rows=step if len(rows) > step else 0, group=group, forced=tuple(forced), budget=budget,
                  after=after, fan=fan)
        for r, (i, j) in enumerate(chunk):
            n = int(out["lengths"][r])
            toks = out["tokens"][r, :n].tolist()
            result.token_ids[i][j] = toks
            result.logprobs[i][j] = out["logprobs"][r, :n].tolist()
            result.finished[i][j] = bool(out["stopped"][r])
            result.texts[i][j] = (model.tokenizer.decode(toks, skip_special_tokens=True)
                                  if model.tokenizer is not None else "")
        release_free_memory()  # the batch's small freed buffers, before the next batch's peak
        if progress is not None:
            progress(len(chunk), int(out["lengths"].sum()))
    return result
