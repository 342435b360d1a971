"""Attack: recover triggers and targets from what a report reader sees, by hashing every candidate.

Triggers are a letter, 2-3 digits and `` =`` (21,780 strings), targets are 4 digits (10,000): a plain SHA-256 of
a trigger, a prompt built from the report's public contexts, a completion or a pair text gives them away. The
reader here holds a real signed report (white-box on the tiny model, black-box on a suspect that memorised one
account's pairs), the envelope, the HTML and PDF exports, `report list/show` output, the shown ledger rows, the
query rows' digests and every progress message, and tries all candidates. Nothing may match; a positive control
shows the enumeration does recover a trigger from a plain hash.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import typer
from sqlalchemy import text
from tracemark.cli.report import report_app
from tracemark.forensics import commitments
from tracemark.forensics.adapters import SuspectAdapter, parse_suspect
from tracemark.forensics.investigate import InvestigationParams, run_investigation
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import read_session
from tracemark.forensics.reports import canonical_json
from tracemark.forensics.reports.export import render_html, sections
from tracemark.forensics.scoring import DEFAULT_PROBLEM, expand_contexts
from tracemark.forensics.signatures import TRIGGER_LETTERS, TRIGGER_MAX, TRIGGER_MIN
from tracemark.forensics.tlog import export_log
from typer.testing import CliRunner

ACCOUNTS = ["alice", "bob"]
SHORT = ("\nLet {trigger}",)
HEX_RUN = re.compile(r"[0-9a-f]{16,}")


class Memorised(SuspectAdapter):
    """Black-box suspect that completes alice's triggers with her targets (completions carry targets)."""

    kind = "scripted"

    def __init__(self, pairs):
        super().__init__("scripted:secrets")
        self.map = {p.trigger: p.target for p in pairs}

    def identity(self):
        return {"kind": self.kind, "model": "scripted"}

    def _sample(self, prompt, n, max_new_tokens, temperature, seed):
        from tracemark.forensics.adapters import Sample

        for trigger, target in self.map.items():
            if prompt.endswith(trigger):
                return [Sample(text=f" {target}.")] * n, {}
        return [Sample(text=" 0000.")] * n, {}


def all_triggers() -> list[str]:
    return [f"{c}{n} =" for c in TRIGGER_LETTERS for n in range(TRIGGER_MIN, TRIGGER_MAX + 1)]


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def candidate_hashes(reports: list[dict], suspects, pairs) -> dict[str, str]:
    """Every plain SHA-256 a reader could compute from public data and a guess: hash -> what it reveals.
    Prompts are built from each report's public contexts and problem, with each suspect's chat prefix."""
    out: dict[str, str] = {}
    public = {
        (tuple(scheme["contexts"]), scheme.get("problem") or DEFAULT_PROBLEM)
        for r in reports
        for scheme in r["parameters"]["schemes"].values()
    }
    for trig in all_triggers():
        for form in (trig, trig[:-2], trig + " ", trig.replace(" ", "")):
            out[sha(form)] = f"trigger {trig}"
        for (contexts, problem), suspect in ((c, s) for c in public for s in suspects):
            for prompt in expand_contexts(contexts, trig, suspect, problem):
                out[sha(prompt)] = f"prompt with trigger {trig}"
                out[sha(prompt.replace(" ", ""))] = f"prompt with trigger {trig}"
    for i in range(10_000):
        t = f"{i:04d}"
        for form in (t, " " + t, f" {t}.", f"{t}."):
            out[sha(form)] = f"target {t}"
        for n in range(1, 9):  # the black-box query response: the sampled completions as JSON
            samples = [{"text": f" {t}."}] * n
            out[sha(json.dumps(samples, sort_keys=True, ensure_ascii=False))] = f"completion {t}"
    for p in pairs:  # the real triggers with every target: the pair text
        for i in range(10_000):
            for form in (f"{p.trigger} {i:04d}", f"{p.trigger}{i:04d}"):
                out[sha(form)] = f"pair text {form}"
    return out


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def investigated(tmp_path_factory, tiny_model_dir):
    from tracemark.forensics.issuer import SignatureIssuer
    from tracemark.forensics.keys import MasterSecret
    from tracemark.forensics.ledger.db import make_engine

    tmp = tmp_path_factory.mktemp("secrets")
    key_file, ledger_url = tmp / "master.key", f"sqlite:///{tmp / 'ledger.db'}"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("TRACEMARK_MASTER_KEY", "TRACEMARK_MASTER_KEY_FILE"):
            mp.delenv(name, raising=False)
        master = MasterSecret.load(path=key_file)
    engine = make_engine(ledger_url)
    from tracemark.forensics.scheme import SignatureScheme

    # 4-digit targets (10,000) and one short context keep the enumeration and the test fast
    issuer = SignatureIssuer(master=master, engine=engine, scheme=SignatureScheme(digits=4, contexts=SHORT))
    for a in ACCOUNTS:
        for p in issuer.pairs_for(a):
            issuer.record_issue(account=a, trace_id=f"t-{a}-{p.index}", pair=p, rewriter="watermark")
    pairs = [p for a in ACCOUNTS for p in issuer.all_pairs_for(a)]
    progress: list[str] = []
    white = parse_suspect(f"hf:{tiny_model_dir}")
    black = Memorised(issuer.all_pairs_for("alice"))
    outs = [
        run_investigation(
            suspect=white,
            engine=engine,
            master=master,
            params=InvestigationParams(),
            progress=lambda *e: progress.append(" ".join(map(str, e))),
        ),
        run_investigation(
            suspect=black,
            engine=engine,
            master=master,
            params=InvestigationParams(query_budget=64),
            progress=lambda *e: progress.append(" ".join(map(str, e))),
        ),
    ]
    assert outs[1].verdict == "detected" and outs[1].attributed_account == "alice"
    return {
        "outs": outs,
        "pairs": pairs,
        "progress": progress,
        "suspects": [white, black],
        "opts": ["--ledger", ledger_url, "--key-file", str(key_file)],
        "engine": engine,
        "master": master,
    }


