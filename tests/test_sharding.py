"""The forward sharded over a fake 8-device CPU mesh equals the single-device forward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import smollm2_gguf_path

from sj_jax.models.sharding import MeshConfig, logical_to_spec, make_mesh


@pytest.fixture(scope="module")
def mesh_checks(request) -> dict:
    """`mesh_check.py`'s results, per model: one subprocess of 8 devices for the tiny model and, where
    this session runs its test, SmolLM2 (both tests share this file's worker: `conftest._group`)."""
    wanted = ["tiny"]
    if smollm2_gguf_path() is not None and any(
            item.name == "test_smollm2_on_8_device_meshes_equals_single_device" for item in request.session.items):
        wanted.append("smollm2")
    script = Path(__file__).with_name("mesh_check.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.run([sys.executable, str(script), *wanted], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_tiny_model_on_8_device_meshes_equals_single_device(mesh_checks):
    r = mesh_checks["tiny"]
    assert r["devices"] == 8
    tp, fsdp = r["data2_tensor4"], r["fsdp8"]
    for res in (tp, fsdp):
        assert res["n_devices"] == 8
        assert res["rel_err"] < 1e-5, res
    # The layouts are real: heads, FFN and vocab over tensor; the embed axis over fsdp.
    assert tp["specs"]["q"] == [None, None, "tensor", None]
    assert tp["specs"]["k"] == [None, None, "tensor", None]
    assert tp["specs"]["up"] == [None, None, "tensor"]
    assert tp["specs"]["embedding"] == ["tensor", None]
    assert tp["logits_spec"] == ["data", None, "tensor"]
    assert fsdp["specs"]["up"] == [None, "fsdp", None]
    assert fsdp["specs"]["down"] == [None, None, "fsdp"]
    assert fsdp["logits_spec"] == ["fsdp", None, None]
    assert tp["shards_per_param"] == fsdp["shards_per_param"] == 8
    # The sampler, its batch split over the data axes, gives the single-device samples.
    assert tp["greedy_equal"] and fsdp["greedy_equal"]
    assert tp["sampled_equal"] and fsdp["sampled_equal"]
    assert tp["init_equal"] and fsdp["init_equal"]


@pytest.mark.slow
def test_smollm2_on_8_device_meshes_equals_single_device(smollm2_path, mesh_checks):
    r = mesh_checks["smollm2"]
    for name in ("data2_tensor4", "fsdp8"):
        assert r[name]["rel_err"] < 1e-5, r[name]
        assert r[name]["greedy_equal"], name
    # 9 query heads do not split over tensor=4: they stay whole, the FFN still splits.
    assert r["data2_tensor4"]["specs"]["q"] == [None, None, None, None]
    assert r["data2_tensor4"]["specs"]["up"] == [None, None, "tensor"]
    assert r["fsdp8"]["specs"]["embedding"] == [None, "fsdp"]


def test_logical_rules_drop_axes_that_do_not_divide():
    import jax

    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    # On one device every axis is size 1, so everything is replicated.
    assert tuple(logical_to_spec(("batch", "embed"), (8, 64), mesh)) == (None, None)


def test_unknown_logical_axis_is_an_error():
    import jax

    from sj_jax.core.errors import ConfigError

    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    with pytest.raises(ConfigError, match="logical axis 'experts' has no rule"):
        logical_to_spec(("experts",), (4,), mesh)
