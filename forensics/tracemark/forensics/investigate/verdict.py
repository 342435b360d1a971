"""The verdict rule: combine each account's pair ranks exactly, then correct over the family x suspects.

An account's pairs are combined by the exact null distribution of the product of their discrete rank
p-values (:func:`~tracemark.forensics.stats.combine_ranks`; Fisher's chi-square only as a conservative
bound where the exact count is too expensive). Accounts (and suspects) are compared under Holm (default;
family-wise error rate) or Benjamini-Hochberg (false discovery rate) at the pre-set ``alpha`` (or, in
sequential mode, on their anytime-valid e-process p-values). The family is every accusable account, scored
or not: an account left unscored enters the correction with p = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tracemark.forensics import stats
from tracemark.forensics.investigate.channel import combine_evidence
from tracemark.forensics.scoring import PairScore
from tracemark.forensics.sequential import SequentialMonitor
from tracemark.forensics.signatures import SignaturePair


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
    statistic: float = 0.0  # sum of ln(rank / N) over the scored pairs
    combination: str = ""  # "exact" | "fisher-bound"
    pair_results: list[PairScore] = field(default_factory=list)
    effect: dict | None = None
    anytime_p: float | None = None  # sequential mode (combined with the channel p when there is one)
    pair_p_value: float | None = None  # the pair evidence alone (None: no pair registered)
    pair_log10_p: float | None = None
    pair_anytime_p: float | None = None
    channel: dict | None = None  # the account's channel tests (investigate.channel)
    evidence: str = "pair"  # "pair" | "channel" | "fisher(pair, channel)"

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
            "statistic": self.statistic,
            "combination": self.combination,
            "pair_ranks": [p.rank for p in self.pair_results],
            "pair_p_values": [p.p_value for p in self.pair_results],
            "pair_n_candidates": [p.n_candidates for p in self.pair_results],
        }
        if self.effect is not None:
            out["effect"] = self.effect
        if self.anytime_p is not None:
            out["anytime_p_value"] = self.anytime_p
        if self.channel is not None:
            out["evidence"] = self.evidence
            out["pair_p_value"] = self.pair_p_value
            out["pair_log10_p"] = self.pair_log10_p
            out["channel"] = self.channel
            if self.pair_anytime_p is not None:
                out["pair_anytime_p_value"] = self.pair_anytime_p
        return out


@dataclass
class SuspectRun:
    """One suspect's investigation in progress: its pair scores, then its account results."""

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
    family_size: int = 0  # accusable accounts x suspects (the correction's family)
    untested: int = 0  # accusable accounts of this suspect not scored (p = 1 in the correction)
    registration: Any = None  # the transparency-log entry that pre-registered this run
    channel_plan: Any = None  # ChannelPlan when the channel is tested (investigate.channel)
    channel_mode: str | None = None
    channel: Any = None  # ChannelRun once scored


def adjust_over_family(
    pvalues: list[float], *, family_size: int, alpha: float, correction: str
) -> tuple[list[bool], list[float]]:
    """(rejected, adjusted) for the scored ``pvalues``, corrected over the whole family: every accusable
    account not scored enters with p = 1. Investigations and third-party re-scores both use this rule."""
    if family_size < len(pvalues):
        raise ValueError(f"family of {family_size} is smaller than the {len(pvalues)} scored p-values")
    padded = list(pvalues) + [1.0] * (family_size - len(pvalues))
    rejected, adjusted = stats.adjust_pvalues(padded, alpha=alpha, method=correction)
    return rejected[: len(pvalues)], adjusted[: len(pvalues)]


