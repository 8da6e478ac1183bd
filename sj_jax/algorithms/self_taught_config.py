"""The configuration of a self-taught evaluator run (`sj-jax self-taught`, SPEC 2): one frozen dataclass tree.

Every setting the paper and the authors' release vary is one key: the instruction filter, how the
worse response is made, k judgments an order and their temperature, the training method (SFT, or
DPO with an NLL term), and whether each iteration trains from the seed model or from the last one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from sj_jax.core.config import Runtime, as_base, check_owned, with_fields
from sj_jax.core.errors import ConfigError
from sj_jax.judge.generative_template import GenerativeTemplate
from sj_jax.judge.template import DEFAULT_TEMPLATE, JudgeTemplate
from sj_jax.models.lora import LoraConfig
from sj_jax.train.config import CheckpointConfig, DataConfig, DPOConfig, OptimConfig, TrainConfig
from sj_jax.weights.registry import DEFAULT_MODEL

CATEGORIES = ("math", "coding", "reasoning", "writing", "knowledge", "other")


@dataclasses.dataclass(frozen=True)
class PromptText:
    """A prompt the loop asks the model: system, user (with {instruction}), and the assistant's first words."""

    system: str
    user: str
    assistant_prefix: str = ""

    def __post_init__(self):
        if "{instruction}" not in self.user:
            raise ConfigError("user: must contain the placeholder {instruction}")


@dataclasses.dataclass(frozen=True)
class SelectionSettings:
    """Stage 1: the model labels each pool instruction with a category and a difficulty (1-5);
    kept when both parse, the category is in `categories` (() = any) and the difficulty is at least
    `min_difficulty`. Every dropped row is counted under its reason."""

    enabled: bool = True
    categories: tuple[str, ...] = ()
    min_difficulty: int = 1
    keep_unparsed: bool = False  # keep rows whose label cannot be read (counted apart)
    max_new_tokens: int = 12
    prompt: PromptText = PromptText(
        system="You sort user instructions by skill and difficulty.",
        user=("Instruction: {instruction}\n\nName its category (one of: " + ", ".join(CATEGORIES) + ") and its "
              "difficulty from 1 (easy) to 5 (hard), in the form: Category: <category>; Difficulty: <1-5>"),
        assistant_prefix="Category:")

    def __post_init__(self):
        for c in self.categories:
            if c not in CATEGORIES:
                raise ConfigError(f"selection.categories: unknown {c!r}; known: {', '.join(CATEGORIES)}")
        if not 1 <= self.min_difficulty <= 5:
            raise ConfigError(f"selection.min_difficulty: between 1 and 5, got {self.min_difficulty}")


@dataclasses.dataclass(frozen=True)
class PairSettings:
    """Stage 2: a good response to x (`temperature` 0 = greedy), a modified instruction x' written by
    the model (sampled at `modify_temperature`) and the model's response to x', worse for x by
    construction. `writer`: the seed model writes every iteration's pairs, or the current judge."""

    writer: Literal["seed", "judge"] = "seed"
    max_response_tokens: int = 64
    temperature: float = 0.0
    max_instruction_tokens: int = 64
    modify_temperature: float = 0.7
    top_p: float = 0.95
    keep_cut: bool = False  # keep a modified instruction or response cut at its token limit (else dropped, counted)
    prompt: PromptText = PromptText(
        system="You write instructions.",
        user=("Here is an instruction:\n{instruction}\n\nWrite one new instruction on the same topic and in the same "
              "style that asks for something different, so that a good answer to the new instruction is a wrong "
              "answer to this one. Write only the new instruction."),
        assistant_prefix="New instruction:")


@dataclasses.dataclass(frozen=True)
class AnnotateSettings:
    """Stage 3: `samples` judgments an order from the current judge, kept when the verdict is the
    known label (at most `per_order` a pair and order), balanced between A and B; with `both_orders`,
    only from pairs judged right in both orders at least once (a position rule is right in one)."""

    samples: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    per_order: int = 1
    balance: bool = True
    both_orders: bool = False

    def __post_init__(self):
        if self.samples < 1 or self.per_order < 1:
            raise ConfigError(f"annotate.samples and annotate.per_order: at least 1, got {self.samples}, "
                              f"{self.per_order}")


