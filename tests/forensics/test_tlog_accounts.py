"""Account key commitments in the transparency log: the commitment, the issuer hook, key receipts."""

from __future__ import annotations

import copy
import hashlib
import json
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tracemark.forensics import tlog
from tracemark.forensics.issuer import SignatureIssuer
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import read_session
from tracemark.forensics.reports.canonical import canonical_json
from tracemark.forensics.reports.dsse import sign_envelope

LEDGER_BACKENDS = ("sqlite", "postgresql")  # tests using ledger_url/engine run on both (tests/conftest.py)

SCHEME = {"digits": 6, "pairs_per_account": 2}


def test_commitment_is_the_documented_hash_and_opens_with_the_key_only(master):
    key = master.account_key("acme", version=1)
    value = tlog.account_key_commitment(account="acme", key_version=1, account_key=key, scheme=SCHEME)
    expected = hashlib.sha256(
        b"tracemark/v1/account-key-commitment\x00acme\x001\x00" + canonical_json(SCHEME) + b"\x00" + key
    ).hexdigest()
    assert value == expected
    body = {"account": "acme", "key_version": 1, "scheme": SCHEME, "commitment": value}
    assert tlog.open_key_commitment(body, key)
    assert not tlog.open_key_commitment(body, master.account_key("beta", version=1))
    assert not tlog.open_key_commitment(body, key[:16])
    assert not tlog.open_key_commitment({**body, "key_version": 2}, key)
    assert not tlog.open_key_commitment({**body, "scheme": {**SCHEME, "digits": 5}}, key)
    with pytest.raises(tlog.LogError, match="not an account-key entry"):
        tlog.open_key_commitment({"account": "acme"}, key)
    for bad in ({"account": ""}, {"account": "a\x00b"}, {"key_version": 0}, {"account_key": b"short"}):
        args = {"account": "acme", "key_version": 1, "account_key": key, "scheme": SCHEME, **bad}
        with pytest.raises(tlog.LogError):
            tlog.account_key_commitment(**args)


def test_ensure_key_commitment_is_idempotent_and_hides_the_key(engine, master):
    entry = tlog.ensure_key_commitment(engine, master=master, account="acme", key_version=1, scheme=SCHEME)
    assert entry.kind == "account-key" and entry.subject == "account-key:acme:1"
    assert entry.body["key_fingerprint"] == master.fingerprint(1)
    assert set(entry.body) == {"account", "key_version", "key_fingerprint", "scheme", "commitment"}
    assert tlog.open_key_commitment(entry.body, master.account_key("acme", version=1))
    again = tlog.ensure_key_commitment(engine, master=master, account="acme", key_version=1, scheme=SCHEME)
    assert again == entry and tlog.log_size(engine) == 1
    with pytest.raises(tlog.LogConflict):
        tlog.ensure_key_commitment(
            engine, master=master, account="acme", key_version=1, scheme={**SCHEME, "digits": 4}
        )
    exported = json.dumps(tlog.export_log(engine, master=master))
    assert master.account_key("acme", version=1).hex() not in exported


def _issue(issuer: SignatureIssuer, account: str, trace: str, version: int | None = None) -> None:
    pairs = issuer.pairs_for_version(account, version or issuer.key_version)
    issuer.record_issue(account=account, trace_id=trace, pair=pairs[0], rewriter="watermark")


def test_issuer_logs_the_commitment_before_the_first_issued_row(issuer, engine, master, monkeypatch):
    seen_at_insert: list[list[str]] = []
    real = records.record_issued_signature

    def spy(session, **kwargs):
        seen_at_insert.append([e.subject for e in tlog.find_entries(engine, kind="account-key")])
        return real(session, **kwargs)

    monkeypatch.setattr(records, "record_issued_signature", spy)
    _issue(issuer, "acme", "t1")
    assert seen_at_insert == [["account-key:acme:1"]]
    (entry,) = tlog.account_key_entries(engine, account="acme")
    assert entry.body["scheme"] == issuer.scheme_dict()
    assert tlog.open_key_commitment(entry.body, master.account_key("acme", version=1))


