"""Re-score a report's accused account from its disclosure bundle, without the master secret or the ledger.

:func:`rescore` runs the checks of :mod:`~tracemark.forensics.rederive.checks` (log inclusion and
checkpoint signature, report signature, registration / report links, key commitments opened, pair ids
re-derived, suspect identity), then re-scores every pair the report scored for the account exactly as the
investigation did (:func:`~tracemark.forensics.investigate.make_scorer` and
:func:`~tracemark.forensics.investigate.score_registered_pair`, the registration's entry hash as beacon,
the report's per-pair sample counts in black-box mode), recomputes the account's combined rank p-value
and its family-wise adjusted p-value from the report's other accounts, and compares everything with the
report **exactly** (no tolerance: the test is deterministic).

With the distributional channel, the account's channel keys from the bundle (and the provider key, when
disclosed) are re-tested on evidence re-collected exactly as registered (the registration's public prompts,
sampling settings and beacon-derived seeds; :func:`~tracemark.forensics.investigate.channel.run_channel`):
n, green and p per key, the decoy check, and the account's combined p must equal the report's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracemark.forensics import stats
from tracemark.forensics.investigate import make_scorer, score_registered_pair
from tracemark.forensics.investigate.channel import plan_from_registration, run_channel
from tracemark.forensics.investigate.verdict import adjust_over_family, fold_channel
from tracemark.forensics.rederive.checks import (
    Verified,
    check_identity,
    check_keys,
    check_links,
    check_log,
    check_report,
    parse_bundle,
)
from tracemark.forensics.rederive.disclosure import DisclosureError, registered_pairs
from tracemark.forensics.sequential import EProcess
from tracemark.foundation.channel import ChannelError

ProgressFn = Callable[[int, int], None]


@dataclass
class PairRow:
    """One pair: its rank among ``n`` candidates in the report and re-scored (``None``: not re-scored)."""

    pair_id: str
    key_version: int
    index: int
    n_report: int | None
    rank_report: int | None
    n_rescored: int | None = None
    rank_rescored: int | None = None

    @property
    def matches(self) -> bool:
        return self.rank_rescored is not None and (self.rank_report, self.n_report) == (
            self.rank_rescored,
            self.n_rescored,
        )


@dataclass
class RescoreResult:
    """Outcome of :func:`rescore`: ``matches`` when every check passed and every figure equals the report's.

    ``checks`` lists what was verified, ``problems`` what was not; p-values are ``None`` when not computed.
    """

    matches: bool
    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report_id: str = ""
    investigation_id: str | None = None
    account: str = ""
    mode: str | None = None
    pairs: list[PairRow] = field(default_factory=list)
    p_value_report: float | None = None
    p_value_rescored: float | None = None
    log10_p_report: float | None = None
    log10_p_rescored: float | None = None
    adjusted_p_value_report: float | None = None
    adjusted_p_value_rescored: float | None = None
    anytime_p_value_report: float | None = None  # sequential investigations only
    anytime_p_value_rescored: float | None = None
    channel: list[dict] = field(default_factory=list)  # per key: n/green/p reported and re-scored

    def as_dict(self) -> dict:
        """Plain JSON (pair ids and figures only: no trigger, target or key)."""
        return {
            "format": "tracemark-rescore/1",
            "matches": self.matches,
            "report_id": self.report_id,
            "investigation_id": self.investigation_id,
            "account": self.account,
            "mode": self.mode,
            "problems": list(self.problems),
            "checks": list(self.checks),
            "notes": list(self.notes),
            "pairs": [
                {
                    "pair_id": r.pair_id,
                    "key_version": r.key_version,
                    "index": r.index,
                    "n_report": r.n_report,
                    "rank_report": r.rank_report,
                    "n_rescored": r.n_rescored,
                    "rank_rescored": r.rank_rescored,
                    "matches": r.matches,
                }
                for r in self.pairs
            ],
            "p_value": {"report": self.p_value_report, "rescored": self.p_value_rescored},
            "log10_p_value": {"report": self.log10_p_report, "rescored": self.log10_p_rescored},
            "adjusted_p_value": {
                "report": self.adjusted_p_value_report,
                "rescored": self.adjusted_p_value_rescored,
            },
            "anytime_p_value": {
                "report": self.anytime_p_value_report,
                "rescored": self.anytime_p_value_rescored,
            },
            "channel": list(self.channel),
        }

    def summary(self) -> str:
        if self.matches:
            return (
                f"REPRODUCED: account {self.account} of report {self.report_id}: "
                f"{len(self.pairs)} pair rank(s), "
                f"p = {self.p_value_rescored!r}, adjusted p = {self.adjusted_p_value_rescored!r}, as reported"
            )
        return f"NOT REPRODUCED: {len(self.problems)} problem(s); first: {self.problems[0]}"


def _account_row(report: Mapping, account: str) -> Mapping | None:
    rows = report.get("statistics", {}).get("accounts")
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, Mapping) and row.get("account") == account:
            return row
    return None


def _report_pairs(report: Mapping, account: str) -> list[Mapping]:
    rows = report.get("statistics", {}).get("pairs")
    return [
        r
        for r in (rows if isinstance(rows, list) else [])
        if isinstance(r, Mapping) and r.get("account") == account
    ]


def _rescore_pairs(
    suspect: Any, verified: Verified, report: Mapping, result: RescoreResult, progress: ProgressFn | None
) -> bool:
    """(g) re-score the pairs the report scored for the account, in the report's order; False when the
    report cannot be followed (then nothing is re-computed)."""
    reg = verified.registration
    mode = reg.body.get("mode")
    result.mode = mode
    params = report.get("parameters") if isinstance(report.get("parameters"), Mapping) else {}
    if params.get("mode") != mode:
        result.problems.append(
            f"scoring: the report's mode {params.get('mode')!r} is not the registered {mode!r}"
        )
        return False
    if mode == "white-box" and not getattr(suspect, "white_box", False):
        raise DisclosureError("the registration scored the suspect white-box: give a local model (hf:/gguf:)")
    temperature = (params.get("temperature") or 0.0) if mode == "black-box" else 0.0
    by_id = {pair.pair_id: (pair, scheme) for pair, scheme in verified.pairs}
    rows = _report_pairs(report, result.account)
    scored = {r.get("pair_id") for r in rows}
    for pair, _ in verified.pairs:
        if pair.pair_id not in scored:
            result.notes.append(
                f"pair {pair.pair_id} was registered but not scored by the report (not re-scored)"
            )
    scorers: dict[str, Any] = {}
    for done, row in enumerate(rows, start=1):
        pid = row.get("pair_id")
        if pid not in by_id:
            result.problems.append(f"scoring: the report scored pair {pid!r}, which is not registered")
            continue
        pair, scheme = by_id[pid]
        digest = scheme.digest()
        if digest not in scorers:
            scorers[digest] = make_scorer(suspect, scheme, mode=mode, temperature=temperature)
        n_samples = row.get("samples") if mode == "black-box" else None
        if mode == "black-box" and (not isinstance(n_samples, int) or n_samples < 1):
            result.problems.append(f"scoring: the report gives no sample count for pair {pid}")
            continue
        score = score_registered_pair(
            scorers[digest], scheme, pair, beacon=reg.entry_hash, n_samples=n_samples
        )
        result.pairs.append(
            PairRow(
                pair_id=pid,
                key_version=pair.key_version,
                index=pair.index,
                n_report=row.get("n_candidates"),
                rank_report=row.get("rank"),
                n_rescored=score.n_candidates,
                rank_rescored=score.rank,
            )
        )
        if progress is not None:
            progress(done, len(rows))
    for r in result.pairs:
        if not r.matches:
            result.problems.append(
                f"pair {r.pair_id}: rank {r.rank_rescored}/{r.n_rescored} re-scored, "
                f"{r.rank_report}/{r.n_report} in the report"
            )
    return True


def _family_pvalues(
    report: Mapping, account: str, own: float, result: RescoreResult
) -> tuple[list, int] | None:
    """The correction's input with the account's test p replaced by ``own``: (p-values, its index)."""
    stats_ = report.get("statistics", {})
    sequential = bool(report.get("parameters", {}).get("sequential"))
    family = stats_.get("family")
    if isinstance(family, list):
        if sequential:
            result.problems.append(
                "p-value: a sequential report over several suspects lists no anytime p-value of the other "
                "suspects' accounts; the adjusted p-value cannot be recomputed"
            )
            return None
        rows = [
            (r.get("suspect"), r.get("account"), r.get("p_value")) for r in family if isinstance(r, Mapping)
        ]
        me = (report.get("suspect"), account)
    else:
        key = "anytime_p_value" if sequential else "p_value"
        accounts = stats_.get("accounts") if isinstance(stats_.get("accounts"), list) else []
        rows = [(None, r.get("account"), r.get(key)) for r in accounts if isinstance(r, Mapping)]
        me = (None, account)
    index = next((i for i, r in enumerate(rows) if r[:2] == me), None)
    if index is None or any(not isinstance(r[2], int | float) for r in rows):
        result.problems.append("p-value: the report's family of p-values is incomplete")
        return None
    ps = [float(r[2]) for r in rows]
    ps[index] = own
    return ps, index


class _DisclosedKeys:
    """The bundle's opened channel keys, in the shape :func:`run_channel` asks of a master secret."""

    def __init__(self, accounts: dict, providers: dict) -> None:
        self._accounts, self._providers = accounts, providers

    def channel_key(self, account: str | None, *, version: int) -> Any:
        return self._providers[version] if account is None else self._accounts[version]


