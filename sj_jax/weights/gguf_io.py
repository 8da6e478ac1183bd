"""Read a GGUF file (llama.cpp's format): its architecture, and its tensors dequantised to float32.

Tensors are served under their Hugging Face names and layout, so that the same key map and loader
serve safetensors and GGUF. llama.cpp stores the Q and K rows of `llama`-architecture models
permuted for its rotary layout; we undo that here. Every size read from the header is bounded
before use.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from gguf import quants
from gguf.constants import GGMLQuantizationType

from sj_jax.core.errors import ConfigError, WeightsError
from sj_jax.models.config import ModelConfig, RopeConfig
from sj_jax.weights.gguf_reader import GGUFFile, TensorInfo

_MAX_COUNT = 1 << 20  # layers, heads, ... far above any real model
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.")  # a decoder layer's tensor, under its HF name

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")
_ARCH_TO_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2"}


def _unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K permutation: per head, rows [head_dim/2, 2] -> [2, head_dim/2]."""
    shape = w.shape
    return w.reshape(n_heads, shape[0] // n_heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


class GGUFSource:
    """A GGUF file's tensors under Hugging Face names, dequantised to float32 on demand."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise WeightsError(f"{self.path}: GGUF file not found")
        self.file = GGUFFile(self.path)
        self.arch = self.text("general.architecture")
        if self.arch not in _ARCH_TO_MODEL_TYPE:
            raise WeightsError(
                f"{self.path}: general.architecture {self.arch!r} is not supported; supported: "
                f"{', '.join(_ARCH_TO_MODEL_TYPE)}"
            )
        self._tensors: dict[str, TensorInfo] = {self._hf_name(t.name): t for t in self.file.tensors.values()}
        self._heads = self.count("attention.head_count")
        self._kv_heads = self.count("attention.head_count_kv", self._heads)

    @staticmethod
    def _hf_name(name: str) -> str:
        if name in _GLOBAL_NAMES:
            return _GLOBAL_NAMES[name]
        m = _BLOCK.fullmatch(name)
        if m and m.group(2) in _LAYER_NAMES:
            return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
        return name  # unknown names are kept; the loader reports them as unexpected

    def field(self, key: str, default: Any = ...) -> Any:
        if key not in self.file.fields:
            if default is ...:
                raise WeightsError(f"{self.path}: metadata field {key} is missing")
            return default
        return self.file.fields[key]

    def text(self, key: str, default: Any = ...) -> Any:
        """A string field (or `default`); another type is an error naming the field."""
        v = self.field(key, default)
        if v is not default and not isinstance(v, str):
            raise WeightsError(f"{self.path}: metadata field {key} should be a string, not {type(v).__name__}")
        return v

    def number(self, key: str, default: Any = ...) -> float:
        """A finite numeric field as float; another type is an error naming the field."""
        v = self.field(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
            raise WeightsError(f"{self.path}: metadata field {key} = {v!r} is not a finite number")
        return float(v)

    def token_id(self, key: str, vocab: int) -> int | None:
        """A special token id field, or None when absent; it must lie inside the vocabulary."""
        v = self.field(key, None)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < vocab:
            raise WeightsError(f"{self.path}: metadata field {key} = {v!r} is not a token id below {vocab}")
        return int(v)

    def count(self, key: str, default: Any = ...) -> int:
        """An architecture integer (`{arch}.{key}`), bounded."""
        v = self.field(f"{self.arch}.{key}", default)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 < int(v) < _MAX_COUNT:
            raise WeightsError(f"{self.path}: metadata field {self.arch}.{key} = {v!r} is out of range")
        return int(v)

    def model_config(self) -> ModelConfig:
        """The architecture the metadata describe; any inconsistency is an error naming the file."""
        try:
            return self._model_config()
        except ConfigError as e:
            raise WeightsError(f"{self.path}: the metadata describe no valid model: {e}") from None

    def _model_config(self) -> ModelConfig:
        a = self.arch
        hidden = self.count("embedding_length")
        heads = self._heads
        if f"{a}.vocab_size" in self.file.fields:
            vocab = self.count("vocab_size")
        else:
            tokens = self.field("tokenizer.ggml.tokens")
            if not isinstance(tokens, list) or not 0 < len(tokens) < _MAX_COUNT:
                raise WeightsError(f"{self.path}: metadata field tokenizer.ggml.tokens is not a list of tokens")
            vocab = len(tokens)
        kind = self.text(f"{a}.rope.scaling.type", "none")
        factor = self.number(f"{a}.rope.scaling.factor", 1.0)
        if kind not in ("none", "linear"):
            raise WeightsError(f"{self.path}: {a}.rope.scaling.type {kind!r} is not supported")
        theta = self.number(f"{a}.rope.freq_base", 10000.0)
        rope = RopeConfig(theta=theta, kind="linear", factor=factor) if kind == "linear" else RopeConfig(theta=theta)
        head_dim = self.count("attention.key_length", max(hidden // heads, 1))
        layers = self.count("block_count")
        # Before ModelConfig sizes anything by it: a corrupt count (one flipped bit) must not allocate.
        present = {m.group(1) for n in self._tensors if (m := _LAYER_NAME.match(n))}
        if layers != len(present):
            raise WeightsError(f"{self.path}: metadata field {a}.block_count is {layers}, but the file holds the "
                               f"tensors of {len(present)} layers")
        return ModelConfig(
            model_type=_ARCH_TO_MODEL_TYPE[a],
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=self.count("feed_forward_length"),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=self._kv_heads,
            head_dim=head_dim,
            rms_norm_eps=self.number(f"{a}.attention.layer_norm_rms_epsilon"),
            rope=rope,
            max_position_embeddings=self.count("context_length", 4096),
            tie_word_embeddings="lm_head.weight" not in self._tensors,
            qkv_bias=a == "qwen2",
            bos_token_id=self.token_id("tokenizer.ggml.bos_token_id", vocab),
            eos_token_id=self.token_id("tokenizer.ggml.eos_token_id", vocab),
            pad_token_id=self.token_id("tokenizer.ggml.padding_token_id", vocab),
        )

    def names(self) -> set[str]:
        return set(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(reversed(self._tensors[name].dims))

    def file_of(self, name: str) -> str:
        return self.path

    def get(self, name: str) -> np.ndarray:
        t = self._tensors[name]
        try:
            raw = quants.dequantize(self.file.tensor_bytes(t), GGMLQuantizationType(t.type_code))
        except NotImplementedError:
            raise WeightsError(f"{self.path}: tensor {t.name} has type {t.type_name}, which cannot be "
                               "dequantised here") from None
        w = np.asarray(raw, np.float32).reshape(self.shape(name))
        if self.arch == "llama":
            if name.endswith("self_attn.q_proj.weight") or name.endswith("self_attn.q_proj.bias"):
                w = _unpermute_rows(w, self._heads)
            elif name.endswith("self_attn.k_proj.weight") or name.endswith("self_attn.k_proj.bias"):
                w = _unpermute_rows(w, self._kv_heads)
        return w