def reader_view(investigated, engine) -> dict[str, str]:
    """Everything a report reader (or someone who sees the shown ledger rows) gets, by source."""
    app = typer.Typer()
    app.add_typer(report_app, name="report")
    runner = CliRunner()
    opts = investigated["opts"][:2]
    view = {"progress": "\n".join(investigated["progress"])}
    view["report list"] = runner.invoke(app, ["report", "list", *opts, "--json"]).stdout
    for o in investigated["outs"]:
        rid = o.report_id
        view[f"{rid} body"] = canonical_json(o.report).decode()
        view[f"{rid} envelope"] = json.dumps(o.envelope)
        view[f"{rid} html"] = render_html(o.envelope)
        view[f"{rid} pdf text"] = repr(sections(o.envelope)[1])  # the PDF renders these same sections
        view[f"{rid} show"] = runner.invoke(app, ["report", "show", rid, *opts]).stdout
    view["transparency log"] = json.dumps(export_log(engine))  # key commitments, registrations, reports
    with engine.connect() as conn:
        view["report rows"] = json.dumps(
            [list(map(str, r)) for r in conn.execute(text("SELECT * FROM report")).all()]
        )
        view["investigation rows"] = json.dumps(
            [list(map(str, r)) for r in conn.execute(text("SELECT * FROM investigation")).all()]
        )
        view["query digests"] = json.dumps(
            [
                list(r)
                for r in conn.execute(
                    text("SELECT prompt_commitment, response_commitment, meta_json FROM query_record")
                ).all()
            ]
        )
    return view


def test_no_report_field_lets_a_reader_recover_a_trigger_or_target(investigated):
    engine = investigated["engine"]
    outs, pairs = investigated["outs"], investigated["pairs"]
    hashes = candidate_hashes([o.report for o in outs], investigated["suspects"], pairs)
    prefixes = {h[:16]: what for h, what in hashes.items()}
    # positive control: the enumeration recovers a trigger from a plain hash of a prompt the suspect saw
    with read_session(engine) as session:
        logged = records.list_queries(session, investigation_id=outs[1].investigation_id)
    assert logged and logged[0].prompt is not None
    assert prefixes[sha(logged[0].prompt)[:16]].startswith("prompt with trigger")
    assert prefixes[sha(logged[0].response)[:16]].startswith("completion")
    # the attack on everything a reader sees: no 16+ hex run is (a prefix of) any candidate's SHA-256
    found = []
    for source, content in reader_view(investigated, engine).items():
        for run in HEX_RUN.findall(content):
            if run[:16] in prefixes:
                found.append((source, prefixes[run[:16]]))
        for p in pairs:  # and no plain text: trigger (with its " ="), pair text
            assert p.trigger not in content and p.text not in content, source
    assert not found, found[:5]
    print(f"\ncandidate SHA-256 hashes tried: {len(hashes)}; hex runs matched: 0")


def test_progress_messages_carry_no_ranks(investigated):
    text_ = "\n".join(investigated["progress"])
    assert "rank" not in text_ and "p =" not in text_ and "p-value" not in text_
    for o in investigated["outs"]:
        for a in o.accounts:
            for r in a.pair_results:
                assert f"{r.rank}/{r.n_candidates}" not in text_


def test_a_court_given_one_reports_key_opens_its_commitments(investigated):
    engine, master = investigated["engine"], investigated["master"]
    out = investigated["outs"][1]
    app = typer.Typer()
    app.add_typer(report_app, name="report")
    res = CliRunner().invoke(app, ["report", "commitment-key", out.report_id, *investigated["opts"]])
    assert res.exit_code == 0, res.output
    key = bytes.fromhex(res.stdout.strip())
    other = investigated["outs"][0]
    assert key != master.commitment_key(other.investigation_id)  # one report's key opens no other report
    # the court checks the disclosed query texts and pairs against the signed commitments
    with read_session(engine) as session:
        rows = records.list_queries(session, investigation_id=out.investigation_id)
    items = out.report["queries"]["items"]
    assert [commitments.prompt_commitment(key, r.prompt) for r in rows] == [
        q["prompt_commitment"] for q in items
    ]
    assert [commitments.response_commitment(key, r.response) for r in rows] == [
        q["response_commitment"] for q in items
    ]
    by_id = {p.pair_id: p for p in investigated["pairs"]}
    for c in out.report["commitments"]["pairs"]:
        assert c["commitment"] == commitments.pair_commitment(key, by_id[c["pair_id"]])
    # a wrong target does not open it
    p = investigated["pairs"][0]
    fake = type(p)(p.account, p.key_version, p.index, p.trigger, f"{(int(p.target) + 1) % 10_000:04d}")
    assert commitments.pair_commitment(key, fake) != commitments.pair_commitment(key, p)