def _channel_rows(kind: str, reported: Any, rescored: list[dict]) -> list[dict]:
    by_version = {r.get("key_version"): r for r in reported if isinstance(r, Mapping)} if reported else {}
    rows = []
    for new in rescored:
        old = by_version.get(new["key_version"], {})
        rows.append(
            {
                "key": new["key"],
                "kind": kind,
                "key_version": new["key_version"],
                **{f"{f}_report": old.get(f) for f in ("n", "green", "p_value")},
                **{f"{f}_rescored": new[f] for f in ("n", "green", "p_value")},
            }
        )
    return rows


def _rescore_channel(
    suspect: Any, verified: Verified, report: Mapping, result: RescoreResult, tokenizer: Any
) -> float | None:
    """(g') re-run the channel tests of the bundle's keys; the account's channel log10 p (``None``: the
    report has no channel test of the account)."""
    reg = verified.registration
    section = reg.body.get("channel")
    reported = report.get("statistics", {}).get("channel")
    if not isinstance(section, Mapping) or not isinstance(reported, Mapping):
        return None
    if not verified.channel_keys and not verified.provider_keys:
        return None
    try:
        plan = plan_from_registration(dict(section), account=result.account, provider=True)
    except (KeyError, TypeError, ValueError, ChannelError) as exc:
        result.problems.append(f"channel: the registration's channel section is unreadable: {exc}"[:200])
        return None
    plan.provider = {v: seq for v, seq in plan.provider.items() if v in verified.provider_keys}
    plan.accounts = {a: v for a, v in plan.accounts.items() if a == result.account}
    keys = _DisclosedKeys(verified.channel_keys, verified.provider_keys)
    try:
        run = run_channel(
            suspect, plan, master=keys, mode=section.get("mode"), tokenizer=tokenizer, beacon=reg.entry_hash
        )
    except ValueError as exc:
        result.problems.append(f"channel: {exc}"[:200])
        return None
    if run.error:
        result.problems.append(f"channel: {run.error}")
        return None
    mine = run.account_section(result.account) or {"tests": []}
    theirs = (reported.get("accounts") or {}).get(result.account) or {}
    result.channel = _channel_rows("account", theirs.get("tests"), mine["tests"])
    if verified.provider_keys:
        provider = run.as_dict()["provider"]["tests"]
        result.channel += _channel_rows("provider", reported.get("provider", {}).get("tests"), provider)
    for row in result.channel:
        if any(row[f"{f}_report"] != row[f"{f}_rescored"] for f in ("n", "green", "p_value")):
            result.problems.append(
                f"channel: {row['key']}: {row['green_rescored']}/{row['n_rescored']} green re-scored, "
                f"{row['green_report']}/{row['n_report']} in the report"
            )
    if bool(reported.get("usable")) != run.usable:
        result.problems.append("channel: the decoy-key check does not reproduce the report's")
    result.notes.append(
        f"channel: {run.evidence.n} distinct tuples re-collected ({run.mode}); decoy check "
        f"{'passed' if run.decoys and run.decoys.passed else 'failed'}"
    )
    return run.account_log10(result.account)


