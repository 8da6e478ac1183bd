"""Pairwise judging: in one forward pass (the judge template, verdict scoring), or generatively (an
evaluation, then a parsed verdict: `sj_jax.judge.generative`, `sj_jax.judge.verdict`)."""

from sj_jax.judge.scoring import Judgments, judge_pairs, judge_pairs_detailed, majority_probability
from sj_jax.judge.template import (
                                   DEFAULT_PRINCIPLES,
                                   DEFAULT_TEMPLATE,
                                   JudgeTemplate,
                                   Principle,
                                   VerdictTokenError,
                                   render_prompt,
                                   verdict_token_ids,
)

__all__ = [
    "JudgeTemplate", "DEFAULT_TEMPLATE", "DEFAULT_PRINCIPLES", "Principle", "VerdictTokenError", "render_prompt",
    "verdict_token_ids", "judge_pairs", "judge_pairs_detailed", "Judgments", "majority_probability",
]
