"""Run as a subprocess by test_train_sharding.py: SFT, DPO and LoRA-DPO train steps on fake 8-device
CPU meshes vs one device. Prints one JSON line: per mesh and kind, the losses and the largest
relative parameter difference from the single-device run, and the specs the state really got."""

from __future__ import annotations

import json
import os

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from sj_jax import MeshConfig, ModelConfig, init_model  # noqa: E402
from sj_jax.core.config import from_dict  # noqa: E402
from sj_jax.experiments.memory import Workload, estimate  # noqa: E402
from sj_jax.loading.model import Model  # noqa: E402
from sj_jax.models.sharding import make_mesh, param_shardings  # noqa: E402
from sj_jax.train.config import TrainConfig  # noqa: E402
from sj_jax.train.optim import make_optimizer  # noqa: E402
from sj_jax.train.steps import StepSpec, compile_step, place_batch  # noqa: E402
from sj_jax.train.trainer import init_state  # noqa: E402
from sj_jax.weights.loader import abstract_params  # noqa: E402

CFG = ModelConfig(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=2,
                  num_heads=8, num_kv_heads=4, head_dim=8, tie_word_embeddings=False)
MESHES = {"single": None, "data2_fsdp2_tensor2": MeshConfig(data=2, fsdp=2, tensor=2),
          "fsdp8": MeshConfig(data=1, fsdp=8, tensor=1)}


def _batches(kind: str, n: int = 3):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        shape = (2, 8, 2, 20) if kind != "sft" else (2, 8, 20)
        ids = rng.integers(0, CFG.vocab_size, shape).astype(np.int32)
        att = np.ones_like(ids)
        loss = np.zeros_like(ids)
        loss[..., 12:] = 1
        att[..., :2] = 0
        out.append({"input_ids": ids, "attention_mask": att, "loss_mask": loss})
    return out


def run(kind: str, mesh_cfg, start: dict):
    """Three steps from the host weights `start`, laid out on the mesh of `mesh_cfg` (None: one device)."""
    devices = jax.devices()[:1] if mesh_cfg is None else None
    mesh = make_mesh(mesh_cfg or MeshConfig(), devices)
    model = Model(CFG, jax.device_put(start, param_shardings(abstract_params(CFG), mesh)), None, mesh)
    cfg = from_dict(TrainConfig, {"optim": {"learning_rate": 1e-2, "warmup_steps": 0, "grad_accum": 2,
                                            # Adam turns float noise in a near-zero gradient into a
                                            # full-size step; eps keeps the comparison meaningful
                                            "eps": 1e-4},
                                  "lora": {"enabled": kind == "lora", "rank": 4}})
    tx, sched = make_optimizer(cfg.optim, 10)
    state, frozen = init_state("sft" if kind == "sft" else "dpo", cfg, model, tx)
    spec = StepSpec("sft" if kind == "sft" else "dpo", CFG, lora=cfg.lora, response_len=None if kind == "sft" else 8)
    batches = _batches(kind)
    step = compile_step(spec, tx, sched, mesh, state, frozen, batches[0])
    losses = []
    for b in batches:
        state, m = step(state, frozen, b)
        losses.append(float(m["loss"]))
    params = jax.tree.map(np.asarray, state["params"])
    spec_of = None
    if kind != "lora":
        spec_of = [list(s) if isinstance(s, tuple) else s for s in state["params"]["layers"]["mlp"]["up"]["kernel"].sharding.spec]
        while spec_of and spec_of[-1] is None:
            spec_of.pop()
    # Adam's moments laid out as the weights they mirror (not whole on every device)
    flat = jax.tree_util.tree_flatten_with_path
    by_path = {tuple(str(k) for k in p): x.sharding for p, x in flat(state["params"])[0]}
    moments = [(tuple(str(k) for k in p), x) for p, x in flat(state["opt_state"])[0] if x.ndim > 0]
    mismatched = [p for p, x in moments if not any(
        p[i:] in by_path and by_path[p[i:]].is_equivalent_to(x.sharding, x.ndim) for i in range(len(p)))]
    return losses, params, spec_of, len(moments), mismatched


def fsdp_memory() -> dict:
    """XLA's bytes for a small model's SFT step on a 2-device fsdp mesh, and `sj-jax memory`'s estimate
    (test_memory.py does the single-device cases)."""
    mesh_cfg = MeshConfig(data=1, fsdp=2)
    mesh = make_mesh(mesh_cfg, jax.devices()[:2])
    cfg = ModelConfig("llama", vocab_size=8192, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8,
                      num_kv_heads=4, head_dim=32, max_position_embeddings=1024)
    tc = from_dict(TrainConfig, {"mesh": {"data": 1, "fsdp": 2}})
    tx, sched = make_optimizer(tc.optim, 10)
    state, frozen = init_state("sft", tc, init_model(cfg, mesh=mesh), tx)
    batch = place_batch(mesh, {k: np.ones((1, 8, 256), np.int32) for k in ("input_ids", "attention_mask", "loss_mask")})
    step = compile_step(StepSpec("sft", cfg, tc.lora, tc.dpo, 8192), tx, sched, mesh, state, frozen, batch)
    m = step.lower(state, frozen, batch).compile().memory_analysis()
    real = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {"xla": real, "estimate": estimate(cfg, Workload("sft", 8, 256, tc.lora), mesh_cfg, 2)}


def main(kinds: list[str]) -> dict:
    assert len(jax.devices()) == 8
    out = {"memory/fsdp2": fsdp_memory()} if "sft" in kinds else {}
    # Initialised once and placed on each mesh: the (partitionable) initialiser gives the same
    # weights on any mesh, so one compile of it is enough.
    start = jax.tree.map(np.asarray, init_model(CFG, seed=1, mesh=make_mesh(MeshConfig(), jax.devices()[:1])).params)
    for kind in kinds:
        ref_losses, ref_params, *_ = run(kind, None, start)
        for name, mcfg in MESHES.items():
            if mcfg is None:
                continue
            losses, params, spec, n_moments, mismatched = run(kind, mcfg, start)
            rel = max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))
                      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
            out[f"{kind}/{name}"] = {"losses": losses, "ref_losses": ref_losses, "param_rel_diff": rel, "up_spec": spec,
                                     "moments": n_moments, "moments_not_as_weights": [str(p) for p in mismatched]}
    return out


if __name__ == "__main__":
    import sys

    print("RESULT " + json.dumps(main(sys.argv[1:] or ["sft", "dpo", "lora"])))
