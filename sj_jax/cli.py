"""The `sj-jax` command line: side effects (I/O, printing) live here, not in the core."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import jax

from sj_jax.algorithms.own_samples import build_with_own_samples
from sj_jax.algorithms.self_judge import self_judge
from sj_jax.algorithms.self_judge_config import SelfJudgeConfig
from sj_jax.algorithms.self_taught import self_taught
from sj_jax.algorithms.self_taught_config import SelfTaughtConfig
from sj_jax.core.config import Runtime, load_yaml, to_dict
from sj_jax.core.errors import ConfigError, SJError
from sj_jax.core.jsonl import read_jsonl
from sj_jax.core.progress import sampling_bar
from sj_jax.core.runtime import apply_runtime
from sj_jax.data.build import DataBuildConfig
from sj_jax.evaluation import eval_judge, eval_tasks
from sj_jax.experiments import memory, tournament
from sj_jax.experiments.demo import demo, load_demo_config
from sj_jax.experiments.demo_report import summary_table
from sj_jax.inference.generate import generate
from sj_jax.loading.model import load_model, save_hf
from sj_jax.models.sharding import MeshConfig
from sj_jax.train.config import TrainConfig
from sj_jax.train.trainer import train
from sj_jax.weights.registry import DEFAULT_MODEL


@dataclasses.dataclass(frozen=True)
class GenerateConfig(Runtime):
    """`sj-jax generate`: KV-cached sampling of one prompt or a JSONL file of them."""

    model: str = DEFAULT_MODEL
    prompt: str = "What is the capital of France? Answer in one sentence."
    prompts_file: str | None = None  # JSONL, one {"prompt": "..."} per line
    out: str | None = None  # JSONL results (default: print)
    chat: bool = True
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    num_samples: int = 1
    seed: int = 0
    batch_size: int = 64  # rows (prompts x samples) per compiled batch; samples do not depend on it
    mesh: MeshConfig = MeshConfig(data=1)


def read_prompts(path: str) -> list[str]:
    """The "prompt" field of each line of a JSONL file; errors name the file and line."""
    prompts = []
    for n, row in read_jsonl(path):
        if not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise ConfigError(f"{path}:{n}: expected an object with a non-empty string field \"prompt\"")
        prompts.append(row["prompt"])
    return prompts


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end in one line (and exit 2), like every other error of the command line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _generate(cfg: GenerateConfig) -> list[dict]:
    prompts = read_prompts(cfg.prompts_file) if cfg.prompts_file else [cfg.prompt]
    model = load_model(cfg.model, dtype=cfg.dtype, mesh=cfg.mesh)
    rows = len(prompts) * cfg.num_samples
    with sampling_bar(rows, enabled=rows > cfg.batch_size) as progress:
        g = generate(model, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                     top_p=cfg.top_p, top_k=cfg.top_k, num_samples=cfg.num_samples, seed=cfg.seed,
                     chat=cfg.chat, batch_size=cfg.batch_size, progress=progress)
    results = [{"prompt": p, "samples": [
        {"text": g.texts[i][j], "token_ids": g.token_ids[i][j], "logprobs": g.logprobs[i][j],
         "finished": g.finished[i][j]} for j in range(cfg.num_samples)]} for i, p in enumerate(prompts)]
    return results


def _flag_overrides(args, flags: tuple[tuple[str, str], ...]) -> list[str]:
    """The command's key=value overrides, then one `key=<json>` for each (flag, key) the user gave."""
    return list(args.overrides) + [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in flags
                                   if getattr(args, flag) is not None]


# The commands that run as several processes (tests/test_distributed.py): the others write their
# files from every process, so they refuse to start as one of several.
MULTI_PROCESS = ("sft", "jsft", "dpo", "self-judge")


def _configured(command: str, cfg):
    """The command's config, after applying its runtime keys (processes, precision, caches) to the process."""
    apply_runtime(cfg)
    if jax.process_count() > 1 and command not in MULTI_PROCESS:
        raise ConfigError(f"sj-jax {command} runs as one process; of the commands, {', '.join(MULTI_PROCESS)} run "
                          f"as several (this is process {jax.process_index()} of {jax.process_count()})")
    return cfg


