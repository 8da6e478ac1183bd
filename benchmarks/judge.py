"""One-pass pairwise judging speed on SmolLM2-135M-Instruct, float32, CPU: sj_jax vs PyTorch transformers.

    python -m benchmarks.judge [--pairs 16] [--tokens 192] [--rounds 3] [--data rows.jsonl]

Work: `--pairs` pairs whose judge prompts (default template) are about `--tokens` tokens, each
judged in both orders: a forward pass, the softmax over the full vocabulary at the last position,
p(" A") and p(" B"), the two orders averaged. sj_jax runs `judge_pairs` (texts in, probabilities
out) with and without the shared-prefix KV cache; PyTorch renders the same prompts, left-pads them
(positions counted from the mask) and runs `batch` prompts a forward. All three are timed in
alternation, each side in its own process (`benchmarks.common`); the ratio is sj_jax pairs/s over PyTorch pairs/s.
Pairs come from `--data` (RewardBench rows: prompt, chosen, rejected; the rows nearest the length)
or, by default, from windows of the English prose in `benchmarks.sample`.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from benchmarks.common import (  # noqa: E402
    Sides,
    load_default_tokenizer,
    load_torch_default,
    machine,
    print_machine,
    quiet_check,
    stats,
    write_json,
)
from benchmarks.sample import TEXT  # noqa: E402
from sj_jax.judge import DEFAULT_TEMPLATE, judge_pairs_detailed, render_prompt, verdict_token_ids  # noqa: E402


def prompt_len(tok, c: str, a: str, b: str) -> int:
    return len(tok(render_prompt(tok, DEFAULT_TEMPLATE, c, a, b), add_special_tokens=False)["input_ids"])


def text_pairs(tok, n: int, tokens: int) -> tuple[list[str], list[str], list[str]]:
    """n (context, a, b) cut from TEXT: a 32-token context and two responses filling the rest."""
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    overhead = prompt_len(tok, "x", "y", "z") - 3
    ctx = 32
    rest = max(2, tokens - overhead - ctx)
    la, lb = rest // 2 - 2, rest - rest // 2 + 2  # unequal, as responses are

    def window(start: int, length: int) -> str:
        start %= len(ids) - length
        return tok.decode(ids[start:start + length]).strip()

    out = ([], [], [])
    for i in range(n):
        s = i * 37
        for lst, text in zip(out, (window(s, ctx), window(s + 101, la), window(s + 211, lb))):
            lst.append(text)
    return out


def data_pairs(tok, path: str, n: int, tokens: int) -> tuple[list[str], list[str], list[str]]:
    """The n rows of a RewardBench-format JSONL file whose judge prompts are nearest `tokens` long."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows.sort(key=lambda r: abs(prompt_len(tok, r["prompt"], r["chosen"], r["rejected"]) - tokens))
    rows = rows[:n]
    return [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]


