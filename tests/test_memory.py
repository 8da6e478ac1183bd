"""`sj-jax memory`: the per-device estimate against XLA's own accounting of the compiled step, exact
weight arithmetic, and every shipped scale config fitting the device it was planned for."""

import glob

import numpy as np
import pytest

from sj_jax.cli import main
from sj_jax.core.config import from_dict
from sj_jax.experiments.memory import Workload, architecture, estimate, param_bytes
from sj_jax.loading.model import init_model
from sj_jax.models.config import ModelConfig
from sj_jax.models.lora import LoraConfig
from sj_jax.models.presets import PRESETS
from sj_jax.models.sharding import MeshConfig, make_mesh
from sj_jax.train.config import TrainConfig
from sj_jax.train.optim import make_optimizer
from sj_jax.train.steps import StepSpec, compile_step, place_batch
from sj_jax.train.trainer import init_state


def small(remat: str) -> ModelConfig:
    return ModelConfig("llama", vocab_size=8192, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8,
                       num_kv_heads=4, head_dim=32, max_position_embeddings=1024, remat=remat)


def xla_bytes(cfg: ModelConfig, lora: bool, rows: int, seq: int) -> int:
    """What XLA's buffer assignment of the compiled SFT step needs on the device at its peak."""
    mesh = make_mesh(MeshConfig(data=1))
    tc = from_dict(TrainConfig, {"lora": {"enabled": lora}})
    tx, schedule = make_optimizer(tc.optim, 10)
    state, frozen = init_state("sft", tc, init_model(cfg, mesh=mesh), tx)
    batch = place_batch(mesh, {k: np.ones((1, rows, seq), np.int32)
                               for k in ("input_ids", "attention_mask", "loss_mask")})
    step = compile_step(StepSpec("sft", cfg, tc.lora, tc.dpo, 8192), tx, schedule, mesh, state, frozen, batch)
    m = step.lower(state, frozen, batch).compile().memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes


@pytest.mark.parametrize("remat, lora", [("none", False), ("full", False), ("none", True)])
def test_the_estimate_is_within_10_percent_of_what_xla_allocates(remat, lora):
    cfg = small(remat)
    real = xla_bytes(cfg, lora, rows=8, seq=256)
    est = estimate(cfg, Workload("sft", 8, 256, LoraConfig(enabled=lora)), MeshConfig(data=1), 1)
    assert abs(est["total"] - real) <= 0.10 * real, (est, real)


def test_weights_are_counted_exactly_and_split_by_the_mesh():
    cfg = PRESETS["llama-3.1-8b"].replace(param_dtype="bfloat16")
    one, total = param_bytes(cfg, {"data": 1, "fsdp": 1, "tensor": 1})
    assert one == total == 2 * cfg.num_params
    shard, _ = param_bytes(cfg, {"data": 1, "fsdp": 8, "tensor": 1})
    assert shard * 8 == total  # every weight has an "embed" axis, which fsdp splits
    both, _ = param_bytes(cfg, {"data": 1, "fsdp": 4, "tensor": 2})
    norms = 2 * cfg.hidden_size * (2 * cfg.num_layers + 1)  # the 1-D scales have no axis tensor splits
    assert both == (total - norms) // 8 + norms // 4


def test_presets_have_the_published_sizes():
    assert round(architecture("models/Llama-3.1-8B-Instruct").num_params / 1e9, 2) == 8.03
    assert round(architecture("Qwen/Qwen2.5-7B-Instruct").num_params / 1e9, 2) == 7.62
    assert round(architecture("llama-3.2-1b").num_params / 1e9, 2) == 1.24


def test_every_scale_config_fits_the_device_it_was_planned_for(capsys):
    for device, pattern in (("h100-80gb", "*8xh100.yaml"), ("v5e", "*v5e64.yaml")):
        files = sorted(glob.glob(f"configs/scale/{pattern}"))
        assert len(files) == 4, pattern
        assert main(["memory", "--config", *files, "--device", device]) == 0
        out = capsys.readouterr().out
        assert out.count("| yes (of") == 4, out


def test_a_config_too_big_for_its_device_says_no(capsys):
    assert main(["memory", "--config", "configs/scale/jsft_llama3_8b_8xh100.yaml", "--device", "v5e",
                 "batch_size=256"]) == 0
    assert "| no (of" in capsys.readouterr().out
