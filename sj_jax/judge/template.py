"""The pairwise judge prompt: a template from config, rendered through the tokenizer's chat template.

A judge prompt is [system, user] rendered with the model's own chat template and its generation
prompt, followed by the template's assistant prefix, which ends right before the verdict. The
verdict is one token, " A" or " B" by default. JSFT's judgment examples use the very same text
(`render_prompt` + the verdict string), so the judge is asked exactly what it was trained on.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any, Callable, Sequence

from sj_jax.core.config import from_dict
from sj_jax.core.errors import ConfigError, DataError

PLACEHOLDERS = ("context", "response_a", "response_b")


class VerdictTokenError(ConfigError):
    """A verdict string is not exactly one token after the assistant prefix."""


@dataclasses.dataclass(frozen=True)
class Principle:
    """A judging criterion: its `name` and the system message that asks for it."""

    name: str
    system: str


def check_user(user: str, where: str = "judge.user") -> None:
    """Each of {context}, {response_a}, {response_b} appears exactly once in `user`, plain, and no
    other placeholder does; `ConfigError` naming `where` otherwise."""
    found = []
    try:
        fields = list(string.Formatter().parse(user))
    except ValueError as e:
        raise ConfigError(f"{where}: malformed placeholder: {e} (write {{{{ and }}}} for literal braces)")
    for _, field, spec, conversion in fields:
        if field is None:
            continue
        if field not in PLACEHOLDERS:
            allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise ConfigError(f"{where}: unknown placeholder {{{field}}}; allowed: {allowed}")
        if spec or conversion:
            raise ConfigError(f"{where}: placeholder {{{field}}} must be plain (no format spec or conversion)")
        found.append(field)
    for p in PLACEHOLDERS:
        if found.count(p) != 1:
            what = "is missing" if p not in found else f"appears {found.count(p)} times"
            every = ", ".join("{" + q + "}" for q in PLACEHOLDERS)
            raise ConfigError(f"{where}: placeholder {{{p}}} {what}; each of {every} must appear once")


@dataclasses.dataclass(frozen=True)
class JudgeTemplate:
    """The judge's text. `user` holds the placeholders {context}, {response_a}, {response_b} (each
    exactly where it is shown; `{{`/`}}` for literal braces); `assistant_prefix` ends right before
    the verdict; `verdict_a` / `verdict_b` must each be one token in that place."""

    system: str
    user: str
    assistant_prefix: str
    verdict_a: str = " A"
    verdict_b: str = " B"

    def __post_init__(self):
        for name in ("system", "user", "assistant_prefix", "verdict_a", "verdict_b"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"judge.{name}: expected a string, got {getattr(self, name)!r}")
        check_user(self.user)
        if not self.verdict_a or not self.verdict_b:
            raise ConfigError("judge.verdict_a/verdict_b: verdict strings must not be empty")
        if self.verdict_a == self.verdict_b:
            raise ConfigError(f"judge.verdict_b: equals verdict_a ({self.verdict_a!r})")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "judge") -> "JudgeTemplate":
        """Builds a template from a config mapping; unknown keys are rejected by name."""
        return from_dict(cls, data, where)


DEFAULT_TEMPLATE = JudgeTemplate(
    system=("You are a fair and careful judge. You compare two responses to the same conversation and "
            "decide which one is more helpful, correct and relevant to the user's request."),
    user=("Here is a conversation context and two candidate responses.\n\n"
          "[Context]\n{context}\n\n"
          "[Response A]\n{response_a}\n\n"
          "[Response B]\n{response_b}\n\n"
          "Which response is better? Answer with A or B."),
    assistant_prefix="After comparing both responses, the better one is Response",
)

# The principles of the SELF-JUDGE paper's principle-aware ablation, one system message each.
DEFAULT_PRINCIPLES = (
    Principle("helpfulness", "You are a fair judge. Decide which response is more helpful: it addresses the "
                             "user's request fully and usefully."),
    Principle("honesty", "You are a fair judge. Decide which response is more honest: it is candid about what "
                         "it knows and does not know, and does not mislead."),
    Principle("truthfulness", "You are a fair judge. Decide which response is more truthful: its statements are "
                              "factually correct and free of fabrication."),
    Principle("instruction_following", "You are a fair judge. Decide which response follows the user's "
                                       "instructions more closely, including every stated constraint."),
)


def as_principles(principles: Sequence[Any] | None, template: JudgeTemplate) -> tuple[Principle, ...]:
    """`Principle`s from `Principle`s or (name, system) pairs; None means the template's own system."""
    if principles is None:
        return (Principle("default", template.system),)
    if isinstance(principles, (str, bytes)) or len(principles) == 0:
        raise ConfigError("principles: expected a non-empty list of (name, system message) pairs")
    out = []
    for i, p in enumerate(principles):
        if not isinstance(p, Principle):
            if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(s, str) for s in p)):
                raise ConfigError(f"principles[{i}]: expected (name, system message), got {p!r}")
            p = Principle(*p)
        out.append(p)
    names = [p.name for p in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(f"principles: the name {dup!r} appears twice")
    return tuple(out)


def check_texts(name: str, texts: Sequence[str], n: int | None) -> int:
    """The length of `texts`, a list of non-empty strings (of length `n` when given), else a ValueError naming `name`."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise ValueError(f"{name}: expected a list of strings, got {type(texts).__name__}")
    if n is not None and len(texts) != n:
        raise ValueError(f"{name}: {len(texts)} items, but contexts has {n}; the lists must be equally long")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}]: expected a string, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"{name}[{i}]: empty text; the judge needs a non-empty context and responses")
    return len(texts)


def render_prompt(tokenizer: Any, template: JudgeTemplate, context: str, response_a: str, response_b: str,
                  principle: Principle | None = None) -> str:
    """The judge prompt text, up to and including the assistant prefix (the verdict comes next).

    `principle` replaces the template's system message with its own.
    """
    system = template.system if principle is None else principle.system
    user = template.user.format(context=context, response_a=response_a, response_b=response_b)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return head + template.assistant_prefix


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of rendered chat text. No special tokens are added: the chat template wrote any BOS."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_context(tokenizer: Any, prompts_of: Callable[[str], list[list[int]]], context: str, max_tokens: int,
                truncate: bool, where: str, limit_name: str = "max_prompt_tokens") -> tuple[list[list[int]], int]:
    """A pair's judge prompts (`prompts_of(context)`: token ids, one list per order and principle), each
    at most `max_tokens` long, and how many of the context's tokens were cut to get there.

    The rule, when `truncate`: the context loses its first tokens (the end of a conversation is what the
    responses answer) until the longest prompt fits. Otherwise a prompt over `max_tokens` is an error
    naming `where`, its length and the limit (`limit_name`). The responses are never cut: a pair whose prompt does not
    fit even with no context left is an error either way."""
    prompts = prompts_of(context)
    over = max(map(len, prompts)) - max_tokens
    if over <= 0:
        return prompts, 0
    if not truncate:
        raise DataError(f"{where}: its judge prompt has {over + max_tokens} tokens, more than {limit_name} "
                         f"{max_tokens}; raise it, shorten the context, or cut contexts to fit (too_long: truncate)")
    ids = encode(tokenizer, context)
    cut = over
    while cut <= len(ids):
        prompts = prompts_of(tokenizer.decode(ids[cut:], skip_special_tokens=False))
        over = max(map(len, prompts)) - max_tokens
        if over <= 0:
            return prompts, cut
        cut += over  # a token boundary moved: cut as many more
    raise DataError(f"{where}: with its whole context cut, the judge prompt still has {max(map(len, prompts))} "
                     f"tokens, more than {limit_name} {max_tokens} (the responses alone are too long)")


def fit_pairs(tokenizer: Any, render: Callable[[str, str, str], list[str]], contexts: Sequence[str],
              responses_a: Sequence[str], responses_b: Sequence[str], max_tokens: int, truncate: bool,
              limit_name: str) -> tuple[list[list[int]], list[int]]:
    """(every pair's judge prompts, in pair order, as token ids; context tokens cut a pair), each prompt
    at most `max_tokens` long. `render(context, a, b)`: a pair's prompt texts. The prompts are tokenised
    in one call; only a pair over the limit goes through `fit_context` (an error, or its context cut)."""
    texts = [t for c, a, b in zip(contexts, responses_a, responses_b) for t in render(c, a, b)]
    ids = [list(r) for r in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    per = len(ids) // len(contexts) if len(contexts) else 0
    out: list[list[int]] = []
    cut = [0] * len(contexts)
    for j, (c, a, b) in enumerate(zip(contexts, responses_a, responses_b)):
        rows = ids[j * per:(j + 1) * per]
        if max(map(len, rows)) > max_tokens:
            def prompts_of(text: str, a: str = a, b: str = b) -> list[list[int]]:
                return [encode(tokenizer, t) for t in render(text, a, b)]

            rows, cut[j] = fit_context(tokenizer, prompts_of, c, max_tokens, truncate, f"pair {j}", limit_name)
        out += rows
    return out, cut


def verdict_token_ids(tokenizer: Any, template: JudgeTemplate) -> tuple[int, int]:
    """The token ids of (verdict_a, verdict_b), each checked to be exactly one token in context.

    In context means: the tokens of prompt + verdict are the prompt's tokens and one more. A verdict
    that merges with the prefix or splits in two raises `VerdictTokenError` naming the string and
    what it tokenises to, in context and alone.
    """
    prompt = render_prompt(tokenizer, template, "Context.", "First response.", "Second response.")
    base = encode(tokenizer, prompt)
    ids = []
    for field in ("verdict_a", "verdict_b"):
        verdict = getattr(template, field)
        full = encode(tokenizer, prompt + verdict)
        alone = encode(tokenizer, verdict)
        if full[:len(base)] != base or len(full) != len(base) + 1:
            tail = full[len(_common_prefix(base, full)):]
            raise VerdictTokenError(
                f"judge.{field}: {verdict!r} is not exactly one token after the assistant prefix "
                f"{template.assistant_prefix[-30:]!r}: the prompt's last token(s) and the verdict tokenise to "
                f"{tokenizer.convert_ids_to_tokens(tail)} (ids {tail}); alone it is "
                f"{tokenizer.convert_ids_to_tokens(alone)} (ids {alone}). Choose a verdict string (usually with "
                "a leading space) that is one token after the prefix."
            )
        ids.append(full[-1])
    if ids[0] == ids[1]:
        raise VerdictTokenError(f"judge.verdict_b: {template.verdict_b!r} is the same token as verdict_a")
    return ids[0], ids[1]


def _common_prefix(a: list[int], b: list[int]) -> list[int]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]
