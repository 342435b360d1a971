"""Investigations end to end on small suspects: pre-registration, delivered pairs only, ghost accounts
refused, signed report content, family-wide multiplicity, budgets, sequential stopping, failures, and a
process killed mid-investigation."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from tracemark.forensics import stats
from tracemark.forensics.adapters import SuspectAdapter, SuspectError, parse_suspect
from tracemark.forensics.investigate import (
    InvestigationError,
    InvestigationParams,
    run_investigation,
    run_investigations,
)
from tracemark.forensics.issuer import SignatureIssuer
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import read_session
from tracemark.forensics.reports import canonical_json, export_html, verify_stored_report
from tracemark.forensics.scheme import SignatureScheme
from tracemark.forensics.tlog import find_entries, verify_stored_log

ACCOUNTS = ["alice", "bob", "carol"]
SHORT = ("\nLet {trigger}",)


def deliver(issuer, account, *, pairs=None):
    """Record that ``account``'s pairs (all, or the given indices) went out in traces."""
    issuer.ensure_account(account)
    for p in issuer.pairs_for(account):
        if pairs is None or p.index in pairs:
            issuer.record_issue(account=account, trace_id=f"t-{account}-{p.index}", pair=p, rewriter="watermark")


class ScriptedSuspect(SuspectAdapter):
    """A black-box suspect that completes the triggers of ``memorised`` pairs with their targets and
    everything else with a fixed pseudo-random number (never a function of any other target)."""

    kind = "scripted"

    def __init__(self, memorised=(), fail_after=None, crash_after=None, **kw):
        super().__init__("scripted:test", **kw)
        self.memorised = {p.trigger: p.target for p in memorised}
        self.fail_after = fail_after
        self.crash_after = crash_after
        self.calls = 0

    def identity(self):
        return {"kind": self.kind, "endpoint": "in-process", "model": "scripted"}

    def _sample(self, prompt, n, max_new_tokens, temperature, seed):
        from tracemark.forensics.adapters import Sample

        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise SuspectError("endpoint went away")
        if self.crash_after is not None and self.calls > self.crash_after:
            raise RuntimeError("bug in the adapter")
        for trigger, target in self.memorised.items():
            if prompt.endswith(trigger):
                return [Sample(text=f" {target}.")] * n, {}
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        return [Sample(text=f" {int(digest[:8], 16) % 10_000:04d}.")] * n, {}


@pytest.fixture
def setup(master, engine):
    issuer = SignatureIssuer(master=master, engine=engine, scheme=SignatureScheme(digits=4, contexts=SHORT))
    for a in ACCOUNTS:
        deliver(issuer, a)
    return {"issuer": issuer, "engine": engine, "master": master}


def test_white_box_investigation_records_and_signs_everything(setup, tiny_model_dir):
    events = []
    suspect = parse_suspect(f"hf:{tiny_model_dir}")
    out = run_investigation(
        suspect=suspect, **setup, params=InvestigationParams(), progress=lambda *e: events.append(e)
    )
    assert out.verdict == "not_detected" and out.attributed_account is None and out.mode == "white-box"
    assert {a.account for a in out.accounts} == set(ACCOUNTS)
    # per-account p is the exact rank-product combination of its conservative pair p-values; then Holm
    for a in out.accounts:
        assert a.pairs == a.pairs_total == 2
        ranks, ns = [p.rank for p in a.pair_results], [p.n_candidates for p in a.pair_results]
        assert a.p_value == stats.combine_ranks(ranks, ns).p_value
        assert all(p.p_value == p.rank / p.n_candidates and p.n_candidates < 10_000 for p in a.pair_results)
    _, adjusted = stats.adjust_pvalues([a.p_value for a in out.accounts], alpha=1e-3, method="holm")
    assert [a.adjusted_p_value for a in out.accounts] == pytest.approx(adjusted)
    # pre-registered in the transparency log before the first query
    with read_session(setup["engine"]) as session:
        inv = records.get_investigation(session, investigation_id=out.investigation_id)
        rows = records.list_queries(session, investigation_id=out.investigation_id)
    (entry,) = [e for e in find_entries(setup["engine"], kind="registration")]
    assert entry.subject == f"investigation:{out.investigation_id}"
    assert entry.body["suspect_identity"]["weights_sha256"] == suspect.identity()["weights_sha256"]
    assert entry.body["suspect_identity"]["tokenizer_sha256"] and entry.body["suspect_identity"][
        "chat_template_sha256"
    ]
    assert len(entry.body["pairs"]) == 6 and entry.body["family"]["size"] == 3
    assert all(r.created_at >= inv.started_at for r in rows)
    assert inv.status == "finished" and inv.verdict == "not_detected"
    assert len(rows) == 6 * len(SHORT) == out.queries  # one logit read per pair and context
    report = out.report
    reg = report["registration"]
    assert reg["log_seq"] == entry.seq and reg["entry_hash"] == entry.entry_hash and reg["prior"] == []
    assert report["rederivation"]["steps"] and "rescore" in " ".join(report["rederivation"]["commands"])
    assert [q["response_commitment"] for q in report["queries"]["items"]] == [
        r.response_commitment for r in rows
    ]
    assert report["statistics"]["combination"]["method"] == "exact"
    assert report["decision"]["verdict"] == "not_detected" and report["decision"]["alpha"] == 1e-3
    assert "family-wise" in report["decision"]["correction_meaning"]
    assert len(report["commitments"]["pairs"]) == 6
    # the report is logged after the registration; the whole log verifies
    (logged,) = find_entries(setup["engine"], kind="report")
    assert logged.body["report_id"] == out.report_id and logged.seq > entry.seq
    assert verify_stored_log(setup["engine"], setup["master"].signing_public_key()).valid
    # nothing secret: no trigger, target or pair text of any account in the signed report
    body = canonical_json(report).decode()
    for a in ACCOUNTS:
        for p in setup["issuer"].all_pairs_for(a):
            assert p.text not in body and p.trigger not in body
    assert verify_stored_report(setup["engine"], out.report_id, public_key=setup["master"]).valid
    stages = [e[0] for e in events]
    assert stages[0] == "prepare" and "score" in stages and stages[-1] == "done"
    assert max(e[1] for e in events if e[0] == "score") == 6


