"""The report body of an investigation: decision, registration, statistics, parameters, commitments, queries.

Built from a decided :class:`~tracemark.forensics.investigate.verdict.SuspectRun`, signed (DSSE),
appended to the ledger's report chain and logged in the transparency log by :func:`sign_report`. It cites
its pre-registration (log entry and hash) and lists every earlier registration for the same suspect. The
report holds no trigger, target, prompt or completion, nor a plain hash of one: pairs, queries and decoy sets
appear as keyed commitments under the investigation's commitment key
(:mod:`~tracemark.forensics.commitments`); ``tracemark report reveal`` discloses one account's key material
for a third party to re-derive the result (``rederivation`` in the report says how).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tracemark.forensics import commitments, stats
from tracemark.forensics.investigate.params import DETECTOR_VERSION, InvestigationParams
from tracemark.forensics.investigate.registration import prior_registrations
from tracemark.forensics.investigate.verdict import AccountResult, SuspectRun, decision_for, rule_text
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import session_scope
from tracemark.forensics.reports import issue_report
from tracemark.forensics.signatures import SignaturePair
from tracemark.forensics.tlog import append_entry

REDERIVATION_STEPS = (
    "Obtain from the operator the disclosure bundle of the accused account (`tracemark report reveal "
    "REPORT_ID --account ACCOUNT`), the operator's report-signing public key (PEM) and a signed log "
    "checkpoint.",
    "Check the checkpoint's signature with the public key and that every log entry in the bundle (the "
    "account's key commitments and this investigation's registration) chains to the checkpoint head.",
    "Open the account key commitments with the disclosed account keys and derive the account's signature "
    "pairs with tracemark's public derivation under the logged scheme; their public ids must equal those "
    "in the registration.",
    "Check that the registration precedes every query and names the suspect you hold (weights, tokenizer "
    "and chat-template hashes), and read the earlier registrations for the same suspect listed below.",
    "Re-score the suspect (`tracemark rescore BUNDLE --suspect MODEL --public-key KEY.pem`): the ranks, the "
    "account's combined p-value and its adjusted p-value must equal the report's exactly.",
    "With the distributional channel, the bundle also discloses the account's channel key (opening the "
    "channel commitment in its key entry); the re-score re-collects the suspect's tuples from the "
    "registered public prompts and seeds and recomputes the channel test (n, green, p) exactly.",
)


@dataclass
class InvestigationOutcome:
    """What :func:`run_investigation` returns (the report holds everything, signed)."""

    investigation_id: str
    report_id: str
    verdict: str  # detected | not_detected | inconclusive
    attributed_account: str | None
    p_value: float  # unadjusted combined p of the attributed (else the most significant) account
    adjusted_p_value: float
    log10_p: float
    accounts: list[AccountResult]
    envelope: dict
    report: dict
    suspect: str
    suspect_identity: dict
    mode: str
    queries: int
    detail: str = ""
    seconds: float = 0.0
    provider: dict | None = None  # the provider-key ("distilled from us") test, when the channel ran

    @property
    def distilled_from_us(self) -> bool | None:
        """The provider test's decision (``None``: no provider key was tested)."""
        return None if self.provider is None else bool(self.provider.get("rejected"))

    @property
    def detected(self) -> bool:
        return self.verdict == "detected"


def _pair_commitments(key: bytes, pairs: Sequence[SignaturePair]) -> list[dict]:
    """Keyed commitments to each pair (revealable with the report's commitment key and the pair)."""
    return [
        {
            "pair_id": p.pair_id,
            "account": p.account,
            "key_version": p.key_version,
            "index": p.index,
            "commitment": commitments.pair_commitment(key, p),
        }
        for p in pairs
    ]


def _pair_statistics(key: bytes, run: SuspectRun) -> list[dict]:
    """Per-pair statistics (rank, n, p-value, scores) with the decoy-set hash replaced by a commitment."""
    out = []
    for res in run.results.values():
        for r in res:
            d = r.as_dict()
            decoys = d.pop("decoys_sha256", None)
            if decoys is not None:
                d["decoys_commitment"] = commitments.decoys_commitment(key, r.pair_id, decoys)
            out.append(d)
    return out


