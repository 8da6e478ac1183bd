"""The configuration of `sj-jax demo`: every stage's budget and setting, fixed before any result is seen.

The defaults are the small demo (the README's first command: every stage at a small budget, minutes
on a 2-core CPU). `FULL` is the setting that is meant to reproduce the paper's orderings; `--full`
applies it on top of the defaults (or of `--config`). Stages 3 to 5 repeat for each of `seeds`
seeds (seed, seed + 1, ...) from the one JSFT checkpoint.
"""

from __future__ import annotations

import dataclasses

from sj_jax.algorithms.self_judge_config import SamplingSettings, SelfJudgeConfig, ValidationSettings
from sj_jax.algorithms.self_taught_config import SelfTaughtConfig
from sj_jax.core.config import Runtime, check_owned
from sj_jax.core.errors import ConfigError
from sj_jax.data.build import DataBuildConfig, OwnSamplesConfig
from sj_jax.judge.generative_template import GenerativeTemplate
from sj_jax.judge.template import JudgeTemplate
from sj_jax.models.lora import LoraConfig
from sj_jax.train.config import CheckpointConfig, DataConfig, OptimConfig, TrainConfig
from sj_jax.weights.registry import DEFAULT_MODEL

# A short judge text: a judgment row is about 75 tokens where the general template makes 130, so a
# JSFT step costs about half as much. It asks for the better response, not only the correct one,
# so the same judge reads open-ended pairs (a RewardBench-format file) as well.
DEMO_TEMPLATE = JudgeTemplate(
    system="Pick the response that answers the request correctly.",
    user="{context}\n\nResponse A: {response_a}\nResponse B: {response_b}\n\nWhich response is better, A or B?",
    assistant_prefix="The better response is",
)


LORA = LoraConfig(enabled=True, rank=8, alpha=16.0)

# Stage 1's `sj-jax data build`: the task suite's problems per family in each split, their known-label
# pairs. Its `own_samples` are the judge data stage's (after SFT, into judge_data/): the SFT policy's
# own answers to train problems, checked, as pairs of a correct against a wrong answer of one problem,
# mixed into JSFT beside the known-label pairs, so the judge learns to tell the policy's answers apart.
DATA = DataBuildConfig(max_prompt_length=256, max_response_length=128,
                       own_samples=OwnSamplesConfig(enabled=True, pairing="own", problems=96, samples=4, per_problem=2,
                                                    max_new_tokens=32))

# Stage 2's `sj-jax sft|jsft` from the base model: SFT on the instruction rows, JSFT on the mixture.
TRAIN = TrainConfig(steps=16, batch_size=8, data=DataConfig(max_length=256, group_by_length=True),
                    optim=OptimConfig(learning_rate=1e-3, warmup_ratio=0.05), lora=LORA)

# Stage 3's `sj-jax self-judge`, the settings shared by its three ways of training from JSFT: offline
# (the known-label train pairs), off-policy (samples drawn once from the JSFT policy) and SELF-JUDGE
# on-policy (fresh samples each step); the frozen JSFT model judges and is the reference. No
# validation during training: the test split is evaluated once, in stage 4.
SELF_JUDGE = SelfJudgeConfig(steps=3, batch_size=8, sampling=SamplingSettings(max_new_tokens=32),
                             validation=ValidationSettings(file=""),
                             optim=OptimConfig(learning_rate=2e-4, schedule="constant", warmup_ratio=0.1), lora=LORA)

# The keys of each stage's config that the demo sets itself: where a stage starts, reads and
# writes, its seed, and what every stage shares (the judge's text, dtype, cache, checkpoints).
SHARED = ("dtype", "cache_dir", "matmul_precision", "distributed", "judge")
DATA_OWNED = SHARED + ("generative", "output_dir", "seed", "model", "max_length", "own_samples.model")
TRAIN_OWNED = SHARED + ("model", "param_dtype", "output_dir", "seed", "data.train_file", "checkpoint")
SELF_JUDGE_OWNED = SHARED + ("generative", "model", "param_dtype", "output_dir", "seed", "samples", "prompts_file",
                             "offline_file", "checkpoint")
SELF_JUDGE_JUDGE = ("judge_model", "judge_mode")  # owned too with self_taught.judge_for_self_judge
SELF_TAUGHT_OWNED = SHARED + ("generative", "model", "output_dir", "seed", "pool_file", "eval.files", "eval.limits",
                              "train.checkpoint")


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
    # The judges on the JSFT policy's own answers: `own_pairs_samples` samples (at `temperature`,
    # `top_p`) for each of the first `own_pairs_limit` test problems per family; a correct finished
    # one against a wrong one where a problem has both (one pair a problem).
    own_pairs_limit: int = 4
    own_pairs_samples: int = 4

    def __post_init__(self):
        if self.own_pairs_limit < 1:
            raise ConfigError(f"own_pairs_limit: test problems per family, >= 1, got {self.own_pairs_limit}")
        if self.own_pairs_samples < 2:
            raise ConfigError(f"own_pairs_samples: a pair needs 2 or more samples a problem, "
                              f"got {self.own_pairs_samples}")
        if not self.tournament_n or any(n < 1 for n in self.tournament_n):
            raise ConfigError(f"tournament_n: sample counts >= 1, got {list(self.tournament_n)}")


@dataclasses.dataclass(frozen=True)
class DemoSelfTaught(SelfTaughtConfig):
    """The self-taught evaluator stage (SPEC 2, `sj-jax self-taught` with these keys), after the
    judges' stage: from the JSFT model, on the train problems' instructions, its judge measured by
    iteration on the held-out pairs and the `judge_eval` file in both modes. The quick demo leaves it
    out (`enabled`); `--full` runs it. `judge_for_self_judge`: SELF-JUDGE (and off-policy) then judge
    with the last iteration's judge, generatively, in place of the frozen JSFT model (SPEC 3: a
    configuration, not new code)."""

    enabled: bool = False
    judge_for_self_judge: bool = False


