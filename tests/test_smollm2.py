"""The embedded default, SmolLM2-135M-Instruct, against PyTorch transformers on real text."""

from __future__ import annotations

import numpy as np
import pytest

import sj_jax
from conftest import REAL_TEXTS, relative_error, torch_logits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def batch(smollm2):
    enc = smollm2.tokenizer(REAL_TEXTS, padding=True, return_tensors="np")
    assert smollm2.tokenizer.padding_side == "right"
    return enc["input_ids"], enc["attention_mask"]


def test_config_from_gguf(smollm2):
    c = smollm2.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (30, 576, 9, 3, 64)
    assert (c.intermediate_size, c.vocab_size, c.rope.theta, c.tie_word_embeddings) == (1536, 49152, 1e5, True)
    assert "lm_head" not in smollm2.params


def test_gguf_logits_match_torch(smollm2, smollm2_torch, batch):
    ids, mask = batch
    ours = np.asarray(sj_jax.logits(smollm2, ids, mask))
    ref = torch_logits(smollm2_torch, ids, mask)
    assert relative_error(ours, ref, mask) < 1e-4
    last = mask.sum(1) - 1
    rows = np.arange(len(ids))
    np.testing.assert_array_equal(ours[rows, last].argmax(-1), ref[rows, last].argmax(-1))
    assert smollm2.tokenizer.decode(ours[0, last[0]].argmax()).strip() == "Berlin"


def test_hf_folder_logits_match_torch(smollm2_torch, smollm2, batch, tmp_path):
    """A folder written by transformers' own save_pretrained (not by us) loads and agrees."""
    from transformers import LlamaConfig, LlamaForCausalLM

    # transformers refuses to save a GGUF-loaded model; a plain copy of its weights saves normally.
    cfg = {k: v for k, v in smollm2_torch.config.to_dict().items() if k != "quantization_config"}
    plain = LlamaForCausalLM(LlamaConfig(**cfg))
    plain.load_state_dict(smollm2_torch.state_dict())
    plain.save_pretrained(str(tmp_path))
    assert (tmp_path / "model.safetensors").exists()
    smollm2.tokenizer.save_pretrained(str(tmp_path))
    model = sj_jax.load_model(tmp_path)
    ids, mask = batch
    assert relative_error(sj_jax.logits(model, ids, mask), torch_logits(smollm2_torch, ids, mask), mask) < 1e-4
    assert model.tokenizer(REAL_TEXTS[0])["input_ids"] == smollm2.tokenizer(REAL_TEXTS[0])["input_ids"]


def test_save_hf_loads_in_torch_with_same_logits_and_tokenizer(smollm2, batch, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = sj_jax.save_hf(smollm2, tmp_path / "smollm2-hf")
    torch_model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids, mask = batch
    ours = np.asarray(sj_jax.logits(smollm2, ids, mask))
    assert relative_error(torch_logits(torch_model, ids, mask), ours, mask) < 1e-4
    tok = AutoTokenizer.from_pretrained(str(out))
    msgs = [{"role": "user", "content": "Sort 3, 1, 2."}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        smollm2.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    )
    assert tok(REAL_TEXTS[2])["input_ids"] == smollm2.tokenizer(REAL_TEXTS[2])["input_ids"]


def test_bfloat16_real_model(smollm2_torch, batch):
    import torch

    ids, mask = batch
    ref = torch_logits(smollm2_torch, ids, mask)
    model = sj_jax.load_model("smollm2-135m-instruct", dtype="bfloat16")
    ours = np.asarray(sj_jax.logits(model, ids, mask))
    torch_bf16 = torch_logits(smollm2_torch.to(torch.bfloat16), ids, mask)
    smollm2_torch.to(torch.float32)
    assert relative_error(ours, ref, mask) < max(3 * relative_error(torch_bf16, ref, mask), 2e-2)


def test_chat_template_and_end_of_turn(smollm2):
    from sj_jax.weights.tokenizer import end_of_turn_ids

    text = smollm2.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert 2 in end_of_turn_ids(smollm2.tokenizer)
