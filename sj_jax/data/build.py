"""`sj-jax data build`: the task suite (and any local datasets) -> training files, eval sets, summary.

Writes into `output_dir`:
- prompts_{train,validation,test}.jsonl: problem rows (on-policy prompts and policy eval sets);
- sft_train.jsonl: instruction rows (task answers, plus `sft` sources);
- pairs_{train,validation,test}.jsonl: known-label pairs (RewardBench layout; train also holds the
  model's own wrong samples and `pairs` sources): offline DPO data and judge eval sets;
- jsft_train.jsonl: the JSFT mixture of sft_train and judgment rows from pairs_train;
- eval_<name>.jsonl: each `eval` source's pairs;
- summary.json / summary.md: counts per task and split, token-length histograms, truncation.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from sj_jax.core.config import Runtime, to_dict
from sj_jax.core.errors import ConfigError
from sj_jax.data.jsft import JSFTConfig, build_jsft
from sj_jax.data.loaders import FORMATS, PAIR_FORMATS, format_name, load_source, pairs_to_sft
from sj_jax.data.summary import pair_lengths, sft_lengths
from sj_jax.judge.generative_template import GenerativeTemplate
from sj_jax.judge.template import DEFAULT_TEMPLATE, JudgeTemplate
from sj_jax.tasks.families import FLAWS, MODEL_KINDS
from sj_jax.tasks.suite import SPLITS, TaskSuiteConfig, build_split, sft_row, split_pairs
from sj_jax.weights.registry import DEFAULT_MODEL, resolve
from sj_jax.weights.tokenizer import load_tokenizer


@dataclasses.dataclass(frozen=True)
class PairsConfig:
    """Which corruptions make the known-label pairs, and how many pairs per problem."""

    corruptions: tuple[str, ...] = ("off_by_one", "wrong_order", "format_broken", "truncated", "wrong_operation",
                                    "wrong_field")
    per_problem: int = 2

    def __post_init__(self):
        for c in self.corruptions:
            if c not in FLAWS or c in MODEL_KINDS:
                known = ", ".join(k for k in FLAWS if k not in MODEL_KINDS)
                raise ConfigError(f"pairs.corruptions: unknown corruption {c!r}; known: {known}")
        if self.per_problem < 1:
            raise ConfigError("pairs.per_problem: must be >= 1")


@dataclasses.dataclass(frozen=True)
class OwnSamplesConfig:
    """Pairs from a model's own answers to train problems, labelled by the checker (needs the model;
    slow on CPU). `pairing`: "answer", the known answer against a wrong sample; "own", a correct
    finished sample against a wrong one of the same problem, both the model's (what a judge of that
    model's answers must tell apart). Only train problems are sampled."""

    enabled: bool = False
    pairing: Literal["answer", "own"] = "answer"
    model: str = ""  # the model that answers; "" = the build's `model`
    problems: int = 256  # train problems sampled, drawn evenly over families with the seed
    samples: int = 4  # per problem
    per_problem: int = 1  # pairs kept per problem
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 64
    batch_size: int = 64
    known_per_own: float | None = None  # JSFT mixture: known-label train pairs kept per own pair; None = all

    def __post_init__(self):
        if self.known_per_own is not None and self.known_per_own < 0:
            raise ConfigError(f"own_samples.known_per_own: must be >= 0 (or null for all), got {self.known_per_own}")
        if self.pairing == "own" and self.samples < 2:
            raise ConfigError(f"own_samples.samples: pairing 'own' needs 2 or more samples a problem, "
                              f"got {self.samples}")


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """A local dataset file in a known format (see `sj_jax.data.loaders.FORMATS`)."""

    format: str
    path: str
    # sft: instruction rows (a preference format's chosen responses); pairs: preference pairs (judgment
    # rows and offline DPO); both: whatever the format gives; eval: a judge eval set, eval_<name>.jsonl.
    use: Literal["sft", "pairs", "both", "eval"] = "both"
    name: str = ""  # eval: written as eval_<name>.jsonl (default: the file's stem)
    options: dict = dataclasses.field(default_factory=dict)  # passed to the loader

    def __post_init__(self):
        fmt = format_name(self.format)
        if fmt not in FORMATS:
            raise ConfigError(f"format: unknown data format {self.format!r}; known: {', '.join(sorted(FORMATS))}")
        if self.use in ("pairs", "eval") and fmt not in PAIR_FORMATS:
            raise ConfigError(f"use: {self.format!r} has no pairs for use {self.use!r}; use 'sft'")


