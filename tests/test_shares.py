"""Each process tokenises its share of the training file (`sj_jax.data.shares`): simulated here with
one thread per process and a barrier for the all-gather; the real processes are in test_distributed."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sj_jax.core.errors import DataError
from sj_jax.data.batches import collate_pairs, collate_pairs_joint, collate_sft
from sj_jax.data.examples import DataReport, PairExample, SFTExample, cut_pair, cut_sft, shape_of, stand_in
from sj_jax.data.packing import pack
from sj_jax.data.shares import Examples, PackedExamples


def random_sft(rng, n: int) -> list[SFTExample]:
    out = []
    for _ in range(n):
        length = int(rng.integers(2, 90))
        mask = (rng.random(length) < rng.random()).astype(np.int32)
        mask[-1] = 1
        out.append(SFTExample(rng.integers(1, 500, length).astype(np.int32), mask))
    return out


def random_pairs(rng, n: int) -> list[PairExample]:
    return [PairExample(*(rng.integers(1, 500, int(rng.integers(1, hi))).astype(np.int32) for hi in (40, 20, 20)))
            for _ in range(n)]


def assert_same_layout(real: dict, mixed: dict, keep: np.ndarray) -> None:
    """The same keys and shapes; the kept rows (axis 0) equal."""
    assert real.keys() == mixed.keys()
    for k in real:
        assert real[k].shape == mixed[k].shape, k
        np.testing.assert_array_equal(real[k][keep], mixed[k][keep], err_msg=k)


@pytest.mark.parametrize("seed", range(5))
def test_a_batch_of_stand_ins_pads_to_the_buckets_of_the_real_one(seed):
    rng = np.random.default_rng(seed)
    keep = rng.random(8) < 0.5  # the rows this process fills in
    sft, pairs = random_sft(rng, 8), random_pairs(rng, 8)
    mix = [e if k else stand_in(shape_of(e)) for e, k in zip(sft, keep)]
    assert_same_layout(collate_sft(sft, 128, 0), collate_sft(mix, 128, 0), keep)
    for collate in (collate_pairs, collate_pairs_joint):
        mix = [e if k else stand_in(shape_of(e)) for e, k in zip(pairs, keep)]
        assert_same_layout(collate(pairs, 64, 32, 0)[0], collate(mix, 64, 32, 0)[0], keep)
        assert collate(pairs, 64, 32, 0)[1] == collate(mix, 64, 32, 0)[1]
    assert shape_of(None) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="dropped"):
        stand_in((0, 0, 0, 0))


def fake_rows(n: int, bad: set[int] = frozenset()) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(n)
    return [(f"data.jsonl:{i + 1}", {"n": int(rng.integers(2, 120)), "bad": i in bad, "i": i}) for i in range(n)]


def build_counting(calls: list):
    """An SFT build of fake rows: `n` tokens, cut at 64 (some dropped, some truncated), calls logged."""
    def build(row, where, report: DataReport):
        calls.append(row["i"])
        if row["bad"]:
            raise DataError(f"{where}: field 'messages' must be a non-empty list")
        n = row["n"]
        ids = np.arange(n, dtype=np.int32) + row["i"]
        mask = np.zeros(n, np.int32)
        mask[n // 2 if row["i"] % 3 else 1:] = 1  # every third row trains from its second token
        return cut_sft(ids, mask, where, 64, report)
    return build


def as_processes(count: int, make):
    """`make(index, gather)` on `count` threads at once, `gather` an all-gather across them; the
    results (or exceptions) by process index."""
    slots: list = [None] * count
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def gather(x):
        slots[index_of[threading.get_ident()]] = np.asarray(x)
        barrier.wait()
        out = np.stack(slots)
        barrier.wait()
        return out

    index_of = {}

    def run(i):
        index_of[threading.get_ident()] = i
        try:
            results[i] = make(i, gather)
        except Exception as e:  # returned to the test, which checks it
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.parametrize("count", [2, 3])
def test_each_process_tokenises_its_share_and_all_know_every_shape_and_the_whole_report(count):
    rows = fake_rows(50)
    one_calls: list = []
    one = Examples(rows, build_counting(one_calls))
    assert one.tokenised == len(one_calls) == 50
    assert one.report.rows == 50 and one.report.dropped_too_long > 0 and one.report.truncated_context > 0
    calls = [[] for _ in range(count)]
    many = as_processes(count, lambda i, g: Examples(rows, build_counting(calls[i]), index=i, count=count, gather=g))
    for i, ex in enumerate(many):
        assert calls[i] == list(range(i, 50, count))  # its share up front, nothing else
        assert ex.report == one.report and len(ex) == len(one)
        np.testing.assert_array_equal(ex.shapes, one.shapes)
        np.testing.assert_array_equal(ex.lengths(), one.lengths())
    # a row of another process's share: tokenised on first use, once, the same example
    i = next(k for k in range(len(one)) if one.row_of[k] % count != 0)
    before = many[0].tokenised
    for _ in range(2):
        got = many[0][i]
        np.testing.assert_array_equal(got.input_ids, one[i].input_ids)
        np.testing.assert_array_equal(got.loss_mask, one[i].loss_mask)
    assert many[0].tokenised == before + 1
    assert shape_of(many[0].stand_in(i)) == shape_of(one[i])


def test_a_bad_row_raises_its_own_error_on_every_process():
    rows = fake_rows(30, bad={17, 25})
    with pytest.raises(DataError, match=r"data.jsonl:18: field 'messages'"):
        Examples(rows, build_counting([]))
    results = as_processes(3, lambda i, g: Examples(rows, build_counting([]), index=i, count=3, gather=g))
    for r in results:  # row 17 was process 2's; every process names it
        assert isinstance(r, DataError) and "data.jsonl:18: field 'messages'" in str(r), r


def test_packed_rows_from_shapes_match_packing_the_examples():
    rows = fake_rows(60)
    ex = Examples(rows, build_counting([]))
    packed = PackedExamples(ex, 96)
    plain, report = pack([ex[i] for i in range(len(ex))], 96)
    assert packed.report == report and len(packed) == len(plain)
    np.testing.assert_array_equal(packed.lengths(), [len(r.input_ids) for r in plain])
    for i in range(len(plain)):
        for k in ("input_ids", "loss_mask", "segment_ids"):
            np.testing.assert_array_equal(getattr(packed[i], k), getattr(plain[i], k))
    keep = np.arange(8) % 2 == 0
    real = collate_sft([packed[i] for i in range(8)], 96, 0)
    mixed = collate_sft([packed[i] if k else packed.stand_in(i) for i, k in enumerate(keep)], 96, 0)
    assert_same_layout(real, mixed, keep)


def test_pairs_keep_their_truncation_counts_across_processes():
    rng = np.random.default_rng(3)
    pairs = random_pairs(rng, 20)
    rows = [(f"p.jsonl:{i + 1}", {"i": i}) for i in range(20)]

    def build(row, where, report):
        return cut_pair(pairs[row["i"]], 24, 12, report)

    one = Examples(rows, build)
    many = as_processes(4, lambda i, g: Examples(rows, build, index=i, count=4, gather=g))
    assert one.report.truncated_context > 0 and one.report.truncated_response > 0
    for ex in many:
        assert ex.report == one.report
        np.testing.assert_array_equal(ex.shapes, one.shapes)
