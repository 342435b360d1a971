"""Investigations: query a suspect for every account's signature pairs, test, attribute, report.

The test (DESIGN.md section 5) is a decoy randomization test, exact without any reference model: under
H0 ("the suspect never trained on this account's pairs") a pair's target is exchangeable with every other
candidate of the space, so its rank (ties broken at random) is uniform and ``p = rank / N`` is an exact
p-value. An account's pairs are combined with Fisher's method (``chi2`` with ``2m`` degrees of freedom,
log space); accounts (and suspects) are compared under Holm (default) or Benjamini-Hochberg at the pre-set
``alpha``. The decoy/tie-break seed is committed (SHA-256 written to the ledger) before the first query,
and every query is written to the ledger as it happens (one commit per query).

Default ``alpha`` is ``1e-3`` (family-wise, over all accounts and suspects): a bystander account is falsely
accused with probability at most 0.1%. Reports state the unadjusted combined p-value of the attributed
account as well; a memorised pair gives ``p = 1/N`` per pair, so two pairs of a 4-digit space already
reach ``p ~ 2e-7``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracemark.forensics import stats
from tracemark.forensics.scoring import (
    DEFAULT_CONTEXTS,
    DEFAULT_PROBLEM,
    BlackBoxScorer,
    PairScore,
    ScoringError,
    WhiteBoxScorer,
)
from tracemark.forensics.sequential import SequentialMonitor
from tracemark.forensics.signatures import SignaturePair

log = logging.getLogger(__name__)

DETECTOR_VERSION = "tracemark-detect/1"
SEED_COMMITMENT_LABEL = "tracemark-decoy-seed/1"
MODES = ("auto", "white-box", "black-box")
ProgressFn = Callable[[str, int, int, str], None]


class InvestigationError(ValueError):
    """Bad investigation parameters (alpha, mode, accounts, budget, ...)."""


def seed_commitment(seed: int | str) -> str:
    """The published commitment to the decoy seed: ``sha256("tracemark-decoy-seed/1\\0" + str(seed))``."""
    return hashlib.sha256(f"{SEED_COMMITMENT_LABEL}\x00{seed}".encode()).hexdigest()


@dataclass
class AccountResult:
    """One account's test against one suspect."""

    account: str
    suspect: str
    p_value: float
    log10_p: float
    adjusted_p_value: float = 1.0
    rejected: bool = False
    pairs: int = 0  # pairs scored
    pairs_total: int = 0
    fisher_statistic: float = 0.0
    df: int = 0
    pair_results: list[PairScore] = field(default_factory=list)
    effect: dict | None = None
    anytime_p: float | None = None  # sequential mode

    def as_dict(self) -> dict:
        out = {
            "account": self.account,
            "suspect": self.suspect,
            "p_value": self.p_value,
            "log10_p": self.log10_p,
            "adjusted_p_value": self.adjusted_p_value,
            "rejected": self.rejected,
            "pairs": self.pairs,
            "pairs_total": self.pairs_total,
            "fisher_statistic": self.fisher_statistic,
            "df": self.df,
            "pair_ranks": [p.rank for p in self.pair_results],
            "pair_p_values": [p.p_value for p in self.pair_results],
            "pair_n_candidates": [p.n_candidates for p in self.pair_results],
        }
        if self.effect is not None:
            out["effect"] = self.effect
        if self.anytime_p is not None:
            out["anytime_p_value"] = self.anytime_p
        return out


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


@dataclass
class _SuspectRun:
    suspect: Any
    spec: str
    mode: str
    investigation_id: str
    identity: dict
    results: dict[str, list[PairScore]] = field(default_factory=dict)
    pairs: dict[str, list[SignaturePair]] = field(default_factory=dict)
    monitor: SequentialMonitor | None = None
    incomplete: str = ""
    samples_per_pair: int | None = None
    started: float = 0.0
    queries_before: int = 0
    account_results: list[AccountResult] = field(default_factory=list)


def _emit(progress: ProgressFn | None, stage: str, done: int, total: int, message: str = "") -> None:
    if progress is None:
        return
    try:
        progress(stage, done, total, message)
    except Exception:  # a broken progress sink never stops an investigation
        log.debug("progress callback failed", exc_info=True)


