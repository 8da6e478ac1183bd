"""The demo's results: `results.json`, `report.md` (the table over seeds, a paragraph per claim),
`metrics.jsonl` of every stage, and the plots, all from what the stages left in the run folder."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np

from sj_jax.algorithms.self_taught_report import data_table, table
from sj_jax.core.config import to_dict
from sj_jax.core.stages import STAGE_FILE, finished_stage, rates_sentence, recorded_rates, stage_rate, time_table
from sj_jax.experiments.demo_config import DemoConfig
from sj_jax.experiments.demo_plan import (
    BASE_POLICIES,
    JUDGES,
    METHODS,
    TOURNAMENT_POLICIES,
    VARIANTS,
    judge_eval_dir,
    plan,
    seed_dir,
)
from sj_jax.train.metrics import read_metrics
from sj_jax.weights.checkpoint import Checkpointer

LABELS = {"base": "base", "sft": "SFT", "jsft": "JSFT", "offline": "offline DPO", "off_policy": "off-policy",
          "on_policy": "SELF-JUDGE", "oracle": "SELF-JUDGE, oracle judge (diagnostic)"}
# The judges' evaluation sets, in the report's order: where each table's pairs come from.
JUDGE_SETS = {"heldout": "held-out known-label pairs (test split: the answer against a code-made corruption)",
              "own_samples": "held-out own-sample pairs (test problems: a correct against a wrong answer, both "
                             "sampled from the JSFT policy: the pairs the judge meets in SELF-JUDGE)",
              "judge_eval": "the `--judge-eval` file"}


def collect(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    """results.json's content: per method and N the values of every seed, the judges, the times."""
    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    base_eval = finished_stage(out / "eval")
    per_seed = {s: finished_stage(seed_dir(out, s) / "eval") for s in seeds}
    methods: dict[str, Any] = {}
    for m in METHODS:
        evals = [base_eval["result"][m]] if m in BASE_POLICIES else [per_seed[s]["result"]["policies"][m]
                                                                      for s in seeds]
        methods[m] = _values(evals, with_tasks=True)
    tournament = {p: {n: _values([per_seed[s]["result"]["tournament"][p]["by_n"][n] for s in seeds],
                                 optional=("pass_at_n",))
                      for n in map(str, cfg.eval.tournament_n)} for p in TOURNAMENT_POLICIES}
    judges = finished_stage(out / "judges")["result"]
    judge_tables = {j: {k: judges[j][k]["by_subset"] for k in ("heldout", "own_samples") if k in judges[j]}
                    for j in JUDGES}
    if cfg.judge_eval:
        on_file = finished_stage(judge_eval_dir(out, cfg))["result"]
        for j in JUDGES:
            judge_tables[j]["judge_eval"] = on_file[j]["by_subset"]
    own = [per_seed[s]["result"]["own_samples"] for s in seeds]
    found = {}
    for marker in out.rglob(STAGE_FILE):
        st = finished_stage(marker.parent)
        found[st["stage"]] = st
    ran = [found[k] for k in plan(cfg) if k in found]  # in the order they run
    stages = {st["stage"]: round(st["seconds"], 1) for st in ran}
    # the rate each stage's time was measured at, recorded when it ran (None: a stage finished by a
    # version that recorded none); never measured here, beside times taken elsewhere or earlier
    rates = {st["stage"]: stage_rate(st) for st in ran}
    info = Checkpointer.run_info({"kind": "demo", **to_dict(cfg)}, cfg.seed)
    results = {
        "config": to_dict(cfg), "seeds": seeds,
        "machine": {"matmul_gflops_float32": recorded_rates(rates),
                    "processor": platform.processor(), "machine": platform.machine(), "versions": info["versions"],
                    "git_commit": info["git_commit"]},
        "stage_seconds": stages, "stage_matmul_gflops_float32": rates,
        "total_stage_seconds": round(sum(stages.values()), 1),
        "methods": methods, "tournament": tournament, "judges": judge_tables, "own_samples": own,
        "own_pairs": judges.get("own_pairs"),  # how the held-out own-sample pairs were made
        "judge_eval_file": cfg.judge_eval or None,
        "self_taught": finished_stage(out / "self_taught")["result"] if cfg.self_taught.enabled else None,
    }
    results["claims"] = claims(results)
    return results