def test_seed_grinding_has_nothing_to_grind(setup, tiny_model_dir):
    """Issue 12's first attack: no seed input exists, and re-running gives the same ranks and p-values
    (every re-run is a new registration, listed in the next report)."""
    assert "seed" not in inspect.signature(InvestigationParams).parameters
    with pytest.raises(TypeError):
        InvestigationParams(seed=1)  # type: ignore[call-arg]
    suspect = parse_suspect(f"hf:{tiny_model_dir}")
    first = run_investigation(suspect=suspect, **setup)
    second = run_investigation(suspect=suspect, **setup)
    assert [(a.account, [p.rank for p in a.pair_results], a.p_value) for a in first.accounts] == [
        (a.account, [p.rank for p in a.pair_results], a.p_value) for a in second.accounts
    ]
    prior = second.report["registration"]["prior"]
    assert [p["investigation_id"] for p in prior] == [first.investigation_id]
    assert second.report["registration"]["beacon"] != first.report["registration"]["beacon"]


def test_ghost_accounts_and_undelivered_pairs_are_refused(setup, tiny_model_dir):
    suspect = parse_suspect(f"hf:{tiny_model_dir}")
    with pytest.raises(InvestigationError, match="'ghost'.*no signature pair was ever delivered"):
        run_investigation(suspect=suspect, **setup, params=InvestigationParams(accounts=["ghost"]))
    setup["issuer"].ensure_account("registered-only")  # an account row alone makes nobody accusable
    with pytest.raises(InvestigationError, match="registered-only"):
        run_investigation(suspect=suspect, **setup, params=InvestigationParams(accounts=["registered-only"]))
    deliver(setup["issuer"], "dave", pairs={1})  # only dave's second pair went out
    out = run_investigation(suspect=suspect, **setup, params=InvestigationParams(accounts=["dave"]))
    (dave,) = out.accounts
    assert dave.pairs == dave.pairs_total == 1 and dave.pair_results[0].pair_index == 1


def test_narrowing_the_accounts_never_lowers_a_p_value(setup):
    """Issue 12's third attack: re-running on one account does not shrink the correction's family."""
    suspect = ScriptedSuspect(memorised=setup["issuer"].all_pairs_for("bob"))
    everyone = run_investigation(suspect=suspect, **setup)
    only_bob = run_investigation(suspect=suspect, **setup, params=InvestigationParams(accounts=["bob"]))
    bob_all = next(a for a in everyone.accounts if a.account == "bob")
    (bob_one,) = only_bob.accounts
    assert bob_one.p_value == bob_all.p_value and bob_one.adjusted_p_value == bob_all.adjusted_p_value
    assert only_bob.report["decision"]["family_size"] == 3
    assert len(only_bob.report["registration"]["prior"]) == 1


