"""The `sj-jax` command line: side effects (I/O, printing) live here, not in the core."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from sj_jax.config import load_yaml, to_dict
from sj_jax.errors import SJError
from sj_jax.registry import DEFAULT_MODEL
from sj_jax.sharding import MeshConfig


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """`sj-jax generate`: a greedy chat completion (the KV-cached sampler replaces the decoder later)."""

    model: str = DEFAULT_MODEL
    dtype: str = "float32"
    prompt: str = "What is the capital of France? Answer in one sentence."
    system: str | None = None
    chat: bool = True
    max_new_tokens: int = 64
    mesh: MeshConfig = MeshConfig(data=1)


def _generate(cfg: GenerateConfig) -> dict:
    import sj_jax
    from sj_jax.greedy import greedy_complete
    from sj_jax.tokenizer import end_of_turn_ids

    t0 = time.perf_counter()
    model = sj_jax.load_model(cfg.model, dtype=cfg.dtype, mesh=cfg.mesh)
    tok = model.tokenizer
    if cfg.chat:
        messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [
            {"role": "user", "content": cfg.prompt}]
        prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "keys"):
            prompt_ids = prompt_ids["input_ids"]
    else:
        prompt_ids = tok(cfg.prompt)["input_ids"]
    stop_ids = end_of_turn_ids(tok)
    t1 = time.perf_counter()
    new = greedy_complete(model, list(prompt_ids), cfg.max_new_tokens, stop_ids)
    t2 = time.perf_counter()
    stopped = bool(new) and new[-1] in stop_ids
    return {
        "prompt": cfg.prompt,
        "completion": tok.decode(new, skip_special_tokens=True),
        "new_tokens": len(new),
        "finished": stopped,
        "load_s": round(t1 - t0, 2),
        "generate_s": round(t2 - t1, 2),
    }


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ap = argparse.ArgumentParser(prog="sj-jax", description="On-policy self-judgment in JAX/Flax.")
    sub = ap.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="greedy chat completion with a model (default: SmolLM2-135M-Instruct)")
    gen.add_argument("--config", help="YAML file of GenerateConfig fields (see configs/generate.yaml)")
    gen.add_argument("--model", help=f"HF folder, .gguf file or embedded name (default {DEFAULT_MODEL})")
    gen.add_argument("--prompt")
    gen.add_argument("--max-new-tokens", type=int)
    gen.add_argument("--json", action="store_true", help="print the result as one JSON line")
    gen.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. dtype=bfloat16")
    info = sub.add_parser("info", help="print a model's architecture and parameter count")
    info.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    args = ap.parse_args(argv)
    try:
        if args.command == "generate":
            overrides = list(args.overrides)
            for flag, key in (("model", "model"), ("prompt", "prompt"), ("max_new_tokens", "max_new_tokens")):
                value = getattr(args, flag)
                if value is not None:
                    overrides.append(f"{key}={json.dumps(value)}")
            cfg = load_yaml(GenerateConfig, args.config, overrides)
            result = _generate(cfg)
            if args.json:
                print(json.dumps(result))
            else:
                print(f"user: {result['prompt']}\nassistant: {result['completion']}")
                print(f"[{result['new_tokens']} tokens, {'stopped at end of turn' if result['finished'] else 'cut'}; "
                      f"load {result['load_s']} s, generate {result['generate_s']} s]", file=sys.stderr)
        elif args.command == "info":
            import sj_jax

            model = sj_jax.load_model(args.model, tokenizer=None)
            print(json.dumps({**to_dict(model.config), "num_params": model.config.num_params}, indent=1))
    except SJError as e:
        print(f"sj-jax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
