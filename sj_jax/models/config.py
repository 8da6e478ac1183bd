"""The architecture of a Llama-family decoder, read from a Hugging Face config or GGUF metadata.

One frozen dataclass covers Llama 2/3 (with Llama 3 RoPE scaling), Mistral (sliding window), Qwen2/2.5
(q/k/v biases, per-layer sliding window) and SmolLM2. Run-time choices (dtypes, rematerialisation)
live beside the architecture so that the Flax module takes one static argument.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from sj_jax.core.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding. `kind`: default | linear | llama3 (the others are refused at load)."""

    theta: float = 10000.0
    kind: Literal["default", "linear", "llama3"] = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = RopeConfig()
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    # Per layer: attend only to keys less than this many positions back; 0 = full causal attention.
    sliding_windows: tuple[int, ...] = ()
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Run-time choices, not architecture.
    dtype: Literal["float32", "bfloat16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: Literal["none", "full", "dots"] = "none"

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"model_type: {self.model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name}: must be a positive integer, got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_key_value_heads: {self.num_kv_heads} does not divide num_attention_heads {self.num_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim: must be even for rotary embeddings, got {self.head_dim}")
        if self.sliding_windows and len(self.sliding_windows) != self.num_layers:
            raise ConfigError(
                f"sliding_windows: {len(self.sliding_windows)} entries for {self.num_layers} layers"
            )
        if not self.sliding_windows:
            object.__setattr__(self, "sliding_windows", (0,) * self.num_layers)

    def replace(self, **kw: Any) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    @property
    def num_params(self) -> int:
        e, f, h, k, d, v, n = (self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads,
                               self.head_dim, self.vocab_size, self.num_layers)
        attn = e * h * d * 2 + e * k * d * 2
        per_layer = attn + 3 * e * f + 2 * e
        return n * per_layer + v * e * (1 if self.tie_word_embeddings else 2) + e


# --------------------------------------------------------------------------- Hugging Face config.json


def _rope_from_hf(params: dict[str, Any] | None, theta_default: float, where: str) -> RopeConfig:
    params = dict(params or {})
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    theta = float(params.get("rope_theta", theta_default))
    if kind == "default":
        return RopeConfig(theta=theta)
    if kind == "linear":
        return RopeConfig(theta=theta, kind="linear", factor=float(params["factor"]))
    if kind == "llama3":
        try:
            return RopeConfig(
                theta=theta, kind="llama3", factor=float(params["factor"]),
                low_freq_factor=float(params["low_freq_factor"]),
                high_freq_factor=float(params["high_freq_factor"]),
                original_max_position_embeddings=int(params["original_max_position_embeddings"]),
            )
        except KeyError as e:
            raise ConfigError(f"{where}: rope_parameters.{e.args[0]} is missing for rope_type llama3") from None
    raise ConfigError(f"{where}: rope_parameters.rope_type {kind!r} is not supported (default, linear, llama3)")


def from_hf_config(hf: Any, where: str = "config.json") -> ModelConfig:
    """Maps a transformers `PretrainedConfig` (Llama, Mistral or Qwen2) to a `ModelConfig`."""
    model_type = getattr(hf, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{where}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    act = getattr(hf, "hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{where}: hidden_act {act!r} is not supported (silu)")
    heads = hf.num_attention_heads
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
    rope_params = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None)
    rope = _rope_from_hf(rope_params, float(getattr(hf, "rope_theta", 10000.0) or 10000.0), where)
    layers = hf.num_hidden_layers
    windows = (0,) * layers
    window = getattr(hf, "sliding_window", None)
    if model_type == "mistral" and window:
        windows = (int(window),) * layers
    elif model_type == "qwen2" and getattr(hf, "use_sliding_window", False) and window:
        types = getattr(hf, "layer_types", None) or ["sliding_attention"] * layers
        windows = tuple(int(window) if t == "sliding_attention" else 0 for t in types)
    attention_bias = bool(getattr(hf, "attention_bias", False))

    def _first(x):
        return x[0] if isinstance(x, (list, tuple)) else x

    return ModelConfig(
        model_type=model_type,
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        rms_norm_eps=float(hf.rms_norm_eps),
        rope=rope,
        max_position_embeddings=int(hf.max_position_embeddings),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=attention_bias and model_type == "llama",
        mlp_bias=bool(getattr(hf, "mlp_bias", False)),
        sliding_windows=windows,
        bos_token_id=_first(getattr(hf, "bos_token_id", None)),
        eos_token_id=_first(getattr(hf, "eos_token_id", None)),
        pad_token_id=getattr(hf, "pad_token_id", None),
    )


def to_hf_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """The keyword arguments of the transformers config class for `cfg.model_type`."""
    rope: dict[str, Any] = {"rope_type": cfg.rope.kind, "rope_theta": cfg.rope.theta}
    if cfg.rope.kind == "linear":
        rope["factor"] = cfg.rope.factor
    elif cfg.rope.kind == "llama3":
        rope.update(factor=cfg.rope.factor, low_freq_factor=cfg.rope.low_freq_factor,
                    high_freq_factor=cfg.rope.high_freq_factor,
                    original_max_position_embeddings=cfg.rope.original_max_position_embeddings)
    kw: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters=rope, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings, hidden_act="silu",
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
        torch_dtype=cfg.param_dtype,
    )
    windows = set(cfg.sliding_windows) - {0}
    if cfg.model_type == "llama":
        if windows:
            raise ConfigError("sliding_windows: Llama has no sliding window in transformers")
        if cfg.qkv_bias != cfg.o_bias:
            raise ConfigError("qkv_bias/o_bias: Llama's attention_bias covers q, k, v and o together")
        kw.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    elif cfg.model_type == "mistral":
        if len(windows) > 1 or (windows and 0 in cfg.sliding_windows):
            raise ConfigError("sliding_windows: Mistral uses one window for every layer")
        kw.update(sliding_window=windows.pop() if windows else None)
    elif cfg.model_type == "qwen2":
        if len(windows) > 1:
            raise ConfigError("sliding_windows: Qwen2 uses one window size")
        kw.update(
            use_sliding_window=bool(windows), sliding_window=windows.pop() if windows else None,
            layer_types=["sliding_attention" if w else "full_attention" for w in cfg.sliding_windows],
        )
    return kw