def _query_items(key: bytes, entries: Sequence[Any]) -> list[dict]:
    """The report's view of each query: keyed commitments, never a plain hash (triggers are enumerable)."""
    return [
        {
            "seq": e.seq,
            "kind": e.kind,
            "prompt_commitment": commitments.prompt_commitment(key, e.prompt),
            "response_commitment": commitments.response_commitment(key, e.response),
        }
        for e in entries
    ]


def _registration_section(engine: Any, run: SuspectRun) -> dict:
    entry = run.registration
    return {
        "log_seq": entry.seq,
        "entry_hash": entry.entry_hash,
        "logged_at": entry.logged_at,
        "beacon": entry.entry_hash,
        "suspect_identity": entry.body.get("suspect_identity"),
        "parameters": entry.body.get("parameters"),
        "accounts": entry.body.get("accounts"),
        "family": entry.body.get("family"),
        "prior": prior_registrations(engine, entry),
        "note": "written to the transparency log before the first query; every earlier registration for "
        "the same suspect (same weights hash) is listed in 'prior', so re-runs are visible",
    }


def _parameters(run: SuspectRun, params: InvestigationParams) -> dict:
    all_pairs = [p for v in run.pairs.values() for p in v]
    return {
        "detector": DETECTOR_VERSION,
        "mode": run.mode,
        "alpha": params.alpha,
        "correction": params.correction,
        "schemes": run.registration.body.get("schemes", {}),
        "ranking": "conservative rank among the trigger's eligible candidates (ties count against the "
        "target); no seed",
        "pairs_per_account": {a: len(v) for a, v in run.pairs.items()},
        "key_versions": sorted({p.key_version for p in all_pairs}),
        "sequential": params.sequential,
        "query_budget": params.query_budget if run.mode == "black-box" else None,
        "samples_per_pair": run.samples_per_pair,
        "temperature": params.temperature if run.mode == "black-box" else None,
    }


