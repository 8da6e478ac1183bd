"""Run as a subprocess by test_sharding.py: the forward on a fake 8-device CPU mesh vs one device.

Usage: python tests/mesh_check.py tiny [smollm2]. One process checks every model named (one start of
8 devices). Prints one JSON line: per model, per mesh, the relative error against the single-device
logits and the partition specs the parameters actually got.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sj_jax  # noqa: E402
from sj_jax import MeshConfig, ModelConfig  # noqa: E402

MESHES = {"data2_tensor4": MeshConfig(data=2, fsdp=1, tensor=4), "fsdp8": MeshConfig(data=1, fsdp=8, tensor=1)}
WATCHED = {
    "embedding": ("embed", "embedding"),
    "q": ("layers", "attn", "q", "kernel"),
    "k": ("layers", "attn", "k", "kernel"),
    "up": ("layers", "mlp", "up", "kernel"),
    "down": ("layers", "mlp", "down", "kernel"),
}


def _spec(params, path):
    node = params
    for p in path:
        node = node[p]
    return [list(s) if isinstance(s, tuple) else s for s in node.sharding.spec]


def forward_greedy(model, prompts: list[list[int]], got: list[list[list[int]]]) -> list[list[list[int]]]:
    """The greedy tokens the forward of `model` gives, fed the prompts and the tokens of `got`
    (one sample per prompt): at each new position the argmax of the logits before it."""
    rows = [p + g[0][:-1] for p, g in zip(prompts, got)]
    t = max(len(r) for r in rows)
    ids = np.zeros((len(rows), t), np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    logits = np.asarray(sj_jax.logits(model, ids, mask))
    return [[logits[i, len(p) - 1:len(p) - 1 + len(g[0])].argmax(-1).tolist()] for i, (p, g) in
            enumerate(zip(prompts, got))]


def main(which: str) -> dict:
    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    if which == "tiny":
        # 8 query / 4 kv heads shard over tensor=4; 6 heads would not (see test below), vocab 256.
        cfg = ModelConfig(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=2,
                          num_heads=8, num_kv_heads=4, head_dim=8, tie_word_embeddings=False)
        folder = tempfile.mkdtemp()
        sj_jax.save_hf(sj_jax.init_model(cfg, seed=3), folder)
        load = lambda mesh: sj_jax.load_model(folder, mesh=mesh, tokenizer=None)  # noqa: E731
        ids = rng.integers(0, cfg.vocab_size, size=(8, 24)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[1, 17:] = 0
        mask[3, 5:] = 0
    else:
        load = lambda mesh: sj_jax.load_model("smollm2-135m-instruct", mesh=mesh)  # noqa: E731
        from sj_jax.weights.registry import resolve
        from sj_jax.weights.tokenizer import load_tokenizer

        tok = load_tokenizer(resolve("smollm2-135m-instruct"))
        texts = ["The capital of France is Paris, and the capital of Germany is",
                 "def add(a, b):\n    return", "Water boils at", "Once upon a time, in a small village,"]
        enc = tok(texts, padding=True, return_tensors="np")
        ids, mask = enc["input_ids"], enc["attention_mask"]
    single = load(None)
    ref = np.asarray(sj_jax.logits(single, ids, mask))
    prompts = [row[m.astype(bool)].tolist() for row, m in zip(ids, mask)]
    gen_kw = dict(max_new_tokens=8, stop=[], chat=False)
    # Sampling on meshes is checked on the tiny model against the single-device sampler. SmolLM2's
    # greedy tokens are checked against the single-device forward instead (each token the argmax
    # after the prompt and the tokens before it): a single-device sampler of its 30 unrolled layers
    # would be one more 10 s compile.
    sampled = which == "tiny"
    if sampled:
        ref_tokens = sj_jax.generate(single, prompts, temperature=0.0, **gen_kw).token_ids
        expected_greedy = lambda got: ref_tokens  # noqa: E731
        ref_sampled = sj_jax.generate(single, prompts, temperature=1.0, top_p=0.9, seed=5, **gen_kw)
        ref_init = sj_jax.init_model(cfg, seed=3).params
    else:
        expected_greedy = lambda got: forward_greedy(single, prompts, got)  # noqa: E731
    valid = mask.astype(bool)
    out = {"devices": len(jax.devices())}
    for name, mcfg in MESHES.items():
        model = load(mcfg)
        got = sj_jax.logits(model, ids, mask)
        diff = np.abs(np.asarray(got) - ref)[valid].max() / np.abs(ref[valid]).max()
        greedy = sj_jax.generate(model, prompts, temperature=0.0, **gen_kw).token_ids
        out[name] = {
            "rel_err": float(diff),
            "n_devices": len(model.mesh.devices.flat),
            "logits_spec": [list(s) if isinstance(s, tuple) else s for s in got.sharding.spec],
            "specs": {k: _spec(model.params, p) for k, p in WATCHED.items()},
            "shards_per_param": len(model.params["layers"]["mlp"]["up"]["kernel"].addressable_shards),
            "greedy_equal": greedy == expected_greedy(greedy),
            # A random init drawn on the mesh is the single-device one (tiny model only).
            "init_equal": sampled and all(np.array_equal(a, b) for a, b in zip(
                jax.tree.leaves(sj_jax.init_model(cfg, seed=3, mesh=mcfg).params), jax.tree.leaves(ref_init))),
            "sampled_equal": sampled and sj_jax.generate(model, prompts, temperature=1.0, top_p=0.9, seed=5,
                                                         **gen_kw).token_ids == ref_sampled.token_ids,
        }
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps({which: main(which) for which in sys.argv[1:]}))
