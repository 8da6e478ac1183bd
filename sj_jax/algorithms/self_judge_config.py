"""The configuration of a SELF-JUDGE run (`sj-jax self-judge`, SPEC 1.3): one frozen dataclass tree, read from YAML.

Every ablation of the paper is one key here, with nothing else changing between its settings:
`judge_model` (frozen JSFT or the current policy), `samples` (on-policy, off-policy, offline),
`dpo.loss_type`, `num_samples` (N, with `pairing` for N > 2) and `principles`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from sj_jax.algorithms.pairs import DegenerateRules
from sj_jax.core.errors import ConfigError
from sj_jax.judge.generative_template import GenerativeTemplate
from sj_jax.judge.template import DEFAULT_PRINCIPLES, DEFAULT_TEMPLATE, JudgeTemplate
from sj_jax.loading.runs import RunModel
from sj_jax.models.sharding import MeshConfig
from sj_jax.train.config import CheckpointConfig, DPOConfig, OptimConfig


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How the policy's responses are drawn (SPEC 1.3: T 1.0, top-p 0.9)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 0
    batch_size: int = 64  # sampler rows per compiled batch; the samples do not depend on it


@dataclasses.dataclass(frozen=True)
class ValidationSettings:
    """Greedy policy accuracy (strict and lenient) on task-suite rows, before the first step, every
    `every` steps and after the last."""

    file: str = "data/prompts_validation.jsonl"  # "" = no validation
    every: int = 0  # steps; 0 = only before and after
    limit: int = 0  # first N rows per task (0 = all)
    max_new_tokens: int = 64


@dataclasses.dataclass(frozen=True)
class SelfJudgeConfig(RunModel):
    """One run. `model` is the initial policy and, frozen, the judge and DPO reference: a JSFT run
    folder, or any model sj-jax loads. `steps` = loop steps (0: `epochs` passes over the prompts)."""

    remat: Literal["none", "full", "dots"] = "none"
    output_dir: str = "runs/self_judge"
    seed: int = 0
    prompts_file: str = "data/prompts_train.jsonl"  # {"prompt": str or messages} rows
    max_prompt_length: int = 256  # longer prompts are left out (counted in data_report.json)
    batch_size: int = 8  # prompts per step (one pair each at most)
    steps: int = 0
    epochs: float = 1.0
    num_samples: int = 2  # N per prompt
    pairing: Literal["tournament", "all_pairs"] = "tournament"  # N > 2: best vs worst of tournaments, or a round robin
    # frozen: the initial model (adapter off); policy: the current weights; checker: the task suite's checker, an
    # oracle (a diagnostic ceiling, not the method: a correct finished sample against a wrong one, else the prompt
    # is skipped as no_decision; needs {"task", "answer"} prompts); else a model of its own (a path or name sj-jax
    # loads), e.g. the judge of a self-taught run's last iteration (SPEC 3)
    judge_model: str = "frozen"
    judge_mode: Literal["verdict", "generative"] = "verdict"  # one-pass `judge`, or the `generative` template
    generative: GenerativeTemplate = GenerativeTemplate()
    judge_samples: int = 1  # generative: judgments an order, majority vote
    judge_temperature: float = 0.0  # generative: 0 = greedy
    samples: Literal["on_policy", "off_policy", "offline"] = "on_policy"
    offline_file: str = "data/pairs_train.jsonl"  # samples=offline: {"prompt", "chosen", "rejected"} rows
    sampling: SamplingSettings = SamplingSettings()
    degenerate: DegenerateRules = DegenerateRules()
    judge: JudgeTemplate = DEFAULT_TEMPLATE
    principles: tuple[str, ...] = ()  # names from DEFAULT_PRINCIPLES, majority vote; () = the judge's own system
    judge_batch_size: int = 16  # judge prompts per forward pass
    pair_layout: Literal["joint", "separate"] = "joint"  # joint: one row a pair, the prompt run once (same numbers)
    validation: ValidationSettings = ValidationSettings()
    log_every: int = 1
    logprob_chunk: int = 8192
    nan_policy: Literal["halt", "skip"] = "halt"
    max_nonfinite: int = 3
    dpo: DPOConfig = DPOConfig()
    optim: OptimConfig = OptimConfig(learning_rate=5e-6, schedule="constant", warmup_ratio=0.1)
    checkpoint: CheckpointConfig = CheckpointConfig()
    mesh: MeshConfig = MeshConfig()

    def __post_init__(self):
        if self.num_samples < 2 and self.samples != "offline":
            raise ConfigError(f"num_samples: a pair needs at least 2 samples per prompt, got {self.num_samples}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be at least 1, got {self.batch_size}")
        if self.optim.grad_accum != 1:
            raise ConfigError("optim.grad_accum: a SELF-JUDGE step trains on the pairs of its own samples at once; "
                              "set it to 1 (raise batch_size for more pairs a step)")
        if self.sampling.max_new_tokens < 1:
            raise ConfigError(f"sampling.max_new_tokens: must be at least 1, got {self.sampling.max_new_tokens}")
        if not self.judge_model:
            raise ConfigError("judge_model: frozen, policy, checker, or a model to load (a path or an embedded name)")
        if self.judge_model == "checker" and (self.judge_mode != "verdict" or self.principles):
            raise ConfigError("judge_model: checker is the task suite's checker; it takes no judge_mode generative "
                              "and no principles")
        if self.judge_samples < 1:
            raise ConfigError(f"judge_samples: at least 1, got {self.judge_samples}")
        if self.judge_mode == "generative" and self.principles:
            raise ConfigError("principles: the generative judge has one template; principles apply to judge_mode verdict")
        known = [p.name for p in DEFAULT_PRINCIPLES]
        for p in self.principles:
            if p not in known:
                raise ConfigError(f"principles: unknown principle {p!r}; known: {', '.join(known)}")

    @property
    def principle_list(self):
        """The `Principle`s judged (None: the template's own system message)."""
        return [p for p in DEFAULT_PRINCIPLES if p.name in self.principles] or None
