"""Read and write Hugging Face safetensors checkpoints: one file, or shards with an index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy
from safetensors import safe_open

from sj_jax.core.errors import WeightsError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class SafetensorsSource:
    """Lazy access to the tensors of a Hugging Face folder, by Hugging Face name, in Hugging Face layout."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX
        # errors about the set of tensors name the file that lists them
        self.path = str(index if index.exists() else self.folder / SINGLE)
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise WeightsError(f"{index}: not a valid safetensors index ({e})") from None
            files = sorted(set(weight_map.values()))
        elif (self.folder / SINGLE).exists():
            files, weight_map = [SINGLE], None
        else:
            raise WeightsError(f"{self.folder}: neither {SINGLE} nor {INDEX} is there")
        self._handles = {}
        self._where: dict[str, str] = {}
        for name in files:
            path = self.folder / name
            if not path.exists():
                raise WeightsError(f"{path}: shard listed in {INDEX} is missing")
            try:
                handle = safe_open(str(path), framework="numpy")
            except (safetensors.SafetensorError, OSError) as e:
                raise WeightsError(f"{path}: not a valid safetensors file (truncated or corrupt?): {e}") from None
            self._handles[name] = handle
            for key in handle.keys():
                self._where[key] = name
        if weight_map is not None:
            for key, name in weight_map.items():
                if self._where.get(key) != name:
                    raise WeightsError(f"{self.folder / name}: tensor {key} listed in {INDEX} is not in it")

    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self._where[name]].get_slice(name).get_shape())

    def file_of(self, name: str) -> str:
        return str(self.folder / self._where[name])

    def get(self, name: str) -> np.ndarray:
        try:
            return self._handles[self._where[name]].get_tensor(name)
        except (safetensors.SafetensorError, OSError) as e:
            raise WeightsError(f"{self.file_of(name)}: cannot read tensor {name}: {e}") from None


def save_safetensors(tensors: dict[str, np.ndarray], folder: str | Path) -> Path:
    """Writes one `model.safetensors` (metadata format=pt, as transformers expects)."""
    path = Path(folder) / SINGLE
    safetensors.numpy.save_file(tensors, str(path), metadata={"format": "pt"})
    return path