def test_report_exports_with_the_null_plot(setup, tmp_path):
    out = run_investigation(suspect=ScriptedSuspect(), **setup)
    export_html(out.envelope, tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert "data:image/png;base64," in text and out.report_id in text


def test_black_box_detection_and_attribution(setup):
    target_pairs = setup["issuer"].all_pairs_for("bob")
    suspect = ScriptedSuspect(memorised=target_pairs)
    out = run_investigation(suspect=suspect, **setup, params=InvestigationParams(query_budget=200))
    assert out.mode == "black-box" and out.verdict == "detected" and out.attributed_account == "bob"
    bob = next(a for a in out.accounts if a.account == "bob")
    assert [p.rank for p in bob.pair_results] == [1, 1] and bob.rejected
    ns = [p.n_candidates for p in bob.pair_results]
    assert out.p_value == stats.combine_ranks([1, 1], ns).p_value == pytest.approx(1 / (ns[0] * ns[1]))
    assert out.p_value <= 1e-6 and out.adjusted_p_value == pytest.approx(3 * out.p_value)
    assert not any(a.rejected for a in out.accounts if a.account != "bob")
    # greedy (temperature 0): one completion per context and pair, well within the budget
    assert out.queries == 6 * len(SHORT) == out.report["budget"]["completions_used"]


def test_black_box_budget_exhaustion_is_inconclusive(setup):
    suspect = ScriptedSuspect()
    out = run_investigation(suspect=suspect, **setup, params=InvestigationParams(query_budget=4))
    assert out.verdict == "inconclusive" and "budget" in out.detail
    assert out.report["budget"]["pairs_scored"] == 4 and out.report["budget"]["pairs_total"] == 6
    with read_session(setup["engine"]) as session:
        assert len(records.list_queries(session, investigation_id=out.investigation_id)) == 4


def test_sequential_mode_stops_early(master, engine):
    issuer = SignatureIssuer(
        master=master, engine=engine, scheme=SignatureScheme(digits=4, pairs_per_account=4, contexts=SHORT)
    )
    names = sorted([*ACCOUNTS, *(f"extra-{i}" for i in range(5))])
    for a in names:
        deliver(issuer, a)
    suspect = ScriptedSuspect(memorised=issuer.all_pairs_for("carol"))
    out = run_investigation(
        suspect=suspect,
        issuer=issuer,
        engine=engine,
        master=master,
        params=InvestigationParams(sequential=True, query_budget=200),
    )
    assert out.verdict == "detected" and out.attributed_account == "carol"
    seq = out.report["statistics"]["sequential"]
    assert seq["threshold"] == pytest.approx(8 / 1e-3)
    # carol's e-process (e = N / (rank H_N) ~ 900 per rank-1 pair) crossed 8,000 after her 2nd pair
    assert seq["stopped_early_after_pairs"] == 8 + names.index("carol") + 1
    assert out.report["budget"]["stopped_early"] and out.report["budget"]["pairs_scored"] < 32
    assert out.p_value == pytest.approx(10 ** -seq["accounts"]["carol"]["log10_e_max"])  # anytime-valid p


def test_multiple_suspects_share_one_family(setup):
    a = ScriptedSuspect(memorised=setup["issuer"].all_pairs_for("alice"))
    b = ScriptedSuspect()
    outs = run_investigations(suspects=[a, b], **setup)
    assert [o.verdict for o in outs] == ["detected", "not_detected"]
    assert outs[0].attributed_account == "alice"
    for o in outs:
        assert o.report["decision"]["family_size"] == 6
        assert len(o.report["statistics"]["family"]) == 6
    alice = next(r for r in outs[0].accounts if r.account == "alice")
    assert alice.adjusted_p_value == pytest.approx(6 * alice.p_value)


def test_bad_parameters(setup):
    for kwargs, fragment in [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"mode": "grey-box"}, "mode"),
        ({"correction": "bonf"}, "correction"),
        ({"query_budget": -1}, "query_budget"),
        ({"samples_per_pair": 0}, "samples_per_pair"),
        ({"temperature": -1.0}, "temperature"),
        ({"accounts": [""]}, "account"),
    ]:
        with pytest.raises(InvestigationError, match=fragment):
            InvestigationParams(**kwargs)
    with pytest.raises(InvestigationError, match="black-box"):
        run_investigation(suspect=ScriptedSuspect(), **setup, params=InvestigationParams(mode="white-box"))
    with pytest.raises(InvestigationError, match="query budget"):
        run_investigation(suspect=ScriptedSuspect(), **setup, params=InvestigationParams(query_budget=0))


def test_no_accounts(issuer, engine, master, tiny_model_dir):
    issuer.ensure_account("nobody-delivered")
    with pytest.raises(InvestigationError, match="no accounts"):
        run_investigation(suspect=parse_suspect(f"hf:{tiny_model_dir}"), engine=engine, master=master)


