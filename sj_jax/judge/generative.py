"""The generative judge: it writes an evaluation, then a final verdict in the template's fixed form.

For a pair (a, b) the judge prompt is built in both orders, and `samples` judgments are drawn for
each order through the KV-cached sampler: each prompt is prefilled once for all of its samples, and
the two orders' common start (the context, up to the first response) once for both. The
verdict of a judgment is read by `sj_jax.judge.verdict.parse_verdict`, which never guesses. The
pair's verdict is the majority over its 2 x samples judgments, counted as votes for the first or
the second response (a judgment with no verdict votes for neither).

With a `verdict_prefix` ("\\n\\nFinal verdict: [[" by default), the evaluation runs until the model
ends its turn or has written `max_evaluation_tokens` tokens; then the prefix is fed and the model
writes the rest of the verdict itself, in at most `max_verdict_tokens` tokens (`sj_jax.inference.sampler`'s
forced phase). A small model thus always
reaches the verdict slot, and what it writes there is still parsed, not assumed. With an empty
prefix the model must write the whole verdict itself, as large judges do.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from sj_jax.inference.generate import generate, length_batches
from sj_jax.judge.generative_template import GenerativeTemplate, render_prompt
from sj_jax.judge.template import check_texts, encode, fit_pairs
from sj_jax.judge.verdict import parse_verdict
from sj_jax.loading.model import Model
from sj_jax.weights.tokenizer import end_of_turn_ids


@dataclasses.dataclass
class GenerativeJudgments:
    """Every judgment of one `judge_generative` call, `[pairs][order][sample]`; order 0 shows (a, b)
    as (A, B), order 1 shows (b, a).

    texts: the judgments (what followed the assistant prefix); labels: int8 `[pairs, 2, samples]`,
    1 = "A", 2 = "B", 0 = no verdict; reasons: "ok" or why there is no verdict; finished: ended at
    end of turn (not cut)."""

    texts: list[list[list[str]]]
    labels: np.ndarray
    reasons: list[list[list[str]]]
    finished: np.ndarray
    context_cut: np.ndarray | None = None  # int `[pairs]`: context tokens cut to fit max_prompt_tokens

    def __post_init__(self):
        if self.context_cut is None:
            self.context_cut = np.zeros(len(self.labels), np.int64)

    @property
    def names_first(self) -> np.ndarray:
        """bool `[pairs, 2, samples]`: the judgment prefers a (the first response of the pair)."""
        return np.stack([self.labels[:, 0] == 1, self.labels[:, 1] == 2], axis=1)

    @property
    def names_second(self) -> np.ndarray:
        return np.stack([self.labels[:, 0] == 2, self.labels[:, 1] == 1], axis=1)

    def votes(self, order: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(votes for a, votes for b) `[pairs]`, over both orders or one."""
        first, second = self.names_first, self.names_second
        if order is not None:
            first, second = first[:, order:order + 1], second[:, order:order + 1]
        return first.sum(axis=(1, 2)), second.sum(axis=(1, 2))

    def majority(self, order: int | None = None) -> np.ndarray:
        """int8 `[pairs]`: +1 the majority prefers a, -1 b, 0 a tie or no verdict at all."""
        a, b = self.votes(order)
        return np.sign(a - b).astype(np.int8)

    @property
    def prob_first(self) -> np.ndarray:
        """float64 `[pairs]`: 1/2 + (votes for a - votes for b) / (2 x judgments), so > 1/2 exactly when
        the majority prefers a, and swapping a and b gives 1 - p (the interface of `judge_pairs`)."""
        a, b = self.votes()
        return 0.5 + (a - b) / (2.0 * self.labels.shape[1] * self.labels.shape[2])

    @property
    def swap_consistent(self) -> np.ndarray:
        """bool `[pairs]`: each order's own majority names the same response (a tie in either is not)."""
        m0, m1 = self.majority(0), self.majority(1)
        return (m0 == m1) & (m0 != 0)

    @property
    def no_verdict_rate(self) -> float:
        """The fraction of judgments with no verdict."""
        return float(np.mean(self.labels == 0)) if self.labels.size else 0.0


def own_verdict(tok: Any, ids: Sequence[int], forced: Sequence[int], template: GenerativeTemplate) -> str:
    """The judgment text of one sample's token ids: the evaluation alone when the model wrote a
    verdict there itself (or two different ones), else the evaluation, the fed prefix and what the
    model wrote after it. The fed prefix is the last run of the `forced` ids (at most
    `max_verdict_tokens` tokens follow it), so a judge that learned to write "Final verdict: [[A]]"
    and end its turn is read by its own verdict, not by a second one it was made to write."""
    text = tok.decode(list(ids), skip_special_tokens=True)
    n = len(forced)
    if not n:
        return text
    at = next((i for i in range(len(ids) - n, -1, -1) if list(ids[i:i + n]) == list(forced)), None)
    if at is None:
        return text
    evaluation = tok.decode(list(ids[:at]), skip_special_tokens=True)
    v = parse_verdict(evaluation, template.verdict_a, template.verdict_b)
    return evaluation if v.reason in ("ok", "conflicting") else text


