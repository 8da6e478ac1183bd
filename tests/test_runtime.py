"""A command's runtime keys applied to the process: the matmul precision stated, saved and refused when wrong."""

import jax
import pytest

from sj_jax.core.config import from_dict, load_yaml, save_yaml
from sj_jax.core.errors import ConfigError
from sj_jax.core.runtime import apply_runtime
from sj_jax.train.config import TrainConfig


@pytest.fixture
def precision():
    before = jax.config.jax_default_matmul_precision
    yield
    jax.config.update("jax_default_matmul_precision", before)


def test_matmul_precision_is_set_for_the_process_and_default_keeps_jax_own_setting(precision, tmp_path):
    jax.config.update("jax_default_matmul_precision", "highest")
    apply_runtime(from_dict(TrainConfig, {"matmul_precision": "default", "cache_dir": "off"}))
    assert jax.config.jax_default_matmul_precision == "highest"
    cfg = apply_runtime(from_dict(TrainConfig, {"matmul_precision": "high", "cache_dir": "off"}))
    assert jax.config.jax_default_matmul_precision == "high"
    save_yaml(cfg, tmp_path / "config.yaml")  # what a run folder keeps
    assert "matmul_precision: high" in (tmp_path / "config.yaml").read_text()
    assert load_yaml(TrainConfig, tmp_path / "config.yaml").matmul_precision == "high"


def test_a_wrong_precision_is_named():
    with pytest.raises(ConfigError, match="matmul_precision: 'fast' is not one of"):
        from_dict(TrainConfig, {"matmul_precision": "fast"})