def test_suspect_failure_gives_an_inconclusive_report_and_bugs_fail_the_investigation(setup):
    out = run_investigation(suspect=ScriptedSuspect(fail_after=2), **setup)
    assert out.verdict == "inconclusive" and "endpoint went away" in out.detail
    assert verify_stored_report(setup["engine"], out.report_id, public_key=setup["master"]).valid
    with pytest.raises(RuntimeError, match="bug in the adapter"):
        run_investigation(suspect=ScriptedSuspect(crash_after=1), **setup)
    with read_session(setup["engine"]) as session:
        from sqlmodel import select
        from tracemark.forensics.ledger.models import Investigation

        rows = session.exec(select(Investigation).order_by(Investigation.started_at)).all()
    assert rows[-1].status == "failed" and "bug in the adapter" in rows[-1].error
    assert rows[-2].status == "finished" and rows[-2].verdict == "inconclusive"


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from tracemark.forensics.keys import MasterSecret
    from tracemark.forensics.ledger.db import make_engine
    from tracemark.forensics.issuer import SignatureIssuer
    from tracemark.forensics.scheme import SignatureScheme
    from tracemark.forensics.adapters import SuspectAdapter, Sample
    from tracemark.forensics.investigate import InvestigationParams, run_investigation

    class Slow(SuspectAdapter):
        kind = "slow"
        def identity(self):
            return {"kind": "slow"}
        def _sample(self, prompt, n, max_new_tokens, temperature, seed):
            time.sleep(0.05)
            return [Sample(text=" 0000")] * n, {}

    master = MasterSecret.load(path=sys.argv[2])
    engine = make_engine(sys.argv[1])
    scheme = SignatureScheme(digits=4, pairs_per_account=50, contexts=("{trigger}",))
    issuer = SignatureIssuer(master=master, engine=engine, scheme=scheme)
    for i in range(4):
        for p in issuer.pairs_for(f"acct-{i}"):
            issuer.record_issue(account=f"acct-{i}", trace_id=f"t{i}-{p.index}", pair=p, rewriter="w")
    print("ready", flush=True)
    run_investigation(suspect=Slow("slow:x"), engine=engine, master=master,
                      params=InvestigationParams(query_budget=1000))
    """
)


def test_killed_process_loses_no_committed_query_row(tmp_path, clean_key_env):
    from sqlmodel import select
    from tracemark.forensics.ledger.db import make_engine
    from tracemark.forensics.ledger.models import Investigation, QueryRecord

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    script = tmp_path / "inv.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), url, str(tmp_path / "master.key")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout.readline().strip() == b"ready"
        engine = make_engine(url)
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with read_session(engine) as session:
                seen = [r.response_commitment + str(r.seq) for r in session.exec(select(QueryRecord)).all()]
            if len(seen) >= 10:
                break
            time.sleep(0.05)
        assert len(seen) >= 10, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    engine.dispose()
    engine = make_engine(url)
    with read_session(engine) as session:
        from sqlalchemy import text

        assert session.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        after = {r.response_commitment + str(r.seq) for r in session.exec(select(QueryRecord)).all()}
        inv = session.exec(select(Investigation)).one()
    assert set(seen) <= after  # every row seen committed before the kill is still there
    assert inv.status == "running" and json.loads(inv.params_json)["query_budget"] == 1000
    seqs = sorted(int(x[64:]) for x in after)
    assert seqs == list(range(1, len(seqs) + 1))  # no gap: committed one by one, in order


def test_only_delivered_pairs_of_each_key_version_are_tested(master, engine):
    """Issue 12: pooling every key version's pairs made one rotation cost a perfect distiller 20x. Pairs of
    a version never delivered to an account are not tested."""
    scheme = SignatureScheme(digits=4, contexts=SHORT)
    issuer = SignatureIssuer(master=master, engine=engine, scheme=scheme)
    deliver(issuer, "erin")  # version 1
    master.rotate()
    issuer = SignatureIssuer(master=master, engine=engine, scheme=scheme)
    deliver(issuer, "frank")  # version 2 only
    v2 = issuer.pairs_for("frank")
    out = run_investigation(suspect=ScriptedSuspect(memorised=v2), engine=engine, master=master)
    frank = next(a for a in out.accounts if a.account == "frank")
    assert frank.pairs_total == 2 and {p.key_version for p in frank.pair_results} == {2}
    assert [p.rank for p in frank.pair_results] == [1, 1] and out.attributed_account == "frank"
    erin = next(a for a in out.accounts if a.account == "erin")
    assert {p.key_version for p in erin.pair_results} == {1}
