"""One-pass pairwise judging: p(" A") and p(" B") at the last prompt position, both orders averaged.

For a pair (a, b) the judge prompt is built twice, showing (a, b) and then (b, a). One forward pass
each gives, at the last position, a softmax over the full vocabulary, from which the two verdict
tokens are read. Position debiasing as in SELF-JUDGE:

    s_a = (p(A | a, b) + p(B | b, a)) / 2,   s_b = (p(B | a, b) + p(A | b, a)) / 2,   p = s_a / (s_a + s_b)

so swapping a and b gives 1 - p. Prompts are left-padded into length and batch buckets, so the last
position is always index -1 and repeated calls reuse compiled functions; only the last position's
logits are computed (`hidden_states`, then `logits_from_hidden` on one row per prompt).

The two orders of a pair share their first tokens (system message, context, up to the first
response). By default that prefix runs once into a KV cache and each order's rest runs over it
(`verdict_probs_shared`); the header every pair of a batch begins with (the template's system message
and instructions) runs once more below it, a batch at a time. On SmolLM2, 16 pairs of ~192 tokens
(header 57, each pair's prefix 96): 1.73x faster so on 2 CPU cores than one full forward per prompt
(`verdict_probs`, `share_prefix=False`), and 1.60x with the pairs' prefixes alone;
`python -m benchmarks.judge` measures both.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sj_jax.core.buckets import bucket
from sj_jax.inference import kv_cache
from sj_jax.judge.template import (
    DEFAULT_TEMPLATE,
    JudgeTemplate,
    Principle,
    as_principles,
    check_texts,
    fit_pairs,
    render_prompt,
    verdict_token_ids,
)
from sj_jax.loading.model import Model
from sj_jax.models.config import ModelConfig
from sj_jax.models.sharding import batch_sharding, logical_sharding, param_shardings, to_global, to_host, traced_on
from sj_jax.models.transformer import Transformer
from sj_jax.weights.loader import abstract_params


@dataclasses.dataclass
class Judgments:
    """Everything one `judge_pairs_detailed` call measured.

    probs: float64 `[pairs, principles, 2, 2]`, `probs[i, k, order, v]` = p(verdict v | order) under
    principle k, where order 0 shows (a, b) as (A, B) and order 1 shows (b, a); v 0 is verdict_a
    (" A"), v 1 is verdict_b (" B"). Full-vocabulary probabilities, so p(A) + p(B) <= 1.
    """

    probs: np.ndarray
    principles: tuple[str, ...]
    context_cut: np.ndarray | None = None  # int `[pairs]`: context tokens cut to fit max_prompt_tokens

    def __post_init__(self):
        if self.context_cut is None:
            self.context_cut = np.zeros(len(self.probs), np.int64)

    @property
    def score_first(self) -> np.ndarray:
        """float64 `[pairs, principles]`: (p(A | a,b) + p(B | b,a)) / 2, the debiased score of a."""
        return (self.probs[:, :, 0, 0] + self.probs[:, :, 1, 1]) / 2

    @property
    def score_second(self) -> np.ndarray:
        """float64 `[pairs, principles]`: (p(B | a,b) + p(A | b,a)) / 2, the debiased score of b."""
        return (self.probs[:, :, 0, 1] + self.probs[:, :, 1, 0]) / 2

    @property
    def prob_first_by_principle(self) -> np.ndarray:
        """float64 `[pairs, principles]`: s_a / (s_a + s_b), the probability that a is better."""
        sa, sb = self.score_first, self.score_second
        return sa / (sa + sb)

    @property
    def prob_first(self) -> np.ndarray:
        """float64 `[pairs]`: the verdict over principles as a probability (see `majority_probability`)."""
        return majority_probability(self.prob_first_by_principle)

    @property
    def swap_consistent(self) -> np.ndarray:
        """bool `[pairs, principles]`: the two orders, read alone, name the same response as better."""
        first_in_order0 = self.probs[:, :, 0, 0] > self.probs[:, :, 0, 1]
        first_in_order1 = self.probs[:, :, 1, 1] > self.probs[:, :, 1, 0]
        return first_in_order0 == first_in_order1


def majority_probability(prob_first: np.ndarray) -> np.ndarray:
    """Combines per-principle probabilities `[pairs, principles]` into one `[pairs]` by majority vote.

    Each principle votes for the first response when its probability is above 1/2, for the second
    when below (exactly 1/2 abstains). The result is the mean probability of the principles on the
    winning side, so it is above 1/2 exactly when the majority prefers the first response, and it
    still says how sure that majority is. When the votes tie, the tie is broken by the mean
    probability over all principles, which is returned. Swapping the responses maps p to 1 - p.
    With one principle this is that principle's probability.
    """
    p = np.asarray(prob_first, np.float64)
    first, second = p > 0.5, p < 0.5
    n_first, n_second = first.sum(axis=1), second.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_first = np.where(first, p, 0).sum(axis=1) / n_first
        mean_second = np.where(second, p, 0).sum(axis=1) / n_second
    return np.where(n_first > n_second, mean_first,
                    np.where(n_second > n_first, mean_second, p.mean(axis=1)))


@functools.lru_cache(maxsize=64)
def compiled_verdict_logprobs(cfg: ModelConfig, mesh: Mesh, shape: tuple[int, int]):
    """(jitted `f(params, ids, mask, verdict_ids) -> float32 [batch, 2]`, input sharding), cached.

    ids, mask: int32 `[batch, seq]`, left-padded so the last real token is at -1; verdict_ids: int32
    `[2]`. The output is the log-softmax over the full vocabulary at the last position, read at the
    two verdict ids.
    """
    module = Transformer(cfg)
    x_shard = batch_sharding(mesh, shape)
    replicated = NamedSharding(mesh, PartitionSpec())

    def f(params, ids, mask, verdict_ids):
        h = module.apply({"params": params}, ids, mask, method=Transformer.hidden_states)
        logits = module.apply({"params": params}, h[:, -1], method=Transformer.logits_from_hidden)
        return jax.nn.log_softmax(logits, axis=-1)[:, verdict_ids]

    fn = jax.jit(traced_on(mesh, f), in_shardings=(param_shardings(abstract_params(cfg), mesh), x_shard, x_shard,
                                                   replicated),
                 out_shardings=batch_sharding(mesh, (shape[0], 2)))
    return fn, x_shard


def verdict_probs(model: Model, prompts: Sequence[Sequence[int]], verdict_ids: tuple[int, int],
                  batch_size: int = 16, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """float64 `[len(prompts), 2]`: p(verdict_a), p(verdict_b) after each token-id prompt.

    Prompts are sorted by length and run `batch_size` at a time, each batch left-padded to its
    length bucket and a power-of-two number of rows; results come back in the input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    cfg, mesh = model.config, model.mesh
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    multiple = mesh.shape["data"] * mesh.shape["fsdp"]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    vids = to_global(np.asarray(verdict_ids, np.int32), NamedSharding(mesh, PartitionSpec()))
    pending = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        t = bucket(max(len(prompts[i]) for i in rows), cfg.max_position_embeddings, fine=True)
        b = bucket(len(rows), minimum=1, multiple=multiple)
        ids, mask = kv_cache.left_pad([prompts[i] for i in rows], t, b, pad)
        fn, x_shard = compiled_verdict_logprobs(cfg, mesh, (b, t))
        # Dispatch every batch before reading any back, so host work overlaps device work.
        pending.append((rows, fn(model.params, to_global(ids, x_shard), to_global(mask, x_shard), vids)))
    out = np.empty((len(prompts), 2), np.float64)
    for rows, logp in pending:
        out[rows] = np.exp(to_host(logp).astype(np.float64)[:len(rows)])
        if progress is not None:
            progress(len(rows))
    return out


