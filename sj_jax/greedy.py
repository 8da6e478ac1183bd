"""Greedy completion by full recomputation: a correct, simple decoder until the KV-cached sampler lands.

Every step runs one jitted forward over a fixed-size buffer (prompt + max_new_tokens, right-padded),
so the whole completion compiles once per buffer size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sj_jax.api import Model, jitted_forward


def greedy_complete(model: Model, prompt_ids: list[int], max_new_tokens: int, stop_ids: list[int]) -> list[int]:
    """The greedy continuation of `prompt_ids` (up to and including a stop id, or `max_new_tokens`)."""
    if not prompt_ids:
        raise ValueError("prompt_ids: the prompt is empty")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be at least 1, got {max_new_tokens}")
    n = len(prompt_ids)
    size = n + max_new_tokens
    if size > model.config.max_position_embeddings:
        raise ValueError(
            f"prompt ({n} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"{model.config.max_position_embeddings} positions"
        )
    fwd, shard = jitted_forward(model.config, model.mesh, (1, size))
    ids = np.zeros((1, size), np.int32)
    ids[0, :n] = prompt_ids
    out: list[int] = []
    for step in range(max_new_tokens):
        cur = n + step
        mask = (np.arange(size) < cur).astype(np.int32)[None]
        logits = fwd(model.params, jax.device_put(ids, shard), jax.device_put(mask, shard))
        token = int(jnp.argmax(logits[0, cur - 1]))
        out.append(token)
        if token in stop_ids:
            break
        ids[0, cur] = token  # cur < size: at most max_new_tokens steps
    return out
