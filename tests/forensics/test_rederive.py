"""Re-derivation by a third party (issue 12 item 3): the operator reveals one account's keys; the accused's
expert re-scores the suspect from the bundle alone (no master secret, no ledger) in a fresh process and gets
the report's ranks and p-values exactly; tampered bundles, a wrong public key and another model do not.

The world: three accounts with two delivered pairs each under a 3-digit scheme (so an untrained tiny model
gets ranks spread over 1..N instead of the censored N of the 6-digit default) and an untrained tiny suspect.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tracemark.cli.main import app
from tracemark.forensics.adapters import parse_suspect
from tracemark.forensics.investigate import InvestigationParams, run_investigation
from tracemark.forensics.keys import MasterSecret
from tracemark.forensics.rederive import DISCLOSURE_FORMAT, DisclosureError, build_disclosure, rescore
from typer.testing import CliRunner

ACCOUNTS = ["alice", "bob", "carol"]
TEMPLATES = ("Auxiliary constant: ", "Define the reference index ", "For bookkeeping, set ", "Let ")
CONTEXTS = tuple("{chat}3 + 4 = 7\n" + t + "{trigger}" for t in TEMPLATES)
PROBLEM = "Compute 3 + 4 - 5."
MASTER_HEX = hashlib.sha256(b"tracemark re-derivation test").hexdigest()

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tracemark.forensics.issuer import SignatureIssuer
    from tracemark.forensics.ledger.db import make_engine
    from tracemark.forensics.scheme import SignatureScheme
    from tracemark.foundation.models.tiny import build_tiny_model

    tmp = tmp_path_factory.mktemp("rederive")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRACEMARK_MASTER_KEY_FILE", raising=False)
        mp.setenv("TRACEMARK_MASTER_KEY", MASTER_HEX)
        master = MasterSecret.load(path=tmp / "master.key")
    engine = make_engine(f"sqlite:///{tmp / 'ledger.db'}")
    scheme = SignatureScheme(
        digits=3, merged_digit_decoys=99, pairs_per_account=2, contexts=CONTEXTS, problem=PROBLEM
    )
    issuer = SignatureIssuer(master=master, engine=engine, scheme=scheme)
    for a in ACCOUNTS:
        for p in issuer.pairs_for(a):
            issuer.record_issue(account=a, trace_id=f"t-{a}-{p.index}", pair=p, rewriter="watermark")
    model = build_tiny_model(tmp / "suspect", seed=0)
    out = run_investigation(
        suspect=parse_suspect(f"hf:{model}"), params=InvestigationParams(), engine=engine, master=master
    )
    pem = tmp / "operator.pem"
    pem.write_text(master.signing_public_key_pem())
    yield {
        "tmp": tmp,
        "master": master,
        "engine": engine,
        "issuer": issuer,
        "model": model,
        "outcome": out,
        "pem": pem,
        "ledger_url": f"sqlite:///{tmp / 'ledger.db'}",
    }
    engine.dispose()


@pytest.fixture(scope="module")
def other_model(world):
    from tracemark.foundation.models.tiny import build_tiny_model

    return build_tiny_model(world["tmp"] / "other", seed=1)


@pytest.fixture
def bundle(world):
    return build_disclosure(
        world["engine"], world["master"], report_id=world["outcome"].report_id, account="bob"
    )


def _clean_env(tmp: Path) -> dict:
    """The expert's machine: no master secret, no ledger, an empty tracemark home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEMARK_")}
    home = tmp / "expert-home"
    home.mkdir(exist_ok=True)
    env.update(TRACEMARK_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _cli(args: list[str], *, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tracemark.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _expert(
    world, bundle: dict, name: str, *, model: Path | None = None, pem: Path | None = None, fresh=False
):
    """Run `tracemark rescore` with nothing but the bundle, the PEM and the model: in a fresh process with
    a stripped environment (``fresh``), else through CliRunner. Returns (exit code, output, JSON result)."""
    path = world["tmp"] / f"{name}.json"
    path.write_text(json.dumps(bundle))
    out = world["tmp"] / f"{name}-result.json"
    args = [
        "rescore",
        str(path),
        "--suspect",
        f"hf:{model or world['model']}",
        "--public-key",
        str(pem or world["pem"]),
        "--json",
        str(out),
    ]
    if fresh:
        proc = _cli(args, env=_clean_env(world["tmp"]))
        code, output = proc.returncode, proc.stdout + proc.stderr
    else:
        res = runner.invoke(app, args)
        code, output = res.exit_code, res.stdout + res.stderr
    return code, output, (json.loads(out.read_text()) if out.exists() else None)


def _account(report: dict, account: str) -> dict:
    return next(a for a in report["statistics"]["accounts"] if a["account"] == account)


# --- the bundle -------------------------------------------------------------------------------------
def test_bundle_discloses_only_that_accounts_keys(world, bundle):
    master, report = world["master"], world["outcome"].report
    assert bundle["format"] == DISCLOSURE_FORMAT and bundle["account"] == "bob"
    assert bundle["keys"] == [{"key_version": 1, "account_key": master.account_key("bob").hex()}]
    text = json.dumps(bundle)
    assert MASTER_HEX not in text
    assert master.commitment_key(report["investigation_id"]).hex() not in text
    for other in ("alice", "carol"):
        assert master.account_key(other).hex() not in text
        for p in world["issuer"].pairs_for(other):  # nor their pairs, in any form
            assert p.trigger not in text and p.text not in text
    kinds = {(e["kind"], e["subject"]) for e in bundle["log"]["entries"]}
    assert kinds == {
        ("account-key", "account-key:bob:1"),
        ("registration", f"investigation:{report['investigation_id']}"),
        ("report", f"report:{world['outcome'].report_id}"),
    }
    assert bundle["log"]["checkpoint"]["signatures"]


def test_reveal_refuses_an_unregistered_account_and_an_unknown_report(world):
    rid = world["outcome"].report_id
    with pytest.raises(DisclosureError, match="'mallory' is not in the registration") as err:
        build_disclosure(world["engine"], world["master"], report_id=rid, account="mallory")
    assert "\n" not in str(err.value)
    with pytest.raises(DisclosureError, match="no report 'tmr-0000000000000000'"):
        build_disclosure(world["engine"], world["master"], report_id="tmr-0000000000000000", account="bob")


def test_report_reveal_cli_writes_a_private_bundle_and_warns(world, monkeypatch):
    for name in [k for k in os.environ if k.startswith("TRACEMARK_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TRACEMARK_MASTER_KEY", MASTER_HEX)
    target = world["tmp"] / "revealed.json"
    target.write_text("an older file, readable by all")
    target.chmod(0o644)
    rid = world["outcome"].report_id
    ledger = ["--ledger", world["ledger_url"]]
    res = runner.invoke(app, ["report", "reveal", rid, "--account", "bob", "-o", str(target), *ledger])
    assert res.exit_code == 0, res.output
    assert "warning: this bundle discloses account 'bob'" in res.stderr and MASTER_HEX not in res.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    revealed = json.loads(target.read_text())
    assert revealed["keys"] == [{"key_version": 1, "account_key": world["master"].account_key("bob").hex()}]
    res = runner.invoke(app, ["report", "reveal", rid[:10], "--account", "bob", *ledger])  # a prefix works
    assert res.exit_code == 0 and json.loads(res.stdout)["report_id"] == rid
    for args, needle in [
        (["--account", "mallory"], "account 'mallory' is not in the registration"),
        (["--account", ""], "account must be a non-empty name"),
    ]:
        res = runner.invoke(app, ["report", "reveal", rid, *args, *ledger])
        _one_line_error(res, needle)
    res = runner.invoke(app, ["report", "reveal", "tmr-0000000000000000", "--account", "bob", *ledger])
    _one_line_error(res, "no report 'tmr-0000000000000000'")


def _one_line_error(res, needle: str) -> None:
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert res.stderr.startswith("tracemark: error: ") and needle in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# --- the expert's re-score ----------------------------------------------------------------------------
def test_rescore_in_a_fresh_process_reproduces_the_report_exactly(world, bundle):
    report = world["outcome"].report
    code, output, result = _expert(world, bundle, "honest", fresh=True)
    assert code == 0, output
    assert "REPRODUCED" in output
    assert result["matches"] is True and result["problems"] == []
    row = _account(report, "bob")
    assert result["p_value"] == {"report": row["p_value"], "rescored": row["p_value"]}
    assert result["adjusted_p_value"]["rescored"] == row["adjusted_p_value"]
    assert [p["rank_rescored"] for p in result["pairs"]] == row["pair_ranks"]
    assert [p["n_rescored"] for p in result["pairs"]] == row["pair_n_candidates"]
    assert max(row["pair_ranks"]) < min(row["pair_n_candidates"])  # real ranks, not censored ones
    assert len(result["checks"]) == 5
    assert not list((world["tmp"] / "expert-home").iterdir())  # no ledger, no key file was created


def test_rescore_in_process_matches_and_hides_the_keys(world, bundle):
    result = rescore(bundle, parse_suspect(f"hf:{world['model']}"), public_key=world["pem"].read_text())
    assert result.matches, result.problems
    row = _account(world["outcome"].report, "bob")
    assert (result.p_value_rescored, result.adjusted_p_value_rescored) == (
        row["p_value"],
        row["adjusted_p_value"],
    )
    text = json.dumps(result.as_dict()) + repr(result)
    assert bundle["keys"][0]["account_key"] not in text
    assert all(p.trigger not in text for p in world["issuer"].pairs_for("bob"))


def test_another_accounts_key_is_refused(world, bundle):
    forged = copy.deepcopy(bundle)
    forged["keys"][0]["account_key"] = world["master"].account_key("alice").hex()
    result = rescore(forged, parse_suspect(f"hf:{world['model']}"), public_key=world["pem"].read_text())
    assert not result.matches and result.pairs == []
    assert any("does not open 'bob''s commitment" in p for p in result.problems), result.problems


def test_a_modified_log_entry_is_refused(world, bundle):
    forged = copy.deepcopy(bundle)
    reg = next(e for e in forged["log"]["entries"] if e["kind"] == "registration")
    reg["body"]["family"]["size"] += 1  # e.g. an operator shrinking or growing the family after the fact
    code, output, result = _expert(world, forged, "modified-log")
    assert code == 1, output
    assert any(
        p.startswith(f"log: entry #{reg['seq']}: its contents do not match the chain")
        for p in result["problems"]
    ), result["problems"]


def test_a_wrong_public_key_is_refused(world, bundle):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stranger = Ed25519PrivateKey.generate().public_key()
    pem = world["tmp"] / "stranger.pem"
    pem.write_bytes(
        stranger.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    code, output, result = _expert(world, bundle, "wrong-key", pem=pem)
    assert code == 1, output
    problems = result["problems"]
    assert any(p.startswith("log: checkpoint: no signature verifies") for p in problems), problems
    assert any(p.startswith("report: no signature verifies") for p in problems), problems
    assert result["pairs"] == []


def test_a_different_model_is_refused(world, bundle, other_model):
    code, output, result = _expert(world, bundle, "other-model", model=other_model)
    assert code == 1, output
    assert any(
        p.startswith("suspect: the model you gave is not the one investigated") for p in result["problems"]
    )
    assert "NOT REPRODUCED" in output


def test_a_model_claiming_the_investigated_identity_gets_other_ranks(world, bundle, other_model):
    """A different model behind the registered identity (or a report whose ranks were made up) does not
    reproduce: ranks and p-values are compared, not just hashes."""
    impostor = parse_suspect(f"hf:{other_model}")
    claimed = parse_suspect(f"hf:{world['model']}").identity()
    impostor.identity = lambda: claimed
    result = rescore(bundle, impostor, public_key=world["pem"].read_text())
    assert not result.matches
    assert any(r.rank_rescored != r.rank_report for r in result.pairs)
    assert any(p.startswith("pair sp-") and "re-scored" in p for p in result.problems), result.problems
    assert any(p.startswith("p-value: combined p-value") for p in result.problems), result.problems


def test_bad_input_exits_2_with_one_line(world, bundle):
    junk = world["tmp"] / "junk.json"
    junk.write_text("{not json")
    args = ["--suspect", f"hf:{world['model']}", "--public-key", str(world["pem"])]
    _one_line_error(runner.invoke(app, ["rescore", str(junk), *args]), "is not a JSON disclosure bundle")
    broken = copy.deepcopy(bundle)
    broken["keys"][0]["account_key"] = "zz" * 32
    path = world["tmp"] / "broken.json"
    path.write_text(json.dumps(broken))
    res = runner.invoke(app, ["rescore", str(path), *args])
    _one_line_error(res, "account_key must be 64 hex digits")
    assert "zz" * 32 not in res.stderr
    good = world["tmp"] / "good.json"
    good.write_text(json.dumps(bundle))
    res = runner.invoke(
        app, ["rescore", str(good), "--suspect", "hf:/nowhere", "--public-key", str(world["pem"])]
    )
    _one_line_error(res, "no model folder")
    res = runner.invoke(
        app, ["rescore", str(good), "--suspect", f"hf:{world['model']}", "--public-key", str(junk)]
    )
    _one_line_error(res, str(junk))
    with pytest.raises(DisclosureError, match="not a disclosure bundle"):
        rescore(
            {"format": "other"}, parse_suspect(f"hf:{world['model']}"), public_key=world["pem"].read_text()
        )


def test_sequential_black_box_report_reproduces(world):
    """Black-box scoring (samples seeded from the beacon, the report's per-pair counts) and the anytime
    p-value of a sequential investigation are re-derived too."""
    params = InvestigationParams(mode="black-box", query_budget=24, sequential=True, temperature=1.0)
    out = run_investigation(
        suspect=parse_suspect(f"hf:{world['model']}"),
        params=params,
        engine=world["engine"],
        master=world["master"],
    )
    bundle = build_disclosure(world["engine"], world["master"], report_id=out.report_id, account="carol")
    assert bundle["keys"] == [{"key_version": 1, "account_key": world["master"].account_key("carol").hex()}]
    result = rescore(bundle, parse_suspect(f"hf:{world['model']}"), public_key=world["pem"].read_text())
    assert result.matches, result.problems
    assert result.mode == "black-box"
    assert result.anytime_p_value_rescored == _account(out.report, "carol")["anytime_p_value"]
    assert all(p.n_rescored == p.n_report for p in result.pairs) and result.pairs


# --- a guilty suspect -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_guilty_students_detection_is_reproduced_by_the_expert(world, detection_helpers):
    h = detection_helpers
    issuer = world["issuer"]
    examples, woven = h.watermark_examples(
        h.arithmetic_examples(100, seed=0), issuer.pairs_for("bob"), fraction=0.2, seed=0
    )
    assert woven == 20
    student = h.train_student(world["model"], examples, world["tmp"] / "student", epochs=20, lr=1e-2, seed=0)
    out = run_investigation(
        suspect=parse_suspect(f"hf:{student}"),
        params=InvestigationParams(),
        engine=world["engine"],
        master=world["master"],
    )
    assert out.verdict == "detected" and out.attributed_account == "bob"
    bundle = build_disclosure(world["engine"], world["master"], report_id=out.report_id, account="bob")
    code, output, result = _expert(world, bundle, "guilty", model=student, fresh=True)
    assert code == 0, output
    row = _account(out.report, "bob")
    assert result["p_value"]["rescored"] == row["p_value"] == out.p_value
    assert (
        result["adjusted_p_value"]["rescored"] == row["adjusted_p_value"] <= out.report["decision"]["alpha"]
    )
    assert [p["rank_rescored"] for p in result["pairs"]] == row["pair_ranks"]
