"""The report body of an investigation: statistics, decision, parameters, seeds, commitments, queries.

Built from a decided :class:`~tracemark.forensics.investigate.verdict.SuspectRun`, signed (DSSE) and
appended to the ledger's report chain by :func:`sign_report`. The decoy/tie-break seed is committed
(:func:`seed_commitment`, written to the ledger) before the first query; each signature pair gets a hiding
commitment its key holder can reveal.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def _pair_commitments(master: Any, pairs: Sequence[SignaturePair], investigation_id: str) -> list[dict]:
    """Hiding commitments to each pair (nonce = HMAC of the account key; revealable by the key holder)."""
    out = []
    for p in pairs:
        nonce = hmac.new(
            master.account_key(p.account, version=p.key_version),
            f"tracemark/v1/pair-commitment\x00{investigation_id}".encode(),
            "sha256",
        ).digest()
        out.append(
            {
                "pair_id": p.pair_id,
                "account": p.account,
                "key_version": p.key_version,
                "index": p.index,
                "commitment": p.commitment(nonce),
            }
        )
    return out


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
    queries = [
        {"seq": e.seq, "kind": e.kind, "prompt_sha256": e.prompt_sha256, "response_sha256": e.response_sha256}
        for e in log_entries
    ]
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
        "pairs": [r.as_dict() for res in run.results.values() for r in res],
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
            "pairs": _pair_commitments(master, all_pairs, run.investigation_id),
            "scheme": "sha256(nonce + pair_id NUL trigger NUL target); nonce = HMAC(account key, "
            "'tracemark/v1/pair-commitment' NUL investigation_id), revealable by the key holder",
        },
        "queries": {
            "count": len(queries),
            "completions_sampled": samples_used,
            "digest": hashlib.sha256(json.dumps(queries, sort_keys=True).encode()).hexdigest(),
            "items": queries,
            "texts": "stored in the ledger (query_record)",
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
