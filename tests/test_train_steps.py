"""Jitted train steps: SFT/JSFT and DPO (full weights and LoRA), accumulation, the NaN rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sj_jax import ModelConfig, init_model
from sj_jax.models import lora
from sj_jax.models.lora import LoraConfig
from sj_jax.train import steps
from sj_jax.train.config import DPOConfig, OptimConfig
from sj_jax.train.optim import learning_rate_schedule, make_optimizer
from sj_jax.train.steps import StepSpec, compile_step

TINY = ModelConfig(model_type="llama", vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8)
OPT = OptimConfig(learning_rate=1e-3, warmup_steps=0, schedule="constant")


def _pairs(rng, accum=1, micro=4, p=10, r=6):
    ids = rng.integers(0, TINY.vocab_size, (accum, micro, 2, p + r)).astype(np.int32)
    att = np.ones_like(ids)
    att[..., :3] = 0  # left-padded prompts
    loss = np.zeros_like(ids)
    loss[..., p:] = 1
    loss[:, :, 1, -2:] = 0  # a shorter rejected response
    att[:, :, 1, -2:] = 0
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss}


def _sft(rng, accum=1, micro=4, t=16):
    ids = rng.integers(0, TINY.vocab_size, (accum, micro, t)).astype(np.int32)
    att = np.ones_like(ids)
    loss = np.zeros_like(ids)
    loss[..., 9:] = 1
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss}


def _state(tx, trainable, mesh):
    """The train state placed on `mesh`, as the trainer places it: with its scalars still
    uncommitted, the step's outputs (on the mesh) would have another type and compile it again."""
    state = {"params": trainable, "opt_state": jax.jit(tx.init)(trainable), "step": jnp.int32(0),
             "rng": jax.random.key_data(jax.random.key(0))}
    return jax.device_put(state, steps.mesh_shardings(state, mesh))


def _copy(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def _run(spec, model, batches, trainable=None, frozen=None, opt=OPT):
    tx, sched = make_optimizer(opt, 10)
    trainable = jax.tree.map(jnp.copy, model.params) if trainable is None else trainable
    state = _state(tx, trainable, model.mesh)
    step = compile_step(spec, tx, sched, model.mesh, state, frozen, batches[0])
    out = []
    for b in batches:
        state, m = step(state, frozen, b)
        out.append({k: float(v) for k, v in m.items()})
    return state, out


def test_dpo_reference_does_not_move_and_policy_learns():
    model = init_model(TINY, seed=0)
    before = _copy(model.params)
    batch = _pairs(np.random.default_rng(0))
    state, metrics = _run(StepSpec("dpo", TINY, response_len=6), model, [batch] * 4, frozen=model.params)
    assert metrics[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)  # policy == reference at step 0
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.05
    assert metrics[-1]["rewards/margins"] > 0
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(before))]
    assert all(moved)