def _validate(alpha: float, mode: str, correction: str, query_budget: int, decoys: int | None, space) -> None:  # noqa: ANN001
    if not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise InvestigationError(f"alpha must be in (0, 1), got {alpha!r}")
    if mode not in MODES:
        raise InvestigationError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if correction not in ("holm", "fdr_bh"):
        raise InvestigationError(f"correction must be holm or fdr_bh, got {correction!r}")
    if not isinstance(query_budget, int) or query_budget < 0:
        raise InvestigationError(f"query_budget must be a non-negative integer, got {query_budget!r}")
    if decoys is not None and not 1 <= decoys < space.size:
        raise InvestigationError(f"decoys must be in 1..{space.size - 1} (or omitted), got {decoys}")


def _interleave(pairs: dict[str, list[SignaturePair]]) -> list[SignaturePair]:
    """Round-robin over accounts (pair 0 of every account, then pair 1, ...): early evidence for all."""
    order: list[SignaturePair] = []
    depth = max((len(v) for v in pairs.values()), default=0)
    for i in range(depth):
        for account in pairs:
            if i < len(pairs[account]):
                order.append(pairs[account][i])
    return order


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


def run_investigation(*, suspect: Any, **kwargs: Any) -> InvestigationOutcome:
    """Investigate one suspect (see :func:`run_investigations` for the parameters)."""
    return run_investigations(suspects=[suspect], **kwargs)[0]


def run_investigations(
    *,
    suspects: Sequence[Any],
    accounts: Sequence[str] | None = None,
    issuer: Any,
    engine: Any,
    master: Any,
    alpha: float = 1e-3,
    mode: str = "auto",
    query_budget: int = 200,
    decoys: int | None = None,
    seed: int | None = None,
    correction: str = "holm",
    sequential: bool = False,
    progress: ProgressFn | None = None,
    contexts: Sequence[str] | None = None,
    problem: str | None = None,
    combine: str = "max",
    samples_per_pair: int | None = None,
    temperature: float = 0.0,
    store_query_text: bool = True,
) -> list[InvestigationOutcome]:
    """Test every account's pairs in every suspect; correct over accounts x suspects; sign one report per
    suspect; return one :class:`InvestigationOutcome` per suspect.

    * ``mode``: ``white-box`` (exact log-prob ranks; local models), ``black-box`` (sampled completions,
      ``query_budget`` completions per suspect, ``samples_per_pair`` default ``budget // pairs``), ``auto``.
    * ``decoys``: ``None`` ranks the target among all ``N`` candidates (exact trie search / all counts);
      an integer ranks it among that many decoys drawn from the committed seed.
    * ``sequential``: anytime-valid e-process per account; stops querying once an account crosses
      ``K / alpha`` (K = accounts x suspects) and decides on the e-processes.
    * ``progress(stage, done, total, message)`` receives ``prepare``, ``score``, ``decide``, ``report``
      and ``done`` events.
    """
    if not suspects:
        raise InvestigationError("no suspect given")
    space = issuer.space
    _validate(alpha, mode, correction, query_budget, decoys, space)
    ctx = tuple(contexts) if contexts else DEFAULT_CONTEXTS
    if any("{trigger}" not in c for c in ctx):
        raise InvestigationError("every context must contain '{trigger}'")
    prob = problem or DEFAULT_PROBLEM
    names = list(dict.fromkeys(accounts)) if accounts else issuer.accounts()
    if not names:
        raise InvestigationError("no accounts to test: the ledger has none and none were given")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise InvestigationError("account names must be non-empty strings")
    if seed is None:
        seed = secrets.randbits(63)
    if not isinstance(seed, int) or seed < 0:
        raise InvestigationError(f"seed must be a non-negative integer, got {seed!r}")
    commitment = seed_commitment(seed)
    pairs = {a: issuer.all_pairs_for(a) for a in names}
    n_pairs = sum(len(v) for v in pairs.values())
    family = len(names) * len(suspects)
    from tracemark.forensics.ledger import records
    from tracemark.forensics.ledger.db import session_scope

    runs: list[_SuspectRun] = []
    for suspect in suspects:
        resolved = mode
        if mode == "auto":
            resolved = "white-box" if getattr(suspect, "white_box", False) else "black-box"
        if resolved == "white-box" and not getattr(suspect, "white_box", False):
            raise InvestigationError(f"suspect {suspect.spec!r} is black-box: use mode black-box or auto")
        if resolved == "black-box" and query_budget < 1:
            raise InvestigationError("black-box investigations need a query budget of at least 1")
        runs.append(_SuspectRun(suspect, suspect.spec, resolved, "", {}))

    params = {
        "detector": DETECTOR_VERSION,
        "alpha": alpha,
        "correction": correction,
        "query_budget": query_budget,
        "decoys": decoys,
        "sequential": sequential,
        "accounts": names,
        "pairs_total": n_pairs,
        "decoy_seed_commitment": commitment,
        "candidate_space": {"digits": space.digits, "size": space.size},
    }
    for run in runs:
        _emit(progress, "prepare", 0, 0, f"identifying suspect {run.spec}")
        run.identity = run.suspect.identity()
        with session_scope(engine) as session:  # committed before the first query: the seed commitment
            row = records.create_investigation(
                session,
                suspect=run.spec,
                suspect_identity=run.identity,
                params={**params, "mode": run.mode, "suspect": run.spec},
            )
            run.investigation_id = row.id
    _emit(progress, "prepare", 0, 0, f"decoy seed committed: sha256 {commitment[:16]}...")

    try:
        for run in runs:
            _score_suspect(
                run,
                pairs=pairs,
                engine=engine,
                space=space,
                seed=seed,
                decoys=decoys,
                query_budget=query_budget,
                contexts=ctx,
                problem=prob,
                combine=combine,
                samples_per_pair=samples_per_pair,
                temperature=temperature,
                sequential=sequential,
                alpha=alpha,
                family=family,
                store_query_text=store_query_text,
                progress=progress,
            )
        _emit(progress, "decide", 0, 1, "combining pairs and correcting over accounts")
        _decide(runs, alpha=alpha, correction=correction, sequential=sequential)
        _emit(progress, "decide", 1, 1, "")
        outcomes = []
        for i, run in enumerate(runs):
            _emit(progress, "report", i, len(runs), f"signing the report for {run.spec}")
            outcomes.append(
                _report(
                    run,
                    runs=runs,
                    engine=engine,
                    master=master,
                    space=space,
                    alpha=alpha,
                    correction=correction,
                    seed=seed,
                    commitment=commitment,
                    decoys=decoys,
                    query_budget=query_budget,
                    contexts=ctx,
                    problem=prob,
                    combine=combine,
                    temperature=temperature,
                    sequential=sequential,
                    pairs=pairs,
                )
            )
        _emit(progress, "report", len(runs), len(runs), "")
    except BaseException as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        for run in runs:
            try:
                with session_scope(engine) as session:
                    row = records.get_investigation(session, investigation_id=run.investigation_id)
                    if row.status == "running":
                        records.finish_investigation(
                            session,
                            investigation_id=run.investigation_id,
                            status="failed" if isinstance(exc, Exception) else "cancelled",
                            error=message[:500],
                        )
            except Exception:  # never mask the original error
                log.exception("could not mark investigation %s as failed", run.investigation_id)
        raise
    for o in outcomes:
        _emit(progress, "done", 1, 1, f"{o.suspect}: {o.verdict}")
    return outcomes