@dataclasses.dataclass(frozen=True)
class JudgeTraining(TrainConfig):
    """Stage 4: a training run (`TrainConfig`: steps or epochs, batch, optimizer, LoRA, DPO, the
    checkpoints) with the method: SFT on the kept judgments (the paper), or DPO with a kept judgment
    as chosen and a discarded one of the same pair as rejected, plus `dpo.nll_weight` x the chosen
    NLL (the release). `init_from`: each iteration trains from the seed model, or from the last
    iteration's judge. The loop sets the keys in `JUDGE_TRAINING_OWNED` itself."""

    method: Literal["sft", "dpo"] = "sft"
    init_from: Literal["seed", "last"] = "seed"

    def run_config(self, owned: dict[str, Any]) -> TrainConfig:
        """The `TrainConfig` the trainer runs: these settings and the loop's `owned` (dotted) keys."""
        return with_fields(as_base(self, TrainConfig), owned)


# Set by the loop for each iteration: where it starts, writes and reads, the seed, the judge text,
# and the prompt/response split of `data.max_length` (the response is the generative judgment).
JUDGE_TRAINING_OWNED = ("model", "dtype", "param_dtype", "cache_dir", "matmul_precision", "distributed", "output_dir",
                        "seed", "judge", "data.train_file", "data.max_prompt_length", "data.max_response_length")
DEFAULT_JUDGE_TRAINING = JudgeTraining(
    epochs=2.0, batch_size=8,
    data=DataConfig(max_length=1024, group_by_length=True, pair_layout="joint"),
    optim=OptimConfig(learning_rate=5e-4, warmup_ratio=0.05), lora=LoraConfig(enabled=True, rank=8, alpha=16.0),
    dpo=DPOConfig(nll_weight=1.0), checkpoint=CheckpointConfig(every=50, keep=2, async_save=False))


@dataclasses.dataclass(frozen=True)
class JudgeEvalSettings:
    """After each iteration (and for the seed model): accuracy on each RewardBench-format file, in
    each mode (`verdict`: one pass with `judge`; `generative`: `samples` judgments an order)."""

    files: tuple[str, ...] = ()
    limit: int = 0  # the first N pairs of each subset of each file (0 = all)
    limits: tuple[int, ...] = ()  # per file, in place of `limit` (a file beyond the list takes `limit`)
    modes: tuple[str, ...] = ("verdict", "generative")
    samples: int = 1
    temperature: float = 0.0

    def __post_init__(self):
        for m in self.modes:
            if m not in ("verdict", "generative"):
                raise ConfigError(f"eval.modes: unknown mode {m!r}; verdict or generative")


@dataclasses.dataclass(frozen=True)
class SelfTaughtConfig(Runtime):
    """One run: `iterations` rounds of pairs -> judgments -> training, each iteration on its own
    `instructions` instructions of the selected pool (the pool is cycled when it runs out)."""

    model: str = DEFAULT_MODEL
    output_dir: str = "runs/self_taught"
    seed: int = 0
    pool_file: str = "data/prompts_train.jsonl"  # {"prompt": ...} rows; task-suite rows ({"task", "answer"}) are checked
    pool_limit: int = 400  # at most N rows of the pool, drawn with the seed (0 = all)
    iterations: int = 2
    instructions: int = 96  # instructions an iteration
    selection: SelectionSettings = SelectionSettings()
    pairs: PairSettings = PairSettings()
    annotate: AnnotateSettings = AnnotateSettings()
    train: JudgeTraining = DEFAULT_JUDGE_TRAINING
    eval: JudgeEvalSettings = JudgeEvalSettings()
    generative: GenerativeTemplate = GenerativeTemplate()
    judge: JudgeTemplate = DEFAULT_TEMPLATE  # the one-pass template of the verdict mode's evaluation
    batch_size: int = 64  # sampler rows a compiled batch
    judge_batch_size: int = 16  # one-pass judge prompts a forward pass

    def __post_init__(self):
        check_owned(self.train, "train", DEFAULT_JUDGE_TRAINING, JUDGE_TRAINING_OWNED, "the self-taught loop")
        if self.iterations < 1:
            raise ConfigError(f"iterations: at least 1, got {self.iterations}")
        if self.instructions < 1:
            raise ConfigError(f"instructions: at least 1, got {self.instructions}")
