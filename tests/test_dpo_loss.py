"""The DPO loss family against float64 references written from the formulas, and against TRL's DPOTrainer."""

from __future__ import annotations

import functools
from collections import defaultdict
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sj_jax.core.errors import ConfigError
from sj_jax.objectives.dpo import LOSS_TYPES, dpo_loss

# (loss_type, label_smoothing, beta): every loss, smoothed where the loss has a smoothed form.
CASES = [("sigmoid", 0.0, 0.1), ("sigmoid", 0.1, 0.1), ("sigmoid", 0.3, 0.5), ("ipo", 0.0, 0.1), ("ipo", 0.0, 0.5),
         ("hinge", 0.0, 0.1), ("hinge", 0.0, 0.5), ("robust", 0.0, 0.1), ("robust", 0.1, 0.1), ("robust", 0.4, 0.5)]
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")


def _pairs(seed: int, batch: int) -> dict[str, np.ndarray]:
    """Random summed log-probs (negative, tens to hundreds of nats) and completion lengths, float32."""
    rng = np.random.default_rng(seed)
    pc, pr = -rng.uniform(5, 200, batch), -rng.uniform(5, 200, batch)
    # The reference is near the policy, so beta * margin is O(1) and every branch of every loss is exercised.
    rc, rr = pc + rng.normal(0, 8, batch), pr + rng.normal(0, 8, batch)
    out = {k: v.astype(np.float32) for k, v in dict(pc=pc, pr=pr, rc=rc, rr=rr).items()}
    out["lc"], out["lr"] = rng.integers(1, 40, batch), rng.integers(1, 40, batch)
    return out


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(_log_sigmoid(x))


def _reference(d: dict, loss_type: str, eps: float, beta: float):
    """float64 loss, metrics and analytic gradient w.r.t. (policy_chosen, policy_rejected), from the formulas."""
    pc, pr, rc, rr = (d[k].astype(np.float64) for k in ("pc", "pr", "rc", "rr"))
    batch = pc.shape[0]
    if loss_type == "ipo":
        lc, lr = d["lc"].astype(np.float64), d["lr"].astype(np.float64)
        h = (pc - rc) / lc - (pr - rr) / lr - 1 / (2 * beta)
        losses, g = h ** 2, 2 * h
        g_pc, g_pr = g / lc, -g / lr
    else:
        z = beta * ((pc - rc) - (pr - rr))
        if loss_type == "sigmoid":  # expected -log sigmoid under a label flipped with probability eps
            losses = -(1 - eps) * _log_sigmoid(z) - eps * _log_sigmoid(-z)
            dz = _sigmoid(z) - (1 - eps)
        elif loss_type == "robust":
            losses = (-(1 - eps) * _log_sigmoid(z) + eps * _log_sigmoid(-z)) / (1 - 2 * eps)
            dz = _sigmoid(z) - (1 - eps) / (1 - 2 * eps)
        else:
            losses = np.maximum(0.0, 1 - z)
            dz = np.where(z < 1, -1.0, 0.0)
        g_pc, g_pr = beta * dz, -beta * dz
    cr, rjr = beta * (pc - rc), beta * (pr - rr)
    metrics = {"rewards/chosen": cr.mean(), "rewards/rejected": rjr.mean(), "rewards/margins": (cr - rjr).mean(),
               "rewards/accuracies": (cr > rjr).mean(), "logps/chosen": pc.mean(), "logps/rejected": pr.mean()}
    return losses.mean(), metrics, g_pc / batch, g_pr / batch


def _call(d: dict, loss_type: str, eps: float, beta: float, **over):
    args = {k: jnp.asarray(over.get(k, d[k])) for k in ("pc", "pr", "rc", "rr")}
    return dpo_loss(args["pc"], args["pr"], args["rc"], args["rr"], beta=beta, loss_type=loss_type,
                    label_smoothing=eps, chosen_lengths=d["lc"], rejected_lengths=d["lr"])


