"""sj_jax: aligning language models by on-policy self-judgment, in JAX/Flax."""

from sj_jax.api import Model, init_model, load_model, logits, save_hf
from sj_jax.generate import Generations, generate
from sj_jax.judge import DEFAULT_TEMPLATE, JudgeTemplate, judge_pairs
from sj_jax.judge.generative import GenerativeJudgments, GenerativeTemplate, judge_generative
from sj_jax.judge.verdict import Verdict, parse_verdict
from sj_jax.loops.tournament import TournamentResult, tournament, tournaments_by_n
from sj_jax.objectives.dpo import dpo_loss
from sj_jax.objectives.sequence import sequence_logprobs
from sj_jax.objectives.sft import sft_loss
from sj_jax.errors import ConfigError, ModelNotFoundError, SJError, TokenizerError, WeightsError
from sj_jax.model_config import ModelConfig, RopeConfig
from sj_jax.sharding import MeshConfig, make_mesh

__version__ = "0.1.0"

__all__ = [
    "Model", "ModelConfig", "RopeConfig", "MeshConfig", "make_mesh", "load_model", "init_model", "logits",
    "save_hf", "generate", "Generations", "JudgeTemplate", "DEFAULT_TEMPLATE", "judge_pairs", "tournament",
    "tournaments_by_n", "TournamentResult", "judge_generative", "GenerativeTemplate", "GenerativeJudgments",
    "parse_verdict", "Verdict", "dpo_loss",
    "sft_loss", "sequence_logprobs", "SJError", "ConfigError", "WeightsError", "TokenizerError", "ModelNotFoundError",
]