def test_lora_dpo_trains_adapters_only_and_starts_at_the_base():
    model = init_model(TINY, seed=1)
    before = _copy(model.params)
    cfg = LoraConfig(enabled=True, rank=4, alpha=8.0)
    adapters = lora.init_lora(cfg, model.params, jax.random.key(0))
    merged = lora.merge(cfg, model.params, adapters)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(a, b)  # b = 0: the adapter starts as the identity
    spec = StepSpec("dpo", TINY, lora=cfg, response_len=6)
    state, metrics = _run(spec, model, [_pairs(np.random.default_rng(1))] * 4, trainable=adapters,
                          frozen=model.params)
    assert metrics[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert np.abs(np.asarray(state["params"]["q"]["b"])).max() > 0
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
def test_every_loss_type_runs_in_the_step(loss_type):
    model = init_model(TINY, seed=2)
    smoothing = 0.1 if loss_type == "robust" else 0.0
    spec = StepSpec("dpo", TINY, dpo=DPOConfig(beta=0.1, loss_type=loss_type, label_smoothing=smoothing),
                    response_len=6)
    _, metrics = _run(spec, model, [_pairs(np.random.default_rng(2))] * 2, frozen=model.params)
    assert all(np.isfinite(m["loss"]) for m in metrics)


@pytest.mark.parametrize("unroll", [4, 1])  # unrolled micro-batches, and the lax.scan path
def test_gradient_accumulation_equals_one_big_batch(unroll, monkeypatch):
    monkeypatch.setattr(steps, "UNROLL_MICRO_BATCHES", unroll)
    model = init_model(TINY, seed=3)
    big = _pairs(np.random.default_rng(3), accum=1, micro=4)
    split = {k: v.reshape((2, 2) + v.shape[2:]) for k, v in big.items()}
    spec = StepSpec("dpo", TINY, response_len=6)
    s1, m1 = _run(spec, model, [big], frozen=model.params)
    s2, m2 = _run(spec, model, [split], frozen=model.params)
    assert m1[0]["loss"] == pytest.approx(m2[0]["loss"], rel=1e-6)
    assert m1[0]["grad_norm"] == pytest.approx(m2[0]["grad_norm"], rel=1e-5)
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # Adam turns 1e-7 gradient noise into ~1e-6


def test_sft_step_learns_and_reports_tokens():
    model = init_model(TINY, seed=4)
    batch = _sft(np.random.default_rng(4))
    _, metrics = _run(StepSpec("sft", TINY), model, [batch] * 5)
    assert metrics[0]["tokens"] == 4 * 7
    assert metrics[-1]["loss"] < metrics[0]["loss"]


def test_a_nonfinite_gradient_leaves_params_and_moments_untouched():
    model = init_model(TINY, seed=5)
    tx, sched = make_optimizer(OPT, 10)
    batch = _sft(np.random.default_rng(5))
    state = _state(tx, jax.tree.map(jnp.copy, model.params), model.mesh)
    step = compile_step(StepSpec("sft", TINY), tx, sched, model.mesh, state, None, batch)
    state, _ = step(state, None, batch)
    good = _copy(state)
    poisoned = jax.tree.map(lambda x: x, state)
    poisoned["params"]["final_norm"]["scale"] = state["params"]["final_norm"]["scale"].at[0].set(jnp.nan)
    bad_before = _copy(poisoned)
    after, metrics = step(poisoned, None, batch)
    assert float(metrics["nonfinite"]) == 1.0
    after = _copy(after)
    # Nothing was applied: the (poisoned) params and the optimizer moments are exactly as before.
    for a, b in zip(jax.tree.leaves(after["opt_state"]), jax.tree.leaves(good["opt_state"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(after["params"]), jax.tree.leaves(bad_before["params"])):
        np.testing.assert_array_equal(a, b)


def test_warmup_then_cosine_schedule():
    opt = OptimConfig(learning_rate=1.0, warmup_ratio=0.1, schedule="cosine")
    lr = learning_rate_schedule(opt, 100)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    assert float(lr(55)) == pytest.approx(0.5, abs=1e-6)
    assert float(lr(100)) == pytest.approx(0.0, abs=1e-6)
    const = learning_rate_schedule(OptimConfig(learning_rate=2.0, warmup_steps=10, schedule="constant"), 50)
    assert float(const(3)) == pytest.approx(0.6) and float(const(40)) == 2.0


def test_bfloat16_compute_over_float32_master_weights():
    """bf16 compute, fp32 params and moments: the loss tracks float32's and the weights stay float32."""
    fp32 = init_model(TINY, seed=6)
    bf16_cfg = TINY.replace(dtype="bfloat16", param_dtype="float32")
    batch = _sft(np.random.default_rng(6))
    s32, m32 = _run(StepSpec("sft", TINY), fp32, [batch] * 3)
    s16, m16 = _run(StepSpec("sft", bf16_cfg), fp32, [batch] * 3)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(s16["params"]))
    for a, b in zip(m16, m32):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-2)
    assert m16[-1]["loss"] < m16[0]["loss"]
