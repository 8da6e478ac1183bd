"""Our Flax model against PyTorch transformers, on random tiny Llama, Mistral and Qwen2 checkpoints."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import transformers

import sj_jax
from conftest import make_torch_checkpoint, relative_error, right_padded_batch, torch_logits

CASES = {
    # GQA 6:2, untied, Llama 3 RoPE scaling with a short original context so that it bites.
    "llama3-gqa-untied": transformers.LlamaConfig(
        vocab_size=131, hidden_size=72, intermediate_size=100, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 5000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    ),
    # Tied, MHA, attention and MLP biases, linear RoPE scaling.
    "llama2-tied-bias-linear": transformers.LlamaConfig(
        vocab_size=97, hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=5,
        num_key_value_heads=5, tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.5},
    ),
    # head_dim set apart from hidden/heads, MQA, a sliding window shorter than the sequence.
    "mistral-window": transformers.MistralConfig(
        vocab_size=113, hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=20, sliding_window=5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    ),
    # q/k/v biases, tied, GQA 6:3.
    "qwen2-bias-tied": transformers.Qwen2Config(
        vocab_size=151, hidden_size=60, intermediate_size=90, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=3, tie_word_embeddings=True,
    ),
    # Sliding window on some layers only.
    "qwen2-window-some-layers": transformers.Qwen2Config(
        vocab_size=89, hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, use_sliding_window=True, sliding_window=4,
        max_window_layers=1,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"],
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    seed = sorted(CASES).index(name) + 11
    torch_model = make_torch_checkpoint(CASES[name], folder, seed=seed)
    return name, folder, torch_model


def test_float32_logits_match_torch(case):
    name, folder, torch_model = case
    model = sj_jax.load_model(folder, tokenizer=None)
    rng = np.random.default_rng(hash(name) % 2**32)
    ids, mask = right_padded_batch(rng, model.config.vocab_size, [13, 9, 13])
    ours = np.asarray(sj_jax.logits(model, ids, mask))
    ref = torch_logits(torch_model, ids, mask)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert relative_error(ours, ref, mask) < 1e-4


def test_right_padded_rows_equal_unpadded_rows(case):
    name, folder, _ = case
    model = sj_jax.load_model(folder, tokenizer=None)
    rng = np.random.default_rng(7)
    lengths = [11, 4, 8]
    ids, mask = right_padded_batch(rng, model.config.vocab_size, lengths)
    batched = np.asarray(sj_jax.logits(model, ids, mask))
    for row, n in enumerate(lengths):
        alone = np.asarray(sj_jax.logits(model, ids[row : row + 1, :n]))
        np.testing.assert_allclose(batched[row, :n], alone[0], rtol=1e-5, atol=1e-5)


def test_bfloat16_within_bfloat16_tolerance(case):
    """bf16 compute lands as close to the float32 oracle as PyTorch's own bf16 forward does."""
    import torch

    name, folder, torch_model = case
    rng = np.random.default_rng(3)
    ids, mask = right_padded_batch(rng, torch_model.config.vocab_size, [12, 12])
    ref = torch_logits(torch_model, ids, mask)
    torch_bf16 = torch_logits(torch_model.to(torch.bfloat16), ids, mask)
    torch_model.to(torch.float32)
    torch_err = relative_error(torch_bf16, ref, mask)
    for param_dtype in ("bfloat16", "float32"):
        model = sj_jax.load_model(folder, dtype="bfloat16", param_dtype=param_dtype, tokenizer=None)
        leaf = model.params["layers"]["mlp"]["up"]["kernel"]
        assert str(leaf.dtype) == param_dtype
        ours = np.asarray(sj_jax.logits(model, ids, mask))
        assert ours.dtype == np.float32
        err = relative_error(ours, ref, mask)
        assert err < max(3 * torch_err, 2e-2), (param_dtype, err, torch_err)


def test_save_hf_round_trip(case, tmp_path):
    """Our export loads in PyTorch transformers with the same logits, and back into sj_jax unchanged."""
    from transformers import AutoModelForCausalLM

    name, folder, _ = case
    model = sj_jax.load_model(folder, tokenizer=None)
    out = sj_jax.save_hf(model, tmp_path / "export")
    reloaded_torch = AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager").eval()
    rng = np.random.default_rng(5)
    ids, mask = right_padded_batch(rng, model.config.vocab_size, [10, 6])
    ours = np.asarray(sj_jax.logits(model, ids, mask))
    assert relative_error(torch_logits(reloaded_torch, ids, mask), ours, mask) < 1e-4
    again = sj_jax.load_model(out, tokenizer=None)
    assert again.config == model.config
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_checkpoint_with_index(tmp_path):
    """A checkpoint split into shards with model.safetensors.index.json loads like a single file."""
    cfg = CASES["llama3-gqa-untied"]
    torch_model = make_torch_checkpoint(cfg, tmp_path, seed=99, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    model = sj_jax.load_model(tmp_path, tokenizer=None)
    ids, mask = right_padded_batch(np.random.default_rng(1), cfg.vocab_size, [9, 7])
    assert relative_error(sj_jax.logits(model, ids, mask), torch_logits(torch_model, ids, mask), mask) < 1e-4


def test_every_parameter_carries_logical_axis_names():
    from flax import linen as nn
    from flax.traverse_util import flatten_dict

    from sj_jax.models.config import from_hf_config
    from sj_jax.weights.loader import abstract_params

    for hf in CASES.values():
        boxed = flatten_dict(abstract_params(from_hf_config(hf)))
        for path, leaf in boxed.items():
            assert isinstance(leaf, nn.LogicallyPartitioned), path
            assert len(leaf.names) == leaf.value.ndim and all(leaf.names), path


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_rematerialisation_changes_neither_logits_nor_gradients(remat):
    import jax
    import jax.numpy as jnp

    from sj_jax.models.config import from_hf_config

    cfg = from_hf_config(CASES["llama3-gqa-untied"])
    plain = sj_jax.init_model(cfg, seed=4)
    ids = jnp.asarray(np.random.default_rng(8).integers(0, cfg.vocab_size, (2, 10)), jnp.int32)

    def loss(params, c):
        logp = jax.nn.log_softmax(plain.module.__class__(c).apply({"params": params}, ids))
        return -jnp.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1).mean()

    loss_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)  # eagerly, every op compiles alone
    ref_loss, ref_grad = loss_and_grad(plain.params, cfg)
    got_loss, got_grad = loss_and_grad(plain.params, cfg.replace(remat=remat))
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(ref_grad), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(ref_grad["layers"]["mlp"]["up"]["kernel"]).max()) > 0
    # And remat is really there: the traced backward holds a checkpoint only when asked for.
    trace = lambda c: str(jax.make_jaxpr(jax.grad(lambda p: loss(p, c)))(plain.params))  # noqa: E731
    assert "checkpoint" in trace(cfg.replace(remat=remat)) or "remat" in trace(cfg.replace(remat=remat))
    assert "checkpoint" not in trace(cfg) and "remat" not in trace(cfg)
