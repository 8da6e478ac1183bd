"""Training rows -> token examples: errors name file and line, truncation is counted, layouts are right."""

import json

import numpy as np
import pytest

from sj_jax.core.buckets import bucket
from sj_jax.core.config import load_yaml
from sj_jax.core.errors import DataError
from sj_jax.core.jsonl import read_jsonl
from sj_jax.data.batches import EpochIterator, collate_pairs, collate_sft
from sj_jax.data.examples import DataReport, pair_example, sft_example
from sj_jax.data.shares import Examples, file_rows
from sj_jax.train.config import TrainConfig


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


def test_malformed_lines_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:3: not valid JSON"):
        read_jsonl(p)
    p.write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not UTF-8"):
        read_jsonl(p)
    p.write_text('[1, 2]\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: expected a JSON object"):
        read_jsonl(p)
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_bad_rows_are_errors_that_name_the_line(tok, tmp_path):
    p = tmp_path / "rows.jsonl"
    report = DataReport()
    cases = [({"prompt": "q", "chosen": "", "rejected": "x"}, "field 'chosen' must be a non-empty string"),
             ({"prompt": "q", "chosen": "x"}, "missing field 'rejected'"),
             ({"prompt": 3, "chosen": "x", "rejected": "y"}, "field 'prompt' must be a string or a list")]
    for row, message in cases:
        p.write_text(json.dumps({"prompt": "fine", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(DataError, match=rf"rows.jsonl:2: .*{message}"):
            Examples(file_rows(str(p)), lambda r, w, rep: pair_example(tok, r, w, 64, 64, rep))
    with pytest.raises(DataError, match="empty assistant response"):
        sft_example(tok, {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
                    "f:1", 64, report)
    with pytest.raises(DataError, match=r"judgment.label must be"):
        from sj_jax.data.judgment import judgment_text
        from sj_jax.judge.template import DEFAULT_TEMPLATE

        sft_example(tok, {"judgment": {"context": "c", "response_a": "a", "response_b": "b", "label": "C"}}, "f:1",
                    512, report, judgment=lambda t, r, w: judgment_text(t, DEFAULT_TEMPLATE, r, w))


def test_over_long_examples_are_cut_from_the_left_or_dropped_and_counted(tok):
    report = DataReport()
    long_context = " ".join(["word"] * 300)
    row = {"messages": [{"role": "user", "content": long_context}, {"role": "assistant", "content": "Short."}]}
    ex = sft_example(tok, row, "f:1", 64, report)
    assert len(ex.input_ids) == 64 and tok.decode(ex.input_ids[ex.loss_mask == 1]) == "Short.<|im_end|>"
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": long_context}]}
    assert sft_example(tok, row, "f:2", 64, report) is None
    assert report.truncated_context == 1 and report.dropped_too_long == 1 and report.examples == 1
    pair = pair_example(tok, {"prompt": long_context, "chosen": long_context, "rejected": "No."}, "f:3", 32, 16,
                        report)
    assert len(pair.prompt_ids) == 32 and len(pair.chosen_ids) == 16 and report.truncated_response == 1
    assert tok.decode(pair.rejected_ids) == "No.<|im_end|>"
    # The prompt keeps its end: the generation prompt the response follows.
    assert tok.decode(pair.prompt_ids).endswith("<|im_start|>assistant\n")


def test_pair_layout_puts_responses_in_the_last_columns(tok):
    report = DataReport()
    pairs = [pair_example(tok, {"prompt": p, "chosen": c, "rejected": r}, "f", 64, 64, report)
             for p, c, r in [("Hi", "Hello there, friend.", "Go away."), ("What is 2+2? Think.", "4", "5")]]
    batch, r = collate_pairs(pairs, 64, 64, pad_id=0)
    p = batch["input_ids"].shape[-1] - r
    assert r == 16 and p == bucket(max(len(x.prompt_ids) for x in pairs), 64)
    for i, x in enumerate(pairs):
        for j, resp in enumerate((x.chosen_ids, x.rejected_ids)):
            row = batch["input_ids"][i, j]
            np.testing.assert_array_equal(row[p - len(x.prompt_ids):p], x.prompt_ids)
            np.testing.assert_array_equal(row[batch["loss_mask"][i, j] == 1], resp)
            assert batch["loss_mask"][i, j, :p].sum() == 0
    assert bucket(17, 1024) == 32 and bucket(3, 1024) == 16 and bucket(600, 512) == 600


def test_the_joint_layout_runs_each_prompt_once_and_gives_the_separate_layouts_numbers():
    """One row a pair (prompt, chosen, rejected; both responses see the prompt and continue its
    positions): the same summed log-probs as chosen and rejected in rows of their own, and the
    same DPO loss and gradient, on pairs of unequal lengths."""
    import jax

    import sj_jax
    from sj_jax.data.batches import collate_pairs_joint
    from sj_jax.data.examples import PairExample
    from sj_jax.models.lora import LoraConfig
    from sj_jax.train.steps import StepSpec, loss_and_metrics, pair_logprobs

    cfg = sj_jax.ModelConfig(model_type="llama", vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=256)
    model = sj_jax.init_model(cfg, seed=1)
    rng = np.random.default_rng(0)
    ids = lambda lo, hi: rng.integers(3, 300, int(rng.integers(lo, hi))).astype(np.int32)  # noqa: E731
    pairs = [PairExample(ids(3, 40), ids(1, 30), ids(1, 30)) for _ in range(5)]
    sep, r = collate_pairs(pairs, 64, 32, pad_id=0)
    joint, _ = collate_pairs_joint(pairs, 64, 32, pad_id=0)
    assert joint["input_ids"].shape[-1] < 2 * sep["input_ids"].shape[-1]  # P + 2R against 2 (P + R)
    for i, x in enumerate(pairs):  # each piece in its segment, positions continuing the prompt
        seg, pos = joint["attention_mask"][i], joint["positions"][i]
        for s_id, part in ((1, x.prompt_ids), (2, x.chosen_ids), (3, x.rejected_ids)):
            np.testing.assert_array_equal(joint["input_ids"][i][seg == s_id], part)
            first = 0 if s_id == 1 else len(x.prompt_ids)
            np.testing.assert_array_equal(pos[seg == s_id], first + np.arange(len(part)))
    spec = StepSpec("dpo", cfg, response_len=r)
    logprobs = jax.jit(lambda p, m: pair_logprobs(spec, p, m))
    (a, na), (b, nb) = logprobs(model.params, sep), logprobs(model.params, joint)
    np.testing.assert_array_equal(np.asarray(na), np.asarray(nb))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=2e-5)
    # the DPO gradient into a LoRA adapter (b = 0 would make the loss flat: perturb it)
    lcfg = LoraConfig(enabled=True, rank=2)
    adapter = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape),
                           sj_jax.models.lora.init_lora(lcfg, model.params, jax.random.key(1)))
    spec = StepSpec("dpo", cfg, lora=lcfg, response_len=r)
    grad = jax.jit(jax.grad(lambda p, m: loss_and_metrics(spec, p, model.params, m)[0]))
    ga, gb = grad(adapter, sep), grad(adapter, joint)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_the_trained_token_slots_give_the_full_projections_loss_and_gradient():
    """SFT/JSFT batches gather their trained tokens into K slots a row and project only there: the
    same loss and gradient as the output projection at every position, with judgment-like rows (one
    trained token) beside instruction-like rows (many) and a packed row."""
    import jax

    import sj_jax
    from sj_jax.data.examples import SFTExample
    from sj_jax.objectives.sft import sft_loss

    cfg = sj_jax.ModelConfig(model_type="llama", vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=256)
    params = sj_jax.init_model(cfg, seed=4).params
    rng = np.random.default_rng(5)
    examples = []
    for n, trained in ((70, 1), (40, 25), (90, 1), (33, 12)):
        mask = np.zeros(n, np.int32)
        mask[n - trained:] = 1
        examples.append(SFTExample(rng.integers(3, 300, n).astype(np.int32), mask))
    seg = np.r_[np.ones(30, np.int32), 2 * np.ones(20, np.int32)]
    examples.append(SFTExample(rng.integers(3, 300, 50).astype(np.int32), (np.arange(50) % 7 == 3).astype(np.int32),
                               seg))
    batch = collate_sft(examples, 128, pad_id=0)
    assert batch["input_ids"].shape == (5, 96) and batch["target_ids"].shape == (5, 32)
    assert batch["target_mask"].sum() == sum(int(e.loss_mask[1:].sum()) for e in examples)
    full = {k: batch[k] for k in ("input_ids", "attention_mask", "loss_mask")}
    f = jax.jit(jax.value_and_grad(lambda p, b: sft_loss(cfg, p, b)[0]))
    (la, ga), (lb, gb) = f(params, batch), f(params, full)
    np.testing.assert_allclose(float(la), float(lb), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-7)


def test_iterator_resumes_exactly_and_reshuffles_each_epoch():
    it = EpochIterator(10, 3, seed=4)
    seen = [it.next() for _ in range(5)]
    saved = it.state()
    rest = [it.next() for _ in range(4)]
    again = EpochIterator(10, 3, seed=4)
    again.restore(saved)
    for a, b in zip(rest, [again.next() for _ in range(4)]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.concatenate(seen[:3]), np.concatenate(seen[3:5] + [rest[0]]))
    with pytest.raises(ValueError, match="batch size changed|saved batch"):
        EpochIterator(10, 2, seed=4).restore(saved)


@pytest.mark.parametrize("name", ["sft", "jsft", "dpo"])
def test_shipped_configs_load(name):
    cfg = load_yaml(TrainConfig, f"configs/{name}.yaml")
    assert cfg.data.train_file.endswith(".jsonl")


def test_length_grouping_cuts_padding_keeps_a_permutation_and_resumes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, 300, size=200)
    plain = EpochIterator(200, 8, seed=1)
    grouped = EpochIterator(200, 8, seed=1, lengths=lengths, group=8)

    def waste(it):
        batches = [it.next() for _ in range(it.steps_per_epoch)]
        padded = sum(int(lengths[b].max()) * len(b) for b in batches)  # padding to the longest
        return 1 - lengths[np.concatenate(batches)].sum() / padded, np.concatenate(batches)

    w_plain, _ = waste(plain)
    w_grouped, order = waste(grouped)
    assert sorted(order) == list(range(200)) and w_grouped < w_plain / 3, (w_plain, w_grouped)
    saved = grouped.state()
    rest = [grouped.next() for _ in range(30)]
    again = EpochIterator(200, 8, seed=1, lengths=lengths, group=8)
    again.restore(saved)
    for a, b in zip(rest, [again.next() for _ in range(30)]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="length grouping"):
        EpochIterator(200, 8, seed=1).restore(saved)


def test_padded_batches_score_each_example_as_if_alone(tok):
    """Right-padded SFT rows and left-padded DPO prompts: masks and positions leave every
    sequence's log-probs what they are unpadded, in a batch of one."""
    import jax
    import jax.numpy as jnp
    from conftest import tiny_chat_config

    from sj_jax import init_model
    from sj_jax.objectives import sequence

    # jitted: run eagerly, every call would trace and compile the scanned layers again
    sequence_logprobs = jax.jit(sequence.sequence_logprobs, static_argnums=0, static_argnames=("last", "chunk"))

    cfg = tiny_chat_config(tok)
    params = init_model(cfg, seed=3).params
    report = DataReport()
    rows = [{"prompt": "What is 2 + 2?", "response": "4"},
            {"messages": [{"role": "user", "content": "Name three colors, please."},
                          {"role": "assistant", "content": "Red, green and blue."}]}]
    sft = [sft_example(tok, r, f"f:{i}", 128, report) for i, r in enumerate(rows)]
    batch = collate_sft(sft, 128, pad_id=0)
    got = sequence_logprobs(cfg, params, *(jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "loss_mask")))
    for i, e in enumerate(sft):
        one = sequence_logprobs(cfg, params, jnp.asarray(e.input_ids)[None], jnp.ones((1, len(e.input_ids)), jnp.int32),
                                jnp.asarray(e.loss_mask)[None])
        np.testing.assert_allclose(got[0][i], one[0][0], rtol=1e-5)
        assert got[1][i] == one[1][0]
    pairs = [pair_example(tok, {"prompt": p, "chosen": c, "rejected": r}, "f", 64, 64, report)
             for p, c, r in [("Hi", "Hello there, friend.", "Go away."), ("What is 2+2? Think hard.", "4", "5")]]
    batch, r = collate_pairs(pairs, 64, 64, pad_id=0)
    flat = {k: jnp.asarray(v.reshape(-1, v.shape[-1])) for k, v in batch.items()}
    got = sequence_logprobs(cfg, params, flat["input_ids"], flat["attention_mask"], flat["loss_mask"], last=r)
    for i, x in enumerate(pairs):
        for j, resp in enumerate((x.chosen_ids, x.rejected_ids)):
            ids = np.concatenate([x.prompt_ids, resp])
            mask = np.r_[np.zeros(len(x.prompt_ids), np.int32), np.ones(len(resp), np.int32)]
            one = sequence_logprobs(cfg, params, jnp.asarray(ids)[None], jnp.ones((1, len(ids)), jnp.int32),
                                    jnp.asarray(mask)[None])
            np.testing.assert_allclose(got[0][2 * i + j], one[0][0], rtol=1e-5)
