"""`sj-jax memory`: per-device bytes of a training or SELF-JUDGE config on a mesh, before any device is
touched, and whether it fits a named accelerator.

Counted per device: the weights (each leaf's shard under the mesh's logical rules, as
`sj_jax.models.sharding` lays it out), the trained tree (LoRA adapters, or the float32 master of
bfloat16 weights), its gradients and Adam's two moments, a frozen reference copy (full-weight DPO
in float32), the activations a step keeps for
its backward pass (by the `remat` setting), the output projection's chunk of logits, and for
SELF-JUDGE the sampler's KV cache and the judge's forward. The activations are an estimate from the
layer's shapes (checked against XLA's own `memory_analysis()` of the compiled step in the tests);
the rest is exact arithmetic on the shapes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax

from sj_jax.core.errors import ConfigError
from sj_jax.loading.model import read_hf_config
from sj_jax.models.config import ModelConfig
from sj_jax.models.lora import LoraConfig
from sj_jax.models.presets import PRESETS, preset_for
from sj_jax.models.sharding import MESH_AXES, MeshConfig, logical_to_spec
from sj_jax.weights.gguf_io import GGUFSource
from sj_jax.weights.loader import abstract_params
from sj_jax.weights.registry import EMBEDDED, resolve

BYTES = {"float32": 4, "bfloat16": 2}

# Usable memory per device (bytes) of the accelerators a config is checked against.
DEVICES = {
    "v4": 32 * 2**30, "v5e": 16 * 2**30, "v5p": 95 * 2**30, "v6e": 32 * 2**30,
    "h100-80gb": 80 * 10**9, "h200": 141 * 10**9, "a100-80gb": 80 * 10**9, "a100-40gb": 40 * 10**9,
}
# What XLA and the runtime keep for themselves (program, collectives' buffers, fragmentation).
HEADROOM = 0.10


@dataclasses.dataclass(frozen=True)
class Workload:
    """The shapes one step works on. kind: "sft" (SFT and JSFT), "dpo" or "self_judge"."""

    kind: str
    rows: int  # micro-batch rows over all devices
    seq: int  # tokens a row
    lora: LoraConfig = LoraConfig(enabled=False)
    logprob_chunk: int = 8192  # tokens of the output projection at a time
    sample_rows: int = 0  # self_judge: sampler rows (prompts x N)
    sample_len: int = 0  # self_judge: prompt + new tokens (the KV cache's length)
    judge_rows: int = 0  # self_judge: judge prompts a forward
    judge_len: int = 0  # self_judge: tokens of a judge prompt


class _MeshShape:
    """What `logical_to_spec` reads of a mesh: its axis sizes, without devices."""

    def __init__(self, sizes: dict[str, int]):
        self.shape = sizes


def mesh_sizes(mesh: MeshConfig, devices: int) -> dict[str, int]:
    """The mesh's axis sizes over `devices` (one axis may be -1: what the others leave)."""
    sizes = {a: getattr(mesh, a) for a in MESH_AXES}
    known = math.prod(s for s in sizes.values() if s != -1)
    for a, s in sizes.items():
        if s == -1:
            if devices % known:
                raise ConfigError(f"mesh: {devices} devices are not divisible by {known}")
            sizes[a] = devices // known
    if math.prod(sizes.values()) != devices:
        raise ConfigError(f"mesh: data*fsdp*tensor = {math.prod(sizes.values())} but there are {devices} devices")
    return sizes