@dataclasses.dataclass(frozen=True)
class DataBuildConfig(Runtime):
    output_dir: str = "data"
    seed: int = 0
    model: str = DEFAULT_MODEL  # its tokenizer measures lengths; its sampler makes own_samples
    max_length: int = 512  # sft/jsft examples (as data.max_length in the train configs)
    max_prompt_length: int = 256  # dpo
    max_response_length: int = 128
    tasks: TaskSuiteConfig = TaskSuiteConfig()
    pairs: PairsConfig = PairsConfig()
    own_samples: OwnSamplesConfig = OwnSamplesConfig()
    jsft: JSFTConfig = JSFTConfig()
    judge: JudgeTemplate = DEFAULT_TEMPLATE
    generative: GenerativeTemplate = GenerativeTemplate()  # the text of jsft.generative_rows
    sources: tuple[SourceConfig, ...] = ()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Writes atomically (temp file, then rename), so a crash never leaves half a dataset."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _spread(rows: list[dict], n: int, seed: int) -> list[dict]:
    """n rows drawn evenly over tasks (round-robin over per-task shuffles)."""
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    rng = np.random.default_rng([seed, 5])
    queues = [[rs[i] for i in rng.permutation(len(rs))] for rs in by_task.values()]
    out: list[dict] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
    return out


def _load_sources(cfg: DataBuildConfig, summary: dict) -> tuple[list[dict], list[dict], dict[str, list[dict]]]:
    """(sft rows, pair rows, eval sets) from the configured sources."""
    if not cfg.sources:
        return [], [], {}

    sft, pairs, evals = [], [], {}
    for src in cfg.sources:
        rows, report = load_source(src.format, src.path, **src.options)
        is_pairs = format_name(src.format) in PAIR_FORMATS
        entry = {"format": src.format, "path": src.path, "use": src.use, **report.as_dict()}
        if src.use == "eval":
            evals[src.name or Path(src.path).stem] = rows
        else:
            if src.use in ("pairs", "both") and is_pairs:
                pairs += rows
            if src.use in ("sft", "both"):
                sft += pairs_to_sft(rows) if is_pairs else rows
        summary["sources"].append(entry)
    return sft, pairs, evals


