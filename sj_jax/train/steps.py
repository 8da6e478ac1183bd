"""Jitted, sharded train steps for SFT/JSFT and DPO: pure functions of (state, frozen weights, batch).

state = {"params": trainable tree (full weights, or LoRA adapters), "opt_state", "step": int32,
"rng": uint32 key data}. `frozen` holds what is never trained: the base weights under LoRA (also the
DPO reference, adapter off), or the reference copy for full-weight DPO, or None.

A batch carries a leading micro-batch axis `[grad_accum, ...]`; the gradients of the micro-batches
are averaged inside the one jitted step (a `lax.scan`), then clipped and applied once. A step whose
loss or gradient is not finite applies nothing: params and optimizer moments stay as they were, and
the metrics say so (`nonfinite` = 1), so the trainer's NaN policy decides what happens next.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sj_jax.models import lora
from sj_jax.models.config import ModelConfig
from sj_jax.models.lora import LoraConfig
from sj_jax.models.sharding import logical_sharding, to_global, traced_on
from sj_jax.objectives.dpo import dpo_loss
from sj_jax.objectives.sequence import joint_pair_logprobs, sequence_logprobs
from sj_jax.objectives.sft import sft_loss
from sj_jax.train.config import DPOConfig
from sj_jax.train.optim import make_optimizer

UNROLL_MICRO_BATCHES = 4  # up to this many micro-batches are unrolled in the step; more are scanned


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static about a step (part of the jit key)."""

    kind: Literal["sft", "dpo"]
    model: ModelConfig
    lora: LoraConfig = LoraConfig()
    dpo: DPOConfig = DPOConfig()
    chunk: int = 8192
    response_len: int | None = None  # dpo: responses occupy the last `response_len` positions


def policy_params(spec: StepSpec, trainable: Any, frozen: Any) -> dict:
    """The policy's weights for the objectives: the trained tree (its float32 master cast to the
    model's `param_dtype`), or under LoRA the variables `{"params": frozen base, "lora": the
    adapters}` (run beside the kernels, not merged)."""
    if spec.lora.enabled:
        return {"params": frozen, "lora": lora.adapter_variables(spec.lora, trainable)}
    return as_param_dtype(spec.model, trainable)


def as_param_dtype(cfg: ModelConfig, params: Any) -> Any:
    """Float32 master weights cast to the model's `param_dtype` for its forward (a no-op when they
    already are): the gradient flows back through the cast into the float32 master."""
    dtype = jnp.dtype(cfg.param_dtype)
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def pair_logprobs(spec: StepSpec, params: dict, micro: dict) -> tuple[jax.Array, jax.Array]:
    """Summed response log-probs and token counts, each `[pairs, 2]` (chosen, rejected), of a
    micro-batch `[pairs, 2, seq]`, or of one laid out `[pairs, T]` by `collate_pairs_joint`."""
    if "source_index" in micro:  # one row a pair, the prompt once (collate_pairs_joint)
        return joint_pair_logprobs(spec.model, params, micro, chunk=spec.chunk)
    m, two, t = micro["input_ids"].shape  # (an optional "pair_weight" [pairs] weighs each pair in the loss)
    flat = {k: micro[k].reshape(m * two, t) for k in ("input_ids", "attention_mask", "loss_mask")}
    logp, count = sequence_logprobs(spec.model, params, flat["input_ids"], flat["attention_mask"],
                                    flat["loss_mask"], last=spec.response_len, chunk=spec.chunk)
    return logp.reshape(m, two), count.reshape(m, two)


def loss_and_metrics(spec: StepSpec, trainable: Any, frozen: Any, micro: dict):
    """(loss, metrics) of one micro-batch; the gradient flows into `trainable` only."""
    params = policy_params(spec, trainable, frozen)
    if spec.kind == "sft":
        return sft_loss(spec.model, params, micro, chunk=spec.chunk)
    policy, count = pair_logprobs(spec, params, micro)
    # `frozen` is the reference: the base weights (adapter off) under LoRA, else the frozen copy.
    ref = jax.lax.stop_gradient(pair_logprobs(spec, frozen, micro)[0])
    loss, metrics = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=spec.dpo.beta,
                             loss_type=spec.dpo.loss_type, label_smoothing=spec.dpo.label_smoothing,
                             chosen_lengths=count[:, 0], rejected_lengths=count[:, 1],
                             weights=micro.get("pair_weight"), nll_weight=spec.dpo.nll_weight)
    return loss, {"loss": loss, **metrics}