def _recompute(
    report: Mapping, result: RescoreResult, channel_log10: float | None = None, has_pairs: bool = True
) -> None:
    """(h) + (i): the account's combined p (and anytime p), its adjusted p, compared with the report."""
    row = _account_row(report, result.account)
    decision = report.get("decision") if isinstance(report.get("decision"), Mapping) else {}
    if row is None:
        result.problems.append(f"p-value: the report has no statistics for account {result.account!r}")
        return
    result.p_value_report = row.get("p_value")
    result.log10_p_report = row.get("log10_p")
    result.adjusted_p_value_report = row.get("adjusted_p_value")
    ranks = [r.rank_rescored for r in result.pairs]
    ns = [r.n_rescored for r in result.pairs]
    if ranks:
        combined = stats.combine_ranks(ranks, ns)
        result.p_value_rescored, result.log10_p_rescored = combined.p_value, combined.log10_p
    else:
        result.p_value_rescored, result.log10_p_rescored = 1.0, 0.0
    own = result.p_value_rescored
    anytime = None
    if report.get("parameters", {}).get("sequential"):
        process = EProcess(result.account)
        for rank, n in zip(ranks, ns, strict=True):
            process.update(rank, n)
        result.anytime_p_value_report = row.get("anytime_p_value")
        result.anytime_p_value_rescored = own = anytime = process.anytime_p
    if channel_log10 is not None:  # the account's evidence: pair p and channel p (Fisher)
        pair_log10 = result.log10_p_rescored if has_pairs else None
        log10, _, anytime = fold_channel(pair_log10, anytime, channel_log10)
        result.log10_p_rescored, result.p_value_rescored = log10, 10.0**log10
        own = result.p_value_rescored
        if anytime is not None:
            result.anytime_p_value_rescored = own = anytime
    family_size, scored = decision.get("family_size"), decision.get("accounts_scored")
    alpha, correction = decision.get("alpha"), decision.get("correction")
    if not isinstance(family_size, int) or not isinstance(scored, int) or not 0 < scored <= family_size:
        result.problems.append("p-value: the report's decision gives no usable family_size / accounts_scored")
        return
    if not isinstance(alpha, int | float) or not 0 < alpha < 1 or correction not in stats.CORRECTIONS:
        result.problems.append("p-value: the report's decision gives no usable alpha / correction")
        return
    family = _family_pvalues(report, result.account, own, result)
    if family is None:
        return
    ps, index = family
    if len(ps) != scored:
        result.problems.append(
            f"p-value: the report lists {len(ps)} scored account(s), its decision {scored}"
        )
        return
    _, adjusted = adjust_over_family(ps, family_size=family_size, alpha=alpha, correction=correction)
    result.notes.append(
        f"adjusted p-value: {correction} over a family of {family_size} ({scored} scored, the rest p = 1); "
        "the other accounts' p-values are the signed report's (their keys are not disclosed)"
    )
    result.adjusted_p_value_rescored = adjusted[index]
    compared = [
        ("combined p-value", result.p_value_report, result.p_value_rescored),
        ("log10 combined p-value", result.log10_p_report, result.log10_p_rescored),
        ("adjusted p-value", result.adjusted_p_value_report, result.adjusted_p_value_rescored),
    ]
    if result.anytime_p_value_rescored is not None:
        compared.append(("anytime p-value", result.anytime_p_value_report, result.anytime_p_value_rescored))
    for name, reported, rescored in compared:
        if not _same(reported, rescored):
            result.problems.append(f"p-value: {name} {rescored!r} re-computed, {reported!r} in the report")


