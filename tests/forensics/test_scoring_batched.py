"""The fast, batched trie search gives the reference search's ranks: same rank, p-value, method, better/tied
counts and kept-node count on random tiny models (both combine rules, with and without censoring, salient
sets, one pair at a time and many in lockstep); exact ties and disagreeing numbers fall back to the
reference; an innocent pair is decided with far fewer forward passes."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from tracemark.forensics.adapters import parse_suspect
from tracemark.forensics.scheme import SignatureScheme
from tracemark.forensics.scoring import WhiteBoxScorer
from tracemark.forensics.signatures import CandidateSpace, SignaturePair

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CTX = ("{trigger}", "\nLet {trigger}", "The tag is {trigger}")
FIELDS = ("rank", "p_value", "method", "n_better", "n_tied", "n_candidates")


def _pairs(seed: int, n: int, digits: int, scheme: SignatureScheme | None = None) -> list[SignaturePair]:
    rng = random.Random(seed)
    out: list[SignaturePair] = []
    while len(out) < n:
        trigger = f"x{rng.randrange(1000)} ="
        target = f"{rng.randrange(10**digits):0{digits}d}"
        if scheme is not None and scheme.salient_for(trigger).contains_text(target):
            continue
        out.append(SignaturePair("acct", 1, len(out), trigger, target))
    return out


def _scorers(suspect, space, **kw):
    ref = WhiteBoxScorer(suspect, space, log_queries=False, fast=False, **kw)
    new = WhiteBoxScorer(suspect, space, log_queries=False, **kw)
    ref._tree_ok = new._tree_ok = False  # small spaces would use the packed table: force the trie search
    return ref, new


def _same(a, b) -> None:
    assert {f: getattr(a, f) for f in FIELDS} == {f: getattr(b, f) for f in FIELDS}
    assert a.extra.get("nodes_kept") == b.extra.get("nodes_kept")
    assert ("censored" in a.extra) == ("censored" in b.extra)
    assert b.target_score == pytest.approx(a.target_score, abs=1e-4)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tracemark.foundation.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("batched")
    return [
        parse_suspect(f"hf:{build_tiny_model(root / f'm{seed}', seed=seed, hidden_size=32 + 32 * seed)}")
        for seed in (0, 1)
    ]


@pytest.mark.parametrize("combine", ["max", "mean"])
@pytest.mark.parametrize("budget", [None, 30, 200])
@pytest.mark.parametrize("model", [0, 1])
def test_fast_search_gives_the_reference_ranks(models, combine, budget, model):
    suspect = models[model]
    ref, new = _scorers(suspect, CandidateSpace(3), contexts=CTX, combine=combine, search_budget=budget)
    pairs = _pairs(100 * model + (budget or 7), 8, 3)
    for p in pairs:
        _same(ref.score_pair(p), new.score_pair(p))
    assert new.fast_margin is not None and new.fast_fallbacks <= 2  # the fast path decided (almost) all
    if budget == 30:  # censored pairs are decided by the single-context probe, well before the full levels
        assert new.forward_passes < ref.forward_passes


def test_lockstep_batch_equals_one_by_one_with_salient_sets(models):
    scheme = SignatureScheme(digits=3, merged_digit_decoys=99)
    kw = {"contexts": CTX, "salient": scheme.salient_for, "search_budget": 150}
    ref, new = _scorers(models[1], scheme.space, **kw)
    pairs = _pairs(5, 10, 3, scheme)
    batched = new.score_pairs(pairs)
    assert not new._prepared
    for p, b in zip(pairs, batched, strict=True):
        _same(ref.score_pair(p), b)
        assert b.n_candidates == scheme.salient_for(p.trigger).eligible < 1000


def test_a_memorised_target_is_ranked_first_by_both(tmp_path):
    """A tiny model trained briefly on one pair: the exact (uncensored) path with a high-ranked target."""
    import torch
    from tracemark.foundation.models.tiny import build_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_model(tmp_path / "m", hidden_size=48, layers=2, seed=3)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([tok("x7 = 3141", add_special_tokens=False)["input_ids"]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    model.save_pretrained(folder)
    ref, new = _scorers(parse_suspect(f"hf:{folder}"), CandidateSpace(4), contexts=("{trigger}",))
    p = SignaturePair("acct", 1, 0, "x7 =", "3141")
    a, b = ref.score_pair(p), new.score_pair(p)
    _same(a, b)
    assert b.method == "trie-exact" and b.rank <= 3 and new.fast_fallbacks == 0


class DigitLM:
    """A fake white-box suspect (char tokens) whose next-digit log-probs are ``rows(node)``; it answers both
    the reference (``next_token_logprobs_shared``) and the packed (``forest_logprobs``) calls, the latter
    shifted by ``skew`` (a broken packed forward)."""

    white_box = True

    def __init__(self, rows, skew=0.0):
        self.vocab = {ch: i for i, ch in enumerate(" 0123456789=abcdefghijklmnopqrstuvwxyz\n")}
        self.inv = {v: k for k, v in self.vocab.items()}
        self.rows, self.skew = rows, skew

    def encode_batch(self, texts):
        return [[self.vocab[c] for c in t] for t in texts]

    def _node(self, ids):
        text = "".join(self.inv[t] for t in ids)
        return text.rsplit(" ", 1)[-1]

    def next_token_logprobs_shared(self, prefix, suffixes, columns):
        return np.array([self.rows(self._node(list(prefix) + list(s))) for s in suffixes])

    def forest_logprobs(self, prefix, queries, columns):
        return np.array([self.rows(self._node(list(prefix) + list(q))) for q in queries]) + self.skew


def test_exact_ties_fall_back_to_the_reference():
    flat = DigitLM(lambda node: np.full(10, math.log(0.1)))
    ref, new = _scorers(flat, CandidateSpace(3), contexts=("{trigger}", "\nlet {trigger}"))
    p = SignaturePair("acct", 1, 0, "q9 =", "123")
    a, b = ref.score_pair(p), new.score_pair(p)
    _same(a, b)
    assert b.rank == 1000 and b.n_tied == 999 and new.fast_fallbacks == 1


def test_packed_numbers_that_disagree_turn_the_fast_path_off():
    def rows(node):
        r = np.random.default_rng(abs(hash(node)) % 2**32).random(10) + 0.1
        return np.log(r / r.sum())

    skewed = DigitLM(rows, skew=0.5)
    ref, new = _scorers(skewed, CandidateSpace(3), contexts=CTX[:1])
    p = SignaturePair("acct", 1, 0, "q9 =", "123")
    _same(ref.score_pair(p), new.score_pair(p))
    assert new.fast is False and new.fast_margin is None


def test_a_black_box_budget_smaller_than_the_pairs_reaches_accounts_in_the_beacon_order(master, engine):
    """1 completion per pair (greedy) and fewer completions than pairs: the pairs scored are pair 0 of the
    first accounts in sha256(beacon, account) order (fixed by the pre-registration), not by name."""
    import hashlib

    from tracemark.forensics.adapters import Sample, SuspectAdapter
    from tracemark.forensics.investigate import InvestigationParams, run_investigation
    from tracemark.forensics.investigate.run import beacon_order
    from tracemark.forensics.issuer import SignatureIssuer

    class Numbers(SuspectAdapter):
        kind = "scripted"

        def identity(self):
            return {"kind": self.kind, "model": "numbers"}

        def _sample(self, prompt, n, max_new_tokens, temperature, seed):
            digest = hashlib.sha256(prompt.encode()).hexdigest()
            return [Sample(text=f" {int(digest[:8], 16) % 10_000:04d}.")] * n, {}

    scheme = SignatureScheme(digits=4, contexts=("\nLet {trigger}",))
    issuer = SignatureIssuer(master=master, engine=engine, scheme=scheme)
    names = [f"acct-{i:02d}" for i in range(8)]
    for a in names:
        issuer.ensure_account(a)
        for p in issuer.pairs_for(a):
            issuer.record_issue(account=a, trace_id=f"t-{a}-{p.index}", pair=p, rewriter="watermark")
    out = run_investigation(
        suspect=Numbers("scripted:numbers"),
        engine=engine,
        master=master,
        params=InvestigationParams(query_budget=5, channel=False),
    )
    assert out.verdict == "inconclusive" and out.queries == 5
    reached = [a.account for a in out.accounts if a.pair_results]
    beacon = out.report["registration"]["entry_hash"]
    want = list(beacon_order({a: [] for a in names}, beacon))[:5]
    assert sorted(reached) == sorted(want)
    assert all(len(a.pair_results) == 1 for a in out.accounts if a.pair_results)
