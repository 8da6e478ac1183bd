"""bfloat16 training: the forward in bfloat16, float32 master weights in the optimizer, the loss
within a stated tolerance of a float32 step on the same random model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sj_jax.core.config import from_dict
from sj_jax.loading.model import Model, init_model
from sj_jax.models.config import ModelConfig
from sj_jax.models.sharding import MeshConfig, make_mesh
from sj_jax.train.config import TrainConfig
from sj_jax.train.optim import make_optimizer
from sj_jax.train.steps import StepSpec, compile_step, place_batch
from sj_jax.train.trainer import init_state

CFG = ModelConfig("llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16, max_position_embeddings=256)


def steps(kind: str, dtype: str, start: dict, lr: float, n: int = 3):
    """(losses, state) of `n` full-fine-tuning steps from the float32 weights `start`, in `dtype`."""
    cfg = CFG.replace(dtype=dtype, param_dtype=dtype)
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    model = Model(cfg, jax.tree.map(lambda x: jnp.asarray(x, dtype), start), None, mesh)
    tc = from_dict(TrainConfig, {"optim": {"learning_rate": lr, "warmup_steps": 0, "schedule": "constant"}})
    tx, schedule = make_optimizer(tc.optim, 10)
    state, frozen = init_state(kind, tc, model, tx)
    rng = np.random.default_rng(4)
    if kind == "dpo":
        ids = rng.integers(3, 512, (1, 4, 2, 32)).astype(np.int32)
        loss_mask = np.zeros_like(ids)
        loss_mask[..., -8:] = 1
        spec = StepSpec("dpo", cfg, tc.lora, tc.dpo, response_len=8)
    else:
        ids = rng.integers(3, 512, (1, 4, 32)).astype(np.int32)
        loss_mask = np.ones_like(ids)
        spec = StepSpec("sft", cfg, tc.lora, tc.dpo)
    batch = place_batch(mesh, {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": loss_mask})
    step = compile_step(spec, tx, schedule, mesh, state, frozen, batch)
    losses = []
    for _ in range(n):
        state, m = step(state, frozen, batch)
        losses.append(float(m["loss"]))
    return losses, state, frozen


@pytest.fixture(scope="module")
def start():
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    return jax.tree.map(np.asarray, init_model(CFG, seed=2, mesh=mesh).params)


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_a_bfloat16_step_keeps_float32_master_weights_and_its_loss_is_within_2_percent_of_float32(kind, start):
    ref, *_ = steps(kind, "float32", start, 1e-3)
    ours, state, frozen = steps(kind, "bfloat16", start, 1e-3)
    # bfloat16 has an 8-bit mantissa (relative spacing 2^-8 = 0.4%); the loss sums many such terms
    np.testing.assert_allclose(ours, ref, rtol=2e-2)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state["params"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state["opt_state"]) if x.ndim)
    if kind == "dpo":  # the reference stays as loaded, in bfloat16
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(frozen))


def test_updates_smaller_than_bfloat16_spacing_accumulate_in_the_master(start):
    """With lr 1e-6, each update is far below a bfloat16 weight's spacing; pure bfloat16 weights
    would not move at all, the float32 master does."""
    _, state, _ = steps("sft", "bfloat16", start, 1e-6)
    master = state["params"]["layers"]["mlp"]["up"]["kernel"]
    first = np.asarray(start["layers"]["mlp"]["up"]["kernel"], np.float32)
    as_bf16 = np.asarray(jnp.asarray(first, jnp.bfloat16).astype(jnp.float32))
    moved = np.abs(np.asarray(master) - as_bf16)
    half_spacing = np.abs(as_bf16) * 2.0**-9  # half a bfloat16 step (8-bit mantissa) at each weight
    big = np.abs(as_bf16) > 5e-3  # where half a step (>= 1e-5) is well above 3 updates of about 1e-6
    assert np.median(moved) > 1e-6  # the master moved by about lr a step, 3 steps
    # ... by far less than half a step of the weights it adds to: a bfloat16 store rounds it away
    assert (moved[big] < half_spacing[big]).mean() > 0.99