def _same(a: Any, b: Any) -> bool:
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return False
    return float(a) == float(b) or (math.isnan(a) and math.isnan(b))


def rescore(
    bundle: Any,
    suspect: Any,
    *,
    public_key: Any,
    progress: ProgressFn | None = None,
    channel_tokenizer: Any = None,
) -> RescoreResult:
    """Re-derive a report's result for the bundle's account (module doc) against ``suspect`` (an adapter
    from :func:`~tracemark.forensics.adapters.parse_suspect`), trusting only ``public_key`` (the operator's
    report-signing key: an ``Ed25519PublicKey``, PEM text, or a list/mapping of them).

    ``channel_tokenizer`` re-tokenizes the completions of a channel test registered black-box (default:
    the suspect's own tokenizer when it is the channel's).

    A malformed bundle, or a suspect that cannot be scored as registered: :class:`DisclosureError`. Every
    failed check is a problem in the result; the suspect is queried only when all checks pass.
    """
    parsed = parse_bundle(bundle)
    verified = Verified()
    check_log(parsed, public_key, verified)
    check_report(parsed, public_key, verified)
    check_links(parsed, verified)
    check_keys(parsed, verified)
    if verified.registration is not None:
        check_identity(suspect.identity(), verified)
    report = verified.report or {}
    result = RescoreResult(
        matches=False,
        report_id=parsed.report_id,
        investigation_id=report.get("investigation_id"),
        account=parsed.account,
        checks=list(verified.passed),
        problems=list(verified.problems),
    )
    if result.problems or verified.registration is None:
        result.problems.append("re-scoring skipped: the bundle or the suspect did not pass the checks above")
        return result
    if _rescore_pairs(suspect, verified, report, result, progress):
        channel_log10 = _rescore_channel(suspect, verified, report, result, channel_tokenizer)
        has_pairs = bool(registered_pairs(verified.registration.body, result.account))
        _recompute(report, result, channel_log10, has_pairs)
    result.matches = not result.problems
    return result