def param_bytes(cfg: ModelConfig, sizes: dict[str, int]) -> tuple[int, int]:
    """(bytes of one device's shard of the weights, bytes of all of them) in `cfg.param_dtype`."""
    mesh, per_device, total = _MeshShape(sizes), 0, 0
    width = BYTES[cfg.param_dtype]
    for leaf in jax.tree.leaves(abstract_params(cfg), is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
        names, shape = (leaf.names, leaf.value.shape) if isinstance(leaf, nn.LogicallyPartitioned) else \
            ((None,) * len(leaf.shape), leaf.shape)
        spec = logical_to_spec(tuple(names), tuple(shape), mesh)
        local = list(shape)
        for i, axes in enumerate(spec):
            for a in (axes,) if isinstance(axes, str) else (axes or ()):
                local[i] //= sizes[a]
        per_device += math.prod(local) * width
        total += math.prod(shape) * width
    return per_device, total


def lora_bytes(cfg: ModelConfig, lora: LoraConfig) -> int:
    """float32 bytes of the adapters (replicated: they are small)."""
    e, h, k, d, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    shapes = {"q": (e, h * d), "k": (e, k * d), "v": (e, k * d), "o": (h * d, e), "gate": (e, f), "up": (e, f),
              "down": (f, e)}
    return 4 * cfg.num_layers * lora.rank * sum(sum(shapes[t]) for t in lora.targets)


def activation_bytes(cfg: ModelConfig, rows: int, seq: int, chunk: int, train: bool) -> int:
    """One device's bytes of a forward's activations for `rows` x `seq` tokens: what the backward keeps
    of every layer (by `cfg.remat`), or one layer's working set without a backward, and the output
    projection's chunk of the vocabulary (`chunk` columns at a time).

    The counts per token follow the layer's tensors; the copies of each (2 of the logits, 1 under full
    remat; 3 of the attention scores; 5 layer inputs' worth under full remat) are what XLA's buffer
    assignment of the compiled step keeps, read off `memory_analysis()` on CPU (tests/test_memory.py).
    Rows are counted at their full length (`seq`), the worst case of a length bucket."""
    b = BYTES[cfg.dtype]
    e, h, k, d, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    tokens = rows * seq
    # One layer's tensors a token: the two norms' float32 inputs and their outputs, q/k/v and the
    # attention output, o's output, the MLP's gate, up and their product; and a (head, key) pair's
    # attention logits and probabilities (float32) and the probabilities in the compute dtype.
    per_token = (2 * 4 + 4 * b) * e + b * ((h + 2 * k) * d + h * d) + 3 * b * f
    layer = tokens * per_token + rows * h * seq * seq * (2 * 4 + b)
    if not train:
        kept = layer
    elif cfg.remat == "full":
        kept = cfg.num_layers * 5 * tokens * e * b  # the layer inputs (the rest is recomputed)
    elif cfg.remat == "dots":
        kept = cfg.num_layers * tokens * b * ((h + 2 * k) * d + h * d + 4 * e + 2 * f)  # the matmuls' outputs
    else:
        kept = cfg.num_layers * layer
    # The vocabulary chunk's float32 logits: XLA keeps a second copy for the backward unless the step
    # rematerialises everything.
    logits = (1 if train and cfg.remat == "full" else 2) * tokens * min(cfg.vocab_size, chunk) * 4
    return kept + logits + 2 * tokens * e * 4  # + the residual stream in and out (float32)


def kv_cache_bytes(cfg: ModelConfig, rows: int, length: int, sizes: dict[str, int]) -> int:
    """One device's KV cache: rows over data x fsdp, kv heads over tensor where they divide."""
    kv_split = sizes["tensor"] if cfg.num_kv_heads % sizes["tensor"] == 0 else 1
    return 2 * cfg.num_layers * rows * length * cfg.num_kv_heads * cfg.head_dim * BYTES[cfg.dtype] // kv_split


def gathered_bytes(cfg: ModelConfig, sizes: dict[str, int]) -> int:
    """Under fsdp, the whole copies of layers' weights a train step holds at its peak (split by tensor
    only), in the compute dtype: every layer's, kept from the forward for the backward, unless the
    layers are rematerialised (then one layer's, gathered again for its recompute; read off the
    compiled step's all-gathers on CPU, tests/train_mesh_check.py). The embedding and the output
    projection are gathered too, but not at the step's peak."""
    e, f, h, k, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    layer = (2 * e * h * d + 2 * e * k * d + 3 * e * f) // sizes["tensor"] + 2 * e
    kept = 1 if cfg.remat != "none" else cfg.num_layers
    return kept * layer * BYTES[cfg.dtype]


def estimate(cfg: ModelConfig, w: Workload, mesh: MeshConfig, devices: int) -> dict[str, int]:
    """Per-device bytes by part, and "total": the parts live at once at the step's peak."""
    sizes = mesh_sizes(mesh, devices)
    batch_split = sizes["data"] * sizes["fsdp"]
    weights, _ = param_bytes(cfg, sizes)
    out: dict[str, int] = {"weights": weights}
    if w.lora.enabled:
        trained = lora_bytes(cfg, w.lora)
        out.update(trained=trained, gradients=trained, optimizer=2 * trained)
    elif cfg.param_dtype == "float32":
        out.update(gradients=weights, optimizer=2 * weights)
        if w.kind in ("dpo", "self_judge"):
            out["reference"] = weights  # the frozen copy the policy is measured against
    else:
        # Mixed precision: the optimizer trains a float32 master; the loaded weights stay (DPO's reference).
        master = weights * 4 // BYTES[cfg.param_dtype]
        out.update(trained=master, gradients=master, optimizer=2 * master)
    if sizes["fsdp"] > 1:
        out["gathered"] = gathered_bytes(cfg, sizes)
    local_rows = -(-w.rows // batch_split)
    # DPO runs the reference forward too (no backward: nothing kept) beside the policy's.
    out["activations"] = activation_bytes(cfg, local_rows, w.seq, w.logprob_chunk, train=True)
    if w.kind == "self_judge":
        # Sampling and judging run before the update, not beside it: the step's peak is the largest.
        rows = -(-w.sample_rows // batch_split)
        jrows = -(-w.judge_rows // batch_split)
        judging = activation_bytes(cfg, jrows, w.judge_len, w.logprob_chunk, train=False)
        out["sampler_kv_cache"] = kv_cache_bytes(cfg, rows, w.sample_len, sizes)
        out["judge_forward"] = judging
        sampling = out["sampler_kv_cache"] + activation_bytes(cfg, rows, w.sample_len, w.logprob_chunk, train=False)
        phases = max(out["activations"], sampling, judging)
    else:
        phases = out["activations"]
    fixed = sum(v for k, v in out.items() if k not in ("activations", "sampler_kv_cache", "judge_forward"))
    out["total"] = fixed + phases
    return out


def fits(total: int, device: str) -> tuple[bool, int]:
    """(whether `total` bytes fit `device` with `HEADROOM` kept free, the usable bytes)."""
    if device not in DEVICES:
        raise ConfigError(f"device: {device!r} is not known; known: {', '.join(DEVICES)}")
    usable = int(DEVICES[device] * (1 - HEADROOM))
    return total <= usable, usable


def architecture(model: str) -> ModelConfig:
    """A model's shapes without its weights: a Hugging Face folder's config.json, a GGUF's header,
    an embedded name, or else a preset (`sj_jax.models.presets`) its name matches."""
    path = Path(model)
    if path.is_dir() and (path / "config.json").exists():
        return read_hf_config(path)
    if path.suffix == ".gguf" and path.exists():
        return GGUFSource(path).model_config()
    if model in EMBEDDED:
        return GGUFSource(resolve(model)).model_config()
    cfg = preset_for(model)
    if cfg is None:
        raise ConfigError(f"model: {model!r} is neither a model folder, a .gguf file nor an embedded name, and no "
                          f"preset matches it; presets: {', '.join(PRESETS)}")
    return cfg


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def table(rows: list[tuple[str, dict[str, int], str]]) -> str:
    """A markdown table: one row a (name, estimate, device) with each part in GiB and the verdict."""
    parts = ["weights", "gathered", "reference", "trained", "gradients", "optimizer", "activations", "sampler_kv_cache",
             "judge_forward", "total"]
    lines = ["| config | device | " + " | ".join(parts) + " | fits |", "|---" * (len(parts) + 3) + "|"]
    for name, est, device in rows:
        ok, usable = fits(est["total"], device)
        cells = [gib(est[p]) if p in est else "" for p in parts]
        lines.append(f"| {name} | {device} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} "
                     f"(of {gib(usable)}) |")
    return "\n".join(lines)


def _pair_rows(layout: str, pairs: int, prompt: int, response: int) -> tuple[int, int]:
    """(rows, tokens a row) of a DPO micro-batch: a row a pair (joint), or a row a response (separate)."""
    return (pairs, prompt + 2 * response) if layout == "joint" else (2 * pairs, prompt + response)


def workload_of(kind: str, cfg: Any) -> Workload:
    """The step shapes a TrainConfig (`sft`, `jsft`, `dpo`) or SelfJudgeConfig (`self_judge`) runs."""
    if kind in ("sft", "jsft"):
        return Workload("sft", cfg.batch_size, cfg.data.max_length, cfg.lora, cfg.logprob_chunk)
    if kind == "dpo":
        rows, seq = _pair_rows(cfg.data.pair_layout, cfg.batch_size, cfg.data.max_prompt_length,
                               cfg.data.max_response_length)
        return Workload("dpo", rows, seq, cfg.lora, cfg.logprob_chunk)
    if kind == "self_judge":
        new = cfg.sampling.max_new_tokens
        rows, seq = _pair_rows(cfg.pair_layout, cfg.batch_size, cfg.max_prompt_length, new)
        return Workload("self_judge", rows, seq, cfg.lora,
                        cfg.logprob_chunk, sample_rows=cfg.batch_size * cfg.num_samples,
                        sample_len=cfg.max_prompt_length + new, judge_rows=cfg.judge_batch_size,
                        judge_len=cfg.max_prompt_length + 2 * new + 96)
    raise ConfigError(f"kind: one of sft, jsft, dpo, self_judge; got {kind!r}")


def kind_of(path: str) -> str:
    """The command a config file is for, from its name: self_judge, dpo, jsft or sft."""
    name = Path(path).name.replace("-", "_")
    for kind in ("self_judge", "jsft", "dpo", "sft"):
        if kind in name:
            return kind
    raise ConfigError(f"{path}: cannot tell the command from the file name; give --kind sft|jsft|dpo|self_judge")


def plan(cfg: Any, kind: str, devices: int | None) -> tuple[ModelConfig, dict[str, int]]:
    """(the model's shapes with the config's dtypes and remat, the per-device estimate) of a loaded
    TrainConfig or SelfJudgeConfig on `devices` (default: the mesh's own sizes, when none is -1)."""
    if devices is None:
        sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
        if -1 in sizes:
            raise ConfigError("mesh: an axis is -1 (all the devices); give --devices N")
        devices = math.prod(sizes)
    model = architecture(cfg.model).replace(dtype=cfg.dtype, param_dtype=cfg.param_dtype, remat=cfg.remat)
    return model, estimate(model, workload_of(kind, cfg), cfg.mesh, devices)