def _values(evals: list[dict], with_tasks: bool = False, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """Each metric as its list over seeds (one value where the stage is deterministic). An `optional`
    metric is there only when every seed's stage recorded it (a stage finished by an older version
    did not)."""
    out = {k: [e[k] for e in evals] for k in ("accuracy", "answer_accuracy", "mean_tokens")}
    out.update({k: [e[k] for e in evals] for k in optional if all(k in e for e in evals)})
    out["n"] = evals[0]["n"]
    if with_tasks:
        out["by_task"] = {t: {k: [e["by_task"][t][k] for e in evals] for k in ("accuracy", "answer_accuracy")}
                          for t in evals[0]["by_task"]}
    return out


# -- the claims -----------------------------------------------------------------------------------

def compare(a: list[float], b: list[float], n: int) -> tuple[str, str]:
    """(verdict, why) for "a > b", where a and b are accuracies over seeds on `n` test rows each.

    verdict: "holds" (the spreads over seeds do not overlap, or with one value each the difference
    exceeds two standard errors of the test sample), "within the spread" (higher in the mean only)
    or "does not hold". `why` gives the standard error of the difference of the means (binomial, `n`
    rows each) whatever the verdict, so every claim can be read against it."""
    ma, mb = float(np.mean(a)), float(np.mean(b))
    se = math.sqrt(ma * (1 - ma) / n + mb * (1 - mb) / n)
    d = ma - mb
    if d <= 0:
        return "does not hold", f"{ma:.3f} vs {mb:.3f}, standard error of the test sample {se:.3f}"
    if len(a) > 1 or len(b) > 1:
        if min(a) > max(b):
            return "holds", (f"{ma:.3f} vs {mb:.3f}, the spreads over seeds do not overlap (standard error of the "
                             f"test sample {se:.3f})")
        return "within the spread", (f"{ma:.3f} vs {mb:.3f}, but the spreads over seeds overlap (standard error of "
                                     f"the test sample {se:.3f})")
    if d > 2 * se:
        return "holds", f"{ma:.3f} vs {mb:.3f}, more than 2 standard errors of the test sample ({se:.3f})"
    return "within the spread", f"{ma:.3f} vs {mb:.3f}, within 2 standard errors of the test sample ({se:.3f})"


def _chain(results: dict, names: list[str], metric: str = "accuracy") -> list[dict]:
    m = results["methods"]
    out = []
    for hi, lo in zip(names, names[1:]):
        v, why = compare(m[hi][metric], m[lo][metric], m[hi]["n"])
        out.append({"higher": hi, "lower": lo, "verdict": v, "detail": why})
    return out


def claims(results: dict) -> list[dict]:
    """The paper's orderings (SPEC 1.5), each with a verdict per comparison."""
    out = [
        {"claim": "With the same judge, on-policy beats off-policy beats offline",
         "comparisons": _chain(results, ["on_policy", "off_policy", "offline"])},
        {"claim": "SELF-JUDGE beats JSFT beats the base model",
         "comparisons": _chain(results, ["on_policy", "jsft", "base"])},
    ]
    out.append({"claim": "SELF-JUDGE keeps at least half of the oracle judge's gain over JSFT",
                "comparisons": [_kept_gain(results["methods"])]})
    judge = []
    for where in JUDGE_SETS:
        tables = {j: results["judges"][j].get(where) for j in JUDGES}
        if tables["jsft"] is None:
            continue
        a, b = tables["jsft"]["all"], tables["base"]["all"]
        v, why = compare([a["accuracy"]], [b["accuracy"]], a["n"])
        points = round(100 * (a["accuracy"] - b["accuracy"]), 1)
        judge.append({"higher": "jsft judge", "lower": "base judge", "on": where, "verdict": v,
                      "detail": f"{why}; {points:+.1f} points", "points": points})
    out.append({"claim": "JSFT makes a better judge than the base model", "comparisons": judge})
    tour = []
    for p, by_n in results["tournament"].items():
        ns = sorted(by_n, key=int)
        lo, hi = by_n[ns[0]], by_n[ns[-1]]
        v, why = compare(hi["accuracy"], lo["accuracy"], hi["n"])  # n: the tournament's problems
        tour.append({"higher": f"{p} N={ns[-1]}", "lower": f"{p} N={ns[0]}", "verdict": v,
                     "detail": f"{why}; {hi['n']} test problems", "n": hi["n"]})
    out.append({"claim": "Self-rejection improves with N", "comparisons": tour})
    st = results.get("self_taught")
    if st:
        last = max(st["judges"], key=int)
        better = []
        for key, v in st["judges"][last].items():
            if key == "judge":
                continue
            a, b = v["all"], st["judges"]["0"][key]["all"]
            verdict, why = compare([a["accuracy"]], [b["accuracy"]], a["n"])
            better.append({"higher": f"self-taught judge (iteration {last})", "lower": "JSFT seed", "on": key,
                           "verdict": verdict, "detail": why})
        out.append({"claim": "The self-taught judge beats its seed model", "comparisons": better})
    return out


def _kept_gain(m: dict) -> dict:
    """SELF-JUDGE's gain over JSFT as a share of the oracle-judged loop's (means over seeds)."""
    jsft = float(np.mean(m["jsft"]["accuracy"]))
    oracle, own = float(np.mean(m["oracle"]["accuracy"])) - jsft, float(np.mean(m["on_policy"]["accuracy"])) - jsft
    detail = f"gain over JSFT {own:+.3f} with its own judge, {oracle:+.3f} with the oracle judge"
    if oracle <= 0:
        return {"higher": "SELF-JUDGE gain", "lower": "half the oracle gain", "verdict": "does not hold",
                "detail": detail + ": the oracle-judged loop itself did not gain, so there is no gain to keep",
                "share": None}
    share = own / oracle
    return {"higher": "SELF-JUDGE gain", "lower": "half the oracle gain",
            "verdict": "holds" if share >= 0.5 else "does not hold", "detail": f"{detail}: {share:.2f} kept",
            "share": share}


# -- report and plots -----------------------------------------------------------------------------

def _ms(v: list[float]) -> str:
    """mean, and the spread [min, max] over seeds when there are several values."""
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{np.mean(v):.3f} [{min(v):.3f}, {max(v):.3f}]"


def _method_table(results: dict) -> list[str]:
    lines = ["| method | strict | lenient | mean tokens |", "|---|---|---|---|"]
    for m, v in results["methods"].items():
        lines.append(f"| {LABELS[m]} | {_ms(v['accuracy'])} | {_ms(v['answer_accuracy'])} | {_ms(v['mean_tokens'])} |")
    return lines


def _claims_section(results: dict) -> list[str]:
    lines = ["## The paper's claims here", ""]
    for c in results["claims"]:
        if not c["comparisons"]:
            continue
        parts = [f"{x['higher']} > {x['lower']}" + (f" ({x['on']})" if "on" in x else "") +
                 f": **{x['verdict']}** ({x['detail']})" for x in c["comparisons"]]
        every = {x["verdict"] for x in c["comparisons"]}
        overall = "held" if every == {"holds"} else ("did not hold" if "does not hold" in every else
                                                     "held in the mean only, within the spread")
        lines += [f"**{c['claim']}**: {overall} here. " + "; ".join(parts) + ".", ""]
    return lines


def summary_table(results: dict) -> str:
    """What `sj-jax demo` prints at the end: the test table, the claims, where the report is."""
    return "\n".join(["Test accuracy (greedy):", ""] + _method_table(results) + [""] + _claims_section(results))


def markdown(results: dict) -> str:
    cfg, seeds = results["config"], results["seeds"]
    mach = results["machine"]
    lines = ["# sj-jax demo: SELF-JUDGE in miniature", "",
             f"Model {cfg['model']}, {len(seeds)} seed(s) ({', '.join(map(str, seeds))}) for stages 3-5 "
             f"(git {str(mach['git_commit'])[:10]}). {rates_sentence(results['stage_matmul_gflops_float32'])} "
             "Values are the mean and, over seeds, "
             "[min, max]; base, SFT and JSFT are trained and evaluated once (greedy decoding is deterministic), so "
             "they have one value.",
             "", "## Test accuracy (greedy)", ""] + _method_table(results)
    n = next(iter(results["methods"].values()))["n"]
    lines += ["", f"{n} test problems ({cfg['eval']['test_limit']} per family). Strict: the bare answer the prompt "
                  "asks for; lenient: the right answer anywhere in the response.", "",
              "### By family (strict)", ""]
    tasks = list(next(iter(results["methods"].values()))["by_task"])
    lines += ["| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for m, v in results["methods"].items():
        lines.append(f"| {LABELS[m]} | " + " | ".join(_ms(v["by_task"][t]["accuracy"]) for t in tasks) + " |")
    lines += ["", "## Tournament self-rejection (each policy judges its own samples)", "",
              "| policy | N | strict | lenient | mean tokens | oracle judge (pass@N) |", "|---|---|---|---|---|---|"]
    for p, by_n in results["tournament"].items():
        for k, v in by_n.items():
            oracle = _ms(v["pass_at_n"]) if "pass_at_n" in v else "not recorded"
            lines.append(f"| {LABELS[p]} | {k} | {_ms(v['accuracy'])} | {_ms(v['answer_accuracy'])} | "
                         f"{_ms(v['mean_tokens'])} | {oracle} |")
    t_n = next(iter(next(iter(results["tournament"].values())).values()))["n"]
    lines += ["", (f"{t_n} test problems (the first {cfg['eval']['tournament_limit']} of each family, "
                   f"`eval.tournament_limit`), fewer than the {n} of the table above ({cfg['eval']['test_limit']} "
                   "per family, `eval.test_limit`), so its standard errors are larger. N samples a problem at "
                   f"temperature {cfg['eval']['temperature']}; the winner of a knock-out over the first N is scored. "
                   "The oracle judge column is a diagnostic ceiling, not a method: the task suite's checker picks a "
                   "correct finished sample whenever one of the N is (pass@N), on the same samples.")]
    lines += ["", "## Judges", ""]
    for where, title in JUDGE_SETS.items():
        if where not in results["judges"]["base"]:
            continue
        if where == "judge_eval":
            title = f"`{results['judge_eval_file']}`"
        t = {j: results["judges"][j][where] for j in JUDGES}
        lines += [f"On {title}: accuracy with both orders averaged, each order alone, and swap consistency.", "",
                  "| subset | n | base | JSFT | base, chosen first / second | JSFT, chosen first / second | "
                  "base swap-consistent | JSFT swap-consistent |", "|---|---|---|---|---|---|---|---|"]
        for s in t["base"]:
            b, j = t["base"][s], t["jsft"][s]
            lines.append(f"| {s} | {b['n']} | {b['accuracy']:.3f} | {j['accuracy']:.3f} | "
                         f"{b['accuracy_chosen_first']:.2f} / {b['accuracy_chosen_second']:.2f} | "
                         f"{j['accuracy_chosen_first']:.2f} / {j['accuracy_chosen_second']:.2f} | "
                         f"{b['swap_consistent']:.2f} | {j['swap_consistent']:.2f} |")
        lines.append("")
        if where == "own_samples" and results.get("own_pairs"):
            o = results["own_pairs"]
            lines += [f"The JSFT policy answered {o['problems']} test problems {o['samples'] // max(o['problems'], 1)} "
                      f"times each ({o['correct']} of {o['samples']} answers correct); {o['mixed']} problems had "
                      "both a "
                      f"correct and a wrong answer, one pair each.", ""]
    if results.get("own_pairs") and "own_samples" not in results["judges"]["base"]:
        lines += ["No held-out own-sample pairs: no test problem got both a correct and a wrong answer from the JSFT "
                  "policy.", ""]
    own = results["own_samples"]
    if any(o["pairs"] for o in own):
        acc = [o["accuracy"] for o in own if o["accuracy"] is not None]
        lines += [f"The frozen JSFT judge on the SELF-JUDGE runs' own samples: of the judged pairs where exactly one "
                  f"sample was correct ({', '.join(str(o['pairs']) for o in own)} per seed), it chose the correct "
                  f"one {_ms(acc)} of the time; {_ms([o['sample_accuracy'] for o in own])} of the samples were "
                  "correct.", ""]
    lines += _self_taught_section(results)
    lines += _claims_section(results)
    lines += ["## Time", ""] + time_table(results["stage_seconds"], results["stage_matmul_gflops_float32"])
    lines += ["",
              "![accuracy](accuracy.png) ![tournament](tournament.png)", "",
              "![judges](judges.png) ![training](training.png)", ""]
    return "\n".join(lines)


def _self_taught_section(results: dict) -> list[str]:
    lines = ["## Self-taught evaluator (SPEC 2)", ""]
    st = results.get("self_taught")
    if not st:
        return lines + ["Left out of this demo (`self_taught.enabled: false`, the quick demo's default); `--full` "
                        "runs it, and `sj-jax self-taught` runs it alone.", ""]
    return lines + ["The JSFT model as the seed judge, then each iteration's judge, on the held-out pairs and the "
                    "`--judge-eval` file, in both modes (verdict: one pass; generative: an evaluation, then "
                    "[[A]] / [[B]]); a pair with no verdict counts 0.5. No verdict: a tie of the two orders, or "
                    "none parsed.", "", table(st), "",
                    "What each iteration made (the synthetic label checked against the task checkers):", "",
                    data_table(st), "", "![self-taught judge](self_taught/judge_accuracy.png)", ""]


def merged_metrics(out: Path, cfg: DemoConfig) -> list[dict]:
    """Every training stage's metrics rows, each tagged with its stage (and seed)."""
    rows = []
    runs = [("sft", None, out / "sft"), ("jsft", None, out / "jsft")]
    runs += [(v, cfg.seed + k, seed_dir(out, cfg.seed + k) / v) for k in range(cfg.seeds) for v in VARIANTS]
    for stage, seed, folder in runs:
        f = folder / "metrics.jsonl"
        if f.exists():
            rows += [{"stage": stage, **({"seed": seed} if seed is not None else {}), **r} for r in read_metrics(f)]
    return rows


def plots(out: Path, results: dict, metrics: list[dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    # accuracy by method, with the spread over seeds
    fig, ax = plt.subplots(figsize=(8, 3.8))
    names = list(results["methods"])
    x = np.arange(len(names))
    for off, metric, label in ((-0.2, "accuracy", "strict"), (0.2, "answer_accuracy", "lenient")):
        v = [results["methods"][m][metric] for m in names]
        mean = np.array([np.mean(a) for a in v])
        err = np.array([[mean[i] - min(a), max(a) - mean[i]] for i, a in enumerate(v)]).T
        ax.bar(x + off, mean, 0.4, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, [LABELS[m] for m in names])
    ax.set_ylabel("test accuracy")
    ax.set_title("Greedy test accuracy by method (bars: mean; whiskers: min-max over seeds)")
    ax.legend()
    made.append(_save(fig, out / "accuracy.png"))
    # accuracy against N
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for p, by_n in results["tournament"].items():
        ns = [int(n) for n in by_n]
        mean = [np.mean(by_n[str(n)]["accuracy"]) for n in ns]
        ax.plot(ns, mean, marker="o", label=LABELS[p])
        ax.fill_between(ns, [min(by_n[str(n)]["accuracy"]) for n in ns], [max(by_n[str(n)]["accuracy"]) for n in ns],
                        alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xticks([int(n) for n in next(iter(results["tournament"].values()))], minor=False)
    ax.set_xlabel("N (samples in the tournament)")
    ax.set_ylabel("strict test accuracy")
    ax.set_title("Tournament self-rejection")
    ax.legend()
    made.append(_save(fig, out / "tournament.png"))
    # the judges before and after JSFT, by family
    tables = results["judges"]
    fig, axes = plt.subplots(1, len(tables["base"]), figsize=(6 * len(tables["base"]), 3.8), squeeze=False)
    for ax, where in zip(axes[0], tables["base"]):
        subsets = list(tables["base"][where])
        x = np.arange(len(subsets))
        for off, j in ((-0.2, "base"), (0.2, "jsft")):
            ax.bar(x + off, [tables[j][where][s]["accuracy"] for s in subsets], 0.4, label=f"{LABELS[j]} judge")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x, subsets, rotation=45, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title({"heldout": "held-out known-label pairs", "own_samples": "held-out own-sample pairs"}.get(
            where, "judge-eval file"))
        ax.legend()
    made.append(_save(fig, out / "judges.png"))
    # the training curves
    keys = [("sft", "loss"), ("jsft", "loss"), ("dpo", "loss"), ("dpo", "rewards/margins")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4))
    for ax, (stage, key) in zip(axes, keys):
        stages = VARIANTS if stage == "dpo" else (stage,)
        for st in stages:
            for seed in sorted({r.get("seed") for r in metrics if r["stage"] == st}, key=lambda s: s or 0):
                have = [r for r in metrics if r["stage"] == st and r.get("seed") == seed and key in r]
                if have:
                    ax.plot([r["step"] for r in have], [r[key] for r in have],
                            label=LABELS[st] if seed in (None, results["seeds"][0]) else None,
                            color=f"C{METHODS.index(st)}", alpha=0.8)
        ax.set_title(f"{stage.upper()} {key}")
        ax.set_xlabel("step")
        if stage == "dpo":
            ax.legend(fontsize=7)
    made.append(_save(fig, out / "training.png"))
    return made


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    """Writes results.json, metrics.jsonl, the plots and report.md; returns the results."""
    results = collect(out, cfg)
    metrics = merged_metrics(out, cfg)
    with open(out / "metrics.jsonl", "w") as f:
        for r in metrics:
            f.write(json.dumps(r) + "\n")
    results["plots"] = [p.name for p in plots(out, results, metrics)]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(markdown(results))
    return results