def judge_generative(model: Model, contexts: Sequence[str], responses_a: Sequence[str],
                     responses_b: Sequence[str], *, template: GenerativeTemplate | None = None, samples: int = 1,
                     temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                     batch_size: int = 64, key_ids: Sequence[int] | None = None, max_batch_tokens: int = 32768,
                     progress: Callable[[int, int], None] | None = None, max_prompt_tokens: int = 0,
                     truncate: bool = False) -> GenerativeJudgments:
    """Judges each (context, a, b) in both orders, `samples` judgments an order (temperature 0 =
    greedy, when more than one sample repeats itself). batch_size: sampler rows a compiled batch
    (whole pairs: both orders, all samples); max_batch_tokens: cache positions a batch
    (`sj_jax.inference.generate.length_batches`). key_ids: one number per pair that its samples are
    keyed by (default its position), so a pair keeps its judgments whatever else shares the call.
    max_prompt_tokens: the longest judge prompt (0 = the model's positions less the new tokens); a
    longer one is an error, or with `truncate` its context loses its first tokens until it fits
    (`context_cut` counts them)."""
    template = GenerativeTemplate() if template is None else template
    tok = model.tokenizer
    if tok is None:
        raise ValueError("model: judging needs a model loaded with a tokenizer (its chat template renders the prompt)")
    if samples < 1:
        raise ValueError(f"samples: must be at least 1, got {samples}")
    n = check_texts("contexts", contexts, None)
    check_texts("responses_a", responses_a, n)
    check_texts("responses_b", responses_b, n)
    if n == 0:
        return GenerativeJudgments([], np.zeros((0, 2, samples), np.int8), [], np.zeros((0, 2, samples), bool))
    forced = encode(tok, template.verdict_prefix) if template.verdict_prefix else []
    new = template.max_new_tokens + len(forced)
    limit = model.config.max_position_embeddings - new
    if max_prompt_tokens > limit:
        raise ValueError(f"max_prompt_tokens: {max_prompt_tokens} and the judgment's {new} new tokens exceed the "
                         f"model's max_position_embeddings {model.config.max_position_embeddings}")
    name = ("max_prompt_tokens" if max_prompt_tokens else
            f"the model's max_position_embeddings less the judgment's {new} new tokens")

    def render(c: str, a: str, b: str) -> list[str]:
        return [render_prompt(tok, template, c, *resp) for resp in ((a, b), (b, a))]

    prompts, cut = fit_pairs(tok, render, contexts, responses_a, responses_b, max_prompt_tokens or limit, truncate,
                             name)
    keys = list(range(n)) if key_ids is None else [int(k) for k in key_ids]
    if len(keys) != n:
        raise ValueError(f"key_ids: {len(keys)} numbers for {n} pairs")
    # Pairs of similar length share a batch (judge prompts differ by hundreds of tokens), within a
    # cache budget, both orders of a pair together: they begin alike (the context, up to the first
    # response), and that prefix is prefilled once for both. The samples are keyed by pair and
    # order, so the batching does not change them.
    texts_out: list[list[str]] = [[] for _ in prompts]
    finished_out: list[list[bool]] = [[] for _ in prompts]
    for pairs in length_batches([max(len(prompts[2 * i]), len(prompts[2 * i + 1])) for i in range(n)], new,
                                rows_per_prompt=2 * samples, max_rows=max(2 * samples, batch_size),
                                max_tokens=max_batch_tokens):
        chunk = [2 * i + o for i in pairs for o in (0, 1)]
        g = generate(model, [prompts[r] for r in chunk], max_new_tokens=new, temperature=temperature, top_p=top_p,
                     top_k=top_k, num_samples=samples, seed=seed, stop=end_of_turn_ids(tok),
                     key_ids=[2 * keys[r // 2] + r % 2 for r in chunk], forced=forced,
                     budget=template.max_evaluation_tokens, after=template.max_verdict_tokens, progress=progress,
                     fan=2)
        for k, r in enumerate(chunk):
            texts_out[r] = [own_verdict(tok, ids, forced, template) for ids in g.token_ids[k]]
            finished_out[r] = g.finished[k]
    labels = np.zeros((n, 2, samples), np.int8)
    reasons = [[[""] * samples for _ in range(2)] for _ in range(n)]
    out_texts = [[[""] * samples for _ in range(2)] for _ in range(n)]
    finished = np.zeros((n, 2, samples), bool)
    for r, row in enumerate(texts_out):
        i, o = divmod(r, 2)
        for s, text in enumerate(row):
            v = parse_verdict(text, template.verdict_a, template.verdict_b)
            labels[i, o, s] = {"A": 1, "B": 2, None: 0}[v.label]
            reasons[i][o][s] = v.reason
            out_texts[i][o][s] = text
            finished[i, o, s] = finished_out[r][s]
    return GenerativeJudgments(out_texts, labels, reasons, finished, np.asarray(cut, np.int64))