def _forward_shared(cfg, kv_shardings, params, header_ids, header_mask, prefix_ids, prefix_mask, suffix_ids,
                    suffix_mask, verdict_ids):
    """The batch's common header `[1, H]` once into a KV cache (when H > 0), each pair's prefix
    `[groups, P]` once over it, then both orders' suffixes `[2 * groups, S]` over that (rows 2g and
    2g + 1 continue prefix g). Every part is left-padded; returns float32 `[2 * groups, 2]`."""
    # Scanned (one layer compiled, a stacked cache), whatever the depth: nothing outlives this program,
    # and it runs the stack two or three times. SmolLM2, 8 pairs, measured before the header level:
    # the first call (cache off) 3.2 s, against 8.9 s unrolled with each layer sliced when it runs;
    # one-pass 512's peak 1.62 GB against 2.02 (0.34 of them the runtime's); warm calls the same (1.8 s).
    layers = params["layers"]
    g, h, p, s = prefix_ids.shape[0], header_ids.shape[1], prefix_ids.shape[1], suffix_ids.shape[1]
    if h:
        _, head = kv_cache.prefill(cfg, params, layers, header_ids, header_mask, h)
        _, head = kv_cache.extend_shared(cfg, params, layers, head, prefix_ids, prefix_mask, h + p, g, kv_shardings[0])
    else:
        _, head = kv_cache.prefill(cfg, params, layers, prefix_ids, prefix_mask, p)
    logits, _ = kv_cache.extend_shared(cfg, params, layers, head, suffix_ids, suffix_mask, h + p + s, 2,
                                       kv_shardings[1])
    return jax.nn.log_softmax(logits, axis=-1)[:, verdict_ids]


