"""SignatureIssuer: pairs per account and version, durable issue records, ledger/master consistency."""

from __future__ import annotations

import threading

import pytest
from tracemark.forensics.issuer import SignatureIssuer
from tracemark.forensics.keys import MasterSecret
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import LedgerError, make_engine, session_scope
from tracemark.forensics.scheme import SignatureScheme
from tracemark.forensics.signatures import SignaturePair

LEDGER_BACKENDS = ("sqlite", "postgresql")  # tests using ledger_url/engine run on both (tests/conftest.py)


def test_pairs_for_matches_derivation(issuer, master):
    pairs = issuer.pairs_for("acme")
    assert len(pairs) == 2
    assert pairs == SignatureScheme().derive(master.account_key("acme"), account="acme", key_version=1)
    assert all(len(p.target) == 6 and p.derivation == "tm-sig-v2" for p in pairs)
    assert issuer.pairs_for("acme") == pairs
    assert issuer.pairs_for("beta") != pairs


def test_record_issue_is_committed_and_visible_elsewhere(issuer, ledger_url):
    pair = issuer.pairs_for("acme")[1]
    issuer.record_issue(account="acme", trace_id="trace-1", pair=pair, rewriter="watermark")
    other = make_engine(ledger_url)  # a second connection pool, as another process would see it
    with session_scope(other) as s:
        assert records.issued_counts(s, account="acme") == {pair.pair_id: 1}
        assert records.list_accounts(s) == ["acme"]
    other.dispose()
    assert issuer.accounts() == ["acme"]
    assert issuer.issued_counts("acme") == {pair.pair_id: 1}


def test_record_issue_rejects_foreign_pairs(issuer):
    with pytest.raises(ValueError, match="another account"):
        issuer.record_issue(account="beta", trace_id="t", pair=issuer.pairs_for("acme")[0], rewriter="w")
    forged = SignaturePair("acme", 1, 0, "x10 =", "0000")
    with pytest.raises(ValueError, match="not derived by this issuer"):
        issuer.record_issue(account="acme", trace_id="t", pair=forged, rewriter="w")


def test_rotation_keeps_old_pairs_detectable(key_file, engine):
    master = MasterSecret.load(path=key_file)
    old = SignatureIssuer(master=master, engine=engine).pairs_for("acme")
    master.rotate()
    issuer = SignatureIssuer(master=master, engine=engine)
    assert issuer.key_version == 2
    new = issuer.pairs_for("acme")
    assert [p.key_version for p in new] == [2, 2]
    assert issuer.all_pairs_for("acme") == old + new
    issuer.record_issue(account="acme", trace_id="old-trace", pair=old[0], rewriter="w")
    with session_scope(engine) as s:
        assert [k.version for k in records.list_key_versions(s)] == [1, 2]


def test_ledger_of_another_master_is_refused(engine, tmp_path, clean_key_env):
    SignatureIssuer(master=MasterSecret.load(path=tmp_path / "a.key"), engine=engine)
    with pytest.raises(LedgerError, match="different master secret"):
        SignatureIssuer(master=MasterSecret.load(path=tmp_path / "b.key"), engine=engine)


def test_concurrent_issues_from_threads(issuer):
    pairs = issuer.pairs_for("acme")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(10):
                issuer.record_issue(account="acme", trace_id=f"{t}-{i}", pair=pairs[i % 2], rewriter="w")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert issuer.issued_counts("acme") == {pairs[0].pair_id: 20, pairs[1].pair_id: 20}


def test_bad_pairs_per_account(master, engine):
    with pytest.raises(ValueError):
        SignatureIssuer(master=master, engine=engine, pairs_per_account=0)
    assert "secret" not in repr(SignatureIssuer(master=master, engine=engine)).lower()


def test_a_scheme_changes_only_with_a_key_rotation(master, engine):
    """The server checks its configured scheme at start: issued accounts keep the logged one."""
    from tracemark.forensics.issuer import SchemeMismatch
    from tracemark.forensics.scheme import SignatureScheme

    six = SignatureIssuer(master=master, engine=engine)
    pair = six.pairs_for("acme")[0]
    six.record_issue(account="acme", trace_id="t1", pair=pair, rewriter="watermark")
    six.check_scheme()
    four = SignatureIssuer(master=master, engine=engine, scheme=SignatureScheme(digits=4))
    with pytest.raises(SchemeMismatch, match="rotate"):
        four.check_scheme()
    master.rotate()
    four = SignatureIssuer(master=master, engine=engine, scheme=SignatureScheme(digits=4))
    four.check_scheme()  # a new key version may use a new scheme
    four.record_issue(account="acme", trace_id="t2", pair=four.pairs_for("acme")[0], rewriter="watermark")
