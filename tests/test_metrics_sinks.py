"""Metrics where researchers look: the JSONL file, TensorBoard and Weights & Biases get the same names
and steps (W&B only when asked for); tested with stand-ins for both libraries."""

import json
import sys
import types

from sj_jax.train.metrics import MetricsLog

ROWS = [{"step": 1, "loss": 0.7, "lr": 1e-3, "updated": 1, "note": "x"},
        {"step": 2, "loss": 0.6, "lr": 1e-3, "updated": 1, "grad_norm": float("nan")}]


class Sink:
    def __init__(self):
        self.calls, self.closed = [], False


def fake_modules(monkeypatch) -> tuple[Sink, Sink, list]:
    tb, wb, inits = Sink(), Sink(), []

    class Writer:
        def __init__(self, folder):
            tb.folder = folder

        def add_scalar(self, name, value, step):
            tb.calls.append((name, value, step))

        def close(self):
            tb.closed = True

    class Run:
        def log(self, values, step):
            wb.calls.extend((k, v, step) for k, v in values.items())

        def finish(self):
            wb.closed = True

    def init(**kw):
        inits.append(kw)
        return Run()

    monkeypatch.setitem(sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=Writer))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    return tb, wb, inits


def write(path):
    log = MetricsLog(path)
    for row in ROWS:
        log.write(row)
    log.close()


def test_tensorboard_and_wandb_get_the_jsonl_numbers_under_the_same_names_and_steps(tmp_path, monkeypatch):
    tb, wb, inits = fake_modules(monkeypatch)
    monkeypatch.setenv("WANDB_PROJECT", "sj-tests")
    (tmp_path / "run").mkdir()
    write(tmp_path / "run" / "metrics.jsonl")
    expected = [("loss", 0.7, 1), ("lr", 1e-3, 1), ("updated", 1, 1), ("loss", 0.6, 2), ("lr", 1e-3, 2),
                ("updated", 1, 2)]  # text and non-finite values stay in the JSONL file only
    assert tb.calls == expected and wb.calls == expected and tb.closed and wb.closed
    assert tb.folder == str(tmp_path / "run" / "tensorboard")
    assert [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][0] == ROWS[0]
    # one W&B run per run folder: a resumed run logs into the same one
    write(tmp_path / "run" / "metrics.jsonl")
    assert inits[0]["project"] == "sj-tests" and inits[0]["name"] == "run" and inits[0]["resume"] == "allow"
    assert inits[1]["id"] == inits[0]["id"]


def test_wandb_only_when_asked_for_and_a_missing_wandb_is_a_warning(tmp_path, monkeypatch, caplog):
    tb, wb, inits = fake_modules(monkeypatch)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    write(tmp_path / "metrics.jsonl")
    assert inits == [] and len(tb.calls) == 6
    monkeypatch.setenv("WANDB_PROJECT", "sj-tests")
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: the import fails
    write(tmp_path / "metrics.jsonl")
    assert "wandb is not installed" in caplog.text
