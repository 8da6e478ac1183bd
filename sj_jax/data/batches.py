"""Batches with static, bucketed shapes, and a data iterator whose position a checkpoint can hold.

SFT batches are right-padded to a length bucket, their trained tokens gathered into slots. DPO batches lay each pair out as
`[pairs, 2 (chosen, rejected), prompt_bucket + response_bucket]`: the prompt left-padded so it ends
at the same column in every row, the response right-padded after it, so the log-probs of every
response live in the last `response_bucket` positions (the output projection runs there only).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from sj_jax.core.buckets import bucket
from sj_jax.data.examples import PairExample, SFTExample


def collate_sft(examples: Sequence[SFTExample], max_length: int, pad_id: int) -> dict[str, np.ndarray]:
    """int32 `input_ids`, `attention_mask`, `loss_mask` `[batch, T]`, right-padded to a fine `bucket`
    length; and the trained tokens gathered into `K` slots a row (K a power of two, at least 8):
    `source_index` (the position whose hidden state predicts the slot's token, the one before it),
    `target_ids` and `target_mask` (1 for a trained token, 0 for padding), each `[batch, K]`, so the
    output projection runs on trained tokens only: a judgment row trains one verdict token of its
    ~80. A packed example's attention mask holds its segment ids (see `sj_jax.data.packing`)."""
    t = bucket(max(len(e.input_ids) for e in examples), max(max_length, 16), fine=True)
    t = max(t, max(len(e.input_ids) for e in examples))
    b = len(examples)
    k = bucket(max(int(np.sum(e.loss_mask[1:])) for e in examples), t, minimum=8)
    ids = np.full((b, t), pad_id, np.int32)
    att = np.zeros((b, t), np.int32)
    loss = np.zeros((b, t), np.int32)
    src, tgt, tmask = np.zeros((b, k), np.int32), np.full((b, k), pad_id, np.int32), np.zeros((b, k), np.int32)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n], loss[i, :n] = e.input_ids, e.loss_mask
        loss[i, 0] = 0  # position 0 is never a target (nothing predicts it)
        att[i, :n] = 1 if e.segment_ids is None else e.segment_ids
        where = np.flatnonzero(loss[i])
        src[i, :len(where)], tgt[i, :len(where)], tmask[i, :len(where)] = where - 1, ids[i, where], 1
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss, "source_index": src, "target_ids": tgt,
            "target_mask": tmask}


def collate_pairs(pairs: Sequence[PairExample], max_prompt: int, max_response: int,
                  pad_id: int) -> tuple[dict[str, np.ndarray], int]:
    """(`[pairs, 2, P + R]` int32 arrays, R): prompts left-padded to P, responses right-padded to R."""
    p = bucket(max(len(x.prompt_ids) for x in pairs), max_prompt)
    r = bucket(max(max(len(x.chosen_ids), len(x.rejected_ids)) for x in pairs), max_response)
    n = len(pairs)
    ids = np.full((n, 2, p + r), pad_id, np.int32)
    att = np.zeros((n, 2, p + r), np.int32)
    loss = np.zeros((n, 2, p + r), np.int32)
    for i, x in enumerate(pairs):
        lp = len(x.prompt_ids)
        for j, resp in enumerate((x.chosen_ids, x.rejected_ids)):
            ids[i, j, p - lp:p] = x.prompt_ids
            ids[i, j, p:p + len(resp)] = resp
            att[i, j, p - lp:p + len(resp)] = 1
            loss[i, j, p:p + len(resp)] = 1
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss}, r