@functools.lru_cache(maxsize=64)
def compiled_shared_verdict_logprobs(cfg: ModelConfig, mesh: Mesh, shape: tuple[int, int, int, int]):
    """(jitted `f(params, header_ids, header_mask, prefix_ids, prefix_mask, suffix_ids, suffix_mask,
    verdict_ids)`, header sharding, prefix sharding, suffix sharding) for `shape = (groups,
    header_len, prefix_len, suffix_len)` (header_len 0: no header), cached."""
    g, h, p, s = shape
    kv_shard = tuple(logical_sharding(("batch", "kv_heads", None, None), kv_cache.kv_shapes(cfg, rows, slots)[0], mesh)
                     for rows, slots in ((g, h + p), (2 * g, h + p + s)))
    head_shard = batch_sharding(mesh, (1, h))
    pre_shard, suf_shard = batch_sharding(mesh, (g, p)), batch_sharding(mesh, (2 * g, s))
    fn = jax.jit(
        traced_on(mesh, functools.partial(_forward_shared, cfg, kv_shard)),
        in_shardings=(param_shardings(abstract_params(cfg), mesh), head_shard, head_shard, pre_shard, pre_shard,
                      suf_shard, suf_shard, NamedSharding(mesh, PartitionSpec())),
        out_shardings=batch_sharding(mesh, (2 * g, 2)),
    )
    return fn, head_shard, pre_shard, suf_shard


# A header shorter than this is left in each pair's prefix: its own cache level would cost more
# than it saves.
MIN_HEADER_TOKENS = 16