@pytest.mark.parametrize("loss_type,eps,beta", CASES)
@pytest.mark.parametrize("seed,batch", [(0, 1), (1, 3), (2, 16), (3, 64)])
def test_loss_and_metrics_match_the_float64_formula(loss_type, eps, beta, seed, batch):
    d = _pairs(seed, batch)
    loss, metrics = _call(d, loss_type, eps, beta)
    want_loss, want_metrics, _, _ = _reference(d, loss_type, eps, beta)
    assert loss.shape == () and loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), want_loss, rtol=2e-5, atol=2e-6)
    assert set(metrics) == set(METRICS)
    for name in METRICS:
        assert metrics[name].shape == () and metrics[name].dtype == jnp.float32, name
        np.testing.assert_allclose(float(metrics[name]), want_metrics[name], rtol=2e-5, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("loss_type,eps,beta", CASES)
@pytest.mark.parametrize("seed,batch", [(4, 1), (5, 8)])
def test_policy_gradient_matches_the_analytic_gradient(loss_type, eps, beta, seed, batch):
    d = _pairs(seed, batch)
    grad = jax.grad(lambda pc, pr: _call(d, loss_type, eps, beta, pc=pc, pr=pr)[0], argnums=(0, 1))
    g_pc, g_pr = grad(jnp.asarray(d["pc"]), jnp.asarray(d["pr"]))
    _, _, want_pc, want_pr = _reference(d, loss_type, eps, beta)
    np.testing.assert_allclose(np.asarray(g_pc), want_pc, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_pr), want_pr, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("loss_type,eps,beta", CASES)
def test_the_analytic_reference_gradient_agrees_with_finite_differences(loss_type, eps, beta):
    """Guards the reference itself: its hand-derived gradient is the float64 central difference of its loss."""
    d = {k: (v.astype(np.float64) if k in ("pc", "pr") else v) for k, v in _pairs(6, 5).items()}
    _, _, g_pc, g_pr = _reference(d, loss_type, eps, beta)
    h = 1e-6
    for key, g in (("pc", g_pc), ("pr", g_pr)):
        for i in range(5):
            up, down = dict(d), dict(d)
            up[key], down[key] = d[key].copy(), d[key].copy()
            up[key][i] += h
            down[key][i] -= h
            fd = (_reference(up, loss_type, eps, beta)[0] - _reference(down, loss_type, eps, beta)[0]) / (2 * h)
            np.testing.assert_allclose(fd, g[i], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("loss_type,eps,beta", [("sigmoid", 0.1, 0.1), ("ipo", 0.0, 0.1), ("hinge", 0.0, 0.5),
                                                  ("robust", 0.1, 0.1)])
def test_metrics_carry_no_gradient(loss_type, eps, beta):
    d = _pairs(7, 6)
    inputs = tuple(jnp.asarray(d[k]) for k in ("pc", "pr", "rc", "rr"))
    for name in METRICS:
        def metric(pc, pr, rc, rr, name=name):
            return _call(d, loss_type, eps, beta, pc=pc, pr=pr, rc=rc, rr=rr)[1][name]
        for g in jax.grad(metric, argnums=(0, 1, 2, 3))(*inputs):
            assert not np.any(np.asarray(g)), name
    # ...while the loss itself does move the policy.
    assert np.any(np.asarray(jax.grad(lambda pc: _call(d, loss_type, eps, beta, pc=pc)[0])(inputs[0])))


@pytest.mark.parametrize("loss_type,eps,beta", CASES)
def test_jit_equals_eager(loss_type, eps, beta):
    d = _pairs(8, 12)
    args = [jnp.asarray(d[k]) for k in ("pc", "pr", "rc", "rr")]
    fn = functools.partial(dpo_loss, beta=beta, loss_type=loss_type, label_smoothing=eps)
    eager = fn(*args, chosen_lengths=d["lc"], rejected_lengths=d["lr"])
    jitted = jax.jit(fn)(*args, chosen_lengths=jnp.asarray(d["lc"]), rejected_lengths=jnp.asarray(d["lr"]))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_robust_loss_is_unbiased_under_label_flips():
    """Robust DPO's claim: averaged over flips with rate eps, it is the clean sigmoid loss."""
    d, eps, beta = _pairs(9, 10), 0.2, 0.1
    robust = _call(d, "robust", eps, beta)[0]
    flipped = _call(d, "robust", eps, beta, pc=d["pr"], pr=d["pc"], rc=d["rr"], rr=d["rc"])[0]
    clean = _call(d, "sigmoid", 0.0, beta)[0]
    np.testing.assert_allclose(float((1 - eps) * robust + eps * flipped), float(clean), rtol=1e-5)


def test_cdpo_is_the_expected_loss_under_label_flips_and_eps_zero_is_plain_dpo():
    d, eps, beta = _pairs(10, 10), 0.15, 0.1
    plain = _call(d, "sigmoid", 0.0, beta)[0]
    swapped = _call(d, "sigmoid", 0.0, beta, pc=d["pr"], pr=d["pc"], rc=d["rr"], rr=d["rc"])[0]
    np.testing.assert_allclose(float(_call(d, "sigmoid", eps, beta)[0]), float((1 - eps) * plain + eps * swapped),
                               rtol=1e-5)
    np.testing.assert_allclose(float(_call(d, "robust", 0.0, beta)[0]), float(plain), rtol=1e-6)


def test_accuracy_counts_strict_wins_only():
    """A tie (equal rewards) is not a win, as in TRL: accuracies = mean(chosen reward > rejected reward)."""
    rng = np.random.default_rng(15)
    pc, rc = rng.normal(-60, 10, 5).astype(np.float32), rng.normal(-60, 10, 5).astype(np.float32)
    pr, rr = pc.copy(), rc.copy()  # every pair starts tied
    pc[:2] += 0.5  # two strict wins
    pc[2] -= 0.5  # one loss; the last two stay tied
    _, metrics = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert float(metrics["rewards/accuracies"]) == pytest.approx(0.4)


def test_bfloat16_inputs_give_a_float32_loss():
    d = _pairs(11, 4)
    args = [jnp.asarray(d[k], jnp.bfloat16) for k in ("pc", "pr", "rc", "rr")]
    loss, metrics = dpo_loss(*args)
    assert loss.dtype == jnp.float32 and all(m.dtype == jnp.float32 for m in metrics.values())


def _raises(match: str, *args, **kwargs) -> None:
    with pytest.raises(ConfigError, match=match):
        dpo_loss(*args, **kwargs)


def test_bad_arguments_raise_naming_the_argument():
    good = [jnp.asarray(np.random.default_rng(12).normal(-50, 10, 4), jnp.float32) for _ in range(4)]
    with pytest.raises(ConfigError, match="loss_type: unknown 'kto'.*sigmoid, ipo, hinge, robust"):
        dpo_loss(*good, loss_type="kto")
    for beta in (0.0, -0.1, float("nan"), float("inf"), True, jnp.float32(0.1)):
        _raises("beta", *good, beta=beta)
    for eps in (-0.01, 0.5, 0.7, float("nan")):
        _raises("label_smoothing", *good, label_smoothing=eps)
    for loss_type in ("hinge", "ipo"):
        _raises("label_smoothing.*no effect", *good, loss_type=loss_type, label_smoothing=0.1,
                chosen_lengths=np.ones(4), rejected_lengths=np.ones(4))
    for i, name in enumerate(("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
                              "ref_rejected_logps")):
        for bad in (good[i][:3], good[i][:, None], good[i].astype(jnp.int32)):
            args = list(good)
            args[i] = bad
            # A wrong policy_chosen shape is reported by the first differing array; name one of the two.
            _raises(name if i or bad.ndim != 1 else "policy_rejected_logps|policy_chosen_logps", *args)
    _raises("policy_chosen_logps.*batch", *(g[:0] for g in good))
    _raises("chosen_lengths.*required", *good, loss_type="ipo")
    _raises("rejected_lengths.*required", *good, loss_type="ipo", chosen_lengths=np.ones(4))
    _raises("rejected_lengths.*shape", *good, loss_type="ipo", chosen_lengths=np.ones(4),
            rejected_lengths=np.ones(5))


def _trl_loss(d: dict, loss_type: str, eps: float, beta: float):
    """TRL 1.16's DPOTrainer._compute_loss on a minimal trainer and a fake model whose per-token log-probs sum
    to the given sequence log-probs; reference log-probs go in as precomputed, as TRL allows."""
    import torch
    from trl.trainer.dpo_trainer import DPOTrainer

    batch, prompt = d["pc"].shape[0], 3
    lengths = np.concatenate([d["lc"], d["lr"]])
    seq = prompt + int(lengths.max()) + 2
    completion = np.zeros((2 * batch, seq), np.int64)
    for i, n in enumerate(lengths):
        completion[i, prompt:prompt + n] = 1
    totals = np.concatenate([d["pc"], d["pr"]]).astype(np.float64)
    shifted = completion[:, 1:]
    per_token = torch.tensor(shifted * (totals / lengths)[:, None])  # each completion token carries an equal share

    def fake_model(**_):
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros(per_token.shape, dtype=torch.bool))

    fake_model.training = True
    trainer = object.__new__(DPOTrainer)
    acc = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
    for name, value in dict(model=fake_model, accelerator=acc, aux_loss_enabled=False, ld_alpha=None,
                            precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
                            loss_weights=[1.0], beta=beta, label_smoothing=eps, use_weighting=False,
                            _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1).items():
        object.__setattr__(trainer, name, value)
    inputs = {"input_ids": torch.ones((2 * batch, seq), dtype=torch.long),
              "attention_mask": torch.ones((2 * batch, seq), dtype=torch.long),
              "completion_mask": torch.tensor(completion),
              "ref_chosen_logps": torch.tensor(d["rc"].astype(np.float64)),
              "ref_rejected_logps": torch.tensor(d["rr"].astype(np.float64))}
    loss = trainer._compute_loss(fake_model, inputs, return_outputs=False)
    return float(loss), {name: trainer._metrics["train"][name][-1] for name in METRICS}


@pytest.mark.parametrize("loss_type,eps,beta", [c for c in CASES if c[0] != "sigmoid" or c[1] == 0.0])
def test_matches_trl_dpo_trainer(loss_type, eps, beta):
    """TRL 1.16 ignores label_smoothing for sigmoid, so cDPO (eps > 0) is checked against the formula only."""
    pytest.importorskip("trl")
    for seed, batch in ((13, 1), (14, 9)):
        d = _pairs(seed, batch)
        want_loss, want_metrics = _trl_loss(d, loss_type, eps, beta)
        loss, metrics = _call(d, loss_type, eps, beta)
        np.testing.assert_allclose(float(loss), want_loss, rtol=2e-5, atol=2e-6)
        for name in METRICS:
            np.testing.assert_allclose(float(metrics[name]), want_metrics[name], rtol=2e-5, atol=2e-5,
                                       err_msg=name)


def test_loss_types_are_the_four_documented():
    assert LOSS_TYPES == ("sigmoid", "ipo", "hinge", "robust")


@pytest.mark.parametrize("nll_weight", [0.5, 1.0])
def test_the_nll_term_adds_the_chosen_mean_token_nll_weighted_against_float64(nll_weight):
    """Sigmoid DPO + w * (-log p(chosen) / |chosen|), weighted over pairs (a zero-weight row adds nothing)."""
    x = _pairs(31, 7)
    w = np.array([1, 1, 0.5, 1, 0, 2, 1], np.float32)
    loss, m = dpo_loss(x["pc"], x["pr"], x["rc"], x["rr"], beta=0.2, chosen_lengths=x["lc"], rejected_lengths=x["lr"],
                       weights=w, nll_weight=nll_weight)
    d = {k: v.astype(np.float64) for k, v in x.items()}
    z = 0.2 * ((d["pc"] - d["rc"]) - (d["pr"] - d["rr"]))
    nll = -d["pc"] / d["lc"]
    ref = np.sum(w * (-_log_sigmoid(z) + nll_weight * nll)) / w.sum()
    np.testing.assert_allclose(float(loss), ref, rtol=2e-6)
    np.testing.assert_allclose(float(m["nll/chosen"]), np.sum(w * nll) / w.sum(), rtol=2e-6)
    plain, m0 = dpo_loss(x["pc"], x["pr"], x["rc"], x["rr"], beta=0.2, weights=w)
    assert "nll/chosen" not in m0 and float(plain) < float(loss)
