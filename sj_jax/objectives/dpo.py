"""The DPO loss family on summed sequence log-probabilities: sigmoid (with cDPO), ipo, hinge, robust.

Definitions follow TRL's DPOTrainer (trl 1.16) with the reverse-KL (standard DPO) divergence, and so do the
metric names. Two deliberate points where TRL 1.16 has no single answer:

- ``sigmoid`` with ``label_smoothing`` > 0 is conservative DPO (cDPO), the form TRL's sigmoid loss had before
  1.x: ``-(1 - eps) log s(b d) - eps log s(-b d)``. TRL 1.16 ignores ``label_smoothing`` for sigmoid; at
  ``label_smoothing=0`` the two agree exactly.
- ``ipo`` divides each log-ratio by its completion's token count, as TRL does (its IPO is per-token), so it
  needs ``chosen_lengths`` and ``rejected_lengths``. Pass ones for the unnormalised sequence-level form.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from sj_jax.core.errors import ConfigError

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
_SMOOTHED = ("sigmoid", "robust")  # the loss types that read label_smoothing
_LOGP_NAMES = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")


def dpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: jax.Array | None = None,
    rejected_lengths: jax.Array | None = None,
    weights: jax.Array | None = None,
    nll_weight: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DPO-family loss of a batch of (chosen, rejected) pairs.

    Args:
      policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: float [batch], each the
        log-probability of a whole response summed over its tokens, under the policy or the frozen reference.
      beta: static Python float > 0; the KL strength (IPO's tau).
      loss_type: static, one of ``LOSS_TYPES``.
      label_smoothing: static Python float in [0, 0.5); the assumed label-flip rate for ``sigmoid`` (cDPO) and
        ``robust``. Must be 0 for ``ipo`` and ``hinge``, which have no smoothed form.
      chosen_lengths, rejected_lengths: int or float [batch], completion token counts (clamped to >= 1).
        Required by ``ipo``; ignored by the other losses.
      weights: float [batch] >= 0 or None: each pair's share of the loss and metric means (0 = a padding row of
        a fixed-shape batch, which then adds nothing, not even its gradient). None = all pairs equal.
      nll_weight: static Python float >= 0: adds ``nll_weight * mean(-policy_chosen_logps / chosen_lengths)``,
        the chosen response's mean token NLL (the self-taught evaluator's DPO, RPO's form); needs
        ``chosen_lengths``. The metric ``nll/chosen`` is that mean NLL.

    Returns:
      ``(loss, metrics)``: loss is a float32 scalar, the mean over pairs. metrics are float32 scalars (batch
      means) that carry no gradient: ``rewards/chosen``, ``rewards/rejected`` (``beta * (policy - ref)``),
      ``rewards/margins``, ``rewards/accuracies`` (fraction with chosen reward > rejected reward),
      ``logps/chosen``, ``logps/rejected`` (policy log-probs).
    """
    _check_settings(beta, loss_type, label_smoothing)
    pc, pr, rc, rr = (_as_logps(x, name) for x, name in
                      zip((policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps),
                          _LOGP_NAMES))
    for x, name in zip((pr, rc, rr), _LOGP_NAMES[1:]):
        if x.shape != pc.shape:
            raise ConfigError(f"{name}: shape {x.shape} differs from policy_chosen_logps's {pc.shape}; all four "
                              "log-prob arrays must be [batch]")

    chosen_logratios = pc - rc
    rejected_logratios = pr - rr
    if loss_type == "ipo":
        lc, lr = _as_lengths(chosen_lengths, "chosen_lengths", pc.shape), _as_lengths(
            rejected_lengths, "rejected_lengths", pc.shape)
        # IPO's target margin 1/(2 beta) is per token in TRL, so compare per-token log-ratios with it.
        ipo_margin = chosen_logratios / lc - rejected_logratios / lr
        losses = (ipo_margin - 1.0 / (2.0 * beta)) ** 2
    else:
        z = beta * (chosen_logratios - rejected_logratios)
        if loss_type == "hinge":
            losses = jax.nn.relu(1.0 - z)
        else:
            eps = label_smoothing
            agree, flipped = -jax.nn.log_sigmoid(z), -jax.nn.log_sigmoid(-z)
            if loss_type == "sigmoid":
                losses = (1.0 - eps) * agree + eps * flipped
            else:  # robust: unbiased under flips with rate eps, hence the minus and the 1 - 2 eps
                losses = ((1.0 - eps) * agree - eps * flipped) / (1.0 - 2.0 * eps)

    if weights is None:
        mean = jnp.mean
    else:
        w = jnp.asarray(weights, jnp.float32)
        if w.shape != pc.shape:
            raise ConfigError(f"weights: shape {w.shape} differs from policy_chosen_logps's {pc.shape}")
        total = jnp.maximum(w.sum(), 1e-12)

        def mean(x):  # a padding row's values never enter, even when they are not finite
            return jnp.where(w > 0, x * w, 0.0).sum() / total
    chosen_rewards = beta * jax.lax.stop_gradient(chosen_logratios)
    rejected_rewards = beta * jax.lax.stop_gradient(rejected_logratios)
    metrics = {
        "rewards/chosen": mean(chosen_rewards),
        "rewards/rejected": mean(rejected_rewards),
        "rewards/margins": mean(chosen_rewards - rejected_rewards),
        "rewards/accuracies": mean((chosen_rewards > rejected_rewards).astype(jnp.float32)),
        "logps/chosen": mean(jax.lax.stop_gradient(pc)),
        "logps/rejected": mean(jax.lax.stop_gradient(pr)),
    }
    if nll_weight:
        nll = -pc / _as_lengths(chosen_lengths, "chosen_lengths", pc.shape)
        metrics["nll/chosen"] = mean(jax.lax.stop_gradient(nll))
        losses = losses + nll_weight * nll
    return mean(losses), metrics