def _load(args, cls, overrides: list[str]):
    """The command's config from `--config` and the overrides, applied to the process (`_configured`)."""
    return _configured(args.command, load_yaml(cls, args.config, overrides))


def _report_run(result) -> None:
    """The last line of a training command: stopped on request (and how to resume), or done."""
    if result.preempted:
        print(f"stopped at step {result.steps} on request; run the same command to resume", file=sys.stderr)
    else:
        print(f"done: {result.steps} steps, final loss {result.last_loss:.4f}; report: {result.report}",
              file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Everything sj-jax reads is local; never let transformers or datasets look up a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # transformers announces at import that it found no PyTorch; sj_jax never needs it at run time.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    ap = _Parser(prog="sj-jax", description="On-policy self-judgment in JAX/Flax.")
    sub = ap.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="sample chat completions (default: greedy, SmolLM2-135M-Instruct)")
    gen.add_argument("--config", help="YAML file of GenerateConfig fields (see configs/generate.yaml)")
    gen.add_argument("--model", help=f"HF folder, .gguf file, run folder or embedded name (default {DEFAULT_MODEL})")
    gen.add_argument("--prompt")
    gen.add_argument("--prompts-file", help='JSONL, one {"prompt": "..."} per line')
    gen.add_argument("--out", help="write JSONL results here")
    gen.add_argument("--max-new-tokens", type=int)
    gen.add_argument("--json", action="store_true", help="print the result as one JSON line")
    gen.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. dtype=bfloat16")
    for kind, what in (("sft", "supervised fine-tuning on the assistant turns"),
                       ("jsft", "judge-augmented SFT: instruction and judgment examples (SPEC 1.1)"),
                       ("dpo", "DPO on prompt/chosen/rejected pairs against the frozen initial model")):
        tr = sub.add_parser(kind, help=what)
        tr.add_argument("--config", help=f"YAML file of TrainConfig fields (see configs/{kind}.yaml)")
        tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.learning_rate=1e-5 steps=20")
    data = sub.add_parser("data", help="datasets: build the task suite and local datasets into training files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    build = data_sub.add_parser("build", help="write prompts, SFT/JSFT/pair files and a summary (configs/data.yaml)")
    build.add_argument("--config", help="YAML file of DataBuildConfig fields (see configs/data.yaml)")
    build.add_argument("overrides", nargs="*", help="key=value overrides, e.g. output_dir=data2 tasks.test=50")
    ev = sub.add_parser("eval-tasks", help="policy accuracy on task problems and judge accuracy on known-label pairs")
    ev.add_argument("--config", help="YAML file of EvalTasksConfig fields (see configs/eval_tasks.yaml)")
    ev.add_argument("overrides", nargs="*", help="key=value overrides, e.g. limit=20 pairs_file=''")
    info = sub.add_parser("info", help="print a model's architecture and parameter count")
    info.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    tour = sub.add_parser("tournament", help="self-rejection: N samples per prompt, a knock-out judged by the model")
    tour.add_argument("--config", help="YAML file of TournamentConfig fields (see configs/tournament.yaml)")
    tour.add_argument("--model", help="the policy (any model sj-jax loads, a run folder included)")
    tour.add_argument("--prompts", help='JSONL of {"prompt": ...} rows; task-suite rows are also scored')
    tour.add_argument("--n", help="comma-separated sample counts, e.g. 1,2,4,8")
    tour.add_argument("overrides", nargs="*", help="key=value overrides, e.g. judge_model=runs/jsft limit=10")
    sj = sub.add_parser("self-judge", help="SELF-JUDGE: sample from the policy, judge with the frozen JSFT model, DPO")
    sj.add_argument("--config", help="YAML file of SelfJudgeConfig fields (see configs/self_judge.yaml)")
    sj.add_argument("--model", help="the initial policy, judge and reference (a JSFT run folder, or any model)")
    sj.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=20 judge_model=policy num_samples=4")
    ej = sub.add_parser("eval-judge", help="a pairwise judge on RewardBench-format pairs, both orders: accuracy by "
                                           "subset, no-verdict rate, each order alone, swap consistency")
    ej.add_argument("--config", help="YAML file of EvalJudgeConfig fields (see configs/eval_judge.yaml)")
    ej.add_argument("--model", help="the judge: any model sj-jax loads (a JSFT, SELF-JUDGE or self-taught run folder)")
    ej.add_argument("--data", help='RewardBench-format JSONL: {"prompt", "chosen", "rejected", "subset", "id"}')
    ej.add_argument("--mode", choices=("verdict", "generative"), help="one-pass verdict (default) or generative")
    ej.add_argument("--samples", type=int, help="generative: judgments an order, majority vote (default 1)")
    ej.add_argument("--out", help="the JSON results (default <data stem>.<mode>.judge.json)")
    ej.add_argument("overrides", nargs="*", help="key=value overrides, e.g. limit=20 temperature=0.7")
    st = sub.add_parser("self-taught", help="self-taught evaluator: the judge trains on its own filtered judgments "
                                            "of synthetic pairs, iteration after iteration (SPEC 2)")
    st.add_argument("--config", help="YAML file of SelfTaughtConfig fields (see configs/self_taught.yaml)")
    st.add_argument("--model", help="the seed model: judge, pair writer and start of training")
    st.add_argument("overrides", nargs="*", help="key=value overrides, e.g. iterations=3 annotate.samples=8")
    dm = sub.add_parser("demo", help="the SELF-JUDGE paper's table in miniature on the embedded default "
                                     "(every stage, every baseline, a report with plots)")
    dm.add_argument("--config", help="YAML file of DemoConfig fields (see configs/demo.yaml; default: built in)")
    dm.add_argument("--full", action="store_true", help="the budgets meant to reproduce the orderings (slower)")
    dm.add_argument("--seeds", type=int, help="repeat stages 3-5 with this many seeds (default 1)")
    dm.add_argument("--out", help="the run folder (default runs/demo); a rerun skips what is done")
    dm.add_argument("--judge-eval", help="a RewardBench-format JSONL both judges are also evaluated on")
    dm.add_argument("overrides", nargs="*", help="key=value overrides, e.g. jsft.steps=50 eval.test_limit=20")
    mem = sub.add_parser("memory", help="per-device bytes of a training or SELF-JUDGE config on its mesh, and "
                                        "whether it fits a device (no device needed)")
    mem.add_argument("--config", nargs="+", required=True, help="YAML files of sft/jsft/dpo/self_judge configs")
    mem.add_argument("--kind", choices=("sft", "jsft", "dpo", "self_judge"),
                     help="the command the configs are for (default: from each file's name)")
    mem.add_argument("--devices", type=int, help="devices of the mesh (default: the product of its axes)")
    mem.add_argument("--device", default="h100-80gb", choices=sorted(memory.DEVICES), help="the accelerator")
    mem.add_argument("overrides", nargs="*", help="key=value overrides applied to every config, e.g. batch_size=32")
    export = sub.add_parser("export", help="write a run folder's model (LoRA adapter merged) as a Hugging Face folder")
    export.add_argument("run", help="a run folder (sj-jax sft|jsft|dpo output_dir), or any model sj-jax loads")
    export.add_argument("out", help="the Hugging Face folder to write")
    export.add_argument("--dtype", default=None, help="stored dtype: float32 or bfloat16 (default: the run's)")
    args = ap.parse_args(argv)
    try:
        if args.command == "generate":
            overrides = _flag_overrides(args, (("model", "model"), ("prompt", "prompt"),
                                               ("max_new_tokens", "max_new_tokens"), ("prompts_file", "prompts_file"),
                                               ("out", "out")))
            cfg = _load(args, GenerateConfig, overrides)
            results = _generate(cfg)
            if cfg.out:
                with open(cfg.out, "w", encoding="utf-8") as f:
                    for r in results:
                        f.write(json.dumps(r) + "\n")
                print(f"wrote {len(results)} prompts' samples to {cfg.out}", file=sys.stderr)
            elif args.json:
                for r in results:
                    print(json.dumps(r))
            else:
                for r in results:
                    for sample in r["samples"]:
                        print(f"user: {r['prompt']}\nassistant: {sample['text']}")
                        print(f"[{len(sample['token_ids'])} tokens, "
                              f"{'stopped at end of turn' if sample['finished'] else 'cut'}]", file=sys.stderr)
        elif args.command in ("sft", "jsft", "dpo"):
            _report_run(train(args.command, _load(args, TrainConfig, list(args.overrides))))
        elif args.command == "data":
            build_with_own_samples(_load(args, DataBuildConfig, list(args.overrides)),
                                   log=lambda m: print(m, file=sys.stderr))
        elif args.command == "eval-tasks":
            result = eval_tasks.evaluate(_configured(args.command, load_yaml(eval_tasks.EvalTasksConfig, args.config,
                                                               list(args.overrides))),
                                         log=lambda m: print(m, file=sys.stderr))
            print(eval_tasks.markdown(result))
            print(f"per-row results: {result['out']}", file=sys.stderr)
        elif args.command == "memory":
            rows = []
            for path in args.config:
                kind = args.kind or memory.kind_of(path)
                cls = SelfJudgeConfig if kind == "self_judge" else TrainConfig
                _, est = memory.plan(load_yaml(cls, path, list(args.overrides)), kind, args.devices)
                rows.append((f"{path} ({kind})", est, args.device))
            print(memory.table(rows))
        elif args.command == "info":
            model = load_model(args.model, tokenizer=None)  # configures the "auto" caches
            print(json.dumps({**to_dict(model.config), "num_params": model.config.num_params}, indent=1))
        elif args.command == "tournament":
            overrides = _flag_overrides(args, (("model", "model"), ("prompts", "prompts_file")))
            if args.n is not None:
                overrides.append(f"n=[{args.n}]")
            result = tournament.run(_load(args, tournament.TournamentConfig, overrides),
                                    log=lambda m: print(m, file=sys.stderr))
            print(tournament.markdown(result))
            print(f"per-prompt winners: {result['out']}", file=sys.stderr)
        elif args.command == "self-judge":
            overrides = _flag_overrides(args, (("model", "model"),))
            _report_run(self_judge(_load(args, SelfJudgeConfig, overrides)))
        elif args.command == "eval-judge":
            overrides = _flag_overrides(args, (("model", "model"), ("data", "data"), ("mode", "mode"),
                                               ("samples", "samples"), ("out", "out")))
            result = eval_judge.evaluate(_load(args, eval_judge.EvalJudgeConfig, overrides),
                                         log=lambda m: print(m, file=sys.stderr))
            print(eval_judge.markdown(result))
            print(f"per-pair results: {result['out']}", file=sys.stderr)
        elif args.command == "self-taught":
            overrides = _flag_overrides(args, (("model", "model"),))
            result = self_taught(_load(args, SelfTaughtConfig, overrides))
            if result.results is not None:
                print(result.table)
        elif args.command == "demo":
            overrides = _flag_overrides(args, (("seeds", "seeds"), ("out", "out"), ("judge_eval", "judge_eval")))
            result = demo(_configured(args.command, load_demo_config(args.config, overrides, args.full)))
            if result.results is not None:
                print(summary_table(result.results))
        elif args.command == "export":
            model = load_model(args.run, param_dtype=args.dtype)
            out = save_hf(model, args.out)
            print(f"wrote {model.source} to {out}", file=sys.stderr)
    except SJError as e:
        # one line, whatever the message quotes (a YAML parser's context, a library's own lines)
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"sj-jax: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:
        # A path the command was given (or one under it) that cannot be made, read or written, where
        # no module named it first: one line naming it, like any other bad input. Others are bugs.
        if e.filename is None:
            raise
        where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
        print(f"sj-jax: error: {where}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
