"""Where sj_jax keeps what a second run should not pay for again: XLA executables and dequantised weights.

One setting decides it, `cache_dir` in every command's config, and the environment variable
`SJ_JAX_CACHE_DIR` for the default:

- "auto" (the default): `$SJ_JAX_CACHE_DIR` if set, else `$XDG_CACHE_HOME/sj_jax`, else `~/.cache/sj_jax`;
- a path: that folder;
- "off" (or `null` in YAML, or `SJ_JAX_CACHE_DIR=off`): nothing is cached.

Inside it, `xla/` is JAX's persistent compilation cache (its keys hold the JAX version, the backend
and the flags, so another version never reads an entry; an unreadable entry is recompiled with a
warning) and `weights/` holds dequantised GGUF tensors (`sj_jax.weights.dequant_cache`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax

log = logging.getLogger(__name__)

ENV = "SJ_JAX_CACHE_DIR"
_OFF = {"off", "none", "null", "false", "0", "no", ""}
_state: dict = {}  # "root": the configured folder or None; "ours": the XLA folder we set, if any


def resolve_cache_dir(setting: str | os.PathLike | None = "auto") -> Path | None:
    """The cache folder a setting names, or None when caching is off."""
    if setting is None:
        return None
    text = str(setting)
    if text == "auto":
        text = os.environ.get(ENV, "auto")
        if text == "auto":
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
            return Path(base) / "sj_jax"
    if text.strip().lower() in _OFF:
        return None
    return Path(text).expanduser()


def configure_caches(setting: str | os.PathLike | None = "auto") -> Path | None:
    """Points JAX's persistent compilation cache and the weights cache at `setting`'s folder.

    A compilation cache the user set up (`JAX_COMPILATION_CACHE_DIR`, or `jax.config`) is left alone
    unless `setting` names a folder explicitly. Returns the folder, or None when caching is off.
    """
    root = resolve_cache_dir(setting)
    _state["root"] = root
    explicit = setting is not None and str(setting) != "auto"
    # JAX reads JAX_COMPILATION_CACHE_DIR into its config at import: one check covers both ways
    current = jax.config.jax_compilation_cache_dir
    user_set = bool(current) and current != _state.get("ours")
    if root is None:
        if _state.get("ours"):
            jax.config.update("jax_enable_compilation_cache", False)
        return None
    if user_set and not explicit:
        return root
    try:
        (root / "xla").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("cache folder %s cannot be created (%s); running without caches", root, e)
        _state["root"] = None
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    _state["ours"] = str(root / "xla")
    jax.config.update("jax_compilation_cache_dir", _state["ours"])
    # Every executable, however quick to compile: a start pays for dozens of small ones.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return root


def cache_root() -> Path | None:
    """The configured cache folder; the first call without `configure_caches` configures "auto"."""
    if "root" not in _state:
        configure_caches("auto")
    return _state["root"]
