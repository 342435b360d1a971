"""Scores and exact ranks: trie search, packed tables and brute force agree; ties count against the target
(no seed exists); salient candidates are excluded; the search budget censors to p = 1; tokenizers that
merge digits are scored in full or among beacon decoys; black-box ranks from sampled completions."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from tracemark.forensics.adapters import Sample, parse_suspect
from tracemark.forensics.blackbox import BlackBoxScorer, parse_completion
from tracemark.forensics.scoring import DEFAULT_CONTEXTS, ScoringError, WhiteBoxScorer, expand_contexts
from tracemark.forensics.signatures import CandidateSpace, SignaturePair

CTX = ("{trigger}", "\nLet {trigger}")


def pair(trigger="x137 =", target="4821", index=0, account="acct"):
    return SignaturePair(account, 1, index, trigger, target)


@pytest.fixture(scope="module")
def suspect(tiny_model_dir):
    return parse_suspect(f"hf:{tiny_model_dir}")


def test_digit_layout_of_the_char_tokenizer(suspect):
    sc = WhiteBoxScorer(suspect, CandidateSpace(4), contexts=CTX, log_queries=False)
    layouts = sc.layouts("x137 =")
    assert layouts is not None and len(layouts) == 2
    digit_ids = [suspect.encode(str(d))[0] for d in range(10)]
    assert list(layouts[0].digit_ids) == digit_ids
    assert list(layouts[0].sep_ids) == suspect.encode(" ")  # "x137 =" + " " + digits, as in "x137 = 4821"
    assert list(layouts[1].prompt_ids) == suspect.encode("\nLet x137 =")


@pytest.mark.parametrize("combine", ["max", "mean"])
def test_trie_search_table_and_brute_force_agree(suspect, combine):
    space = CandidateSpace(2)
    sc = WhiteBoxScorer(suspect, space, contexts=CTX, combine=combine, log_queries=False)
    table = sc.table("k52 =")
    brute = sc.full_scores("k52 =", space.candidates())
    # brute force includes the separator's log-prob (the same for every candidate) per context
    sep = [
        float(suspect.continuation_logprobs(suspect.encode(p), [suspect.encode(" ")])[0])
        for p in sc.prompts("k52 =")
    ]
    # each context on its own, then combined: max takes the best context per candidate, mean averages
    per = np.stack(
        [
            WhiteBoxScorer(suspect, space, contexts=(c,), combine=combine, log_queries=False).table("k52 =")
            for c in CTX
        ]
    )
    with_sep = per + np.array(sep)[:, None]
    if combine == "mean":
        assert np.allclose(brute - np.mean(sep), table, atol=1e-5)
        assert np.allclose(table, per.mean(axis=0), atol=1e-4)
        order_t, order_b = np.argsort(-table), np.argsort(-brute)
        assert (order_t[:10] == order_b[:10]).all()
    else:  # the separator differs per context, so brute force is the max of the separated scores
        assert np.allclose(table, per.max(axis=0), atol=1e-4)
        assert np.allclose(brute, with_sep.max(axis=0), atol=1e-5)
        assert (table >= per.mean(axis=0) - 1e-9).all() and not np.allclose(table, per.mean(axis=0))
    _, searched = sc.search(sc.layouts("k52 ="))
    assert np.allclose(searched, table, atol=1e-5)
    for target in (
        "00",
        "37",
        "99",
        space.candidate(int(np.argmax(table))),
        space.candidate(int(np.argmin(table))),
    ):
        p = pair("k52 =", target)
        sc_t = WhiteBoxScorer(suspect, space, contexts=CTX, combine=combine, log_queries=False)
        sc_t._tree_ok = False  # force the best-first trie search with pruning
        exact = sc_t.score_pair(p)
        tab = sc.score_pair(p, use_table=True)
        assert exact.method == "trie-exact" and tab.method == "table"
        want = int(np.count_nonzero(table >= table[int(target)] - 1e-9))  # ties count against the target
        assert exact.rank == tab.rank == want
        assert exact.p_value == pytest.approx(exact.rank / 100)
    best = space.candidate(int(np.argmax(table)))
    assert sc.score_pair(pair("k52 =", best), use_table=True).rank == 1


class PeakedLM:
    """A white-box suspect that has memorised "4821" after any prompt (char tokens, digit trie)."""

    white_box = True

    def __init__(self):
        self.vocab = {ch: i for i, ch in enumerate(" 0123456789=abcdefghijklmnopqrstuvwxyz\n")}
        self.evaluated = 0

    def encode_batch(self, texts):
        return [[self.vocab[c] for c in t] for t in texts]

    def next_token_logprobs_shared(self, prefix, suffixes, columns):
        self.evaluated += len(suffixes)
        out = np.full((len(suffixes), 10), math.log(0.01 / 9))
        inv = {v: k for k, v in self.vocab.items()}
        for r, suf in enumerate(suffixes):
            done = "".join(inv[t] for t in suf)
            if "4821".startswith(done) and len(done) < 4:
                out[r, int("4821"[len(done)])] = math.log(0.99)
            else:
                out[r] = math.log(0.1)
        return out


def test_best_first_search_prunes_the_trie_for_a_memorised_target():
    lm = PeakedLM()
    sc = WhiteBoxScorer(lm, CandidateSpace(4), contexts=("{trigger}", "\nx {trigger}"), log_queries=False)
    res = sc.score_pair(pair("q9 =", "4821"))
    assert res.method == "trie-exact" and res.rank == 1 and res.p_value == 1e-4
    assert res.extra["nodes_kept"] == 1 and lm.evaluated < 30  # vs 2 x 1,111 nodes for the whole trie
    other = sc.score_pair(pair("q9 =", "4822"))
    assert other.n_better == 1 and other.n_tied == 8 and other.rank == 10  # 9-way tie after "482": worst


def test_search_budget_censors_to_p_one():
    """A flat model keeps every prefix: past the budget the pair is reported with p = 1 (conservative)."""
    lm = PeakedLM()
    sc = WhiteBoxScorer(lm, CandidateSpace(4), contexts=("{trigger}",), search_budget=50, log_queries=False)
    res = sc.score_pair(pair("q9 =", "1234"))
    assert res.method == "trie-censored" and res.p_value == 1.0 and "budget" in res.extra["censored"]
    assert sc.score_pair(pair("q9 =", "4821")).rank == 1  # the memorised target is still found


def test_salient_candidates_are_excluded_from_the_ranking():
    from tracemark.forensics.scheme import SignatureScheme

    scheme = SignatureScheme(digits=4)
    lm = PeakedLM()
    sc = WhiteBoxScorer(
        lm, scheme.space, contexts=("{trigger}",), salient=scheme.salient_for, log_queries=False
    )
    res = sc.score_pair(pair("q9 =", "4821"))
    assert res.n_candidates == scheme.salient_for("q9 =").eligible < 10_000
    assert res.p_value == 1 / res.n_candidates
    with pytest.raises(ScoringError, match="salient"):
        sc.score_pair(pair("q9 =", "2400"))


def test_ties_count_against_the_target_and_no_seed_exists(tmp_path):
    """A model with all-zero weights gives every candidate the same score: the target gets the worst rank,
    whatever anyone chooses (the seed-grinding attack of issue 12 has nothing to grind)."""
    import inspect

    import torch
    from tracemark.foundation.models.tiny import build_tiny_model
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path / "flat", hidden_size=32, layers=1)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    model.save_pretrained(folder)
    s = parse_suspect(f"hf:{folder}")
    space = CandidateSpace(1)
    sc = WhiteBoxScorer(s, space, contexts=("{trigger}",), log_queries=False)
    res = sc.score_pair(pair("x1 =", "3"))
    assert res.n_tied == 9 and res.n_better == 0 and res.rank == 10 and res.p_value == 1.0
    assert "seed" not in inspect.signature(sc.score_pair).parameters


class MergingTokenizerLM:
    """A white-box suspect whose tokenizer merges digit pairs ("48" is one token)."""

    white_box = True

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def _tok(self, text):
        out, i = [], 0
        while i < len(text):
            piece = text[i : i + 2] if text[i : i + 2].isdigit() and len(text[i : i + 2]) == 2 else text[i]
            out.append(self.vocab.setdefault(piece, len(self.vocab)))
            i += len(piece)
        return out

    def encode_batch(self, texts):
        return [self._tok(t) for t in texts]

    def continuation_logprobs(self, prompt_ids, conts):
        # deterministic pseudo-scores: the candidate "4821" is strongly preferred
        inv = {v: k for k, v in self.vocab.items()}
        return np.array(
            [8.0 if "".join(inv[t] for t in c).strip() == "4821" else -float(sum(c) % 17) for c in conts]
        )


def test_tokenizer_that_merges_digits_is_scored_in_full_or_among_beacon_decoys():
    lm = MergingTokenizerLM()
    sc = WhiteBoxScorer(lm, CandidateSpace(4), contexts=("{trigger}",), log_queries=False)
    assert sc.layouts("x137 =") is None
    with pytest.raises(ScoringError, match="in full or among decoys"):
        sc.score_pair(pair())
    full = sc.score_pair(pair(), full=True)
    assert full.method == "full" and full.n_candidates == 10_000 and full.rank == 1
    res = sc.score_pair(pair(), beacon="ab" * 32, decoys=99)
    assert res.method == "decoys" and res.n_candidates == 100 and res.rank == 1 and res.p_value == 0.01
    # decoys come from the public beacon (the registration's log entry hash): same beacon, same decoys
    again = sc.score_pair(pair(), beacon="ab" * 32, decoys=99)
    other = sc.score_pair(pair(), beacon="cd" * 32, decoys=99)
    assert again.extra["decoys_sha256"] == res.extra["decoys_sha256"] != other.extra["decoys_sha256"]


def test_expand_contexts_with_chat(suspect):
    prompts = expand_contexts(DEFAULT_CONTEXTS, "x137 =", suspect, "What is 2+2?")
    assert all(
        p.startswith("<|user|>What is 2+2?</s><|assistant|>") and p.endswith("x137 =") for p in prompts
    )
    assert expand_contexts(("{chat}{trigger}",), "x1 =", object(), "q") == ["x1 ="]  # no chat template


@pytest.mark.parametrize(
    "text, want",
    [
        (" 4821.", "4821"),
        ("4821\n", "4821"),
        (" 48213", None),
        (" 482", None),
        ("x137 = 4821", "4821"),
        ("nope", None),
    ],
)
def test_parse_completion(text, want):
    assert parse_completion(text, "x137 =", CandidateSpace(4)) == want


class CannedSuspect:
    white_box = False

    def __init__(self, texts):
        self.texts = texts
        self.calls = []

    def sample(self, prompt, *, n, max_new_tokens, temperature, seed, meta=None):
        self.calls.append((prompt, n, seed))
        return [Sample(text=self.texts[i % len(self.texts)]) for i in range(n)]


def test_black_box_rank_by_counts_ties_against_the_target():
    space = CandidateSpace(4)
    s = CannedSuspect([" 4821", " 4821", " 1111", " 2222"])
    bb = BlackBoxScorer(s, space, contexts=("{trigger}",), temperature=1.0)
    res = bb.score_pair(pair(target="4821"), n_samples=4)
    assert res.rank == 1 and res.p_value == 1e-4 and res.target_count == 2
    tied = bb.score_pair(pair(target="1111"), n_samples=4)
    assert tied.n_better == 1 and tied.n_tied == 1 and tied.rank == 3
    # a never-sampled target ties with every other never-sampled candidate: the worst rank, p = 1
    never = bb.score_pair(pair(target="7777"), n_samples=4)
    assert never.rank == 10_000 and never.p_value == 1.0
    dec = bb.score_pair(pair(target="4821"), n_samples=4, beacon="00" * 32, decoys=9)
    assert dec.n_candidates == 10 and dec.rank == 1


def test_black_box_spreads_samples_over_contexts_and_greedy_uses_one_each():
    s = CannedSuspect([" 4821"])
    bb = BlackBoxScorer(
        s, CandidateSpace(4), contexts=("{trigger}", "Let {trigger}", "(aux) {trigger}"), temperature=0.7
    )
    bb.score_pair(pair(), n_samples=7)
    assert [c[1] for c in s.calls] == [3, 2, 2]
    s.calls.clear()
    greedy = BlackBoxScorer(s, CandidateSpace(4), contexts=("{trigger}", "Let {trigger}"), temperature=0.0)
    res = greedy.score_pair(pair(), n_samples=10)
    assert [c[1] for c in s.calls] == [1, 1] and res.target_count == 2


def test_black_box_null_p_values_are_valid():
    """Targets independent of the suspect: P(p <= x) <= x for every x (conservative ranks)."""
    from tracemark.forensics import stats

    rng = random.Random(0)
    s = CannedSuspect([" 4821", " 1234", " 4821", " 0000", " 9999"])
    space = CandidateSpace(1)
    bb = BlackBoxScorer(s, space, contexts=("{trigger}",), temperature=1.0)
    s.texts = [" 4", " 1", " 4", " 0", " 9", " 4"]
    ps = np.array([bb.score_pair(pair(target=str(rng.randrange(10))), n_samples=6).p_value for _ in range(600)])
    for x in (0.1, 0.2, 0.5, 0.9):
        k = int(np.count_nonzero(ps <= x + 1e-12))
        assert stats.clopper_pearson(k, ps.size)[0] <= x  # never significantly above x
    assert np.mean(ps) >= 0.55 - 0.05
