"""The report body of an investigation: statistics, decision, parameters, seeds, commitments, queries.

Built from a decided :class:`~tracemark.forensics.investigate.verdict.SuspectRun`, signed (DSSE) and
appended to the ledger's report chain by :func:`sign_report`. The decoy/tie-break seed is committed
(:func:`seed_commitment`, written to the ledger) before the first query. The report holds no trigger, target,
prompt or completion, nor a plain hash of one: pairs, queries and decoy sets appear as keyed commitments under
the investigation's commitment key (:mod:`~tracemark.forensics.commitments`), which the operator can disclose
for this one report to a court.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tracemark.forensics import commitments
from tracemark.forensics.investigate.params import InvestigationParams
from tracemark.forensics.investigate.verdict import AccountResult, SuspectRun, decision_for, rule_text
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import session_scope
from tracemark.forensics.reports import issue_report
from tracemark.forensics.signatures import SignaturePair

DETECTOR_VERSION = "tracemark-detect/1"
SEED_COMMITMENT_LABEL = "tracemark-decoy-seed/1"


def seed_commitment(seed: int | str) -> str:
    """The published commitment to the decoy seed: ``sha256("tracemark-decoy-seed/1\\0" + str(seed))``."""
    return hashlib.sha256(f"{SEED_COMMITMENT_LABEL}\x00{seed}".encode()).hexdigest()


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


def sign_report(
    run: SuspectRun,
    *,
    runs: list[SuspectRun],
    params: InvestigationParams,
    engine: Any,
    master: Any,
    space: Any,
    seed: int,
    commitment: str,
) -> InvestigationOutcome:
    """Build ``run``'s report (after :func:`~tracemark.forensics.investigate.verdict.decide`), sign and store
    it, and mark the investigation finished."""
    decision = decision_for(run, sequential=params.sequential)
    pairs = run.pairs
    log_entries = list(getattr(run.suspect, "query_log", []))[run.queries_before :]
    key = master.commitment_key(run.investigation_id)
    queries = _query_items(key, log_entries)
    samples_used = sum(int(e.meta.get("n", 0)) for e in log_entries if e.kind == "sample")
    all_pairs = [p for v in pairs.values() for p in v]
    best = decision.best
    plot_acc = best
    statistics = {
        "test": "decoy randomization: exact rank of the target among N exchangeable candidates, "
        "p = rank/N; Fisher combination per account; multiplicity over accounts x suspects",
        "accounts": [a.as_dict() for a in run.account_results],
        "p_value": best.p_value,
        "log10_p_value": best.log10_p,
        "fisher_statistic": best.fisher_statistic,
        "df": best.df,
        "observed": best.fisher_statistic,
        "null": {"distribution": "chi2", "df": best.df},
        "pairs": _pair_statistics(key, run),
    }
    if plot_acc.df > 0:
        statistics["plot"] = {
            "observed": plot_acc.fisher_statistic,
            "null": {"kind": "chi2", "df": plot_acc.df},
            "label": f"Fisher statistic, account {plot_acc.account}",
        }
    if run.monitor is not None:
        statistics["sequential"] = run.monitor.as_dict()
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
        "statistics": statistics,
        "decision": {
            "verdict": decision.verdict,
            "attributed_account": decision.attributed_account,
            "p_value": decision.p_value,
            "log10_p_value": decision.log10_p,
            "adjusted_p_value": best.adjusted_p_value,
            "alpha": params.alpha,
            "correction": params.correction,
            "family_size": sum(len(r.account_results) for r in runs),
            "rule": rule_text(params.correction, sequential=params.sequential),
            "detail": run.incomplete,
        },
        "parameters": {
            "detector": DETECTOR_VERSION,
            "mode": run.mode,
            "alpha": params.alpha,
            "correction": params.correction,
            "candidate_space": {"kind": "decimal digits", "digits": space.digits, "size": space.size},
            "decoys": params.decoys,
            "ranking": "all candidates" if params.decoys is None else f"{params.decoys} decoys + target",
            "contexts": list(params.contexts),
            "problem": params.problem,
            "combine_contexts": params.combine,
            "pairs_per_account": {a: len(v) for a, v in pairs.items()},
            "key_versions": sorted({p.key_version for p in all_pairs}),
            "sequential": params.sequential,
            "query_budget": params.query_budget if run.mode == "black-box" else None,
            "samples_per_pair": run.samples_per_pair,
            "temperature": params.temperature if run.mode == "black-box" else None,
        },
        "seeds": {
            "decoy_seed": seed,
            "decoy_seed_commitment": commitment,
            "commitment_scheme": f"sha256('{SEED_COMMITMENT_LABEL}' + NUL + decimal seed)",
            "committed": "written to the ledger (investigation params) before the first query",
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
    )