def verdict_probs_shared(model: Model, prompts: Sequence[Sequence[int]], verdict_ids: tuple[int, int],
                         batch_size: int = 16, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """As `verdict_probs`, for prompts that come in twos (rows 2g and 2g + 1: a pair's two orders):
    the tokens both share from the start are run once, and each order's rest over their KV cache.
    Within a batch, the tokens every pair starts with (the template's system message and
    instructions: a header) run once too, and each pair's prefix over them.

    `batch_size` counts prompts, as in `verdict_probs`: batch_size // 2 pairs of orders a forward.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    if len(prompts) % 2:
        raise ValueError(f"prompts: expected the two orders of each pair, got an odd count {len(prompts)}")
    cfg, mesh = model.config, model.mesh
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    multiple = mesh.shape["data"] * mesh.shape["fsdp"]
    limit = cfg.max_position_embeddings
    groups = len(prompts) // 2
    shared = [kv_cache.common_prefix_len(prompts[2 * g:2 * g + 2]) for g in range(groups)]
    rest = [max(len(prompts[2 * g]), len(prompts[2 * g + 1])) - shared[g] for g in range(groups)]
    order = sorted(range(groups), key=lambda g: (shared[g] + rest[g], shared[g]))
    step = max(1, batch_size // 2)
    vids = to_global(np.asarray(verdict_ids, np.int32), NamedSharding(mesh, PartitionSpec()))
    pending = []
    for start in range(0, groups, step):
        chunk = order[start:start + step]
        h = kv_cache.common_prefix_len([prompts[2 * g][:shared[g]] for g in chunk]) if len(chunk) > 1 else 0
        h = h if h >= MIN_HEADER_TOKENS else 0
        hl = bucket(h, limit, fine=True) if h else 0
        pl = bucket(max(shared[g] - h for g in chunk), limit, fine=True)
        sl = bucket(max(rest[g] for g in chunk), limit, fine=True)
        b = bucket(len(chunk), minimum=1, multiple=multiple)
        head_ids, head_mask = kv_cache.left_pad([prompts[2 * chunk[0]][:h]], hl, 1, pad)
        pre_ids, pre_mask = kv_cache.left_pad([prompts[2 * g][h:shared[g]] for g in chunk], pl, b, pad)
        suf_ids, suf_mask = kv_cache.left_pad(
            [prompts[2 * g + o][shared[g]:] for g in chunk for o in range(2)], sl, 2 * b, pad)
        fn, head_shard, pre_shard, suf_shard = compiled_shared_verdict_logprobs(cfg, mesh, (b, hl, pl, sl))
        pending.append((chunk, fn(model.params, to_global(head_ids, head_shard), to_global(head_mask, head_shard),
                                  to_global(pre_ids, pre_shard), to_global(pre_mask, pre_shard),
                                  to_global(suf_ids, suf_shard), to_global(suf_mask, suf_shard), vids)))
    out = np.empty((groups, 2, 2), np.float64)
    for chunk, logp in pending:
        out[chunk] = np.exp(to_host(logp).astype(np.float64)[:2 * len(chunk)]).reshape(len(chunk), 2, 2)
        if progress is not None:
            progress(2 * len(chunk))
    return out.reshape(len(prompts), 2)


def judge_prompts(model: Model, contexts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str],
                  template: JudgeTemplate, principles: tuple[Principle, ...], max_prompt_tokens: int = 0,
                  truncate: bool = False) -> list[list[int]]:
    """Token ids of every judge prompt, ordered [pair, principle, order] (order 0 shows (a, b))."""
    return fitted_judge_prompts(model, contexts, responses_a, responses_b, template, principles, max_prompt_tokens,
                                truncate)[0]


def fitted_judge_prompts(model: Model, contexts: Sequence[str], responses_a: Sequence[str],
                         responses_b: Sequence[str], template: JudgeTemplate, principles: tuple[Principle, ...],
                         max_prompt_tokens: int = 0, truncate: bool = False) -> tuple[list[list[int]], np.ndarray]:
    """(`judge_prompts`, int `[pairs]` context tokens cut): prompts at most `max_prompt_tokens` long
    (0 = the model's positions), over-long ones an error or, with `truncate`, their contexts cut
    (`fit_context`)."""
    tok = model.tokenizer
    limit = model.config.max_position_embeddings
    if max_prompt_tokens > limit:
        raise ValueError(f"max_prompt_tokens: {max_prompt_tokens} is more than the model's max_position_embeddings "
                         f"{limit}")
    name = "max_prompt_tokens" if max_prompt_tokens else "the model's max_position_embeddings"

    def render(c: str, a: str, b: str) -> list[str]:
        return [render_prompt(tok, template, c, *resp, principle=p) for p in principles for resp in ((a, b), (b, a))]

    out, cut = fit_pairs(tok, render, contexts, responses_a, responses_b, max_prompt_tokens or limit, truncate, name)
    return out, np.asarray(cut, np.int64)


def judge_pairs_detailed(model: Model, contexts: Sequence[str], responses_a: Sequence[str],
                         responses_b: Sequence[str], *, template: JudgeTemplate | None = None,
                         principles: Sequence[Any] | None = None, batch_size: int = 16,
                         share_prefix: bool = True, progress: Callable[[int], None] | None = None,
                         max_prompt_tokens: int = 0, truncate: bool = False) -> Judgments:
    """Judges each (context, a, b) in both orders under each principle; returns every probability.

    principles: `Principle`s or (name, system message) pairs, each asked with its own system
    message; None asks once with the template's system message. batch_size: prompts per forward
    pass (each pair makes 2 x principles prompts). share_prefix: run the tokens both orders share
    (system, context, up to the first response) once, through a KV cache; same numbers, less work.
    progress: called with the number of prompts scored as each batch comes back.
    max_prompt_tokens: the longest judge prompt (0 = the model's positions); a longer one is an error,
    or with `truncate` its context loses its first tokens until it fits (`context_cut` counts them).
    """
    template = DEFAULT_TEMPLATE if template is None else template
    if model.tokenizer is None:
        raise ValueError("model: judging needs a model loaded with a tokenizer (its chat template renders the prompt)")
    n = check_texts("contexts", contexts, None)
    check_texts("responses_a", responses_a, n)
    check_texts("responses_b", responses_b, n)
    plist = as_principles(principles, template)
    # Fails loudly, before any forward pass, if a verdict is not one token in place.
    verdict_ids = verdict_token_ids(model.tokenizer, template)
    prompts, cut = fitted_judge_prompts(model, contexts, responses_a, responses_b, template, plist, max_prompt_tokens,
                                        truncate)
    if not prompts:
        return Judgments(np.zeros((0, len(plist), 2, 2)), tuple(p.name for p in plist))
    run = verdict_probs_shared if share_prefix else verdict_probs
    probs = run(model, prompts, verdict_ids, batch_size, progress)
    return Judgments(probs.reshape(n, len(plist), 2, 2), tuple(p.name for p in plist), cut)


def judge_pairs(model: Model, contexts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str], *,
                template: JudgeTemplate | None = None, principles: Sequence[Any] | None = None,
                batch_size: int = 16, share_prefix: bool = True,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """float64 `[pairs]`: the probability that responses_a[i] is better than responses_b[i].

    Both orders averaged (swapping a and b gives 1 - p); with principles, a majority vote whose
    result is the mean probability of the winning side, or of all principles when votes tie
    (`majority_probability`). p > 0.5 prefers a, p < 0.5 prefers b, 0.5 is no preference.
    """
    return judge_pairs_detailed(model, contexts, responses_a, responses_b, template=template,
                                principles=principles, batch_size=batch_size, share_prefix=share_prefix,
                                progress=progress).prob_first
