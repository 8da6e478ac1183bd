"""Summed log-probabilities of the masked tokens of each sequence, under a model's parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sj_jax.models.config import ModelConfig
from sj_jax.models.transformer import Transformer
from sj_jax.objectives.logprobs import DEFAULT_CHUNK, head_weight, token_logprobs


def model_variables(params: dict) -> dict:
    """Flax variables from a params tree, or from variables already (`{"params", "lora"?}`, as a
    LoRA train step passes them)."""
    return params if "params" in params else {"params": params}


def sequence_logprobs(cfg: ModelConfig, params: dict, input_ids: jax.Array, attention_mask: jax.Array,
                      loss_mask: jax.Array, *, last: int | None = None, chunk: int = DEFAULT_CHUNK):
    """Per-sequence (sum, count) of log p(token) over the tokens where `loss_mask` is 1.

    input_ids, attention_mask, loss_mask: `[batch, seq]` (loss_mask[b, t] = 1: token t is a target,
    predicted from position t - 1; position 0 is never a target). `last`: only the last `last`
    positions may be targets (responses laid out at the end, as the DPO batches are): the output
    projection then runs on those positions only; the caller guarantees loss_mask is 0 elsewhere.
    Returns float32 `sum [batch]` and `count [batch]`.
    """
    v = model_variables(params)
    h = Transformer(cfg).apply(v, input_ids, attention_mask, method=Transformer.hidden_states)
    t = input_ids.shape[1]
    start = 1 if last is None else t - last
    h = h[:, start - 1:t - 1]
    targets = input_ids[:, start:]
    mask = loss_mask[:, start:].astype(jnp.float32)
    lp = token_logprobs(h, head_weight(v["params"], cfg.tie_word_embeddings), targets, chunk=chunk)
    return jnp.sum(lp * mask, axis=1), jnp.sum(mask, axis=1)


def slot_logprobs(cfg: ModelConfig, params: dict, input_ids: jax.Array, attention_mask: jax.Array,
                  source_index: jax.Array, target_ids: jax.Array, target_mask: jax.Array, *,
                  chunk: int = DEFAULT_CHUNK):
    """Per-sequence (sum, count) of log p(target) over K target slots a row: slot k's token is
    `target_ids[b, k]`, predicted by the hidden state at `source_index[b, k]`; `target_mask` 0 marks
    an empty slot. input_ids, attention_mask `[batch, seq]`; the slots `[batch, K]` int32. The output
    projection runs on the K slots only. Returns float32 `sum [batch]`, `count [batch]`."""
    v = model_variables(params)
    h = Transformer(cfg).apply(v, input_ids, attention_mask, method=Transformer.hidden_states)
    h = jnp.take_along_axis(h, source_index[..., None], axis=1)  # [batch, K, embed]
    lp = token_logprobs(h, head_weight(v["params"], cfg.tie_word_embeddings), target_ids, chunk=chunk)
    mask = target_mask.astype(jnp.float32)
    return jnp.sum(lp * mask, axis=1), jnp.sum(mask, axis=1)


def joint_pair_logprobs(cfg: ModelConfig, params: dict, batch: dict, *, chunk: int = DEFAULT_CHUNK):
    """Summed log-probs and token counts, each float32 `[pairs, 2]` (chosen, rejected), of pairs laid
    out one a row with the prompt once (`sj_jax.data.batches.collate_pairs_joint`): one forward
    over `[pairs, T]`, the output projection on the S response slots only."""
    v = model_variables(params)
    h = Transformer(cfg).apply(v, batch["input_ids"], batch["attention_mask"], batch["positions"],
                               True, method=Transformer.hidden_states)
    h = jnp.take_along_axis(h, batch["source_index"][..., None], axis=1)  # [pairs, S, embed]
    lp = token_logprobs(h, head_weight(v["params"], cfg.tie_word_embeddings), batch["target_ids"], chunk=chunk)
    masks = jnp.stack([batch["response_mask"] == 1, batch["response_mask"] == 2], axis=1).astype(jnp.float32)
    return jnp.einsum("bt,bst->bs", lp, masks), masks.sum(axis=2)