SELF_TAUGHT = DemoSelfTaught()


@dataclasses.dataclass(frozen=True)
class DemoConfig(Runtime):
    """The demo: each stage's own command config (`data`, `sft`, `jsft`, `self_judge`, `self_taught`;
    their keys as in that command's YAML), the evaluations, and what the demo sets in all of them
    (`model`, `seed`, `judge`, `dtype`, `cache_dir`, `checkpoint`: see the `*_OWNED` keys)."""

    model: str = DEFAULT_MODEL
    out: str = "runs/demo"
    seed: int = 0  # SFT, JSFT and the data; stage 3-5 seed k is seed + k
    seeds: int = 1
    judge_eval: str = ""  # a RewardBench-format JSONL ({"prompt", "chosen", "rejected", "subset"?}) both judges read
    judge: JudgeTemplate = DEMO_TEMPLATE
    # The generative judge's text, wherever the model judges generatively: JSFT's generative rows
    # (`data.jsft.generative_rows`), the self-taught loop, and stage 3 with `self_judge.judge_mode`.
    generative: GenerativeTemplate = GenerativeTemplate()
    own_samples_from: str = "sft"  # who answers for data.own_samples: "sft" (the SFT run) or "base"
    data: DataBuildConfig = DATA
    sft: TrainConfig = dataclasses.replace(TRAIN, steps=8)
    jsft: TrainConfig = TRAIN
    self_judge: SelfJudgeConfig = SELF_JUDGE
    eval: DemoEval = DemoEval()
    self_taught: DemoSelfTaught = SELF_TAUGHT
    checkpoint: CheckpointConfig = CheckpointConfig(every=10, keep=2, async_save=False)  # every training stage's

    def __post_init__(self):
        if self.seeds < 1:
            raise ConfigError(f"seeds: must be >= 1, got {self.seeds}")
        if self.own_samples_from not in ("sft", "base"):
            raise ConfigError(f"own_samples_from: 'sft' or 'base', got {self.own_samples_from!r}")
        if self.self_taught.judge_for_self_judge and not self.self_taught.enabled:
            raise ConfigError("self_taught.judge_for_self_judge: needs self_taught.enabled=true (the judge comes "
                              "from that stage)")
        judge_keys = SELF_JUDGE_JUDGE if self.self_taught.judge_for_self_judge else ()
        sections = (("data", DATA, DATA_OWNED), ("sft", TRAIN, TRAIN_OWNED), ("jsft", TRAIN, TRAIN_OWNED),
                    ("self_judge", SELF_JUDGE, SELF_JUDGE_OWNED + judge_keys),
                    ("self_taught", SELF_TAUGHT, SELF_TAUGHT_OWNED))
        for name, default, owned in sections:
            check_owned(getattr(self, name), name, default, owned, "the demo")


# `--full`: applied on top of the defaults (or a --config file) as key=value overrides, fixed on the
# validation split before any test number was read (issue 25's notes give each probe):
# - JSFT's 300 cosine steps carry about as much learning rate as the 120 constant steps that moved
#   the validation judge 0.563 -> 0.688.
# - The judge data: the SFT policy answers 800 train problems 4 times (about 380 own pairs), one
#   known-label pair kept per own pair; on validation own-sample pairs the JSFT judge went 0.547
#   (known-label rows only) -> 0.594.
# - Stage 3: 16 prompts a step, N = 4 (best against worst), 20 steps, beta 0.1, lr 2e-4 constant,
#   LoRA r8. With the checker judging (the ceiling), validation accuracy went 0.475 -> 0.515 at 20
#   steps and fell back to 0.495 at 40; lr 1e-3 lost 5 points; N = 8 gave 0.485 at twice the sampling.
# - JSFT's generative rows (`data.jsft.generative_rows`: the problem worked, each response's answer,
#   the verdict) are off: on validation own-sample pairs they moved the one-pass judge 0.594 -> 0.625
#   (64 pairs, within the spread) and left the generative judge at chance (0.508: it works the
#   problem and copies both answers right, then names a position), and they doubled JSFT's time
#   (2,376 s of 300 steps at 384 tokens). Stage 3 judges in one pass.
# - The self-taught loop keeps judgments only from pairs judged right in both orders: the seed's
#   generative verdicts follow position. Its selection stage is off: FULL filters no category or
#   difficulty, and the JSFT model without generative rows writes no "Difficulty:" label (366 of 400
#   pool rows unparsed), so selection would only drop rows.
# - Sized by time alone, before any test number was read, so that three seeds run in about two hours
#   on 2 cores: 20 test problems per family (160; 2 standard errors near 0.06 at 20% accuracy) for
#   every policy, 10 known-label judge pairs per family (each judge in both modes in the self-taught
#   loop), the tournament on 4 a family, the own-sample judge pairs from 30 test problems per family
#   answered 8 times, and the self-taught loop on 32 instructions an iteration. Stage 3 keeps the
#   recipe the validation ceiling chose.
FULL = (
    "sft.steps=100",
    "jsft.steps=300",
    "data.own_samples.problems=800",
    "data.own_samples.known_per_own=1.0",
    "self_judge.steps=20",
    "self_judge.batch_size=16",
    "self_judge.num_samples=4",
    "eval.test_limit=20",
    "eval.judge_limit=10",
    "eval.tournament_limit=4",
    "eval.own_pairs_limit=30",
    "eval.own_pairs_samples=8",
    "self_taught.enabled=true",
    "self_taught.instructions=32",
    "self_taught.selection.enabled=false",
    "self_taught.annotate.both_orders=true",
)
