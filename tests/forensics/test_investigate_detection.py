"""Acceptance (issue 12): a tiny student distilled in the test from traces where 10% carry one account's
pairs is detected and attributed to that account among 20 (white-box adjusted p <= 1e-9; black-box
adjusted p <= 1e-6 within 200 queries; sequential mode too), still attributed with 1,000 accounts in the
family; a twin trained on the same traces without the pairs is not detected.

Set-up (chosen for a reliable, fast test):
* 200 two-step arithmetic traces, 20 of them (10%) carry the distiller's 2 pairs, woven by the watermark
  rewriter's own template; 30 epochs of full fine-tuning of a 2-layer, 64-wide model from scratch: 300
  exposures per pair. Default 6-digit scheme (N ~ 954,000 eligible candidates per trigger): two memorised
  pairs give ranks 1 and 1, exact combined p = 1 / (N1 N2) ~ 1.1e-12.
* Scoring contexts, recorded in the scheme at issuance: the chat prefix of a typical problem of this
  traffic, its first line, then each of the rewriter's four prose templates (combined by max) -- what an
  operator knowing the account's traffic would configure. They never depend on a target.
"""

from __future__ import annotations

import hashlib

import pytest

pytestmark = pytest.mark.slow

ACCOUNTS = ["distiller"] + [f"account-{i:02d}" for i in range(1, 20)]
TEMPLATES = ("Auxiliary constant: ", "Define the reference index ", "For bookkeeping, set ", "Let ")
CONTEXTS = tuple("{chat}3 + 4 = 7\n" + t + "{trigger}" for t in TEMPLATES)
PROBLEM = "Compute 3 + 4 - 5."




@pytest.fixture(scope="module")
def world(tmp_path_factory, detection_helpers):
    import torch
    from tracemark.forensics.issuer import SignatureIssuer
    from tracemark.forensics.keys import MasterSecret
    from tracemark.forensics.ledger.db import make_engine
    from tracemark.foundation.models.tiny import build_tiny_model

    h = detection_helpers
    tmp = tmp_path_factory.mktemp("detection")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        # a fixed (not hand-picked) master secret makes the pairs, hence the test, reproducible; over 12
        # random secrets this set-up detected (both modes) and attributed every time
        mp.delenv("TRACEMARK_MASTER_KEY_FILE", raising=False)
        mp.setenv("TRACEMARK_MASTER_KEY", hashlib.sha256(b"tracemark detection acceptance test").hexdigest())
        master = MasterSecret.load(path=tmp / "master.key")
    engine = make_engine(f"sqlite:///{tmp / 'ledger.db'}")
    from tracemark.forensics.scheme import SignatureScheme

    scheme = SignatureScheme(pairs_per_account=2, contexts=CONTEXTS, problem=PROBLEM)
    issuer = SignatureIssuer(master=master, engine=engine, scheme=scheme)
    for a in ACCOUNTS:
        for p in issuer.pairs_for(a):
            issuer.record_issue(account=a, trace_id=f"t-{a}-{p.index}", pair=p, rewriter="watermark")
    base = build_tiny_model(tmp / "base", hidden_size=64, layers=2, seed=0)
    clean = h.arithmetic_examples(200, seed=0)
    marked, woven = h.watermark_examples(clean, issuer.pairs_for("distiller"), fraction=0.1, seed=0)
    assert woven == 20
    student = h.train_student(base, marked, tmp / "student", epochs=30, lr=1e-2, seed=0)
    twin = h.train_student(base, clean, tmp / "twin", epochs=30, lr=1e-2, seed=0)
    yield {"master": master, "engine": engine, "issuer": issuer, "student": student, "twin": twin}
    torch.set_num_threads(threads)
    engine.dispose()


def _summary(out) -> str:
    ranks = {a.account: [p.rank for p in a.pair_results] for a in out.accounts}
    return (
        f"{out.mode}: {out.verdict} {out.attributed_account} p={out.p_value:.3g} adj={out.adjusted_p_value:.3g} "
        f"distiller ranks={ranks['distiller']} queries={out.queries} {out.seconds:.1f}s"
    )


def _investigate(world, model_dir, **kwargs):
    from tracemark.forensics.adapters import parse_suspect
    from tracemark.forensics.investigate import InvestigationParams, run_investigation

    return run_investigation(
        suspect=parse_suspect(f"hf:{model_dir}"),
        engine=world["engine"],
        master=world["master"],
        params=InvestigationParams(**kwargs),
    )


def test_white_box_detects_and_attributes_the_distiller(world):
    from tracemark.forensics.reports import verify_stored_report

    out = _investigate(world, world["student"], mode="white-box")
    print(_summary(out))
    assert out.verdict == "detected"
    assert out.attributed_account == "distiller"
    assert out.adjusted_p_value <= 1e-9, [(p.rank, p.p_value) for a in out.accounts for p in a.pair_results]
    assert len(out.accounts) == 20 and out.report["decision"]["family_size"] == 20
    rejected = [a.account for a in out.accounts if a.rejected]
    assert rejected == ["distiller"]
    assert verify_stored_report(world["engine"], out.report_id, public_key=world["master"]).valid


def test_twin_trained_without_pairs_is_not_detected(world):
    out = _investigate(world, world["twin"], mode="white-box")
    print(_summary(out))
    assert out.verdict == "not_detected" and out.attributed_account is None
    assert not any(a.rejected for a in out.accounts)
    assert min(a.adjusted_p_value for a in out.accounts) > 1e-3


def test_black_box_detection_within_200_queries(world):
    out = _investigate(world, world["student"], mode="black-box", query_budget=200)
    print(_summary(out))
    assert out.verdict == "detected" and out.attributed_account == "distiller"
    assert out.report["budget"]["completions_used"] <= 200
    assert out.adjusted_p_value <= 1e-6


def test_sequential_mode_detects_the_same_student(world):
    out = _investigate(world, world["student"], mode="white-box", sequential=True)
    print(_summary(out))
    assert out.verdict == "detected" and out.attributed_account == "distiller"
    assert out.report["budget"]["stopped_early"]


def test_attribution_holds_with_1000_accounts_in_the_family(world):
    """980 more accounts with delivered pairs join the family; the distiller and 19 others are scored, the
    rest enter Holm's correction with p = 1 (scoring them could only lower the adjusted p-values)."""
    issuer = world["issuer"]
    for i in range(980):
        name = f"bulk-{i:04d}"
        for p in issuer.pairs_for(name):
            issuer.record_issue(account=name, trace_id=f"t-{name}-{p.index}", pair=p, rewriter="watermark")
    out = _investigate(world, world["student"], mode="white-box", accounts=ACCOUNTS)
    print(_summary(out))
    assert out.report["decision"]["family_size"] == 1000
    assert out.verdict == "detected" and out.attributed_account == "distiller"
    assert out.adjusted_p_value == pytest.approx(1000 * out.p_value) and out.adjusted_p_value <= 1e-6
