"""A self-taught run's results: `results.json`, `report.md` (the judge by iteration, the data each
iteration made, the time of every stage) and `judge_accuracy.png`, from the stages' `stage.json`."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from sj_jax.algorithms.self_taught_config import SelfTaughtConfig
from sj_jax.core.config import to_dict
from sj_jax.core.stages import finished_stage, recorded_rates, stage_rate, time_table
from sj_jax.weights.checkpoint import Checkpointer

COLUMNS = (("accuracy", "acc"), ("no_verdict", "tie or none"), ("accuracy_chosen_first", "chosen 1st"),
           ("accuracy_chosen_second", "chosen 2nd"), ("swap_consistent", "swap"))


def collect(out: Path, cfg: SelfTaughtConfig) -> dict[str, Any]:
    """results.json's content."""
    markers: dict[str, dict] = {}  # stage name -> its finished marker, in the order the stages run
    markers["select"] = finished_stage(out / "select")
    judges: dict[str, dict] = {}
    iterations: dict[str, dict] = {}
    for i in range(cfg.iterations + 1):
        if i > 0:  # pairs, judgments, train, then the eval of iteration i
            for stage in ("pairs", "judgments", "train"):
                markers[f"{stage} {i}"] = finished_stage(out / f"iter{i}" / stage)
            iterations[str(i)] = {stage: markers[f"{stage} {i}"]["result"] for stage in ("pairs", "judgments", "train")}
        ev = markers[f"eval {i}"] = finished_stage(out / "eval" / f"iter{i}")
        judges[str(i)] = {k: {"all": v["by_subset"]["all"], "by_subset": v["by_subset"],
                              **{x: v[x] for x in ("judgment_no_verdict_rate", "judgment_reasons", "seconds") if x in v}}
                          for k, v in ev["result"].items() if k != "judge"}
        judges[str(i)]["judge"] = ev["result"]["judge"]
    seconds = {k: m["seconds"] for k, m in markers.items()}
    # each stage's time beside the rate recorded when it ran: nothing is measured here
    rates = {k: stage_rate(m) for k, m in markers.items()}
    info = Checkpointer.run_info({"kind": "self_taught", **to_dict(cfg)}, cfg.seed)
    return {"config": to_dict(cfg), "selection": markers["select"]["result"], "judges": judges,
            "iterations": iterations, "stage_seconds": seconds, "stage_matmul_gflops_float32": rates,
            "total_stage_seconds": round(sum(seconds.values()), 1),
            "machine": {"matmul_gflops_float32": recorded_rates(rates),
                        "processor": platform.processor(), "versions": info["versions"],
                        "git_commit": info["git_commit"]}}


def table(results: dict[str, Any]) -> str:
    """The judge by iteration: a row per (iteration, file, mode) with every metric over all pairs."""
    head = ["iteration", "file", "mode", "pairs"] + [label for _, label in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, by in results["judges"].items():
        for key, v in by.items():
            if key == "judge":
                continue
            name, mode = key.rsplit("/", 1)
            a = v["all"]
            lines.append(f"| {'seed' if i == '0' else i} | {name} | {mode} | {a['n']} | "
                         + " | ".join(f"{a[k]:.3f}" for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def data_table(results: dict[str, Any]) -> str:
    """What each iteration made: pairs (and why rows were dropped), the synthetic labels' accuracy
    by the checkers, the judgments kept, the training."""
    head = ["iteration", "pairs / instructions", "label right / wrong / undecided (checked)", "judgments",
            "right verdict", "no verdict", "kept (A / B)", "train rows", "train steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, it in results["iterations"].items():
        p, j, t = it["pairs"], it["judgments"], it["train"]
        lab = p["labels"]
        labels = (f"{lab['right']} / {lab['wrong']} / {lab['checked'] - lab['right'] - lab['wrong']} ({lab['checked']})"
                  if lab.get("checked") else "-")
        lines.append(f"| {i} | {p['pairs']} / {p['instructions']} | {labels} | {j.get('judgments', 0)} | "
                     f"{j.get('right_verdict', 0)} | {j.get('no_verdict', 0)} | {j.get('kept', 0)} "
                     f"({j.get('kept_A', 0)} / {j.get('kept_B', 0)}) | {j.get('train_rows', 0)} | "
                     f"{t.get('steps', 0) if t.get('trained') else 'not trained'} |")
    return "\n".join(lines)


def write(out: Path, cfg: SelfTaughtConfig) -> dict[str, Any]:
    results = collect(out, cfg)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    reasons = {}
    for i, it in results["iterations"].items():
        reasons[i] = it["pairs"]["reasons"]
    lines = [f"# sj-jax self-taught: {cfg.model}", "",
             f"{cfg.iterations} iterations of {cfg.instructions} instructions; {cfg.annotate.samples} judgments an "
             f"order at temperature {cfg.annotate.temperature}; training: {cfg.train.method} from "
             f"{cfg.train.init_from}.", "",
             "## The judge by iteration (a pair with no verdict counts 0.5)", "", table(results), "",
             "## The data of each iteration", "", data_table(results), "",
             f"Selection: {results['selection']['kept']} of {results['selection']['pool']} instructions kept "
             f"({', '.join(f'{k} {v}' for k, v in results['selection']['reasons'].items())}).", "",
             "Pair rows by reason: " + "; ".join(f"iteration {i}: " + ", ".join(f"{k} {v}" for k, v in r.items())
                                                 for i, r in reasons.items()), "",
             "## Time", ""]
    lines += time_table(results["stage_seconds"], results["stage_matmul_gflops_float32"])
    if _plot(out, results):
        lines += ["", "![judge accuracy](judge_accuracy.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return results


def _plot(out: Path, results: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    iters = sorted(results["judges"], key=int)
    keys = [k for k in results["judges"]["0"] if k != "judge"]
    if not keys:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for k in keys:
        ax.plot([int(i) for i in iters], [results["judges"][i][k]["all"]["accuracy"] for i in iters], marker="o",
                label=k)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("iteration (0 = seed model)")
    ax.set_ylabel("pairwise accuracy")
    ax.set_xticks([int(i) for i in iters])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "judge_accuracy.png", dpi=100)
    plt.close(fig)
    return True