def _score_suspect(
    run: _SuspectRun,
    *,
    pairs: dict[str, list[SignaturePair]],
    engine: Any,
    space: Any,
    seed: int,
    decoys: int | None,
    query_budget: int,
    contexts: tuple[str, ...],
    problem: str,
    combine: str,
    samples_per_pair: int | None,
    temperature: float,
    sequential: bool,
    alpha: float,
    family: int,
    store_query_text: bool,
    progress: ProgressFn | None,
) -> None:
    from tracemark.forensics.adapters import BudgetExhausted, SuspectError
    from tracemark.forensics.ledger import records
    from tracemark.forensics.ledger.db import session_scope

    suspect = run.suspect
    run.pairs = pairs
    run.results = {a: [] for a in pairs}
    run.started = time.perf_counter()
    run.queries_before = len(getattr(suspect, "query_log", []))
    order = _interleave(pairs)
    total = len(order)
    if sequential:
        # accounts of all suspects share one Bonferroni family of size `family`
        run.monitor = SequentialMonitor(accounts=list(pairs), alpha=alpha * len(pairs) / family)

    def write(entry: Any) -> None:
        with session_scope(engine) as session:
            records.record_query(
                session,
                investigation_id=run.investigation_id,
                seq=entry.seq,
                prompt=entry.prompt,
                response=entry.response,
                store_text=store_query_text,
                meta={"kind": entry.kind, "attempts": entry.attempts, **entry.meta},
            )

    previous_hook = getattr(suspect, "on_query", None)
    suspect.on_query = write
    previous_budget = getattr(suspect, "query_budget", None)
    try:
        if run.mode == "white-box":
            scorer: Any = WhiteBoxScorer(suspect, space, contexts=contexts, problem=problem, combine=combine)
        else:
            effective = getattr(suspect, "queries_used", 0) + query_budget
            suspect.query_budget = effective if previous_budget is None else min(effective, previous_budget)
            per_pair = samples_per_pair or max(1, query_budget // max(1, total))
            run.samples_per_pair = per_pair
            scorer = BlackBoxScorer(
                suspect, space, contexts=contexts, problem=problem, temperature=temperature
            )
        _emit(progress, "score", 0, total, f"{run.spec}: {total} pairs, {run.mode}")
        for done, pair in enumerate(order, start=1):
            try:
                if run.mode == "white-box":
                    use_decoys = decoys
                    if decoys is None and scorer.layouts(pair.trigger) is None:
                        use_decoys = min(999, space.size - 1)  # tokenizer merges digits: decoy mode
                    result = scorer.score_pair(pair, seed=seed, decoys=use_decoys)
                else:
                    left = suspect.budget_left
                    if left is not None and left < 1:
                        run.incomplete = f"query budget of {query_budget} exhausted after {done - 1} pairs"
                        break
                    n = min(run.samples_per_pair or 1, left) if left is not None else run.samples_per_pair
                    result = scorer.score_pair(pair, n_samples=n, seed=seed, decoys=decoys)
            except BudgetExhausted as exc:
                run.incomplete = str(exc)
                break
            except (SuspectError, ScoringError) as exc:
                run.incomplete = f"suspect failed at pair {done}/{total}: {str(exc).splitlines()[0]}"
                log.warning("investigation %s: %s", run.investigation_id, run.incomplete)
                break
            run.results[pair.account].append(result)
            _emit(
                progress,
                "score",
                done,
                total,
                f"{pair.account} pair {pair.index} (v{pair.key_version}): rank {result.rank}/"
                f"{result.n_candidates}",
            )
            if run.monitor is not None and run.monitor.update(pair.account, result.p_value):
                _emit(
                    progress, "score", done, total, f"sequential test crossed its threshold at {pair.account}"
                )
                break
    finally:
        suspect.on_query = previous_hook
        if run.mode == "black-box":
            suspect.query_budget = previous_budget


def _decide(runs: list[_SuspectRun], *, alpha: float, correction: str, sequential: bool) -> None:
    rows: list[AccountResult] = []
    for run in runs:
        run.account_results = []
        for account, results in run.results.items():
            total = len(run.pairs[account])
            if results:
                fisher = stats.fisher_combine(log_pvalues=[r.log_p for r in results])
                effect = stats.effect_size([r.p_value for r in results]).as_dict()
                res = AccountResult(
                    account=account,
                    suspect=run.spec,
                    p_value=fisher.p_value,
                    log10_p=fisher.log10_p,
                    pairs=len(results),
                    pairs_total=total,
                    fisher_statistic=fisher.statistic,
                    df=fisher.df,
                    pair_results=list(results),
                    effect=effect,
                )
            else:
                res = AccountResult(
                    account=account, suspect=run.spec, p_value=1.0, log10_p=0.0, pairs_total=total
                )
            if sequential and run.monitor is not None:
                proc = run.monitor.processes[account]
                res.anytime_p = proc.anytime_p
            run.account_results.append(res)
            rows.append(res)
    if sequential:
        test_p = [r.anytime_p if r.anytime_p is not None else 1.0 for r in rows]
    else:
        test_p = [r.p_value for r in rows]
    rejected, adjusted = stats.adjust_pvalues(test_p, alpha=alpha, method=correction)
    for r, rej, adj in zip(rows, rejected, adjusted, strict=True):
        r.rejected = rej
        r.adjusted_p_value = adj


def _report(
    run: _SuspectRun,
    *,
    runs: list[_SuspectRun],
    engine: Any,
    master: Any,
    space: Any,
    alpha: float,
    correction: str,
    seed: int,
    commitment: str,
    decoys: int | None,
    query_budget: int,
    contexts: tuple[str, ...],
    problem: str,
    combine: str,
    temperature: float,
    sequential: bool,
    pairs: dict[str, list[SignaturePair]],
) -> InvestigationOutcome:
    from tracemark.forensics.ledger import records
    from tracemark.forensics.ledger.db import session_scope
    from tracemark.forensics.reports import issue_report

    accounts = run.account_results
    rejected = [a for a in accounts if a.rejected]

    def strength(a: AccountResult) -> tuple:
        return (a.adjusted_p_value, a.anytime_p if a.anytime_p is not None else 1.0, a.log10_p)

    best = min(rejected or accounts, key=strength)
    p_decision = best.anytime_p if sequential and best.anytime_p is not None else best.p_value
    log10_decision = math.log10(p_decision) if sequential and best.anytime_p is not None else best.log10_p
    scored = sum(len(v) for v in run.results.values())
    total_pairs = sum(len(v) for v in pairs.values())
    if rejected:
        verdict = "detected"
    elif run.incomplete or scored < total_pairs:
        verdict = "inconclusive"
    else:
        verdict = "not_detected"
    attributed = best.account if rejected else None
    log_entries = list(getattr(run.suspect, "query_log", []))[run.queries_before :]
    queries = [
        {"seq": e.seq, "kind": e.kind, "prompt_sha256": e.prompt_sha256, "response_sha256": e.response_sha256}
        for e in log_entries
    ]
    samples_used = sum(int(e.meta.get("n", 0)) for e in log_entries if e.kind == "sample")
    all_pairs = [p for v in pairs.values() for p in v]
    plot_acc = best
    statistics = {
        "test": "decoy randomization: exact rank of the target among N exchangeable candidates, "
        "p = rank/N; Fisher combination per account; multiplicity over accounts x suspects",
        "accounts": [a.as_dict() for a in accounts],
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
            "verdict": verdict,
            "attributed_account": attributed,
            "p_value": p_decision,
            "log10_p_value": log10_decision,
            "adjusted_p_value": best.adjusted_p_value,
            "alpha": alpha,
            "correction": correction,
            "family_size": sum(len(r.account_results) for r in runs),
            "rule": (
                "reject H0 for an account when its e-process reaches K/alpha (anytime-valid)"
                if sequential
                else f"reject H0 for an account when its {correction}-adjusted Fisher p-value <= alpha"
            ),
            "detail": run.incomplete,
        },
        "parameters": {
            "detector": DETECTOR_VERSION,
            "mode": run.mode,
            "alpha": alpha,
            "correction": correction,
            "candidate_space": {"kind": "decimal digits", "digits": space.digits, "size": space.size},
            "decoys": decoys,
            "ranking": "all candidates" if decoys is None else f"{decoys} decoys + target",
            "contexts": list(contexts),
            "problem": problem,
            "combine_contexts": combine,
            "pairs_per_account": {a: len(v) for a, v in pairs.items()},
            "key_versions": sorted({p.key_version for p in all_pairs}),
            "sequential": sequential,
            "query_budget": query_budget if run.mode == "black-box" else None,
            "samples_per_pair": run.samples_per_pair,
            "temperature": temperature if run.mode == "black-box" else None,
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
            "query_budget": query_budget if run.mode == "black-box" else None,
            "completions_used": samples_used,
            "pairs_scored": scored,
            "pairs_total": total_pairs,
            "stopped_early": bool(run.monitor and run.monitor.stopped_at),
            "stopping_time_pairs": run.monitor.stopped_at if run.monitor else None,
        },
        "seconds": round(time.perf_counter() - run.started, 3),
    }
    stored = issue_report(
        engine, data=data, master=master, investigation_id=run.investigation_id, verdict=verdict
    )
    with session_scope(engine) as session:
        records.finish_investigation(
            session, investigation_id=run.investigation_id, status="finished", verdict=verdict
        )
    return InvestigationOutcome(
        investigation_id=run.investigation_id,
        report_id=stored.report_id,
        verdict=verdict,
        attributed_account=attributed,
        p_value=p_decision,
        adjusted_p_value=best.adjusted_p_value,
        log10_p=log10_decision,
        accounts=accounts,
        envelope=stored.envelope,
        report=stored.report,
        suspect=run.spec,
        suspect_identity=run.identity,
        mode=run.mode,
        queries=len(queries),
        detail=run.incomplete,
        seconds=time.perf_counter() - run.started,
    )


def pvalue_text(p: float, log10_p: float) -> str:
    """``p`` formatted for people: ``3.2e-07``, or ``10^-412.3`` below the float range."""
    if p > 0 and math.isfinite(p):
        return f"{p:.3g}"
    return f"10^{log10_p:.1f}"
