"""How each of our parameters maps to a Hugging Face tensor name, and the layout change between them.

Hugging Face linear weights are `[out_features, in_features]`; our kernels are `[*in_shape, *out_shape]`
(e.g. q: `[embed, heads, head_dim]`), so a linear weight is transposed then reshaped, and back.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class KeyRule:
    hf_name: str  # with "{i}" for the layer index when `per_layer`
    per_layer: bool
    # Leading "in" axes of a linear kernel; 0 = a vector (flattened in HF); None = a matrix kept as is.
    n_in: int | None

    def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
        """The Hugging Face tensor shape for one layer's slice of our param of shape `ours`."""
        if self.n_in is None:
            return tuple(ours)
        if self.n_in == 0:
            return (math.prod(ours),)
        return (math.prod(ours[self.n_in:]), math.prod(ours[: self.n_in]))

    def to_ours(self, hf: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
        return (hf.T if self.n_in else hf).reshape(ours)

    def to_hf(self, arr: np.ndarray) -> np.ndarray:
        if not self.n_in:
            return arr.reshape(self.hf_shape(arr.shape))
        rows = math.prod(arr.shape[: self.n_in])
        return np.ascontiguousarray(arr.reshape(rows, -1).T)


_L = "model.layers.{i}."
RULES: dict[tuple[str, ...], KeyRule] = {
    ("embed", "embedding"): KeyRule("model.embed_tokens.weight", False, None),
    ("final_norm", "scale"): KeyRule("model.norm.weight", False, 0),
    ("lm_head", "kernel"): KeyRule("lm_head.weight", False, 1),
    ("layers", "attn_norm", "scale"): KeyRule(_L + "input_layernorm.weight", True, 0),
    ("layers", "mlp_norm", "scale"): KeyRule(_L + "post_attention_layernorm.weight", True, 0),
    ("layers", "attn", "o", "kernel"): KeyRule(_L + "self_attn.o_proj.weight", True, 2),
    ("layers", "attn", "o", "bias"): KeyRule(_L + "self_attn.o_proj.bias", True, 0),
}
for _p in "qkv":
    RULES[("layers", "attn", _p, "kernel")] = KeyRule(_L + f"self_attn.{_p}_proj.weight", True, 1)
    RULES[("layers", "attn", _p, "bias")] = KeyRule(_L + f"self_attn.{_p}_proj.bias", True, 0)
for _p in ("gate", "up", "down"):
    RULES[("layers", "mlp", _p, "kernel")] = KeyRule(_L + f"mlp.{_p}_proj.weight", True, 1)
    RULES[("layers", "mlp", _p, "bias")] = KeyRule(_L + f"mlp.{_p}_proj.bias", True, 0)

# Tensors some checkpoints carry that the model does not use.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
