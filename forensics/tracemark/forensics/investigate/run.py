"""Investigations: pre-register, query a suspect for the delivered signature pairs, test, attribute, report.

The test (docs/detection.md) is a rank test, exact without any reference model: under H0 ("the suspect never
trained on this account's pairs") a pair's target is exchangeable with every other eligible candidate, so its
conservative rank (ties count against it) gives a valid p-value ``rank / N``. The verdict rule (exact
rank-product combination per account, Holm or Benjamini-Hochberg over the whole family x suspects) is
:mod:`~tracemark.forensics.investigate.verdict`; the signed report body is
:mod:`~tracemark.forensics.investigate.report`.

Nothing the operator chooses after the fact can move a p-value: the accounts are those with delivered pairs
and a logged key commitment (:mod:`~tracemark.forensics.investigate.family`), the pairs, candidate space and
contexts are the scheme logged at issuance, and the investigation is **pre-registered** in the transparency
log (suspect identity, accounts, parameters) before the first query. The registration entry's hash is the
investigation's public *beacon*: the only randomness (decoys for tokenizers that merge digits, sampling
seeds) is derived from it, and every earlier registration for the same suspect is listed in the report, so
re-running until something fires is visible.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from tracemark.forensics.adapters import BudgetExhausted, SuspectError
from tracemark.forensics.blackbox import BlackBoxScorer
from tracemark.forensics.investigate.channel import channel_mode, decide_provider, plan_channel, run_channel
from tracemark.forensics.investigate.family import Member, resolve_family
from tracemark.forensics.investigate.params import InvestigationError, InvestigationParams
from tracemark.forensics.investigate.registration import register
from tracemark.forensics.investigate.report import DETECTOR_VERSION, InvestigationOutcome, sign_report
from tracemark.forensics.investigate.verdict import SuspectRun, decide
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import session_scope
from tracemark.forensics.scheme import FULL_SCORE_MAX, SignatureScheme
from tracemark.forensics.scoring import ScoringError, WhiteBoxScorer
from tracemark.forensics.sequential import SequentialMonitor
from tracemark.forensics.signatures import SignaturePair
from tracemark.foundation.errors import first_line

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int, str], None]
WHITE_BOX_BATCH = 8
"""Pairs whose white-box trie searches run in lockstep (one packed forward per round for all of them)."""


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


def beacon_order(pairs: dict[str, list[SignaturePair]], beacon: str) -> dict[str, list[SignaturePair]]:
    """The accounts in the order of ``sha256(beacon, account)``: when a black-box budget cannot reach every
    pair, the accounts it reaches are a uniformly random subset fixed by the pre-registration (public,
    before the first query), not the alphabetically first ones in every investigation."""

    def key(account: str) -> bytes:
        return hashlib.sha256(f"tracemark-order/1\x00{beacon}\x00{account}".encode()).digest()

    return {a: pairs[a] for a in sorted(pairs, key=key)}


def run_investigation(*, suspect: Any, **kwargs: Any) -> InvestigationOutcome:
    """Investigate one suspect (see :func:`run_investigations` for the parameters)."""
    return run_investigations(suspects=[suspect], **kwargs)[0]


def run_investigations(
    *,
    suspects: Sequence[Any],
    params: InvestigationParams | None = None,
    engine: Any,
    master: Any,
    progress: ProgressFn | None = None,
    issuer: Any = None,
    channel_tokenizer: Any = None,
) -> list[InvestigationOutcome]:
    """Pre-register, then test every selected account's delivered pairs in every suspect; correct over the
    whole family x suspects; sign one report per suspect; return one :class:`InvestigationOutcome` each.

    ``params`` (default :class:`InvestigationParams()`) says what to test and how; ``engine`` is the ledger
    (with the transparency log); ``master`` derives the pairs and signs the reports. ``issuer`` is accepted
    for compatibility and unused: pairs and schemes come from the ledger and the log. In sequential mode each
    account runs an anytime-valid e-process and querying stops once one crosses ``K / alpha`` (K = family x
    suspects). ``progress(stage, done, total, message)`` receives ``prepare``, ``score``, ``decide``,
    ``report`` and ``done`` events.

    When the logged schemes carry the distributional channel (and ``params.channel``), every suspect is
    also tested under the provider key and each selected account's channel key
    (:mod:`~tracemark.forensics.investigate.channel`); ``channel_tokenizer`` (a tokenizer with
    ``get_vocab``) re-tokenizes the completions of suspects that do not share the channel's vocabulary.
    """
    del issuer
    params = params if params is not None else InvestigationParams()
    if not suspects:
        raise InvestigationError("no suspect given", field="suspects")
    family = resolve_family(engine, master)
    if family.size == 0:
        raise InvestigationError(
            "no accounts to test: no signature pair was delivered under a logged key commitment",
            field="accounts",
        )
    members = family.select(params.accounts)
    pairs = {a: list(m.pairs) for a, m in members.items()}
    family_size = family.size * len(suspects)
    runs = [
        SuspectRun(suspect, suspect.spec, params.resolve_mode(suspect), "", {}, pairs=pairs)
        for suspect in suspects
    ]
    plan = plan_channel(family, members, params)
    for run in runs:
        run.channel_plan = plan
        run.channel_mode = channel_mode(run.suspect, plan, channel_tokenizer) if plan is not None else None
    for run in runs:
        _emit(progress, "prepare", 0, 0, f"identifying suspect {run.spec}")
        run.identity = run.suspect.identity()
        run.family_size = family_size
        run.untested = family.size - len(members)
        with session_scope(engine) as session:
            row = records.create_investigation(
                session,
                suspect=run.spec,
                suspect_identity=run.identity,
                params={"detector": DETECTOR_VERSION, **params.public(), "mode": run.mode},
            )
            run.investigation_id = row.id
        run.registration = register(
            engine, run=run, params=params, family=family, members=members, suspects=len(suspects)
        )
        _emit(progress, "prepare", 0, 0, f"pre-registered as log entry #{run.registration.seq}")

    try:
        for run in runs:
            _score_suspect(
                run,
                params=params,
                engine=engine,
                members=members,
                family=family_size,
                progress=progress,
                key=master.commitment_key(run.investigation_id),
                master=master,
                channel_tokenizer=channel_tokenizer,
            )
        _emit(progress, "decide", 0, 1, "combining pairs and correcting over the family")
        decide(runs, alpha=params.alpha, correction=params.correction, sequential=params.sequential)
        decide_provider(runs, alpha=params.provider_level)
        _emit(progress, "decide", 1, 1, "")
        outcomes = []
        for i, run in enumerate(runs):
            _emit(progress, "report", i, len(runs), f"signing the report for {run.spec}")
            outcomes.append(sign_report(run, runs=runs, params=params, engine=engine, master=master))
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


def make_scorer(suspect: Any, scheme: SignatureScheme, *, mode: str, temperature: float = 0.0) -> Any:
    """The scorer an investigation (and a third party's re-score) uses for ``scheme``'s pairs."""
    if mode == "white-box":
        return WhiteBoxScorer(
            suspect,
            scheme.space,
            contexts=scheme.contexts,
            problem=scheme.problem,
            combine=scheme.combine,
            salient=scheme.salient_for,
            search_budget=scheme.search_budget,
        )
    return BlackBoxScorer(
        suspect,
        scheme.space,
        contexts=scheme.contexts,
        problem=scheme.problem,
        temperature=temperature,
        salient=scheme.salient_for,
    )


def score_registered_pair(
    scorer: Any, scheme: SignatureScheme, pair: SignaturePair, *, beacon: str, n_samples: int | None = None
) -> Any:
    """Score one registered pair exactly as an investigation does (white-box: trie/table ranks when digits
    are single tokens, else every candidate in full for small spaces or the scheme's decoys drawn from the
    ``beacon``; black-box: ``n_samples`` completions seeded from the ``beacon``)."""
    if isinstance(scorer, BlackBoxScorer):
        return scorer.score_pair(pair, n_samples=n_samples or 1, beacon=beacon)
    if scorer.layouts(pair.trigger) is not None:
        return scorer.score_pair(pair)
    if scheme.space.size <= FULL_SCORE_MAX:
        return scorer.score_pair(pair, full=True)
    return scorer.score_pair(pair, decoys=scheme.merged_digit_decoys, beacon=beacon)


def _prepare(batch: Sequence[SignaturePair], members: dict[str, Member], scorer_for: Any) -> None:
    """Batch the white-box trie searches of ``batch`` (one lockstep run per scorer); each pair's result is
    then assembled (and logged) by :func:`score_registered_pair` in its turn, exactly as unbatched."""
    groups: dict[int, tuple[Any, list[SignaturePair]]] = {}
    for pair in batch:
        scorer = scorer_for(members[pair.account].scheme_of(pair))
        groups.setdefault(id(scorer), (scorer, []))[1].append(pair)
    for scorer, pairs in groups.values():
        if hasattr(scorer, "prepare"):
            scorer.prepare(pairs)


def _score_suspect(
    run: SuspectRun,
    *,
    params: InvestigationParams,
    engine: Any,
    members: dict[str, Member],
    family: int,
    progress: ProgressFn | None,
    key: bytes,
    master: Any = None,
    channel_tokenizer: Any = None,
) -> None:
    suspect = run.suspect
    beacon = run.registration.entry_hash
    pairs = run.pairs
    run.results = {a: [] for a in pairs}
    run.started = time.perf_counter()
    run.queries_before = len(getattr(suspect, "query_log", []))
    order = _interleave(pairs)
    if run.mode == "black-box" and params.query_budget < len(order):
        order = _interleave(beacon_order(pairs, beacon))  # which accounts the budget reaches: not by name
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
        scorers: dict[str, Any] = {}  # one per scheme (key versions may differ)

        def scorer_for(scheme: SignatureScheme) -> Any:
            digest = scheme.digest()
            if digest not in scorers:
                scorers[digest] = make_scorer(suspect, scheme, mode=run.mode, temperature=params.temperature)
            return scorers[digest]

        if run.mode == "black-box":
            effective = getattr(suspect, "queries_used", 0) + params.query_budget
            suspect.query_budget = effective if previous_budget is None else min(effective, previous_budget)
            per_pair = params.samples_per_pair or max(1, params.query_budget // max(1, total))
            run.samples_per_pair = per_pair
        _emit(progress, "score", 0, total, f"{run.spec}: {total} pairs, {run.mode}")
        for done, pair in enumerate(order, start=1):
            try:
                scheme = members[pair.account].scheme_of(pair)
                scorer = scorer_for(scheme)
                if run.mode == "white-box":
                    if (done - 1) % WHITE_BOX_BATCH == 0:  # the next pairs' trie searches run in lockstep
                        _prepare(order[done - 1 : done - 1 + WHITE_BOX_BATCH], members, scorer_for)
                    result = score_registered_pair(scorer, scheme, pair, beacon=beacon)
                else:
                    left = suspect.budget_left
                    if left is not None and left < 1:
                        run.incomplete = (
                            f"query budget of {params.query_budget} exhausted after {done - 1} pairs"
                        )
                        break
                    n = min(run.samples_per_pair or 1, left) if left is not None else run.samples_per_pair
                    result = score_registered_pair(scorer, scheme, pair, beacon=beacon, n_samples=n)
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
        if run.channel_plan is not None:
            _emit(progress, "channel", 0, 1, f"{run.spec}: channel test ({run.channel_mode})")
            run.channel = run_channel(
                suspect,
                run.channel_plan,
                master=master,
                mode=run.channel_mode,
                tokenizer=channel_tokenizer,
                beacon=beacon,
                outer_budget=previous_budget,
            )
            _emit(progress, "channel", 1, 1, f"{run.spec}: {run.channel.error or 'channel scored'}")
    finally:
        suspect.on_query = previous_hook
        if run.mode == "black-box":
            suspect.query_budget = previous_budget
