"""Investigations: query a suspect for every account's signature pairs, test, attribute, report.

The test (docs/detection.md) is a decoy randomization test, exact without any reference model: under
H0 ("the suspect never trained on this account's pairs") a pair's target is exchangeable with every other
candidate of the space, so its rank (ties broken at random) is uniform and ``p = rank / N`` is an exact
p-value. The verdict rule (Fisher per account, Holm or Benjamini-Hochberg over accounts x suspects) is
:mod:`~tracemark.forensics.investigate.verdict`; the signed report body is
:mod:`~tracemark.forensics.investigate.report`; every parameter is checked by
:class:`~tracemark.forensics.investigate.params.InvestigationParams`. The decoy/tie-break seed is committed
(SHA-256 written to the ledger) before the first query, and every query is written to the ledger as it
happens (one commit per query).

Default ``alpha`` is ``1e-3`` (family-wise, over all accounts and suspects): a bystander account is falsely
accused with probability at most 0.1%. Reports state the unadjusted combined p-value of the attributed
account as well; a memorised pair gives ``p = 1/N`` per pair, so two pairs of a 4-digit space already
reach ``p ~ 2e-7``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from tracemark.forensics.adapters import BudgetExhausted, SuspectError
from tracemark.forensics.blackbox import BlackBoxScorer
from tracemark.forensics.investigate.params import InvestigationError, InvestigationParams
from tracemark.forensics.investigate.report import (
    DETECTOR_VERSION,
    InvestigationOutcome,
    seed_commitment,
    sign_report,
)
from tracemark.forensics.investigate.verdict import SuspectRun, decide
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import session_scope
from tracemark.forensics.scoring import ScoringError, WhiteBoxScorer
from tracemark.forensics.sequential import SequentialMonitor
from tracemark.forensics.signatures import SignaturePair
from tracemark.foundation.errors import first_line

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int, str], None]


def _emit(progress: ProgressFn | None, stage: str, done: int, total: int, message: str = "") -> None:
    if progress is None:
        return
    try:
        progress(stage, done, total, message)
    except Exception:  # a broken progress sink never stops an investigation
        log.debug("progress callback failed", exc_info=True)


def _interleave(pairs: dict[str, list[SignaturePair]]) -> list[SignaturePair]:
    """Round-robin over accounts (pair 0 of every account, then pair 1, ...): early evidence for all."""
    order: list[SignaturePair] = []
    depth = max((len(v) for v in pairs.values()), default=0)
    for i in range(depth):
        for account in pairs:
            if i < len(pairs[account]):
                order.append(pairs[account][i])
    return order


def run_investigation(*, suspect: Any, **kwargs: Any) -> InvestigationOutcome:
    """Investigate one suspect (see :func:`run_investigations` for the parameters)."""
    return run_investigations(suspects=[suspect], **kwargs)[0]


def run_investigations(
    *,
    suspects: Sequence[Any],
    params: InvestigationParams | None = None,
    issuer: Any,
    engine: Any,
    master: Any,
    progress: ProgressFn | None = None,
) -> list[InvestigationOutcome]:
    """Test every account's pairs in every suspect; correct over accounts x suspects; sign one report per
    suspect; return one :class:`InvestigationOutcome` per suspect.

    ``params`` (default :class:`InvestigationParams()`) says what to test and how; ``issuer`` derives the
    accounts' pairs; ``engine`` is the ledger; ``master`` signs the reports. In sequential mode each account
    runs an anytime-valid e-process and querying stops once one crosses ``K / alpha`` (K = accounts x
    suspects). ``progress(stage, done, total, message)`` receives ``prepare``, ``score``, ``decide``,
    ``report`` and ``done`` events.
    """
    params = params if params is not None else InvestigationParams()
    if not suspects:
        raise InvestigationError("no suspect given", field="suspects")
    space = issuer.space
    params.check_space(space)
    names = list(params.accounts) if params.accounts else issuer.accounts()
    if not names:
        raise InvestigationError(
            "no accounts to test: the ledger has none and none were given", field="accounts"
        )
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    commitment = seed_commitment(seed)
    pairs = {a: issuer.all_pairs_for(a) for a in names}
    n_pairs = sum(len(v) for v in pairs.values())
    family = len(names) * len(suspects)
    runs = [
        SuspectRun(suspect, suspect.spec, params.resolve_mode(suspect), "", {}, pairs=pairs)
        for suspect in suspects
    ]
    ledger_params = {
        "detector": DETECTOR_VERSION,
        "alpha": params.alpha,
        "correction": params.correction,
        "query_budget": params.query_budget,
        "decoys": params.decoys,
        "sequential": params.sequential,
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
                params={**ledger_params, "mode": run.mode, "suspect": run.spec},
            )
            run.investigation_id = row.id
    _emit(progress, "prepare", 0, 0, f"decoy seed committed: sha256 {commitment[:16]}...")

    try:
        for run in runs:
            _score_suspect(
                run,
                params=params,
                engine=engine,
                space=space,
                seed=seed,
                family=family,
                progress=progress,
                key=master.commitment_key(run.investigation_id),
            )
        _emit(progress, "decide", 0, 1, "combining pairs and correcting over accounts")
        decide(runs, alpha=params.alpha, correction=params.correction, sequential=params.sequential)
        _emit(progress, "decide", 1, 1, "")
        outcomes = []
        for i, run in enumerate(runs):
            _emit(progress, "report", i, len(runs), f"signing the report for {run.spec}")
            outcomes.append(
                sign_report(
                    run,
                    runs=runs,
                    params=params,
                    engine=engine,
                    master=master,
                    space=space,
                    seed=seed,
                    commitment=commitment,
                )
            )
        _emit(progress, "report", len(runs), len(runs), "")
    except BaseException as exc:
        message = first_line(exc)
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
    run: SuspectRun,
    *,
    params: InvestigationParams,
    engine: Any,
    space: Any,
    seed: int,
    family: int,
    progress: ProgressFn | None,
    key: bytes,
) -> None:
    suspect = run.suspect
    pairs = run.pairs
    run.results = {a: [] for a in pairs}
    run.started = time.perf_counter()
    run.queries_before = len(getattr(suspect, "query_log", []))
    order = _interleave(pairs)
    total = len(order)
    if params.sequential:
        # accounts of all suspects share one Bonferroni family of size `family`
        run.monitor = SequentialMonitor(accounts=list(pairs), alpha=params.alpha * len(pairs) / family)

    def write(entry: Any) -> None:
        with session_scope(engine) as session:
            records.record_query(
                session,
                investigation_id=run.investigation_id,
                seq=entry.seq,
                prompt=entry.prompt,
                response=entry.response,
                key=key,
                store_text=params.store_query_text,
                meta={"kind": entry.kind, "attempts": entry.attempts, **entry.meta},
            )

    previous_hook = getattr(suspect, "on_query", None)
    suspect.on_query = write
    previous_budget = getattr(suspect, "query_budget", None)
    try:
        if run.mode == "white-box":
            scorer: Any = WhiteBoxScorer(
                suspect, space, contexts=params.contexts, problem=params.problem, combine=params.combine
            )
        else:
            effective = getattr(suspect, "queries_used", 0) + params.query_budget
            suspect.query_budget = effective if previous_budget is None else min(effective, previous_budget)
            per_pair = params.samples_per_pair or max(1, params.query_budget // max(1, total))
            run.samples_per_pair = per_pair
            scorer = BlackBoxScorer(
                suspect,
                space,
                contexts=params.contexts,
                problem=params.problem,
                temperature=params.temperature,
            )
        _emit(progress, "score", 0, total, f"{run.spec}: {total} pairs, {run.mode}")
        for done, pair in enumerate(order, start=1):
            try:
                if run.mode == "white-box":
                    use_decoys = params.decoys
                    if params.decoys is None and scorer.layouts(pair.trigger) is None:
                        use_decoys = min(999, space.size - 1)  # tokenizer merges digits: decoy mode
                    result = scorer.score_pair(pair, seed=seed, decoys=use_decoys)
                else:
                    left = suspect.budget_left
                    if left is not None and left < 1:
                        run.incomplete = (
                            f"query budget of {params.query_budget} exhausted after {done - 1} pairs"
                        )
                        break
                    n = min(run.samples_per_pair or 1, left) if left is not None else run.samples_per_pair
                    result = scorer.score_pair(pair, n_samples=n, seed=seed, decoys=params.decoys)
            except BudgetExhausted as exc:
                run.incomplete = str(exc)
                break
            except (SuspectError, ScoringError) as exc:
                run.incomplete = f"suspect failed at pair {done}/{total}: {first_line(exc)}"
                log.warning("investigation %s: %s", run.investigation_id, run.incomplete)
                break
            run.results[pair.account].append(result)
            # no rank or p-value here: per-pair ranks streamed to a caller who can choose suspects would
            # let repeated investigations learn targets; they are in the signed report only
            _emit(progress, "score", done, total, f"{run.spec}: scored {done}/{total} pairs")
            if run.monitor is not None and run.monitor.update(pair.account, result.rank, result.n_candidates):
                _emit(
                    progress, "score", done, total, f"sequential test crossed its threshold at {pair.account}"
                )
                break
    finally:
        suspect.on_query = previous_hook
        if run.mode == "black-box":
            suspect.query_budget = previous_budget