def torch_judge(torch_model, tok, contexts, responses_a, responses_b, batch: int) -> np.ndarray:
    """float64 [pairs, 2, 2] like `Judgments.probs[:, 0]`, with a PyTorch forward of `batch` prompts."""
    import torch

    va, vb = verdict_token_ids(tok, DEFAULT_TEMPLATE)
    texts = [render_prompt(tok, DEFAULT_TEMPLATE, c, *resp)
             for c, a, b in zip(contexts, responses_a, responses_b) for resp in ((a, b), (b, a))]
    out = []
    for s in range(0, len(texts), batch):
        enc = tok(texts[s:s + batch], add_special_tokens=False, padding=True, padding_side="left",
                  return_tensors="pt")
        pos = (enc["attention_mask"].cumsum(1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = torch_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 position_ids=pos, logits_to_keep=1).logits[:, -1]
        out.append(torch.softmax(logits, dim=-1)[:, [va, vb]].double().numpy())
    return np.concatenate(out).reshape(len(contexts), 2, 2)


def build_sj_jax(contexts, responses_a, responses_b, batch: int):
    """sj_jax's side (in its own process): `judge_pairs` with and without the shared-prefix cache."""
    import sj_jax
    from sj_jax.weights.registry import DEFAULT_MODEL

    model = sj_jax.load_model(DEFAULT_MODEL, tokenizer="auto")

    def run(share: bool):
        return judge_pairs_detailed(model, contexts, responses_a, responses_b, batch_size=batch,
                                    share_prefix=share).probs[:, 0]

    return {}, {"shared": lambda: run(True), "plain": lambda: run(False)}


def build_torch(contexts, responses_a, responses_b, batch: int, threads: int):
    """PyTorch's side (in its own process): a forward of `batch` prompts, the softmax at the last position."""
    import torch

    torch_model = load_torch_default(threads)
    tok = load_default_tokenizer()
    return {"threads": torch.get_num_threads()}, {
        "judge": lambda: torch_judge(torch_model, tok, contexts, responses_a, responses_b, batch)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=192, help="judge prompt length to aim for")
    ap.add_argument("--batch", type=int, default=16, help="prompts a forward pass (both)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch's intra-op threads")
    ap.add_argument("--data", help="RewardBench-format JSONL to take the pairs from")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    m = machine()
    print_machine(m)
    tok = load_default_tokenizer()
    c, a, b = (data_pairs(tok, args.data, args.pairs, args.tokens) if args.data
               else text_pairs(tok, args.pairs, args.tokens))
    lengths = [prompt_len(tok, *t) for t in zip(c, a, b)] + [prompt_len(tok, x, z, y) for x, y, z in zip(c, a, b)]
    with Sides({"sj_jax": (build_sj_jax, (c, a, b, args.batch)),
                "torch": (build_torch, (c, a, b, args.batch, args.threads))}) as sides:
        # Same numbers first (this also compiles): a benchmark of a wrong judge is worth nothing.
        ref = sides.call("torch", "judge")[1]
        err = {name: float(np.abs(sides.call("sj_jax", name)[1] - ref).max()) for name in ("shared", "plain")}
        assert max(err.values()) < 1e-4, err
        samples, _ = sides.alternate({"sj_jax": ("sj_jax", "shared"), "sj_jax_no_prefix_cache": ("sj_jax", "plain"),
                                      "torch": ("torch", "judge")}, args.rounds)
        threads = sides.info["torch"]["threads"]
    quiet_check(m)
    secs = {k: stats(v)["median"] for k, v in samples.items()}
    res = {
        "work": f"SmolLM2-135M judge, float32, {args.pairs} pairs x both orders, prompts {min(lengths)}-"
                f"{max(lengths)} tokens (mean {np.mean(lengths):.0f}), {args.batch} prompts a forward",
        "machine": m, "torch_threads": threads, "max_abs_diff_vs_torch": err,
        "seconds": {k: stats(v) for k, v in samples.items()},
        **{f"{k}_s": v for k, v in secs.items()},
        **{f"{k}_pairs_per_s": args.pairs / v for k, v in secs.items()},
        "ratio_sj_jax_over_torch": secs["torch"] / secs["sj_jax"],
        "ratio_prefix_cache_over_none": secs["sj_jax_no_prefix_cache"] / secs["sj_jax"],
    }
    print(f"{res['work']}  (torch threads {threads}; each side in its own process, called in alternation)")
    for k, st in res["seconds"].items():
        print(f"  {k:24s}: {st['median']:7.2f} s (spread {100 * st['spread']:.0f}%)  {args.pairs / st['median']:6.2f} "
              "pairs/s")
    print(f"  ratio sj_jax / torch: {res['ratio_sj_jax_over_torch']:.2f}x   "
          f"prefix cache / none: {res['ratio_prefix_cache_over_none']:.2f}x   "
          f"max |p - p_torch|: {max(err.values()):.1e}")
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
