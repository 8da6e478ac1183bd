"""Every benchmark against its peer, in one command and one table of ratios.

    python -m benchmarks.peers [--quick] [--json out.json] [--only dpo sample judge self_judge]

Runs, one after another, each in a fresh interpreter, each with the protocol of `benchmarks.common`
(the machine measured first, each side in its own process, alternation, medians and spread, a
quiet check):
- `benchmarks.dpo_step`: one DPO optimizer step against TRL's `DPOTrainer`;
- `benchmarks.sample`: on-policy sampling against transformers `generate`, 16 and 64 prompts;
- `benchmarks.judge`: one-pass judging against a PyTorch forward read at the last position;
- `benchmarks.self_judge_step`: one SELF-JUDGE step against its peer composition (`generate`, a
  PyTorch verdict forward, TRL's DPO step).
It prints the machine first, then one row a comparison: ours, the peer's, the ratio (higher is
ours faster), the goal, and whether the run was quiet. `--quick` runs fewer rounds (a smoke test;
its ratios are not for notes). Needs `pip install -e '.[bench]'` (PyTorch, TRL).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The goals (issue 28), each a ratio of the peer's seconds over ours.
GOALS = {"dpo": 1.2, "sample16": 2.0, "sample64": 2.0, "judge": 1.5, "self_judge": 1.5}
BENCHES = ("dpo", "sample", "judge", "self_judge")


def commands(quick: bool) -> dict[str, list[str]]:
    """Each benchmark's module and arguments (`--json` is added)."""
    rounds = ["--rounds", "2"] if quick else []
    return {
        "dpo": ["benchmarks.dpo_step", "--other-layout", *rounds],
        "sample": ["benchmarks.sample", "--batches", "64", "16", *rounds],
        "judge": ["benchmarks.judge", *rounds],
        # 3 rounds after 2 warm-up steps: each round is about 2 minutes of the two sides on 2 cores.
        "self_judge": ["benchmarks.self_judge_step", *(["--rounds", "2", "--warmup", "2"] if quick
                                                       else ["--rounds", "3", "--warmup", "2"])],
    }


def _row(key: str, label: str, ours: dict, peer: dict, ratio: float, quiet: bool) -> dict:
    """One row of the table: ours and the peer's seconds (`common.stats`), the benchmark's ratio, the
    larger of the two spreads."""
    return {"key": key, "label": label, "ours_s": ours["median"], "peer_s": peer["median"], "ratio": ratio,
            "spread": max(ours["spread"], peer["spread"]), "quiet": quiet}


def rows(name: str, res) -> list[dict]:
    """The table's rows for benchmark `name` from its JSON: label, ours s, peer s, ratio, spreads, quiet."""
    quiet = res["machine"]["quiet"]
    if name == "dpo":
        sec = res["seconds"]
        out = [_row("dpo", f"DPO step ({res['layout']} layout) vs TRL", sec["sj_jax"], sec["trl"],
                    res["ratio_sj_jax_over_trl"], quiet)]
        for side in sec:
            if side.startswith("sj_jax_"):  # the other layout, in the same alternation (--other-layout)
                out.append(_row(f"dpo/{side[7:]}", f"  the {side[7:]} layout vs TRL", sec[side], sec["trl"],
                                sec["trl"]["median"] / sec[side]["median"], quiet))
        return out
    if name == "sample":
        return [_row(f"sample{r['batch']}", f"sampling, {r['batch']} prompts vs generate", r["seconds"]["sj_jax"],
                     r["seconds"]["torch"], r["ratio"], quiet) for r in res["results"]]
    if name == "judge":
        sec = res["seconds"]
        return [_row("judge", "one-pass judge vs PyTorch forward", sec["sj_jax"], sec["torch"],
                     res["ratio_sj_jax_over_torch"], quiet)]
    if name == "self_judge":
        # The step's seconds are the sum of its phases' medians, as the benchmark prints them; the
        # spread is that of whole steps.
        med, sec = res["medians_s"], res["seconds"]
        ours, peer = ({**sec[s], "median": med[s]["total"]} for s in ("sj_jax", "peer"))
        out = [_row("self_judge", "SELF-JUDGE step vs peer composition", ours, peer, res["ratios"]["total"], quiet)]
        no_spread = {"spread": float("nan")}
        for ph in ("sample", "judge", "step"):
            out.append(_row(f"self_judge/{ph}", f"  its {ph} phase", {**no_spread, "median": med["sj_jax"][ph]},
                            {**no_spread, "median": med["peer"][ph]}, res["ratios"][ph], quiet))
        return out
    raise ValueError(f"unknown benchmark {name!r}")


def table(machine: dict, all_rows: list[dict]) -> str:
    """The one table, machine first."""
    lines = [f"machine: {machine['cpu']}, {machine['cores']} cores; JAX float32 matmul {machine['matmul_gflops']:.0f}"
             f" GFLOP/s, memory read {machine['read_GBps']:.1f} GB/s",
             f"{'comparison':42s} {'ours s':>8s} {'peer s':>8s} {'ratio':>7s} {'goal':>6s} {'met':>4s} {'spread':>7s}"
             f" {'quiet':>5s}"]
    for r in all_rows:
        goal = GOALS.get(r["key"])
        met = "" if goal is None else ("yes" if r["ratio"] >= goal else "no")
        spread = "" if r["spread"] != r["spread"] else f"{100 * r['spread']:.0f}%"
        lines.append(f"{r['label']:42s} {r['ours_s']:8.2f} {r['peer_s']:8.2f} {r['ratio']:6.2f}x "
                     f"{'' if goal is None else f'{goal:.1f}x':>6s} {met:>4s} {spread:>7s} "
                     f"{'yes' if r['quiet'] else 'NO':>5s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    ap.add_argument("--quick", action="store_true", help="fewer rounds: a smoke test, not a measurement")
    ap.add_argument("--json", help="also write every benchmark's results and the table's rows here")
    args = ap.parse_args(argv)

    from benchmarks.common import machine, print_machine

    m = machine()
    print_machine(m)
    cmds = commands(args.quick)
    results, all_rows = {}, []
    with tempfile.TemporaryDirectory(prefix="sj_peers_") as tmp:
        for name in args.only:
            out = Path(tmp) / f"{name}.json"
            print(f"\n== {name}: python -m {' '.join(cmds[name])}", flush=True)
            t0 = time.perf_counter()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.run([sys.executable, "-m", *cmds[name], "--json", str(out)], env=env)
            if proc.returncode != 0:
                raise SystemExit(f"benchmarks.peers: {name} failed (exit {proc.returncode}); its output is above")
            results[name] = json.loads(out.read_text())
            all_rows += rows(name, results[name])
            print(f"== {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print("\n" + table(m, all_rows))
    res = {"machine": m, "rows": all_rows, "results": results, "goals": GOALS}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
