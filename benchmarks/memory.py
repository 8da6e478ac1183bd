"""Peak memory (RSS) of judging long prompts and of a SELF-JUDGE step, on SmolLM2-135M-Instruct, float32, CPU.

    python -m benchmarks.memory [--pairs 64] [--lengths 512,1024,2048] [--cases generative,one_pass,self_judge]
                                [--json out.json]

Each case runs in a fresh process, twice: the first call compiles, then the high-water mark of the
resident set is reset and the second call's peak is the case's (`peak GB`; the first call's is printed
beside it). The cases:
- `generative@L`: `judge_generative` (the default template: 64 evaluation tokens, then the verdict) of
  `pairs` pairs whose judge prompts are L tokens (a long context, two short answers), greedy;
- `one_pass@L`: `judge_pairs` of the same pairs (both orders, the shared-prefix path);
- `self_judge`: one SELF-JUDGE step as `benchmarks.self_judge_step` runs it: 16 task prompts, 2 samples
  of up to 64 tokens, the frozen model judging, a full-weight DPO update.

Beside each peak it prints its bound: the weights, plus the largest batch's KV caches (for the
generative judge, the batch the sampler compiled: rows and cache slots as padded), plus one layer's
activations for that batch (with one query chunk's attention scores). For `self_judge`, the bound is
`sj-jax memory`'s estimate of the step instead (weights, reference, Adam, the update's activations).
The peak also holds what the runtime costs before any model loads (Python, JAX, the tokenizer),
measured in each process and printed as `runtime GB`; `(peak - runtime) / bound` leaves it out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks.common import FILLER_WORDS, jax_matmul_peak

GB = 1e9


def rss_now() -> float:
    """Bytes resident now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> float:
    """Bytes: the resident set's high-water mark since the process started or `reset_peak`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def reset_peak() -> None:
    """Starts the high-water mark again from the current resident set (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def contexts_of_length(model, length: int, pairs: int, render) -> list[str]:
    """`pairs` distinct contexts whose judge prompts (`render(context)` token ids) are `length` tokens or
    just under."""
    def prompt_len(n_words: int, k: int) -> int:
        return len(render(context(n_words, k)))

    def context(n_words: int, k: int) -> str:
        words = [FILLER_WORDS[(i * 7 + k) % len(FILLER_WORDS)] for i in range(n_words)]
        return f"Note {k}: " + " ".join(words)

    lo, hi = 1, length
    while lo < hi:  # the most words whose prompt fits, for the first context; the rest are alike
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if prompt_len(mid, 0) <= length else (lo, mid - 1)
    return [context(lo, k) for k in range(pairs)]


def answers(pairs: int) -> tuple[list[str], list[str]]:
    a = [f"The boats numbered {k + 3}, counted at the bridge." for k in range(pairs)]
    b = [f"There were {k + 5} boats, I think, near the mill." for k in range(pairs)]
    return a, b


def layer_bytes(cfg, rows: int, seq: int) -> int:
    """One layer's activations for `rows` x `seq` tokens (float32): the norms, q/k/v, the attention
    output, the MLP's gate, up and product; and three copies (scores, probabilities, their cast) of
    one query chunk's attention scores (`sj_jax.models.transformer.query_chunk`)."""
    from sj_jax.models.transformer import query_chunk

    e, f, h, k, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    per_query = rows * h * seq * 4
    return rows * seq * 4 * (4 * e + (2 * h + 2 * k) * d + 3 * f) + 3 * query_chunk(seq, per_query) * per_query


def kv_bytes(cfg, positions: int) -> int:
    """A KV cache of `positions` (rows x slots), every layer, float32."""
    return positions * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 4


def twice(work):
    """(the peak RSS of a first call, compiles included; the result of a second call), the high-water
    mark reset in between, so that `peak_rss()` after it is the second (warm) call's own."""
    work()
    first = peak_rss()
    reset_peak()
    return first, work()


def run_case(case: str, pairs: int) -> dict:
    import jax

    import sj_jax
    from sj_jax.core.buckets import bucket

    jax.numpy.zeros(1).block_until_ready()
    runtime = rss_now()
    model = sj_jax.load_model("smollm2-135m-instruct")
    cfg = model.config
    weights = cfg.num_params * 4
    loaded = rss_now()
    t0 = time.perf_counter()
    if case == "self_judge":
        from benchmarks.self_judge_step import SJSide, task_prompts
        from sj_jax.experiments.memory import Workload, estimate
        from sj_jax.models.lora import LoraConfig
        from sj_jax.models.sharding import MeshConfig

        side = SJSide(task_prompts(16), 64)
        first, _ = twice(side.step)
        rec = side.run.last
        shape = rec.batch["input_ids"].shape if rec.batch is not None else (0, 0)
        rows = int(shape[0] * shape[1] if len(shape) == 3 else shape[0])
        seq = int(shape[-1]) if rec.batch is not None else 0
        w = Workload("self_judge", rows, seq, LoraConfig(enabled=False), sample_rows=32, sample_len=128,
                     judge_rows=16, judge_len=512)
        bound = estimate(cfg, w, MeshConfig(), 1)["total"]
        parts = {"dpo_batch": list(shape)}
    else:
        kind, length = case.split("@")
        length = int(length)
        a, b = answers(pairs)
        if kind == "generative":
            from sj_jax.inference import generate
            from sj_jax.judge.generative import judge_generative
            from sj_jax.judge.generative_template import GenerativeTemplate, render_prompt

            tpl = GenerativeTemplate()
            tok = model.tokenizer

            def render(c):
                return tok(render_prompt(tok, tpl, c, a[0], b[0]), add_special_tokens=False)["input_ids"]

            ctx = contexts_of_length(model, length, pairs, render)
            batches = []  # the sampler's compiled batches: (rows, cache slots, slots prefilled once a pair)
            sample = generate.run

            def recorded(*args, **kw):
                out = sample(*args, **kw)
                batches.append((out["batch"], out["slots"], out["prefix_len"]))
                return out

            generate.run = recorded
            first, out = twice(lambda: judge_generative(model, ctx, a, b))
            rows, slots, shared = max(batches, key=lambda x: x[0] * x[1])
            parts = {"verdicts": int((out.labels > 0).sum()), "rows": rows, "slots": slots, "shared_prefix": shared}
            bound = weights + kv_bytes(cfg, rows * slots) + layer_bytes(cfg, rows, slots)
        else:
            from sj_jax.inference.kv_cache import common_prefix_len
            from sj_jax.judge.scoring import judge_pairs, judge_prompts
            from sj_jax.judge.template import DEFAULT_TEMPLATE, as_principles

            plist = as_principles(None, DEFAULT_TEMPLATE)

            def render(c):
                return judge_prompts(model, [c], a[:1], b[:1], DEFAULT_TEMPLATE, plist)[0]

            ctx = contexts_of_length(model, length, pairs, render)
            first, p = twice(lambda: judge_pairs(model, ctx, a, b))
            prompts = judge_prompts(model, ctx, a, b, DEFAULT_TEMPLATE, plist)
            shared = min(common_prefix_len([x, y]) for x, y in zip(prompts[::2], prompts[1::2]))
            groups = 8  # judge_pairs' default batch_size 16 prompts: 8 pairs of orders
            pl = bucket(shared, cfg.max_position_embeddings, fine=True)
            sl = bucket(max(len(x) for x in prompts) - shared, cfg.max_position_embeddings, fine=True)
            # the prefix's cache, and its copy repeated for both orders' rests
            cache = 3 * groups * (pl + sl)
            parts = {"prob_first_mean": float(p.mean()), "groups": groups, "prefix": pl, "rest": sl}
            bound = weights + kv_bytes(cfg, cache) + layer_bytes(cfg, groups, pl)
    warm = peak_rss()
    return {"case": case, "seconds": time.perf_counter() - t0, "first_peak_gb": first / GB, "peak_gb": warm / GB,
            "runtime_gb": runtime / GB, "after_load_gb": loaded / GB, "weights_gb": weights / GB,
            "bound_gb": bound / GB, "peak_over_bound": warm / bound, **parts}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--lengths", default="512,1024,2048")
    ap.add_argument("--cases", default="generative,one_pass,self_judge")
    ap.add_argument("--json", default="")
    ap.add_argument("--case", default="", help=argparse.SUPPRESS)  # one case, in this process
    args = ap.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args.pairs)), flush=True)
        return {}
    print(f"float32 matmul: {jax_matmul_peak():.1f} GFLOP/s; machine memory "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GB:.1f} GB", flush=True)
    cases = []
    for kind in args.cases.split(","):
        cases += [kind] if kind == "self_judge" else [f"{kind}@{n}" for n in args.lengths.split(",")]
    results = []
    print("| case | peak GB (warm) | bound GB | peak / bound | (peak - runtime) / bound | first call's peak GB | "
          "runtime GB | weights GB | s |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for case in cases:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--case", case, "--pairs", str(args.pairs)],
                              capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            r = {"case": case, "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
            print(f"| {case} | failed: {r['error']} |", flush=True)
        else:
            r = json.loads(lines[-1][len("RESULT "):])
            print(f"| {case} | {r['peak_gb']:.2f} | {r['bound_gb']:.2f} | {r['peak_over_bound']:.2f} | "
                  f"{(r['peak_gb'] - r['runtime_gb']) / r['bound_gb']:.2f} | {r['first_peak_gb']:.2f} | "
                  f"{r['runtime_gb']:.2f} | {r['weights_gb']:.2f} | {r['seconds']:.0f} |",
                  flush=True)
        results.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return {"cases": results}


if __name__ == "__main__":
    main()
