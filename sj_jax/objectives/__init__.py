"""Training objectives: pure functions of log-probabilities."""

from sj_jax.objectives.dpo import LOSS_TYPES, dpo_loss

__all__ = ["LOSS_TYPES", "dpo_loss"]