def _check_settings(beta: float, loss_type: str, label_smoothing: float) -> None:
    """Reject bad static settings by name; they must be Python numbers so they can be checked under jit."""
    if not isinstance(loss_type, str) or loss_type not in LOSS_TYPES:
        raise ConfigError(f"loss_type: unknown {loss_type!r}; valid loss types are {', '.join(LOSS_TYPES)}")
    for name, value in (("beta", beta), ("label_smoothing", label_smoothing)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite Python float (a static setting, not a traced array), "
                              f"got {value!r}")
    if beta <= 0:
        raise ConfigError(f"beta: must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(f"label_smoothing: must lie in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type not in _SMOOTHED:
        raise ConfigError(f"label_smoothing: {label_smoothing} has no effect on loss_type {loss_type!r}; only "
                          f"{', '.join(_SMOOTHED)} read it, so set it to 0")


def _as_logps(x: jax.Array, name: str) -> jax.Array:
    """A [batch] floating array as float32; errors name the argument."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ConfigError(f"{name}: expected a floating array of summed log-probs, got dtype {x.dtype}")
    if x.ndim != 1 or x.shape[0] == 0:
        raise ConfigError(f"{name}: expected shape [batch] with batch >= 1, got {x.shape}")
    return x.astype(jnp.float32)


def _as_lengths(x: jax.Array | None, name: str, shape: tuple[int, ...]) -> jax.Array:
    """Token counts [batch] as float32, clamped to >= 1 as TRL does; required for ipo."""
    if x is None:
        raise ConfigError(f"{name}: loss_type 'ipo' normalises log-ratios by completion length (as TRL), so "
                          "chosen_lengths and rejected_lengths are required; pass ones for sequence-level IPO")
    x = jnp.asarray(x)
    if not (jnp.issubdtype(x.dtype, jnp.integer) or jnp.issubdtype(x.dtype, jnp.floating)):
        raise ConfigError(f"{name}: expected integer or float token counts, got dtype {x.dtype}")
    if x.shape != shape:
        raise ConfigError(f"{name}: shape {x.shape} differs from policy_chosen_logps's {shape}")
    return jnp.maximum(x.astype(jnp.float32), 1.0)
