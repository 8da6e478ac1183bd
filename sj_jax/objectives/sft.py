"""The SFT / JSFT objective: next-token cross-entropy on the masked (assistant, verdict) tokens only."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sj_jax.models.config import ModelConfig
from sj_jax.objectives.logprobs import DEFAULT_CHUNK
from sj_jax.objectives.sequence import sequence_logprobs, slot_logprobs


def sft_loss(cfg: ModelConfig, params: dict, batch: dict, *, chunk: int = DEFAULT_CHUNK):
    """Mean negative log-likelihood per target token of the batch.

    batch: `input_ids`, `attention_mask`, `loss_mask`, each int32 `[batch, seq]`, and optionally the
    trained tokens' slots `source_index`, `target_ids`, `target_mask` `[batch, K]`
    (`sj_jax.data.batches.collate_sft`): the output projection then runs on those K positions a row
    only, with the same result. The mean is over all target tokens of the batch (long answers weigh
    more, as in transformers' Trainer), so the masks decide exactly what is trained: every assistant
    turn and its end-of-turn token for an instruction example, the verdict (and rationale) alone for
    a judgment example. Returns (loss float32 scalar, metrics {"loss", "tokens"}).
    """
    if "source_index" in batch:
        logp_sum, count = slot_logprobs(cfg, params, batch["input_ids"], batch["attention_mask"],
                                        batch["source_index"], batch["target_ids"], batch["target_mask"], chunk=chunk)
    else:
        logp_sum, count = sequence_logprobs(cfg, params, batch["input_ids"], batch["attention_mask"],
                                            batch["loss_mask"], chunk=chunk)
    tokens = jnp.sum(count)
    loss = -jnp.sum(logp_sum) / jnp.maximum(tokens, 1.0)
    return loss, {"loss": loss, "tokens": jax.lax.stop_gradient(tokens)}
