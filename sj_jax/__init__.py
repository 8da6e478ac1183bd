"""sj_jax: aligning language models by on-policy self-judgment, in JAX/Flax."""

from sj_jax.algorithms.self_judge import SelfJudgeResult, self_judge
from sj_jax.algorithms.self_judge_config import SelfJudgeConfig
from sj_jax.algorithms.self_taught import SelfTaughtResult, self_taught
from sj_jax.algorithms.self_taught_config import SelfTaughtConfig
from sj_jax.algorithms.tournament import TournamentResult, tournament, tournaments_by_n
from sj_jax.core.allocator import map_large_buffers
from sj_jax.core.config import load_yaml
from sj_jax.core.errors import ConfigError, DataError, ModelNotFoundError, SJError, TokenizerError, WeightsError
from sj_jax.experiments.demo import demo
from sj_jax.experiments.demo_config import DemoConfig
from sj_jax.inference.generate import Generations, generate
from sj_jax.judge import DEFAULT_TEMPLATE, JudgeTemplate, judge_pairs
from sj_jax.judge.generative import GenerativeJudgments, GenerativeTemplate, judge_generative
from sj_jax.judge.verdict import Verdict, parse_verdict
from sj_jax.loading.model import Model, init_model, load_model, load_run_parts, logits, save_hf
from sj_jax.models.config import ModelConfig, RopeConfig
from sj_jax.models.sharding import MeshConfig, make_mesh
from sj_jax.objectives.dpo import dpo_loss
from sj_jax.objectives.sequence import sequence_logprobs
from sj_jax.objectives.sft import sft_loss
from sj_jax.train.config import TrainConfig

__version__ = "0.1.0"

map_large_buffers()  # before the first large array: freed large host buffers return to the system

__all__ = [
    "Model", "ModelConfig", "RopeConfig", "MeshConfig", "make_mesh", "load_model", "init_model", "logits",
    "save_hf", "generate", "Generations", "JudgeTemplate", "DEFAULT_TEMPLATE", "judge_pairs", "tournament",
    "tournaments_by_n", "TournamentResult", "judge_generative", "GenerativeTemplate", "GenerativeJudgments",
    "parse_verdict", "Verdict", "dpo_loss",
    "sft_loss", "sequence_logprobs", "load_run_parts", "load_yaml", "TrainConfig", "SelfJudgeConfig",
    "self_judge", "SelfJudgeResult", "SelfTaughtConfig", "self_taught", "SelfTaughtResult", "DemoConfig", "demo",
    "DataError", "SJError", "ConfigError", "WeightsError", "TokenizerError", "ModelNotFoundError",
]
