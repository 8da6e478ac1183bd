"""Generative judging speed on SmolLM2-135M-Instruct, float32, CPU: sj_jax vs PyTorch `generate`.

    python -m benchmarks.generative_judge [--pairs 8] [--samples 4] [--rounds 3] [--context-words 0]

Work: `pairs` task-suite pairs, both orders, `samples` judgments an order (T 0.8, top-p 0.95), each
exactly `NEW` new tokens (no stop token, so every variant does the same work); `--context-words`
puts that many words of a note before each pair's task (a long conversation to judge). Each side
runs in its own process, timed in alternation (`benchmarks.common`): sj_jax as `judge_generative`
runs it (each pair's common start, up to the first response, prefilled once for both orders, and
each prompt's rest once for its samples: `judge`), the same without the common start
(`unshared`), one prefill per row in the same single batch (`per_row`), and PyTorch `generate`
with `num_return_sequences=samples` over the same left-padded prompts. Printed: the machine first,
judgments/s of each, and the ratios.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sj_jax  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks.common import FILLER_WORDS  # noqa: E402

NEW = 32


def judge_prompts(tokenizer, pairs: int, context_words: int = 0) -> list[list[int]]:
    """Token ids of the generative judge's prompts for `pairs` task-suite pairs, both orders (prompt
    2i shows pair i's chosen response first), each task after `context_words` words of a note."""
    from sj_jax.judge.generative import GenerativeTemplate, render_prompt
    from sj_jax.tasks.suite import TaskSuiteConfig, build_split, split_pairs

    split = build_split(TaskSuiteConfig(test=4), "test")
    rows = split_pairs(split, ("format_broken", "truncated"), 1, 0, "test")[:pairs]
    tpl = GenerativeTemplate()
    note = " ".join(FILLER_WORDS[(i * 7) % len(FILLER_WORDS)] for i in range(context_words))
    lead = f"Note: {note}\n\n" if note else ""
    texts = [render_prompt(tokenizer, tpl, lead + r["prompt"], *resp) for r in rows
             for resp in ((r["chosen"], r["rejected"]), (r["rejected"], r["chosen"]))]
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def build_sj_jax(prompts: list[list[int]], k: int):
    """sj_jax's side (own process): `judge` (the common start once), `unshared` and `per_row`."""
    from sj_jax.inference.sampler import padded_prompt_length, run, shared_prefixes
    from sj_jax.inference.sampling import SamplingConfig
    from sj_jax.weights.registry import DEFAULT_MODEL

    model = sj_jax.load_model(DEFAULT_MODEL, tokenizer=None)
    rows = len(prompts) * k
    kw = dict(max_new_tokens=NEW, temperature=0.8, top_p=0.95, num_samples=k, stop=[], seed=0)

    def judge():  # as judge_generative: each pair's common start once, each prompt's rest once
        out = sj_jax.generate(model, prompts, batch_size=rows, fan=2, **kw)
        assert all(len(t) == NEW for row in out.token_ids for t in row)

    def unshared():  # batch_size a multiple of k: one prefill per prompt
        out = sj_jax.generate(model, prompts, batch_size=rows, **kw)
        assert all(len(t) == NEW for row in out.token_ids for t in row)

    def per_row():  # the same one batch, every row prefilled on its own (group 1)
        out = run(model.config, model.mesh, model.params, [p for p in prompts for _ in range(k)], max_new_tokens=NEW,
                  sampling=SamplingConfig(temperature=0.8, top_p=0.95), row_ids=list(range(rows)), seed=0,
                  stop_ids=[], pad_id=2)
        assert out["tokens"].shape == (rows, NEW)

    plen = padded_prompt_length(max(len(p) for p in prompts), NEW, model.config.max_position_embeddings)
    return {"shared_prefix_slots": (shared_prefixes(prompts, 2, plen) or (0,))[0]}, {
        "judge": judge, "unshared": unshared, "per_row": per_row}


def build_torch(prompts: list[list[int]], k: int, threads: int):
    """PyTorch's side (own process): `generate` with `num_return_sequences=k` over left-padded prompts."""
    import torch

    tm = common.load_torch_default(threads)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[2] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def theirs():
        with torch.inference_mode():
            out = tm.generate(ids, attention_mask=mask, do_sample=True, temperature=0.8, top_p=0.95, top_k=0,
                              max_new_tokens=NEW, min_new_tokens=NEW, num_return_sequences=k, pad_token_id=2)
        assert out.shape == (len(prompts) * k, width + NEW)

    return {"threads": torch.get_num_threads()}, {"generate": theirs}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--context-words", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch's intra-op threads")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    m = common.machine()
    common.print_machine(m)
    prompts = judge_prompts(common.load_default_tokenizer(), args.pairs, args.context_words)
    k, rows, width = args.samples, len(prompts) * args.samples, max(len(p) for p in prompts)
    calls = {"judge": ("sj_jax", "judge"), "unshared": ("sj_jax", "unshared"), "per_row": ("sj_jax", "per_row"),
             "torch": ("torch", "generate")}
    with common.Sides({"sj_jax": (build_sj_jax, (prompts, k)),
                       "torch": (build_torch, (prompts, k, args.threads))}) as sides:
        for side, name in calls.values():
            sides.call(side, name)  # compile and warm up
        samples, _ = sides.alternate(calls, args.rounds)
        slots = sides.info["sj_jax"]["shared_prefix_slots"]
    common.quiet_check(m)
    st = {name: common.stats(v) for name, v in samples.items()}
    secs = {name: v["median"] for name, v in st.items()}
    r = {"machine": m, "seconds": st, "pairs": args.pairs, "samples": k, "judgments": rows, "new_tokens": NEW,
         "prompt_tokens_max": width, "shared_prefix_slots": slots, "matmul_gflops": m["matmul_gflops"],
         **{f"{name}_s": v for name, v in secs.items()},
         **{f"{name}_judgments_per_s": rows / v for name, v in secs.items()},
         "ratio_vs_torch": secs["torch"] / secs["judge"], "ratio_shared_vs_unshared": secs["unshared"] / secs["judge"],
         "ratio_grouped_vs_per_row": secs["per_row"] / secs["unshared"]}
    print(f"{args.pairs} pairs x 2 orders x {k} samples = {rows} judgments of {NEW} tokens, prompts up to {width} "
          f"tokens, a common start of {slots} slots prefilled once for both orders (each side in its own process):")
    for name in ("judge", "unshared", "per_row", "torch"):
        print(f"   {name:8s} {r[f'{name}_judgments_per_s']:6.2f} judgments/s ({secs[name]:.1f} s, spread "
              f"{100 * st[name]['spread']:.0f}%)")
    print(f"   sj_jax / torch {r['ratio_vs_torch']:.2f}x; "
          f"common start once / not {r['ratio_shared_vs_unshared']:.2f}x; "
          f"one prefill a prompt / one a row {r['ratio_grouped_vs_per_row']:.2f}x")
    common.write_json(args.json, [r])
    return [r]


if __name__ == "__main__":
    main()
