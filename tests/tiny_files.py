"""Small but complete weight files for the fuzz tests: a 2-layer Llama as GGUF (F32, Q8_0 and Q4_1
tensors, a byte-level BPE vocabulary with merges, control tokens and a chat template) and as a
Hugging Face safetensors folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_vocab() -> tuple[list[str], list[str], list[int]]:
    """(tokens, merges, token types): 3 control tokens, the 256 byte characters, 40 merged tokens."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + alphabet
    types = [3, 3, 3] + [1] * len(alphabet)
    merges = []
    for a, b in [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"),
                 ("Ġ", "s"), ("r", "e"), ("a", "t"), ("Ġ", "w"), ("o", "r"), ("e", "n"), ("Ġ", "c"),
                 ("i", "s"), ("Ġ", "b"), ("a", "n"), ("Ġ", "f"), ("Ġ", "o"), ("l", "l")] + \
            [(str(d), str(e)) for d in range(1, 5) for e in range(5)]:
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        types.append(1)
    return tokens, merges, types


def _weights(vocab: int, seed: int) -> dict[str, np.ndarray]:
    """Hugging Face-named float32 tensors of the tiny Llama."""
    rng = np.random.default_rng(seed)
    d = HIDDEN // HEADS
    t = {"model.embed_tokens.weight": rng.standard_normal((vocab, HIDDEN)),
         "model.norm.weight": 1 + 0.1 * rng.standard_normal(HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(HIDDEN)
        t[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(HIDDEN)
        t[p + "self_attn.q_proj.weight"] = rng.standard_normal((HEADS * d, HIDDEN))
        t[p + "self_attn.k_proj.weight"] = rng.standard_normal((KV_HEADS * d, HIDDEN))
        t[p + "self_attn.v_proj.weight"] = rng.standard_normal((KV_HEADS * d, HIDDEN))
        t[p + "self_attn.o_proj.weight"] = rng.standard_normal((HIDDEN, HEADS * d))
        t[p + "mlp.gate_proj.weight"] = rng.standard_normal((FFN, HIDDEN))
        t[p + "mlp.up_proj.weight"] = rng.standard_normal((FFN, HIDDEN))
        t[p + "mlp.down_proj.weight"] = rng.standard_normal((HIDDEN, FFN))
    return {k: (0.05 * v if v.ndim == 2 else v).astype(np.float32) for k, v in t.items()}


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A tiny Llama GGUF (version 3). Norms are F32, attention Q8_0, MLP and embeddings Q4_1."""
    import gguf
    from gguf import GGMLQuantizationType as Q, quants

    tokens, merges, types = byte_vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template(CHAT_TEMPLATE)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for hf, arr in _weights(len(tokens), seed).items():
        if hf.startswith("model.layers."):
            i, rest = hf[len("model.layers."):].split(".", 1)
            name = f"blk.{i}.{layer[rest.rsplit('.', 1)[0]]}.weight"
        else:
            name = names[hf]
        qtype = Q.F32 if arr.ndim == 1 else Q.Q8_0 if "attn" in name else Q.Q4_1
        if qtype == Q.F32:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, quants.quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_hf(folder: Path, seed: int = 0) -> Path:
    """The tiny Llama as a Hugging Face folder: config.json and one model.safetensors (float32)."""
    import safetensors.numpy

    folder.mkdir(parents=True, exist_ok=True)
    tokens, _, _ = byte_vocab()
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": len(tokens),
              "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": True}
    (folder / "config.json").write_text(json.dumps(config))
    safetensors.numpy.save_file(_weights(len(tokens), seed), str(folder / "model.safetensors"),
                                metadata={"format": "pt"})
    return folder
