"""The configuration of `sj-jax demo`: every stage's budget and setting, fixed before any result is seen.

The defaults are the small demo (the README's first command: every stage at a small budget, minutes
on a 2-core CPU). `FULL` is the setting that is meant to reproduce the paper's orderings; `--full`
applies it on top of the defaults (or of `--config`). Stages 3 to 5 repeat for each of `seeds`
seeds (seed, seed + 1, ...) from the one JSFT checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from sj_jax.algorithms.pairs import DegenerateRules
from sj_jax.algorithms.self_taught_config import AnnotateSettings, JudgeTraining, PairSettings, SelectionSettings
from sj_jax.core.config import Runtime
from sj_jax.core.errors import ConfigError
from sj_jax.judge.template import JudgeTemplate
from sj_jax.tasks.families import FAMILIES
from sj_jax.train.config import LoraConfig
from sj_jax.weights.registry import DEFAULT_MODEL

# A short judge text: a judgment row is about 75 tokens where the general template makes 130, so a
# JSFT step costs about half as much. It asks for the better response, not only the correct one,
# so the same judge reads open-ended pairs (a RewardBench-format file) as well.
DEMO_TEMPLATE = JudgeTemplate(
    system="Pick the response that answers the request correctly.",
    user="{context}\n\nResponse A: {response_a}\nResponse B: {response_b}\n\nWhich response is better, A or B?",
    assistant_prefix="The better response is",
)


@dataclasses.dataclass(frozen=True)
class DemoData:
    """Stage 1: the task suite (problems per family in each split) and its known-label pairs."""

    families: tuple[str, ...] = tuple(FAMILIES)
    difficulties: tuple[int, ...] = (1, 2, 3)
    train: int = 200
    validation: int = 50
    test: int = 100
    pairs_per_problem: int = 2
    judgment_ratio: float | None = None  # JSFT mixture: judgment rows per instruction row (None: all of both)

    def __post_init__(self):
        for f in self.families:
            if f not in FAMILIES:
                raise ConfigError(f"families: unknown family {f!r}; known: {', '.join(FAMILIES)}")


class _Steps:
    """A stage of `steps` optimizer steps: at least one."""

    steps: int

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError(f"steps: must be >= 1, got {self.steps}")


@dataclasses.dataclass(frozen=True)
class DemoTrain(_Steps):
    """Stage 2: SFT (instruction rows) or JSFT (the mixture), from the base model."""

    steps: int = 16
    batch_size: int = 8
    learning_rate: float = 1e-3
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    warmup_ratio: float = 0.05
    max_length: int = 256
    lora: LoraConfig = LoraConfig(enabled=True, rank=8, alpha=16.0)


@dataclasses.dataclass(frozen=True)
class DemoDPO(_Steps):
    """Stage 3: the three ways of training from JSFT, with these settings shared by all of them:
    offline (the known-label train pairs), off-policy (samples drawn once from the JSFT policy) and
    SELF-JUDGE on-policy (fresh samples each step); the frozen JSFT model judges and is the reference."""

    steps: int = 3
    batch_size: int = 8  # prompts (pairs) a step
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.1
    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    num_samples: int = 2
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 0.9
    degenerate: DegenerateRules = DegenerateRules()  # empty / cut-off / identical samples (the missing-EOS penalty)
    lora: LoraConfig = LoraConfig(enabled=True, rank=8, alpha=16.0)


@dataclasses.dataclass(frozen=True)
class DemoEval:
    """Stages 4 and 5: greedy test accuracy, the tournament, the judges. Limits are rows per family."""

    test_limit: int = 8  # test problems per family for every policy
    judge_limit: int = 6  # held-out (test) known-label pairs per family for every judge
    max_new_tokens: int = 32
    tournament_n: tuple[int, ...] = (1, 2, 4, 8)
    tournament_limit: int = 2  # test problems per family for the tournament
    temperature: float = 1.0  # the tournament's samples
    top_p: float = 0.9
    batch_size: int = 64  # sampler rows per compiled batch
    judge_batch_size: int = 16

    def __post_init__(self):
        if not self.tournament_n or any(n < 1 for n in self.tournament_n):
            raise ConfigError(f"tournament_n: sample counts >= 1, got {list(self.tournament_n)}")


@dataclasses.dataclass(frozen=True)
class DemoSelfTaught:
    """The self-taught evaluator stage (SPEC 2), after the judges' stage: from the JSFT model, on the
    train problems' instructions, its judge measured by iteration on the held-out pairs and the
    `judge_eval` file in both modes. The quick demo leaves it out; `--full` runs it.
    `judge_for_self_judge`: SELF-JUDGE (and off-policy) then judge with the last iteration's judge,
    generatively, in place of the frozen JSFT model (SPEC 3: a configuration, not new code)."""

    enabled: bool = False
    iterations: int = 2
    instructions: int = 96  # an iteration
    pool_limit: int = 400  # train problems the instruction filter reads
    max_evaluation_tokens: int = 32
    selection: SelectionSettings = SelectionSettings()
    pairs: PairSettings = PairSettings()
    annotate: AnnotateSettings = AnnotateSettings()
    train: JudgeTraining = JudgeTraining()
    judge_for_self_judge: bool = False


@dataclasses.dataclass(frozen=True)
class DemoConfig(Runtime):
    model: str = DEFAULT_MODEL
    out: str = "runs/demo"
    seed: int = 0  # SFT, JSFT and the data; stage 3-5 seed k is seed + k
    seeds: int = 1
    judge_eval: str = ""  # a RewardBench-format JSONL ({"prompt", "chosen", "rejected", "subset"?}) both judges read
    judge: JudgeTemplate = DEMO_TEMPLATE
    data: DemoData = DemoData()
    sft: DemoTrain = DemoTrain(steps=8)
    jsft: DemoTrain = DemoTrain(steps=16)
    dpo: DemoDPO = DemoDPO()
    eval: DemoEval = DemoEval()
    self_taught: DemoSelfTaught = DemoSelfTaught()
    checkpoint_every: int = 10  # steps between a stage's checkpoints (a stopped stage resumes from the last)

    def __post_init__(self):
        if self.seeds < 1:
            raise ConfigError(f"seeds: must be >= 1, got {self.seeds}")
        if self.self_taught.judge_for_self_judge and not self.self_taught.enabled:
            raise ConfigError("self_taught.judge_for_self_judge: needs self_taught.enabled=true (the judge comes "
                              "from that stage)")


# `--full`: applied on top of the defaults (or a --config file) as key=value overrides. Sized so that
# `--full --seeds 3` ran in about 100 minutes at 180-200 GFLOP/s before the self-taught stage (about
# 60 minutes more, measured alone: see the README): JSFT's 300 cosine steps carry about
# as much learning rate as the 120 constant steps that moved the validation judge 0.563 -> 0.688; the
# tests' 40 rows per family (320) put 2 standard errors near 0.04 at 20% accuracy.
FULL = (
    "sft.steps=100",
    "jsft.steps=300",
    "dpo.steps=20",
    "eval.test_limit=40",
    "eval.judge_limit=40",
    "eval.tournament_limit=8",
    "self_taught.enabled=true",
)