def collate_pairs_joint(pairs: Sequence[PairExample], max_prompt: int, max_response: int,
                        pad_id: int) -> tuple[dict[str, np.ndarray], int]:
    """(`[pairs, T]` int32 arrays, S): each pair in one row, its prompt once, nothing padded in between.

    A row is the prompt (segment 1), the chosen response (segment 2), the rejected one (segment 3),
    then padding; both responses see the prompt (the model's `shared_prefix`) and continue its
    positions. A pair costs prompt + chosen + rejected tokens, where `collate_pairs` pads it to
    2 (P + R); T comes in fine `bucket` steps, S in powers of two. Keys: input_ids, attention_mask (segment ids),
    positions, and over S response slots (chosen tokens, then rejected ones, then padding):
    source_index (the row position whose hidden state predicts the slot's token: the one before it,
    but the prompt's last for the first rejected token), target_ids and response_mask (1 chosen,
    2 rejected, 0 padding).
    """
    for i, x in enumerate(pairs):
        if len(x.prompt_ids) > max_prompt or max(len(x.chosen_ids), len(x.rejected_ids)) > max_response:
            raise ValueError(f"pair {i}: prompt {len(x.prompt_ids)} / responses {len(x.chosen_ids)}, "
                             f"{len(x.rejected_ids)} tokens exceed max_prompt {max_prompt} / max_response {max_response}")
    t = bucket(max(len(x.prompt_ids) + len(x.chosen_ids) + len(x.rejected_ids) for x in pairs),
               max_prompt + 2 * max_response, fine=True)
    # S in powers of two: every (T, S) is a program of its own, and S only sizes the output projection
    s = bucket(max(len(x.chosen_ids) + len(x.rejected_ids) for x in pairs), 2 * max_response)
    n = len(pairs)
    ids = np.full((n, t), pad_id, np.int32)
    seg, pos = np.zeros((n, t), np.int32), np.zeros((n, t), np.int32)
    src, tgt = np.zeros((n, s), np.int32), np.full((n, s), pad_id, np.int32)
    resp = np.zeros((n, s), np.int32)
    for i, x in enumerate(pairs):
        lp, lc, lr = len(x.prompt_ids), len(x.chosen_ids), len(x.rejected_ids)
        ids[i, :lp + lc + lr] = np.concatenate([x.prompt_ids, x.chosen_ids, x.rejected_ids])
        seg[i, :lp + lc + lr] = [1] * lp + [2] * lc + [3] * lr
        pos[i, :lp + lc + lr] = np.concatenate([np.arange(lp), lp + np.arange(lc), lp + np.arange(lr)])
        src[i, :lc] = lp - 1 + np.arange(lc)
        src[i, lc:lc + lr] = np.concatenate([[lp - 1], lp + lc + np.arange(lr - 1)]) if lr else []
        tgt[i, :lc + lr] = np.concatenate([x.chosen_ids, x.rejected_ids])
        resp[i, :lc + lr] = [1] * lc + [2] * lr
    return {"input_ids": ids, "attention_mask": seg, "positions": pos, "source_index": src, "target_ids": tgt,
            "response_mask": resp}, s


@dataclasses.dataclass
class EpochIterator:
    """Indices of `batch` examples at a time over `n` examples, reshuffled each epoch from `seed`.

    The position (`epoch`, `offset`) is all a checkpoint needs: the order is a pure function of
    (seed, epoch). The last incomplete batch of an epoch is skipped so every step has one shape.
    With `lengths` (tokens per example), each window of `group` batches of the shuffled order is
    sorted by length before it is cut into batches, and those batches are shuffled: a batch then
    holds examples of similar length, so its length bucket wastes little on padding.
    """

    n: int
    batch: int
    seed: int = 0
    shuffle: bool = True
    epoch: int = 0
    offset: int = 0
    lengths: Sequence[int] | None = None
    group: int = 16

    def __post_init__(self):
        if self.batch > self.n:
            raise ValueError(f"batch of {self.batch} examples, but the data has only {self.n}")
        if self.lengths is not None and len(self.lengths) != self.n:
            raise ValueError(f"lengths: {len(self.lengths)} values for {self.n} examples")

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.n)
        if self.lengths is None:
            return order
        lengths = np.asarray(self.lengths)
        window = self.batch * self.group
        out = []
        for start in range(0, self.n, window):
            chunk = order[start:start + window]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches = [chunk[i:i + self.batch] for i in range(0, len(chunk), self.batch)]
            full = [b for b in batches if len(b) == self.batch]
            out += [full[i] for i in rng.permutation(len(full))] + [b for b in batches if len(b) < self.batch]
        return np.concatenate(out)

    def next(self) -> np.ndarray:
        if self.offset + self.batch > self.n:
            self.epoch, self.offset = self.epoch + 1, 0
        idx = self._order(self.epoch)[self.offset:self.offset + self.batch]
        self.offset += self.batch
        return idx

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "n": self.n, "batch": self.batch, "seed": self.seed,
                "group": self.group if self.lengths is not None else 0}

    def restore(self, state: dict) -> None:
        for k in ("n", "batch", "seed"):
            if state.get(k) != getattr(self, k):
                raise ValueError(f"data position: saved {k}={state.get(k)} but this run has {getattr(self, k)} "
                                 "(the data or batch size changed since the checkpoint)")
        group = self.group if self.lengths is not None else 0
        if state.get("group", 0) != group:
            raise ValueError(f"data position: saved with length grouping {state.get('group', 0)} but this run has "
                             f"{group} (data.group_by_length changed since the checkpoint)")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