def decide(runs: list[SuspectRun], *, alpha: float, correction: str, sequential: bool) -> None:
    rows: list[AccountResult] = []
    for run in runs:
        run.account_results = []
        for account, results in run.results.items():
            total = len(run.pairs[account])
            if results:
                combined = stats.combine_ranks([r.rank for r in results], [r.n_candidates for r in results])
                effect = stats.effect_size([r.p_value for r in results]).as_dict()
                res = AccountResult(
                    account=account,
                    suspect=run.spec,
                    p_value=combined.p_value,
                    log10_p=combined.log10_p,
                    pairs=len(results),
                    pairs_total=total,
                    statistic=combined.statistic,
                    combination=combined.method,
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
            if run.channel is not None:
                add_channel(res, run.channel, has_pairs=total > 0)
            run.account_results.append(res)
            rows.append(res)
    if sequential:
        test_p = [r.anytime_p if r.anytime_p is not None else 1.0 for r in rows]
    else:
        test_p = [r.p_value for r in rows]
    size = len(rows) + sum(run.untested for run in runs)
    rejected, adjusted = adjust_over_family(test_p, family_size=size, alpha=alpha, correction=correction)
    for r, rej, adj in zip(rows, rejected, adjusted, strict=True):
        r.rejected = rej
        r.adjusted_p_value = adj


def fold_channel(
    pair_log10: float | None, pair_anytime: float | None, channel_log10: float
) -> tuple[float, str, float | None]:
    """(log10 p, evidence, anytime p) of an account once its channel p joins its pair evidence (Fisher;
    see investigate.channel). ``pair_log10`` is ``None`` when no pair of the account was registered. The
    re-score uses the same rule."""
    log10, evidence = combine_evidence(pair_log10, channel_log10)
    anytime = None
    if pair_anytime is not None:
        anytime_log10 = math.log10(pair_anytime) if pair_anytime > 0 else -300.0
        anytime = (
            10.0 ** combine_evidence(anytime_log10 if pair_log10 is not None else None, channel_log10)[0]
        )
    return log10, evidence, anytime


def add_channel(res: AccountResult, channel: Any, *, has_pairs: bool) -> None:
    """Fold the account's channel p-value into ``res`` (:func:`fold_channel`)."""
    section = channel.account_section(res.account)
    if section is None:
        return
    res.channel = section
    res.pair_p_value, res.pair_log10_p = (res.p_value, res.log10_p) if has_pairs else (None, None)
    res.pair_anytime_p = res.anytime_p
    log10, res.evidence, anytime = fold_channel(res.pair_log10_p, res.anytime_p, section["log10_p"])
    res.log10_p, res.p_value = log10, 10.0**log10
    if anytime is not None:
        res.anytime_p = anytime


@dataclass(frozen=True)
class Decision:
    """One suspect's verdict: the strongest account (attributed when rejected) and the deciding p-value."""

    verdict: str  # detected | not_detected | inconclusive
    best: AccountResult
    attributed_account: str | None
    p_value: float  # unadjusted combined p of the best account (its anytime-valid p in sequential mode)
    log10_p: float
    pairs_scored: int
    pairs_total: int


def decision_for(run: SuspectRun, *, sequential: bool) -> Decision:
    """Detected when an account is rejected (the strongest one is attributed); inconclusive when scoring
    stopped before every pair; not detected otherwise."""
    accounts = run.account_results
    rejected = [a for a in accounts if a.rejected]

    def strength(a: AccountResult) -> tuple:
        return (a.adjusted_p_value, a.anytime_p if a.anytime_p is not None else 1.0, a.log10_p)

    best = min(rejected or accounts, key=strength)
    p_decision = best.anytime_p if sequential and best.anytime_p is not None else best.p_value
    log10_decision = math.log10(p_decision) if sequential and best.anytime_p is not None else best.log10_p
    scored = sum(len(v) for v in run.results.values())
    total_pairs = sum(len(v) for v in run.pairs.values())
    if rejected:
        verdict = "detected"
    elif run.incomplete or scored < total_pairs:
        verdict = "inconclusive"
    else:
        verdict = "not_detected"
    return Decision(
        verdict=verdict,
        best=best,
        attributed_account=best.account if rejected else None,
        p_value=p_decision,
        log10_p=log10_decision,
        pairs_scored=scored,
        pairs_total=total_pairs,
    )


def rule_text(correction: str, *, sequential: bool) -> str:
    """The decision rule, as the report states it."""
    if sequential:
        return "reject H0 for an account when its e-process reaches K/alpha (anytime-valid)"
    return f"reject H0 for an account when its {correction}-adjusted combined rank p-value <= alpha"


def pvalue_text(p: float, log10_p: float) -> str:
    """``p`` formatted for people: ``3.2e-07``, or ``10^-412.3`` below the float range."""
    if p > 0 and math.isfinite(p):
        return f"{p:.3g}"
    return f"10^{log10_p:.1f}"
