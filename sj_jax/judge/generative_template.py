"""The generative judge's text: the template, its prompt turns, and a judgment as a chat row.

Text only (no model): the data build writes generative judgment rows with it, and the generative
judge (`sj_jax.judge.generative`) prompts with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from sj_jax.core.config import from_dict
from sj_jax.core.errors import ConfigError
from sj_jax.judge.template import check_user


@dataclasses.dataclass(frozen=True)
class GenerativeTemplate:
    """The generative judge's text. `user` holds {context}, {response_a}, {response_b}, each once;
    the evaluation follows `assistant_prefix`; `verdict_prefix` is fed after it ("" = none) and the
    verdict is `verdict_a` or `verdict_b` in the text (a verdict the model wrote in its evaluation
    itself is its verdict: see `own_verdict`)."""

    system: str = ("You are an impartial judge. Compare the two responses to the user's request below and decide "
                   "which one follows the request and answers it better: correct, relevant and complete. Ignore "
                   "the order of the responses and their length. First explain your comparison briefly, then "
                   "give your final verdict: [[A]] if Response A is better, [[B]] if Response B is better.")
    user: str = ("[User request]\n{context}\n\n[Response A]\n{response_a}\n[End of Response A]\n\n"
                 "[Response B]\n{response_b}\n[End of Response B]")
    assistant_prefix: str = ""
    verdict_a: str = "[[A]]"
    verdict_b: str = "[[B]]"
    verdict_prefix: str = "\n\nFinal verdict: [["
    max_evaluation_tokens: int = 64
    max_verdict_tokens: int = 4

    def __post_init__(self):
        for name in ("system", "user", "assistant_prefix", "verdict_a", "verdict_b", "verdict_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"generative.{name}: expected a string, got {getattr(self, name)!r}")
        check_user(self.user, "generative.user")
        if not self.verdict_a or not self.verdict_b or self.verdict_a == self.verdict_b:
            raise ConfigError(f"generative.verdict_a/verdict_b: two different non-empty markers, got "
                              f"{self.verdict_a!r} and {self.verdict_b!r}")
        if self.verdict_a in self.verdict_b or self.verdict_b in self.verdict_a:
            raise ConfigError("generative.verdict_a/verdict_b: one marker contains the other")
        if self.max_evaluation_tokens < 0 or self.max_verdict_tokens < 1:
            raise ConfigError(f"generative.max_evaluation_tokens >= 0 and max_verdict_tokens >= 1, got "
                              f"{self.max_evaluation_tokens} and {self.max_verdict_tokens}")
        if not self.verdict_prefix and self.max_evaluation_tokens == 0:
            raise ConfigError("generative.max_evaluation_tokens: 0 needs a verdict_prefix (nothing would be written)")

    @property
    def max_new_tokens(self) -> int:
        return self.max_evaluation_tokens + self.max_verdict_tokens

    def verdict_text(self, label: Literal["A", "B"]) -> str:
        """What follows the evaluation in a judgment naming `label`: the verdict prefix (the one the
        judge is fed), then the rest of the marker ("\\n\\nFinal verdict: [[" + "A]]"); with no
        prefix, a space and the whole marker."""
        marker = self.verdict_a if label == "A" else self.verdict_b
        if not self.verdict_prefix:
            return " " + marker
        k = max(k for k in range(len(marker) + 1) if self.verdict_prefix.endswith(marker[:k]))
        return self.verdict_prefix + marker[k:]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "generative") -> "GenerativeTemplate":
        return from_dict(cls, data, where)


def messages(template: GenerativeTemplate, context: str, response_a: str, response_b: str) -> list[dict]:
    """The [system, user] turns of one judge prompt."""
    user = template.user.format(context=context, response_a=response_a, response_b=response_b)
    return [{"role": "system", "content": template.system}, {"role": "user", "content": user}]


def render_prompt(tokenizer: Any, template: GenerativeTemplate, context: str, response_a: str,
                  response_b: str) -> str:
    """The prompt text through the chat template's generation prompt and the assistant prefix."""
    head = tokenizer.apply_chat_template(messages(template, context, response_a, response_b), tokenize=False,
                                         add_generation_prompt=True)
    return head + template.assistant_prefix


def judgment_row(template: GenerativeTemplate, context: str, response_a: str, response_b: str,
                 judgment: str) -> dict:
    """A chat row for SFT on one judgment: the prompt's turns and the judgment as the assistant's."""
    return {"messages": messages(template, context, response_a, response_b)
            + [{"role": "assistant", "content": template.assistant_prefix + judgment}]}