def train_step(spec: StepSpec, tx: optax.GradientTransformation, schedule, state: dict, frozen: Any, batch: dict):
    """One optimizer step over `batch` (leading axis: micro-batches). Returns (state, metrics)."""
    grad_fn = jax.value_and_grad(lambda p, micro: loss_and_metrics(spec, p, frozen, micro), has_aux=True)
    n_micro = jax.tree.leaves(batch)[0].shape[0]

    def add_micro(total, micro):
        """(grads, metrics) summed with those of one more micro-batch."""
        (_, m), g = grad_fn(state["params"], micro)
        return (g, m) if total is None else jax.tree.map(jnp.add, total, (g, m))

    total = add_micro(None, jax.tree.map(lambda x: x[0], batch))
    if n_micro <= UNROLL_MICRO_BATCHES:
        # Unrolled: a lax.scan around the model's own layer scan cost 1.6 s of a 5.3 s SmolLM2 DPO step on CPU.
        for i in range(1, n_micro):
            total = add_micro(total, jax.tree.map(lambda x, i=i: x[i], batch))
    else:
        total, _ = jax.lax.scan(lambda t, micro: (add_micro(t, micro), None), total,
                                jax.tree.map(lambda x: x[1:], batch))
    grads, metrics = total
    grads = jax.tree.map(lambda g: g / n_micro, grads)
    metrics = jax.tree.map(lambda x: x / n_micro, metrics)
    if "tokens" in metrics:
        metrics["tokens"] = metrics["tokens"] * n_micro  # a count, not a mean
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = {
        "params": keep(params, state["params"]),
        "opt_state": keep(opt_state, state["opt_state"]),
        "step": state["step"] + 1,
        "rng": state["rng"],
    }
    metrics = {**metrics, "grad_norm": grad_norm, "lr": schedule(state["step"]),
               "nonfinite": 1.0 - finite.astype(jnp.float32)}
    return new_state, metrics


def batch_shardings(mesh: Mesh, batch: dict) -> dict:
    """Micro-batch rows by the logical "batch" rule (over data and fsdp where they divide); the
    micro-batch axis and the rest replicated."""
    return jax.tree.map(lambda x: logical_sharding((None, "batch") + (None,) * (x.ndim - 2), x.shape, mesh), batch)


def place_batch(mesh: Mesh, batch: dict) -> dict:
    """A host batch, the same global batch on every process, as global arrays laid out by
    `batch_shardings`: each process copies in only the rows its own devices hold. On several
    processes jit takes no numpy input with a sharded layout, so every step's batch goes through here."""
    return jax.tree.map(to_global, batch, batch_shardings(mesh, batch))


def local_batch_rows(mesh: Mesh, accum: int, rows: int) -> np.ndarray:
    """bool[rows]: which rows of each micro-batch of `rows` this process's devices hold (under
    `batch_shardings`): the only rows whose tokens it needs."""
    sharding = logical_sharding((None, "batch"), (accum, rows), mesh)
    mine = np.zeros(rows, bool)
    for index in sharding.addressable_devices_indices_map((accum, rows)).values():
        mine[index[1]] = True
    return mine


def mesh_shardings(tree: Any, mesh: Mesh) -> Any:
    """Each leaf's own `NamedSharding` on `mesh`, or replicated over `mesh` (scalars such as the
    step and Adam's count, which jit otherwise leaves on one device)."""
    def one(x):
        s = getattr(x, "sharding", None)
        if isinstance(s, NamedSharding) and s.mesh == mesh:
            return s
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, tree)


def _path_keys(path: tuple) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def optimizer_shardings(opt_state: Any, params: Any, mesh: Mesh) -> Any:
    """A layout for an optimizer state (arrays or `jax.eval_shape`'s shapes): each leaf that mirrors a
    parameter (Adam's moments: the parameter's path at the end of its own, and its shape) laid out
    as that parameter is, the rest (step counts) replicated. Without it the moments of an
    FSDP-sharded model would sit whole on every device: twice the weights' size, replicated."""
    by_path = {_path_keys(p): (x.shape, x.sharding) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(path, leaf):
        keys = _path_keys(path)
        for i in range(len(keys)):
            shape, sharding = by_path.get(keys[i:], (None, None))
            if shape == leaf.shape and isinstance(sharding, NamedSharding):
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(one, opt_state)


def compile_step(spec: StepSpec, tx, schedule, mesh: Mesh, state: dict, frozen: Any, batch: dict):
    """`train_step` jitted with the shardings the arrays have on `mesh` (state donated). Place the
    state with `jax.device_put(state, mesh_shardings(state, mesh))` first."""
    state_sh = mesh_shardings(state, mesh)
    frozen_sh = mesh_shardings(frozen, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        traced_on(mesh, lambda s, f, b: train_step(spec, tx, schedule, s, f, b)),
        in_shardings=(state_sh, frozen_sh, batch_shardings(mesh, batch)),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
    )


_SHARED: dict[tuple, Any] = {}


def batch_shape(batch: dict) -> tuple:
    """What of a batch makes a step program of its own: each array's name and shape."""
    return tuple(sorted((k, tuple(v.shape)) for k, v in batch.items()))


def _layout(tree: Any) -> tuple:
    """A hashable description of a tree: structure, and each leaf's shape, dtype and sharding."""
    leaves, treedef = jax.tree.flatten(tree)
    return (treedef, tuple((x.shape, str(x.dtype), getattr(x, "sharding", None)) for x in leaves))


def shared_step(spec: StepSpec, optim: Any, total: int, mesh: Mesh, state: dict, frozen: Any, batch: dict):
    """`compile_step` for `make_optimizer(optim, total)`, kept for the process and keyed by
    everything static (spec, optimizer settings, mesh, and the layouts of state, frozen and batch),
    so a resumed, repeated or second run in one process reuses the compiled program. The arrays
    only lend their shardings."""
    key = (spec, optim, total, mesh, _layout(state), _layout(frozen), _layout(batch))
    if key not in _SHARED:
        if len(_SHARED) >= 64:
            _SHARED.pop(next(iter(_SHARED)))  # the oldest
        tx, schedule = make_optimizer(optim, total)
        _SHARED[key] = compile_step(spec, tx, schedule, mesh, state, frozen, batch)
    return _SHARED[key]