def test_issuer_commits_once_per_account_and_version(key_file, engine, monkeypatch):
    from tracemark.forensics import issuer as issuer_module
    from tracemark.forensics.keys import MasterSecret

    calls: list[tuple[str, int]] = []
    real = issuer_module.ensure_key_commitment

    def counting(engine_, **kwargs):
        calls.append((kwargs["account"], kwargs["key_version"]))
        return real(engine_, **kwargs)

    monkeypatch.setattr(issuer_module, "ensure_key_commitment", counting)
    master = MasterSecret.load(path=key_file)
    issuer = SignatureIssuer(master=master, engine=engine, pairs_per_account=2)
    for i in range(3):
        _issue(issuer, "acme", f"a{i}")
        _issue(issuer, "beta", f"b{i}")
    assert calls == [("acme", 1), ("beta", 1)]
    master.rotate()
    rotated = SignatureIssuer(master=master, engine=engine, pairs_per_account=2)
    _issue(rotated, "acme", "a-v2")
    _issue(rotated, "acme", "a-v1-again", version=1)  # already logged: written once, not conflicting
    subjects = [e.subject for e in tlog.find_entries(engine, kind="account-key")]
    assert subjects == ["account-key:acme:1", "account-key:beta:1", "account-key:acme:2"]
    v2 = tlog.get_entry(engine, subject="account-key:acme:2")
    assert v2.body["key_fingerprint"] == master.fingerprint(2) != master.fingerprint(1)
    assert tlog.open_key_commitment(v2.body, master.account_key("acme", version=2))
    with read_session(engine) as s:
        assert sum(records.issued_counts(s, account="acme").values()) == 5


def test_issuer_commitment_under_concurrent_first_issues(issuer, engine):
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            _issue(issuer, "acme", f"t{t}")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert [e.subject for e in tlog.find_entries(engine)] == ["account-key:acme:1"]


# --- receipts -------------------------------------------------------------------------------------
@pytest.fixture
def two_versions(key_file, engine):
    """acme under versions 1 and 2, beta and a note between them."""
    from tracemark.forensics.keys import MasterSecret

    master = MasterSecret.load(path=key_file)
    tlog.ensure_key_commitment(engine, master=master, account="acme", key_version=1, scheme=SCHEME)
    tlog.ensure_key_commitment(engine, master=master, account="beta", key_version=1, scheme=SCHEME)
    tlog.ensure_key_commitment(engine, master=master, account="acme:x", key_version=1, scheme=SCHEME)
    master.rotate()
    tlog.ensure_key_commitment(engine, master=master, account="acme", key_version=2, scheme=SCHEME)
    tlog.append_entry(engine, kind="note", body={"after": True})
    return master


def test_key_receipt_holds_the_accounts_commitments_and_verifies(engine, two_versions):
    master = two_versions
    receipt = tlog.key_receipt(engine, account="acme", master=master)
    assert receipt["format"] == tlog.RECEIPT_FORMAT and receipt["account"] == "acme"
    entries = receipt["proof"]["entries"]
    assert [(e["seq"], e["subject"]) for e in entries] == [
        (1, "account-key:acme:1"),
        (4, "account-key:acme:2"),
    ]
    text = json.dumps(receipt)
    assert "beta" not in text and "acme:x" not in text  # other accounts appear by leaf hash only
    for v in (1, 2):
        assert master.account_key("acme", version=v).hex() not in text
    pem = master.signing_public_key_pem()
    result = tlog.verify_receipt(json.loads(text), pem)
    assert result.valid, result.problems
    assert result.signed_size == 5  # a fresh checkpoint covers the whole log
    old_pem = master.signing_public_key_pem(1)
    assert not tlog.verify_receipt(receipt, old_pem).valid  # signed with the current version's key
    assert tlog.verify_receipt(receipt, master).valid  # every version trusted
    with pytest.raises(tlog.KeyReceiptNotFound, match="no key commitment"):
        tlog.key_receipt(engine, account="nobody", master=master)


def test_tampered_receipts_fail(engine, two_versions):
    master = two_versions
    pem = master.signing_public_key_pem()
    receipt = tlog.key_receipt(engine, account="acme", master=master)
    cases = {
        "another account": lambda r: r.update(account="beta"),
        "commitment changed": lambda r: r["proof"]["entries"][0]["body"].update(commitment="0" * 64),
        "not a receipt": lambda r: r.update(format="x"),
        "forged checkpoint": lambda r: r["proof"].update(
            checkpoint=sign_envelope(
                b"{}", Ed25519PrivateKey.generate(), payload_type=tlog.CHECKPOINT_PAYLOAD_TYPE
            )
        ),
    }
    for name, tamper in cases.items():
        bad = copy.deepcopy(receipt)
        tamper(bad)
        assert not tlog.verify_receipt(bad, pem).valid, name
    other = copy.deepcopy(receipt)
    other["proof"]["entries"][0]["kind"] = "note"
    assert any("not an account-key" in p for p in tlog.verify_receipt(other, pem).problems)