def sign_report(
    run: SuspectRun,
    *,
    runs: list[SuspectRun],
    params: InvestigationParams,
    engine: Any,
    master: Any,
) -> InvestigationOutcome:
    """Build ``run``'s report (after :func:`~tracemark.forensics.investigate.verdict.decide`), sign and store
    it, log it, and mark the investigation finished."""
    decision = decision_for(run, sequential=params.sequential)
    pairs = run.pairs
    log_entries = list(getattr(run.suspect, "query_log", []))[run.queries_before :]
    key = master.commitment_key(run.investigation_id)
    queries = _query_items(key, log_entries)
    samples_used = sum(int(e.meta.get("n", 0)) for e in log_entries if e.kind == "sample")
    all_pairs = [p for v in pairs.values() for p in v]
    best = decision.best
    combination = {
        "statistic": "product of the pair p-values rank/N (sum of ln(rank/N))",
        "method": best.combination or "none",
        "null": "exact: ranks independent and uniform on {1..N_i} under H0 (Fisher's chi-square(2m) is "
        "used only as a conservative bound when the exact count is too expensive)",
        "observed": best.statistic,
        "ranks": [r.rank for r in best.pair_results],
        "ns": [r.n_candidates for r in best.pair_results],
        "account": best.account,
        "log10_p_value": best.log10_p,
    }
    statistics = {
        "test": "rank test: conservative exact rank of each delivered pair's target among the trigger's "
        "eligible candidates, p = rank/N; exact rank-product combination per account; multiplicity over "
        "the whole family of accusable accounts x suspects",
        "combination": combination,
        "accounts": [a.as_dict() for a in run.account_results],
        "p_value": best.p_value,
        "log10_p_value": best.log10_p,
        "pairs": _pair_statistics(key, run),
    }
    if run.monitor is not None:
        statistics["sequential"] = run.monitor.as_dict()
    provider = None
    if run.channel is not None:
        statistics["channel"] = run.channel.as_dict()
        if run.channel.provider:
            provider = {
                **statistics["channel"]["provider"],
                "alpha": params.provider_level,
                "correction": "holm over suspects",
                "verdict": "distilled_from_us" if run.channel.provider_rejected else "not_detected",
                "rule": "reject H0 (the suspect never learnt from text decoded under our provider key) when "
                "the Holm-adjusted provider p-value <= provider alpha; independent of accounts",
            }
    if len(runs) > 1:
        statistics["family"] = [
            {
                "suspect": r.spec,
                "account": a.account,
                "p_value": a.p_value,
                "adjusted_p_value": a.adjusted_p_value,
            }
            for r in runs
            for a in r.account_results
        ]
    data = {
        "kind": "tracemark-investigation",
        "investigation_id": run.investigation_id,
        "suspect": run.spec,
        "suspect_identity": run.identity,
        "registration": _registration_section(engine, run),
        "statistics": statistics,
        "decision": {
            "verdict": decision.verdict,
            "attributed_account": decision.attributed_account,
            "p_value": decision.p_value,
            "log10_p_value": decision.log10_p,
            "adjusted_p_value": best.adjusted_p_value,
            "alpha": params.alpha,
            "correction": params.correction,
            "correction_meaning": stats.correction_meaning(params.correction),
            "family_size": run.family_size,
            "accounts_scored": sum(len(r.account_results) for r in runs),
            "rule": rule_text(params.correction, sequential=params.sequential),
            "detail": run.incomplete,
            "provider": provider,
        },
        "parameters": _parameters(run, params),
        "rederivation": {
            "steps": list(REDERIVATION_STEPS),
            "commands": [
                f"tracemark report reveal {run.investigation_id} --account ACCOUNT -o bundle.json",
                "tracemark keys public-key > operator.pem",
                "tracemark rescore bundle.json --suspect hf:PATH --public-key operator.pem",
            ],
        },
        "commitments": {
            "scheme": commitments.SCHEME,
            "description": commitments.DESCRIPTION,
            "key_version": master.current_version,
            "pairs": _pair_commitments(key, all_pairs),
            "labels": {
                "pairs": "pair: pair_id, trigger, target",
                "queries": "query-prompt: prompt; query-response: response",
                "decoys": "decoys: pair_id, sha256 of the sorted decoys one per line",
            },
        },
        "queries": {
            "count": len(queries),
            "completions_sampled": samples_used,
            "digest": hashlib.sha256(json.dumps(queries, sort_keys=True).encode()).hexdigest(),
            "items": queries,
            "texts": "stored in the ledger (query_record), disclosed with the commitment key on request",
        },
        "budget": {
            "query_budget": params.query_budget if run.mode == "black-box" else None,
            "completions_used": samples_used,
            "pairs_scored": decision.pairs_scored,
            "pairs_total": decision.pairs_total,
            "stopped_early": bool(run.monitor and run.monitor.stopped_at),
            "stopping_time_pairs": run.monitor.stopped_at if run.monitor else None,
        },
        "seconds": round(time.perf_counter() - run.started, 3),
    }
    stored = issue_report(
        engine, data=data, master=master, investigation_id=run.investigation_id, verdict=decision.verdict
    )
    append_entry(
        engine,
        kind="report",
        subject=f"report:{stored.report_id}",
        body={
            "report_id": stored.report_id,
            "investigation_id": run.investigation_id,
            "report_hash": stored.report_hash,
            "verdict": decision.verdict,
            "registration_seq": run.registration.seq,
        },
    )
    with session_scope(engine) as session:
        records.finish_investigation(
            session, investigation_id=run.investigation_id, status="finished", verdict=decision.verdict
        )
    return InvestigationOutcome(
        investigation_id=run.investigation_id,
        report_id=stored.report_id,
        verdict=decision.verdict,
        attributed_account=decision.attributed_account,
        p_value=decision.p_value,
        adjusted_p_value=best.adjusted_p_value,
        log10_p=decision.log10_p,
        accounts=run.account_results,
        envelope=stored.envelope,
        report=stored.report,
        suspect=run.spec,
        suspect_identity=run.identity,
        mode=run.mode,
        queries=len(queries),
        detail=run.incomplete,
        seconds=time.perf_counter() - run.started,
        provider=provider,
    )