def _count(rows: list[dict], *keys: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in rows:
        node = out
        for k in keys[:-1]:
            node = node.setdefault(str(r.get(k)), {})
        node[str(r.get(keys[-1]))] = node.get(str(r.get(keys[-1])), 0) + 1
    return out


def _with_known_share(pairs: list[dict], own_ids: set[str], known_per_own: float | None, seed: int) -> list[dict]:
    """The JSFT mixture's pairs: every own pair, and `known_per_own` known-label pairs per own pair
    (drawn with the seed, file order kept; all of them where None or more than there are)."""
    own = [p for p in pairs if p["id"] in own_ids]
    known = [p for p in pairs if p["id"] not in own_ids]
    if not own or known_per_own is None or known_per_own * len(own) >= len(known):  # none own: keep all known
        return pairs
    keep = np.random.default_rng([seed, 17]).choice(len(known), size=int(round(known_per_own * len(own))),
                                                    replace=False)
    return [known[i] for i in sorted(keep)] + own


def build(cfg: DataBuildConfig, log=print,
          own_pairs: Callable[[list[dict]], tuple[list[dict], dict[str, int]]] | None = None) -> dict[str, Any]:
    """Builds every file (see the module docstring) and returns the summary it writes. `own_pairs`
    turns the chosen train problems into pairs of the model's own wrong answers and their counts
    (needed when `cfg.own_samples.enabled`; the data layer loads no model)."""
    start = time.perf_counter()
    for i, src in enumerate(cfg.sources):  # before minutes of work, not after
        if not Path(src.path).is_file():
            raise ConfigError(f"sources[{i}].path: {src.path}: no such file")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"config": to_dict(cfg), "sources": [], "files": {}}
    files: dict[str, list[dict]] = {}

    splits = {s: build_split(cfg.tasks, s, cfg.seed) for s in SPLITS}
    for s, sp in splits.items():
        files[f"prompts_{s}"] = sp.rows
        files[f"pairs_{s}"] = split_pairs(sp, cfg.pairs.corruptions, cfg.pairs.per_problem, cfg.seed, s)
    summary["problems"] = {s: _count(sp.rows, "task", "difficulty") for s, sp in splits.items()}
    log(f"tasks: {', '.join(f'{s} {len(sp.rows)}' for s, sp in splits.items())} problems")

    if cfg.own_samples.enabled:
        if own_pairs is None:
            raise ConfigError("own_samples.enabled: the model's own samples need a model; build with "
                              "sj_jax.algorithms.own_samples.build_with_own_samples (what `sj-jax data build` runs)")
        chosen = _spread(splits["train"].rows, cfg.own_samples.problems, cfg.seed)
        log(f"own samples: {cfg.own_samples.samples} per problem for {len(chosen)} train problems ...")
        own, stats = own_pairs(chosen)
        files["pairs_train"] = files["pairs_train"] + own
        summary["own_samples"] = stats
        log(f"own samples: {stats}")

    ext_sft, ext_pairs, evals = _load_sources(cfg, summary)
    files["sft_train"] = [sft_row(r) for r in splits["train"].rows] + ext_sft
    files["pairs_train"] = files["pairs_train"] + ext_pairs
    for name, rows in evals.items():
        files[f"eval_{name}"] = rows
    jsft_pairs = files["pairs_train"]
    if cfg.own_samples.enabled:
        own_ids = {r["id"] for r in own}
        jsft_pairs = _with_known_share(jsft_pairs, own_ids, cfg.own_samples.known_per_own, cfg.seed)
    jsft_rows, jsft_counts = build_jsft(files["sft_train"], jsft_pairs, cfg.jsft, cfg.seed, cfg.generative)
    files["jsft_train"] = jsft_rows
    summary["jsft"] = dict(jsft_counts)
    if cfg.own_samples.enabled:  # how much of the judge's training reads the model's own answers
        mine = sum(1 for r in jsft_rows if r.get("pair_id") in own_ids)
        summary["jsft"].update(own_judgment_rows=mine, known_judgment_rows=jsft_counts["judgment_rows"] - mine)
    summary["pairs"] = {s: _count(files[f"pairs_{s}"], "subset", "corruption") for s in SPLITS}

    tok = load_tokenizer(resolve(cfg.model))
    for name, rows in files.items():
        path = out / f"{name}.jsonl"
        write_jsonl(path, rows)
        entry: dict[str, Any] = {"rows": len(rows)}
        if name in ("sft_train", "jsft_train"):
            entry.update(sft_lengths(tok, rows, cfg.max_length, cfg.judge, str(path)))
        elif name.startswith(("pairs_", "eval_")):
            entry.update(pair_lengths(tok, rows, cfg.max_prompt_length, cfg.max_response_length, str(path)))
        summary["files"][name] = entry
    summary["seconds"] = round(time.perf_counter() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(summary_markdown(summary))
    log(f"wrote {len(files)} files and summary.md to {out} in {summary['seconds']} s")
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables."""
    lines = ["# Data build summary", "", "## Problems per task and split", "",
             "| task | " + " | ".join(SPLITS) + " |", "|---|" + "---|" * len(SPLITS)]
    tasks = list(summary["problems"]["train"]) or list(summary["problems"]["test"])
    for t in tasks:
        cells = [str(sum(summary["problems"][s].get(t, {}).values())) for s in SPLITS]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "## Pairs per task and corruption (train)", ""]
    kinds = sorted({k for v in summary["pairs"]["train"].values() for k in v})
    lines += ["| subset | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for subset, by_kind in summary["pairs"]["train"].items():
        lines.append(f"| {subset} | " + " | ".join(str(by_kind.get(k, 0)) for k in kinds) + " |")
    if "own_samples" in summary:
        lines += ["", "## The model's own samples", "", "| " + " | ".join(summary["own_samples"]) + " |",
                  "|" + "---|" * len(summary["own_samples"]),
                  "| " + " | ".join(str(v) for v in summary["own_samples"].values()) + " |"]
    lines += ["", "## JSFT mixture", "", *(f"- {k}: {v}" for k, v in sorted(summary["jsft"].items()))]
    if summary["sources"]:
        lines += ["", "## Sources", ""] + [f"- {json.dumps(s)}" for s in summary["sources"]]
    lines += ["", "## Files: token lengths and truncation", "",
              "| file | rows | tokens (median / p95 / max) | truncated context | truncated response | dropped |",
              "|---|---|---|---|---|---|"]
    for name, e in summary["files"].items():
        t = e.get("tokens") or e.get("prompt_tokens")
        tr = e.get("truncation", {})
        span = f"{t['median']:.0f} / {t['p95']:.0f} / {t['max']}" if t else ""
        if "response_tokens" in e:
            r = e["response_tokens"]
            span = f"prompt {span}; response {r['median']:.0f} / {r['p95']:.0f} / {r['max']}"
        lines.append(f"| {name} | {e['rows']} | {span} | {tr.get('truncated_context', '')} | "
                     f"{tr.get('truncated_response', '')} | {tr.get('dropped_too_long', '')} |")
    lines += ["", "## Length histograms (tokens)", ""]
    for name, e in summary["files"].items():
        for key in ("tokens", "prompt_tokens", "response_tokens"):
            if key in e:
                h = {k: v for k, v in e[key]["histogram"].items() if v}
                lines.append(f"- {name} {key}: " + ", ".join(f"{k}: {v}" for k, v in h.items()))
    return "\n".join(lines) + "\n"

