"""The shapes of public models, for planning (`sj-jax memory`) without their weights at hand. The
numbers are the models' published `config.json` values; loading a model always reads its own."""

from __future__ import annotations

from sj_jax.models.config import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    "llama-3.2-1b": ModelConfig("llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
                                num_heads=32, num_kv_heads=8, head_dim=64, max_position_embeddings=131072,
                                tie_word_embeddings=True),
    "llama-3.1-8b": ModelConfig("llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                                num_heads=32, num_kv_heads=8, head_dim=128, max_position_embeddings=131072),
    "qwen2.5-7b": ModelConfig("qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                              num_heads=28, num_kv_heads=4, head_dim=128, max_position_embeddings=32768, qkv_bias=True),
}


def preset_for(name: str) -> ModelConfig | None:
    """The preset whose key a model name or path's last part starts with, ignoring case and an
    "-instruct" suffix ("meta-llama/Llama-3.1-8B-Instruct" -> llama-3.1-8b), or None."""
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    for key, cfg in PRESETS.items():
        if base == key or base.startswith(key + "-"):
            return cfg
    return None
