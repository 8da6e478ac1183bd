"""Where a run's numbers go: a JSONL file a user can plot, TensorBoard when it is installed, Weights &
Biases when it is installed and `WANDB_PROJECT` asks for it (the same names and steps in all three),
and the end-of-run report (a markdown table and a loss plot). Process 0 writes them (`NullLog`
elsewhere)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per logged step to `path`. On resume, lines past the restored step
    are dropped first, so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = Path(path)
        kept = []
        if resume_step > 0 and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except ValueError:
                    break  # a line cut by the kill; everything after it is stale too
        self.path.write_text("".join(line + "\n" for line in kept))
        self._f = open(self.path, "a", encoding="utf-8")
        self._tb = _tensorboard(self.path.parent / "tensorboard")
        self._wandb = _wandb(self.path.parent)

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        numbers = {k: v for k, v in row.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if self._tb is not None:
            for k, v in numbers.items():
                self._tb.add_scalar(k, v, row["step"])
        if self._wandb is not None:
            self._wandb.log(numbers, step=row["step"])

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class NullLog:
    """A `MetricsLog` that keeps nothing: what the processes other than process 0 log to."""

    def write(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _wandb(folder: Path):
    """A Weights & Biases run for the run folder when `WANDB_PROJECT` is set and wandb is installed:
    named after the folder, its id made from the folder's path, so a resumed run logs into the same
    W&B run (steps past the restored one are logged again, as in the JSONL file)."""
    project = os.environ.get("WANDB_PROJECT", "")
    if not project:
        return None
    try:
        import wandb  # type: ignore
    except ImportError:
        log.warning("WANDB_PROJECT=%s but wandb is not installed: metrics go to %s only", project, folder)
        return None
    run_id = "sj-" + hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]
    return wandb.init(project=project, name=folder.name, id=run_id, resume="allow", dir=str(folder))


def _tensorboard(folder: Path):
    try:
        from tensorboardX import SummaryWriter  # type: ignore
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter  # type: ignore
        except ImportError:
            return None
    return SummaryWriter(str(folder))


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_report(out_dir: Path, title: str, rows: list[dict], summary: dict[str, Any],
                 keys: tuple[str, ...] = ("loss",), columns: tuple[str, ...] | None = None) -> Path:
    """`report.md` (a summary table and the metrics at a few steps) and `metrics.png` (a plot of each
    of `keys`) when matplotlib is there. columns: the metrics in the table (default: every number
    of the last row)."""
    out_dir = Path(out_dir)
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    if rows:
        cols = ["step"] + ([k for k in columns if any(k in r for r in rows)] if columns is not None else
                           [k for k in rows[-1] if k != "step" and isinstance(rows[-1][k], (int, float))])
        picks = sorted({rows[int(i * (len(rows) - 1) / 4)]["step"] for i in range(5)})
        by_step = {r["step"]: r for r in rows}
        lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for s in picks:
            r = by_step[s]
            lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        present = [k for k in keys if any(k in r for r in rows)]
        if present:
            cols = min(4, len(present))
            nrows = -(-len(present) // cols)
            fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
            for ax in axes.ravel()[len(present):]:
                ax.axis("off")
            for ax, k in zip(axes.ravel(), present):
                have = [r for r in rows if isinstance(r.get(k), (int, float))]  # a key may be logged every K steps
                ax.plot([r["step"] for r in have], [r[k] for r in have], marker="o" if len(have) < 20 else None)
                ax.set_xlabel("step")
                ax.set_title(k)
            fig.tight_layout()
            fig.savefig(out_dir / "metrics.png", dpi=100)
            plt.close(fig)
            lines += ["", "![metrics](metrics.png)"]
    except ImportError:
        pass
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
