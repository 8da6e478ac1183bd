"""The optimizer: optax AdamW behind a warm-up + cosine/constant/linear schedule and global-norm clipping."""

from __future__ import annotations

import jax
import optax

from sj_jax.core.errors import ConfigError
from sj_jax.train.config import OptimConfig


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    return int(round(cfg.warmup_ratio * total_steps))


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """lr(step): linear warm-up from 0, then the named schedule down to lr * min_lr_ratio at total_steps."""
    if cfg.learning_rate <= 0:
        raise ConfigError(f"optim.learning_rate: must be > 0, got {cfg.learning_rate}")
    if total_steps <= 0:
        raise ConfigError(f"steps: the run has {total_steps} optimizer steps")
    warm = min(warmup_steps(cfg, total_steps), total_steps)
    peak, end = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    rest = max(total_steps - warm, 1)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=cfg.min_lr_ratio)
    else:
        after = optax.linear_schedule(peak, end, rest)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), after], [warm])


def _decay_mask(params):
    # Norm scales and biases are not decayed, as in most recipes.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(AdamW after clipping, with decoupled weight decay on every matrix; its learning-rate schedule)."""
    if cfg.grad_accum < 1:
        raise ConfigError(f"optim.grad_accum: must be >= 1, got {cfg.grad_accum}")
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=_decay_mask))
    return optax.chain(*parts), schedule
