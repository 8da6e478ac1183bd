"""Start-up time of the README's main job: `sj-jax generate --config configs/generate.yaml`, cold (empty
caches) and warm (second run), each in a new process, against the transformers path it replaces
(PyTorch's GGUF loading and `generate`, when PyTorch is installed) in the same run.

    python -m benchmarks.startup [--runs 3] [--json out.json]

Prints the machine's float32 matmul rate first: machines of this pool differ up to 2.5x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import jax_matmul_peak, write_json

MAIN_JOB = [sys.executable, "-m", "sj_jax.cli", "generate", "--config", "configs/generate.yaml"]
TORCH_JOB = """
import logging, sys
logging.getLogger("transformers").setLevel(logging.ERROR)
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from sj_jax.weights.registry import resolve
p = resolve("smollm2-135m-instruct")
tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()
ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
                              add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
out = model.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=[2], pad_token_id=2)
print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
"""


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3, help="cold/warm pairs, alternated with the peer")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    print(f"machine: float32 matmul {jax_matmul_peak():.0f} GFLOP/s (2048^3, JAX), {os.cpu_count()} cores")
    try:
        import torch  # noqa: F401
        peer = True
    except ImportError:
        peer = False
    cold, warm, torch_runs = [], [], []
    for _ in range(args.runs):
        folder = tempfile.mkdtemp(prefix="sj_jax_startup_")
        env = {**os.environ, "SJ_JAX_CACHE_DIR": folder}
        try:
            seconds, answer = timed(MAIN_JOB, env)
            cold.append(seconds)
            warm.append(timed(MAIN_JOB, env)[0])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if peer:
            torch_runs.append(timed([sys.executable, "-c", TORCH_JOB], dict(os.environ))[0])
    result = {"cold_s": statistics.median(cold), "warm_s": statistics.median(warm), "answer": answer,
              "cold_all": cold, "warm_all": warm}
    print(f"sj-jax generate, cold (empty caches): {result['cold_s']:.1f} s   (runs: "
          f"{', '.join(f'{t:.1f}' for t in cold)})")
    print(f"sj-jax generate, warm (second run):   {result['warm_s']:.1f} s   (runs: "
          f"{', '.join(f'{t:.1f}' for t in warm)})")
    if peer:
        result["torch_s"] = statistics.median(torch_runs)
        print(f"transformers GGUF load + generate:    {result['torch_s']:.1f} s; warm sj-jax is "
              f"{result['torch_s'] / result['warm_s']:.1f}x faster, cold {result['torch_s'] / result['cold_s']:.1f}x")
    print(f"answer: {answer}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
