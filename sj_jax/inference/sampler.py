"""On-policy generation with a KV cache: a jitted prefill, then one jitted `lax.while_loop` decode.

The cache, the left padding and the unrolled layer stack are `sj_jax.inference.kv_cache`'s (the judge shares
them). Each row draws from its own PRNG key (seed, prompt index, sample index), so a row's sample
does not depend on the batch it shares.

Two options serve the generative judge (`sj_jax.judge.generative`):
- `group`: rows come in runs of `group` samples of one prompt; the prompt is prefilled once and its
  cache (and first-token logits) repeated for the group's rows, so k samples of a judge prompt cost
  one prefill, not k.
- `forced` and `budget`: a row writes freely until it emits a stop token or has written `budget`
  tokens; from there the `forced` tokens are fed (the stop token is dropped), then the row writes
  freely again and ends at its next stop token, or after `after` tokens (0 = no limit). A template's verdict prefix ("Final verdict: [[")
  is thus always reached, and the verdict after it is the model's own.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sj_jax.core.buckets import bucket
from sj_jax.inference.kv_cache import (
    common_prefix_len,
    decode_step,
    extend_shared,
    is_scanned,
    kv_shapes,
    layer_stack,
    left_pad,
    prefill,
)
from sj_jax.inference.sampling import SamplingConfig, sample
from sj_jax.models.config import ModelConfig
from sj_jax.models.sharding import batch_sharding, logical_sharding, param_shardings, to_global, to_host, traced_on
from sj_jax.weights.loader import abstract_params


def padded_prompt_length(length: int, max_new_tokens: int, max_len: int) -> int:
    """The padded prompt length: the smallest bucket >= length that leaves room for the new tokens."""
    if length + max_new_tokens > max_len:
        raise ValueError(
            f"prompt of {length} tokens + max_new_tokens {max_new_tokens} exceeds the cache of {max_len} "
            "positions (the model's max_position_embeddings)"
        )
    return bucket(length, max_len - max_new_tokens)


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """Everything static about one compiled generation: shapes and sampling settings."""

    batch: int
    prompt_len: int
    max_new_tokens: int
    sampling: SamplingConfig
    pad_id: int
    group: int = 1  # consecutive rows that share one prompt (prefilled once)
    forced: tuple[int, ...] = ()  # tokens fed after the free phase (see the module docstring)
    budget: int = 0  # free tokens before `forced` is fed; used only with `forced`
    after: int = 0  # with `forced`: tokens a row may write after the fed ones (0 = up to max_new_tokens)
    prefix_len: int = 0  # > 0: prompts come in runs of `fan` sharing this many first tokens, prefilled once
    fan: int = 1


def _row_keys(keys: jax.Array, step) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)


def _advance(plan: DecodePlan, s: dict, token: jax.Array, logprob: jax.Array, stop_ids: jax.Array, step):
    """The token each row emits at `step` from the one it drew: the forced phase applied. Returns
    (token, logprob, hit a stop that ends the row, wrote its last allowed token, updates to the
    state's phase fields)."""
    is_stop = jnp.isin(token, stop_ids)
    if not plan.forced:
        return token, logprob, is_stop, jnp.zeros_like(is_stop), {}
    forced = jnp.asarray(plan.forced, jnp.int32)
    n = len(plan.forced)
    start = (s["phase"] == 0) & (is_stop | (step >= plan.budget))
    feeding = s["phase"] == 1
    token = jnp.where(feeding, forced[jnp.minimum(s["fpos"], n - 1)], jnp.where(start, forced[0], token))
    fpos = jnp.where(feeding, s["fpos"] + 1, jnp.where(start, 1, s["fpos"]))
    phase = jnp.where((feeding | start) & (fpos >= n), 2, jnp.where(start, 1, s["phase"]))
    logprob = jnp.where(feeding | start, 0.0, logprob)  # fed, not drawn
    free = s["phase"] == 2
    vpos = jnp.where(free, s["vpos"] + 1, s["vpos"])
    last = free & (vpos >= plan.after) if plan.after else jnp.zeros_like(is_stop)
    return token, logprob, free & is_stop, last, {"phase": phase, "fpos": fpos, "vpos": vpos}


def _prefill_and_first(cfg, plan, kv_sharding, params, ids, mask, keys, active, stop_ids):
    layer_params = layer_stack(cfg, params["layers"], once=True)
    logits, cache = prefill(cfg, params, layer_params, ids, mask, plan.prompt_len + plan.max_new_tokens,
                            kv_sharding)
    return _first(plan, layer_params, logits, cache, keys, active, stop_ids)


def _prefill_head(cfg, plan, params, prefix_ids, prefix_mask):
    """The cache of each run's common start alone (`[groups, prefix_len]`)."""
    return prefill(cfg, params, layer_stack(cfg, params["layers"], once=True), prefix_ids, prefix_mask,
                   plan.prefix_len)[1]


def _shared_prefill_and_first(cfg, plan, kv_sharding, params, head, suffix_ids, suffix_mask, keys, active, stop_ids):
    """`_prefill_and_first` of prompts that come in runs of `plan.fan` sharing their first
    `plan.prefix_len` slots, whose cache `head` `_prefill_head` made
    (`sj_jax.inference.kv_cache.extend_shared`)."""
    layer_params = layer_stack(cfg, params["layers"], once=True)
    logits, cache = extend_shared(cfg, params, layer_params, head, suffix_ids, suffix_mask,
                                  plan.prompt_len + plan.max_new_tokens, plan.fan, kv_sharding)
    return _first(plan, layer_params, logits, cache, keys, active, stop_ids)


def _first(plan, layer_params, logits, cache, keys, active, stop_ids):
    """The decode state after the prefill: each prompt's cache repeated for its `group` rows, and
    every row's first token drawn."""
    if plan.group > 1:  # one prefill per prompt, its cache repeated for the prompt's samples
        logits = jnp.repeat(logits, plan.group, axis=0)
        stacked = is_scanned(layer_params)  # k, v [layers, batch, ...]: rows on axis 1

        def repeat(name, x):
            return jnp.repeat(x, plan.group, axis=1 if stacked and name in ("k", "v") else 0)

        cache = {k: (v if k == "index" else jax.tree.map(lambda x, k=k: repeat(k, x), v)) for k, v in cache.items()}
    b, n = plan.batch, plan.max_new_tokens
    start = {k: jnp.zeros((b,), jnp.int32) for k in ("phase", "fpos", "vpos")}
    token, logprob = sample(logits, _row_keys(keys, 0), plan.sampling)
    token, logprob, hit, last, phase = _advance(plan, start, token, logprob, stop_ids, 0)
    done = ~active | hit | last
    return {
        "cache": cache,
        "tokens": jnp.full((b, n), plan.pad_id, jnp.int32).at[:, 0].set(token),
        "logprobs": jnp.zeros((b, n), jnp.float32).at[:, 0].set(logprob),
        "stopped": hit,
        "done": done,
        "last": token,
        "step": jnp.int32(1),
        "count": active.astype(jnp.int32),  # tokens each row has written
        "keys": keys,
        **({**start, **phase} if plan.forced else {}),
    }


def _decode_loop(cfg, plan, params, state, stop_ids, until):
    """Decodes until every row is done, `max_new_tokens` are written, or at most `until` rows are
    still writing (int32 scalar; 0 = to the end), whichever comes first."""
    layer_params = layer_stack(cfg, params["layers"])

    def cond(s):
        return (s["step"] < plan.max_new_tokens) & ~jnp.all(s["done"]) & (jnp.sum(~s["done"]) > until)

    def body(s):
        logits, cache = decode_step(cfg, params, layer_params, s["cache"], s["last"])
        token, logprob = sample(logits, _row_keys(s["keys"], s["step"]), plan.sampling)
        token, logprob, hit, last, phase = _advance(plan, s, token, logprob, stop_ids, s["step"])
        token = jnp.where(s["done"], plan.pad_id, token)
        logprob = jnp.where(s["done"], 0.0, logprob)
        hit = ~s["done"] & hit
        return {
            **s,
            **phase,
            "count": s["count"] + ~s["done"],
            "cache": cache,
            "tokens": jax.lax.dynamic_update_slice(s["tokens"], token[:, None], (0, s["step"])),
            "logprobs": jax.lax.dynamic_update_slice(s["logprobs"], logprob[:, None], (0, s["step"])),
            "stopped": s["stopped"] | hit,
            "done": s["done"] | hit | last,
            "last": token,
            "step": s["step"] + 1,
        }

    return jax.lax.while_loop(cond, body, state)


# A batch whose rows have mostly ended goes on with its unfinished rows only (`_compactor`): once at
# most half of them still write, with at least COMPACT_MIN_STEPS steps left, they move into the next
# smaller batch (a decode program of its own, compiled once per size). Not below COMPACT_MIN_ROWS rows.
COMPACT_MIN_STEPS = 16
COMPACT_MIN_ROWS = 4


def _until(batch: int, multiple: int, compact: bool) -> int:
    """The `until` of a decode loop over `batch` rows: half of them, where a batch of half is allowed."""
    half = batch // 2
    return half if compact and half >= COMPACT_MIN_ROWS and half % multiple == 0 else 0


def _is_kv(path: tuple) -> bool:
    """Whether a decode-state leaf (by its path of keys) is part of the cache's keys or values."""
    return path[:1] == ("cache",) and path[1:2] in (("k",), ("v",))


@functools.lru_cache(maxsize=32)
def _compactor(mesh: Mesh):
    """jitted `(state, rows int32[new]) -> state` of those rows only, each laid out over the mesh's
    batch axes; the cache's slot count is kept."""
    def take(state, rows):
        stacked = not isinstance(state["cache"]["k"], (tuple, list))  # a scanned model's cache

        def one(path, x):
            keys = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
            if x.ndim == 0:
                return x
            kv = _is_kv(keys)
            axis = 1 if kv and stacked else 0  # a scanned model's cache is stacked [layers, batch, ...]
            y = jnp.take(x, rows, axis=axis) if axis else x[rows]
            names = [None] * y.ndim
            names[axis] = "batch"
            if kv:
                names[axis + 1] = "kv_heads"
            return jax.lax.with_sharding_constraint(y, logical_sharding(tuple(names), y.shape, mesh))

        return jax.tree_util.tree_map_with_path(one, state)

    return jax.jit(take)


@functools.lru_cache(maxsize=32)
def _row_keys_of(row_shard: NamedSharding):
    """jitted `(base key data uint32[2], row ids int32[rows]) -> one PRNG key a row`, laid out as the rows are."""
    def keys(base, row_ids):
        return jax.vmap(lambda r: jax.random.fold_in(jax.random.wrap_key_data(base), r))(row_ids)

    return jax.jit(keys, out_shardings=row_shard)


@functools.lru_cache(maxsize=32)
def compiled(cfg: ModelConfig, mesh: Mesh, plan: DecodePlan):
    """The jitted (prefill, decode loop) pair for one plan, with explicit shardings; the loop's state
    (cache included) is donated."""
    p_shard = param_shardings(abstract_params(cfg), mesh)
    prompts = plan.batch // plan.group
    x_shard = batch_sharding(mesh, (prompts, plan.prompt_len))
    row_shard = batch_sharding(mesh, (plan.batch,))
    k_shape, _ = kv_shapes(cfg, prompts, plan.prompt_len + plan.max_new_tokens)
    kv_shard = logical_sharding(("batch", "kv_heads", None, None), k_shape, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    if plan.prefix_len:
        head_shard = batch_sharding(mesh, (prompts // plan.fan, plan.prefix_len))
        rest_shard = batch_sharding(mesh, (prompts, plan.prompt_len - plan.prefix_len))
        # Two programs: the common starts' cache first, then the rows', so that the starts'
        # activations and the rows' whole cache are never held at once.
        head = jax.jit(traced_on(mesh, functools.partial(_prefill_head, cfg, plan)),
                       in_shardings=(p_shard, head_shard, head_shard))
        rest = jax.jit(traced_on(mesh, functools.partial(_shared_prefill_and_first, cfg, plan, kv_shard)),
                       in_shardings=(p_shard, None, rest_shard, rest_shard, row_shard, row_shard, replicated))

        def first(params, prefix_ids, prefix_mask, *rows):
            return rest(params, head(params, prefix_ids, prefix_mask), *rows)
    else:
        first = jax.jit(
            traced_on(mesh, functools.partial(_prefill_and_first, cfg, plan, kv_shard)),
            in_shardings=(p_shard, x_shard, x_shard, row_shard, row_shard, replicated),
        )
    loop = jax.jit(traced_on(mesh, functools.partial(_decode_loop, cfg, plan)), donate_argnums=(1,))
    return first, loop


# A run of prompts shares its prefix only where that saves at least a quarter of the prefill's
# tokens, and the common starts are this long or more: less saves less than the extra program
# costs to compile.
SHARED_PREFIX_MIN = 64


def shared_prefixes(prompts: list[list[int]], fan: int, plen: int) -> tuple[int, int, list[int]] | None:
    """How runs of `fan` prompts (prompts `fan * g ..`) share their prefill, or None where it does
    not pay: (L, S, common), where run g's first `common[g]` tokens (all that its prompts share,
    each keeping one of its own) run once, left-padded to L; and each prompt's rest, left-padded to
    S. L and S are fine buckets; `plen` is the whole prompts' bucket, whose prefill runs
    `fan * plen` tokens a run where this runs L + fan * S."""
    if fan < 2 or len(prompts) % fan:
        return None
    common = [common_prefix_len(prompts[g:g + fan]) for g in range(0, len(prompts), fan)]
    if sum(common) < SHARED_PREFIX_MIN * len(common):
        return None
    size = bucket(max(common), fine=True)
    rest = bucket(max(len(p) - common[i // fan] for i, p in enumerate(prompts)), fine=True)
    return (size, rest, common) if size + fan * rest <= 0.75 * fan * plen else None


def run(cfg: ModelConfig, mesh: Mesh, params: dict, prompts: list[list[int]], *, max_new_tokens: int,
        sampling: SamplingConfig, row_ids: list[int], seed: int, stop_ids: list[int], pad_id: int,
        min_rows: int = 0, group: int = 1, forced: tuple[int, ...] = (), budget: int = 0, after: int = 0,
        compact: bool = True, fan: int = 1) -> dict:
    """Generates for token-id prompts, `group` rows each (row r continues prompt r // group).
    Returns host arrays: `tokens` and `logprobs` `[rows, max_new_tokens]`, `stopped` and the
    number of tokens per row `lengths` (stop included); and `row_steps`, the decode steps run times
    the rows they ran over, with `row_steps_full`, the same without compaction; `prefix_len`, the
    slots each run of `fan` prompts prefilled once (0: none); `batch` and `slots`, the compiled rows
    and cache slots (the KV cache is batch x slots positions). min_rows: compile for
    at least this many rows (the last, smaller batch of a run then reuses the full batches' program
    instead of compiling its own). forced, budget, after: see the module docstring. compact: let the
    unfinished rows go on in a smaller batch (`COMPACT_MIN_STEPS`); the samples are the same. fan:
    prompts come in runs of `fan` that begin alike (a judge pair's two orders); their common first
    tokens are prefilled once a run where that pays (`shared_prefixes`)."""
    rows = len(prompts) * group
    if len(row_ids) != rows:
        raise ValueError(f"row_ids: {len(row_ids)} keys for {len(prompts)} prompts x {group} rows")
    if forced and budget + len(forced) >= max_new_tokens:
        raise ValueError(f"max_new_tokens: {max_new_tokens} leaves no room after the budget {budget} and "
                         f"{len(forced)} forced tokens")
    longest = max(len(p) for p in prompts)
    plen = padded_prompt_length(longest, max_new_tokens, cfg.max_position_embeddings)
    data_size = mesh.shape["data"] * mesh.shape["fsdp"]
    split = shared_prefixes(prompts, fan, plen)
    runs = fan if split else 1
    b_prompts = bucket(max(len(prompts) // runs, -(-min_rows // (group * runs))), minimum=1, multiple=data_size) * runs
    b = b_prompts * group
    prefix = 0
    if split:
        prefix, rest, common = split
        heads = left_pad([prompts[g * fan][:c] for g, c in enumerate(common)], prefix, b_prompts // fan, pad_id)
        ids, mask = left_pad([p[common[i // fan]:] for i, p in enumerate(prompts)], rest, b_prompts, pad_id)
        plen = prefix + rest
    else:
        ids, mask = left_pad(prompts, plen, b_prompts, pad_id)
    plan = DecodePlan(b, plen, max_new_tokens, sampling, pad_id, group, tuple(int(t) for t in forced),
                      int(budget) if forced else 0, int(after) if forced else 0, prefix, runs)
    first, loop = compiled(cfg, mesh, plan)
    # Every input a global array (the same host values on every process; each copies in its own rows).
    x_shard, row_shard = batch_sharding(mesh, ids.shape), batch_sharding(mesh, (b,))
    replicated = NamedSharding(mesh, PartitionSpec())
    base = to_global(np.asarray(jax.random.key_data(jax.random.key(seed))), replicated)
    keys = _row_keys_of(row_shard)(base, to_global(np.asarray(list(row_ids) + [-1] * (b - rows), np.int32), row_shard))
    stops = to_global(np.asarray(sorted(set(stop_ids)) or [-1], np.int32), replicated)
    inputs = (to_global(ids, x_shard), to_global(mask, x_shard), keys, to_global(np.arange(b) < rows, row_shard), stops)
    if prefix:
        head_shard = batch_sharding(mesh, heads[0].shape)
        inputs = tuple(to_global(x, head_shard) for x in heads) + inputs
    state = first(params, *inputs)
    out = {"tokens": np.zeros((rows, max_new_tokens), np.int32),
           "logprobs": np.zeros((rows, max_new_tokens), np.float32),
           "stopped": np.zeros(rows, bool), "lengths": np.zeros(rows, np.int32)}
    where = np.arange(b)  # the original row of each row of the state; past `rows`, fillers
    step0, cur = 1, b
    row_steps = 0
    while True:
        until = _until(cur, data_size, compact)
        state = loop(params, state, stops, np.int32(until))
        done, step = to_host(state["done"]), int(to_host(state["step"]))
        row_steps += cur * (step - step0)
        step0 = step
        real = where < rows
        for name, key in (("tokens", "tokens"), ("logprobs", "logprobs"), ("stopped", "stopped"), ("lengths", "count")):
            out[name][where[real]] = to_host(state[key])[real]  # a done row's values are final
        if done.all() or step >= max_new_tokens:
            break
        active = np.flatnonzero(~done)
        nb = bucket(len(active), minimum=1, multiple=data_size)
        if until == 0 or max_new_tokens - step < COMPACT_MIN_STEPS or nb > cur // 2:
            compact = False  # finish this batch as it is
            continue
        # the unfinished rows, then finished ones as fillers (they stay done and write nothing)
        keep = np.concatenate([active, np.flatnonzero(done)[:nb - len(active)]]).astype(np.int32)
        state = _compactor(mesh)(state, to_global(keep, replicated))
        where, cur = where[keep], nb
        loop = compiled(cfg, mesh, dataclasses.replace(plan, batch=nb, group=1, prefix_len=0, fan=1))[1]
    out["row_steps"], out["row_steps_full"], out["prefix_len"] = row_steps, b * (step0 - 1), prefix
    out["batch"], out["slots"] = b, plen + max_new_tokens
    return out
