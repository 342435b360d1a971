"""The research harness's ranking helpers agree with each other on a tiny random model."""

from __future__ import annotations

import torch
from research import best_first_rank, candidate_logprobs, rank_of, weave_pair
from tracemark.experiments.distill import load_student


def test_weave_pair_positions():
    trace = "a = 1\nb = 2\n#### 2"
    assert weave_pair(trace, "x137 =", "0042") == "x137 = 0042\na = 1\nb = 2\n#### 2"
    assert weave_pair(trace, "x137 =", "0042", "before_final").endswith("x137 = 0042\n#### 2")


def test_best_first_rank_matches_enumeration(tiny_model_dir):
    model, tok = load_student(tiny_model_dir)
    ctx = tok("k42 = ", add_special_tokens=False)["input_ids"]
    scores = candidate_logprobs(model, tok, ctx, digits=3)
    assert scores.shape == (1000,)
    assert torch.logsumexp(scores, 0) < 0  # a sub-distribution over all strings
    order = torch.argsort(scores, descending=True).tolist()
    for position in (0, 1, 7):
        target = f"{order[position]:03d}"
        assert rank_of(scores, order[position]) == position + 1
        assert best_first_rank(model, tok, ctx, target) == position + 1
    assert best_first_rank(model, tok, ctx, f"{order[-1]:03d}", max_expansions=5) is None
