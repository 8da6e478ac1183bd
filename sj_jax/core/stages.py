"""Resumable stages of a run folder: a stage that finished leaves `<folder>/stage.json` (its name,
seconds and result, and, where the caller asks, the machine it ran on), written by an atomic rename,
so a run stopped anywhere redoes only the stage it was in. The demo and the self-taught loop both
keep their stages this way."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

STAGE_FILE = "stage.json"


@dataclasses.dataclass(frozen=True)
class StageOutcome:
    result: Any
    ran: bool  # False: it was done already, and `result` is the saved one
    seconds: float  # the time it took when it ran (saved or now)
    machine: dict[str, Any] | None = None  # what `run_stage(machine=...)` said when it ran (saved or now)


def read_stage(folder: Path) -> dict[str, Any] | None:
    """`{"stage", "seconds", "result"}` (and `"machine"` where the stage recorded it) of the stage
    finished in `folder`, or None."""
    marker = Path(folder) / STAGE_FILE
    return json.loads(marker.read_text()) if marker.exists() else None


def finished_stage(folder: Path) -> dict[str, Any]:
    """`read_stage`, for a report that needs the stage: an unfinished one is an error naming it."""
    done = read_stage(folder)
    if done is None:
        raise FileNotFoundError(f"{folder}: the stage has not finished (no {STAGE_FILE})")
    return done


def run_stage(name: str, folder: Path, fn: Callable[[], Any], *,
              on_start: Callable[[], None] | None = None,
              machine: Callable[[], dict[str, Any]] | None = None) -> StageOutcome:
    """`fn()` unless `folder` holds a finished stage; its result (JSON-able) is saved with its time.
    `folder` exists when `fn` starts, so the stage may write its output there. `machine()` (JSON-able,
    e.g. the matmul rate) is called only when the stage runs, after `on_start` and before the clock
    starts, and saved beside the time it qualifies; a stage done already returns what it saved."""
    done = read_stage(folder)
    if done is not None:
        return StageOutcome(done["result"], False, done["seconds"], done.get("machine"))
    if on_start is not None:
        on_start()
    about = machine() if machine is not None else None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = fn()
    seconds = round(time.perf_counter() - t0, 1)
    tmp = folder / (STAGE_FILE + ".tmp")
    marker = {"stage": name, "seconds": seconds}
    if about is not None:
        marker["machine"] = about
    marker["result"] = result
    tmp.write_text(json.dumps(marker, indent=1))
    tmp.replace(folder / STAGE_FILE)
    return StageOutcome(result, True, seconds, about)


def stage_rate(marker: dict[str, Any]) -> float | None:
    """The float32 matmul rate a finished stage recorded when it ran (None: it recorded none)."""
    return (marker.get("machine") or {}).get("matmul_gflops_float32")


def recorded_rates(rates: dict[str, float | None]) -> list[float]:
    """The distinct rates stages recorded (stage -> rate), sorted; the stages with none left out."""
    return sorted({r for r in rates.values() if r is not None})


def rates_sentence(rates: dict[str, float | None]) -> str:
    """Which float32 matmul rates the stages' times were measured at (stage -> rate, as each
    recorded it when it ran), and which stages ran at each when there are several."""
    by_rate: dict[float | None, list[str]] = {}
    for stage, rate in rates.items():
        by_rate.setdefault(rate, []).append(stage)
    known = sorted(r for r in by_rate if r is not None)
    unknown = by_rate.get(None, [])
    if len(known) == 1 and not unknown:
        text = f"The stage times were measured at a float32 matmul rate of {known[0]} GFLOP/s, measured as they ran."
    elif known:
        text = ("The stage times were measured at float32 matmul rates of " +
                "; ".join(f"{r} GFLOP/s ({', '.join(by_rate[r])})" for r in known) +
                ", each measured in the process that ran those stages.")
    else:
        text = "No stage recorded the float32 matmul rate it ran at."
    if unknown and known:
        text += f" {', '.join(unknown)}: finished without a recorded rate."
    return text


def time_table(seconds: dict[str, float], rates: dict[str, float | None]) -> list[str]:
    """A report's time section: the rates sentence, then a row per stage (its seconds and the rate
    it ran at) and the total, as Markdown lines. Nothing is measured here."""
    known = recorded_rates(rates)
    lines = [f"{rates_sentence(rates)} Each row: the stage's seconds, and the rate measured in the process that "
             "ran it, as it started (a rerun that skips a stage keeps both).", "",
             "| stage | seconds | float32 matmul GFLOP/s when it ran |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {'not recorded' if rates.get(k) is None else rates[k]} |" for k, v in seconds.items()]
    lines.append(f"| all stages | {round(sum(seconds.values()), 1)} | {', '.join(map(str, known)) or 'not recorded'} |")
    return lines


__all__ = ["STAGE_FILE", "StageOutcome", "finished_stage", "rates_sentence", "read_stage", "recorded_rates",
           "run_stage", "stage_rate", "time_table"]
