"""The distributional channel's tests inside an investigation (:mod:`tracemark.forensics.channel`).

Besides the pair test, an investigation whose family was issued under a scheme with a channel runs:

* the **provider test** ("distilled from us"): the provider key of every key version with a logged
  ``provider-key`` commitment, on the suspect's own text. It needs no account: it detects a harvest spread
  over any number of accounts. One p-value per suspect (Bonferroni over key versions), corrected over the
  suspects with Holm at its own pre-registered level ``provider_alpha``: a separate headline;
* the **account tests**: each accusable account's channel key (for the versions whose commitment carries
  one), Bonferroni over its versions, then combined with its pair evidence (:func:`combine_evidence`)
  before the family-wide Holm/BH correction.

Everything is fixed in the pre-registration before the first query (:meth:`ChannelPlan.public`): the
spec, every key to be tested by its commitment's log entry, the public prompts, the sampling settings and
the number of decoy keys. The evidence (distinct tuples) is collected once per suspect and scored under
every key; a decoy-key check (:func:`~tracemark.forensics.channel.decoy_check`, seeded by the beacon) on
the same tuples goes in the report, and when it fails the channel evidence is not used (every channel p
set to 1: conservative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tracemark.forensics import stats
from tracemark.forensics.channel import (
    ChannelDetectionError,
    ChannelEvidence,
    ChannelTest,
    DecoyCheck,
    collect_evidence,
    decoy_check,
    score_keys,
)
from tracemark.forensics.channel.detect import prompts_digest
from tracemark.forensics.channel.prompts import DEFAULT_PROMPTS
from tracemark.forensics.channel.score import binomial_log10_p
from tracemark.forensics.investigate.params import InvestigationError, InvestigationParams
from tracemark.foundation.channel import ChannelSpec, tokenizer_fingerprint

LN10 = math.log(10.0)
COMBINATION_TEXT = (
    "Fisher's method over the account's pair p-value and its channel p-value (chi-square with 4 df). Valid "
    "because the two are independent under H0: the pair key and the channel key are independent PRF "
    "outputs of the master secret, the channel's tuples come from public prompts with seeds from the public "
    "beacon, so given everything the pair test saw, the channel p is still exactly super-uniform over the "
    "channel key alone. An account with only one of the two uses it as is."
)


def _tokenizer_fingerprint(tokenizer: Any) -> str | None:
    try:
        return tokenizer_fingerprint(tokenizer)
    except (AttributeError, TypeError):
        return None


@dataclass
class ChannelPlan:
    """What the channel tests will be (fixed before any query; see the module doc)."""

    specs: dict[int, ChannelSpec]  # key version -> spec (accounts' and provider's of that version)
    provider: dict[int, int]  # key version -> log seq of its provider-key commitment
    accounts: dict[str, dict[int, int]]  # account -> {key version: log seq of its account-key entry}
    prompts: tuple[str, ...]
    samples: int
    max_new_tokens: int
    temperature: float
    decoys: int
    tokenizer: str
    width: int

    def public(self, mode: str) -> dict:
        """The registration's ``channel`` section."""
        return {
            "mode": mode,
            "specs": {str(v): s.as_dict() for v, s in sorted(self.specs.items())},
            "provider_keys": [
                {"key_version": v, "key_entry": seq} for v, seq in sorted(self.provider.items())
            ],
            "account_keys": [
                {"account": a, "key_version": v, "key_entry": seq}
                for a, versions in sorted(self.accounts.items())
                for v, seq in sorted(versions.items())
            ],
            "prompts": list(self.prompts),
            "prompts_sha256": prompts_digest(list(self.prompts)),
            "samples_per_prompt": self.samples,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "decoy_keys": self.decoys,
            "tokenizer": self.tokenizer,
        }


def plan_from_registration(
    section: Any, *, account: str | None = None, provider: bool = False
) -> ChannelPlan:
    """The plan a registration's ``channel`` section records, restricted to ``account``'s keys (and the
    provider's when ``provider``): what a third party re-runs. Malformed: :class:`ValueError`."""
    if not isinstance(section, dict):
        raise ValueError("the registration has no channel section")
    specs = {int(v): ChannelSpec.from_dict(dict(d)) for v, d in section["specs"].items()}
    accounts: dict[str, dict[int, int]] = {}
    for row in section.get("account_keys", []):
        if account is None or row["account"] == account:
            accounts.setdefault(row["account"], {})[int(row["key_version"])] = int(row["key_entry"])
    keys = {int(r["key_version"]): int(r["key_entry"]) for r in section.get("provider_keys", [])}
    first = next(iter(specs.values()))
    return ChannelPlan(
        specs=specs,
        provider=keys if provider else {},
        accounts=accounts,
        prompts=tuple(section["prompts"]),
        samples=int(section["samples_per_prompt"]),
        max_new_tokens=int(section["max_new_tokens"]),
        temperature=float(section["temperature"]),
        decoys=int(section["decoy_keys"]),
        tokenizer=str(section["tokenizer"]),
        width=first.context_width,
    )


def plan_channel(family: Any, members: dict[str, Any], params: InvestigationParams) -> ChannelPlan | None:
    """The channel plan of an investigation, or ``None`` when no logged scheme carries a channel (or
    ``params.channel`` is off). All specs must share one tokenizer and context width (one tuple set)."""
    if not params.channel or not family.has_channel:
        return None
    specs: dict[int, ChannelSpec] = {v: spec for v, (spec, _) in family.provider.items()}
    accounts: dict[str, dict[int, int]] = {}
    for name, member in members.items():
        for version, spec in member.channel.items():
            if specs.setdefault(version, spec) != spec:
                raise InvestigationError(
                    f"key version {version}: account {name!r} and the provider key were logged under "
                    "different channel specs",
                    field="channel",
                )
            accounts.setdefault(name, {})[version] = member.key_entries[version]
    shapes = {(s.tokenizer, s.context_width) for s in specs.values()}
    if len(shapes) != 1:
        raise InvestigationError(
            "the logged channel specs use different tokenizers or context widths: investigate per version",
            field="channel",
        )
    ((tokenizer, width),) = shapes
    return ChannelPlan(
        specs=specs,
        provider={v: seq for v, (_, seq) in family.provider.items()},
        accounts=accounts,
        prompts=tuple(params.channel_prompts or DEFAULT_PROMPTS),
        samples=params.channel_samples,
        max_new_tokens=params.channel_max_new_tokens,
        temperature=params.channel_temperature,
        decoys=params.channel_decoys,
        tokenizer=tokenizer,
        width=width,
    )


def channel_mode(suspect: Any, plan: ChannelPlan, tokenizer: Any) -> str:
    """``white-box`` for a local suspect with the channel's vocabulary, else ``black-box`` (which needs the
    channel ``tokenizer`` to re-tokenize: :class:`InvestigationError` when none is given)."""
    own = getattr(suspect, "tokenizer", None) if getattr(suspect, "white_box", False) else None
    if own is not None and _tokenizer_fingerprint(own) == plan.tokenizer:
        return "white-box"
    if tokenizer is None:
        raise InvestigationError(
            f"the channel test of {suspect.spec!r} needs the channel's tokenizer (fingerprint "
            f"{plan.tokenizer}) to re-tokenize its completions: give --channel-tokenizer, or --no-channel",
            field="channel_tokenizer",
        )
    mine = _tokenizer_fingerprint(tokenizer)
    if mine != plan.tokenizer:
        raise InvestigationError(
            f"the channel tokenizer's fingerprint {mine} is not the logged channel's {plan.tokenizer}",
            field="channel_tokenizer",
        )
    return "black-box"


def channel_log10(test: ChannelTest) -> float:
    """``log10`` of a channel test's p-value, exact below the float range."""
    return binomial_log10_p(test.green, test.n, test.gamma)


def bonferroni_log10(log10_ps: list[float]) -> float:
    """``log10 min(1, k * min p)`` over ``k`` tests (valid under any dependence)."""
    if not log10_ps:
        return 0.0
    return min(0.0, min(log10_ps) + math.log10(len(log10_ps)))


def combine_evidence(pair_log10: float | None, channel_log10: float | None) -> tuple[float, str]:
    """(log10 p, method): Fisher over the pair and channel p-values (module doc), or the one present."""
    if channel_log10 is None:
        return (pair_log10 if pair_log10 is not None else 0.0), "pair"
    if pair_log10 is None:
        return channel_log10, "channel"
    res = stats.fisher_combine(log_pvalues=[pair_log10 * LN10, channel_log10 * LN10])
    return res.log10_p, "fisher(pair, channel)"


def _test_row(test: ChannelTest, **extra: Any) -> dict:
    return {
        **extra,
        "key": test.key_label,
        "n": test.n,
        "green": test.green,
        "fraction": test.fraction,
        "gamma": test.gamma,
        "p_value": test.p_value,
        "log10_p": channel_log10(test),
    }


@dataclass
class ChannelRun:
    """One suspect's channel tests."""

    mode: str
    evidence: ChannelEvidence | None = None
    provider: dict[int, ChannelTest] = field(default_factory=dict)
    accounts: dict[str, dict[int, ChannelTest]] = field(default_factory=dict)
    decoys: DecoyCheck | None = None
    error: str = ""
    provider_adjusted: float = 1.0
    provider_rejected: bool = False

    @property
    def usable(self) -> bool:
        """Evidence collected and the decoy check passed (else every channel p counts as 1)."""
        return self.evidence is not None and not self.error and (self.decoys is None or self.decoys.passed)

    def provider_log10(self) -> float | None:
        if not self.provider:
            return None
        if not self.usable:
            return 0.0
        return bonferroni_log10([channel_log10(t) for t in self.provider.values()])

    def account_log10(self, account: str) -> float | None:
        tests = self.accounts.get(account)
        if not tests:
            return None
        if not self.usable:
            return 0.0
        return bonferroni_log10([channel_log10(t) for t in tests.values()])

    def account_section(self, account: str) -> dict | None:
        tests = self.accounts.get(account)
        if not tests:
            return None
        log10 = self.account_log10(account)
        return {
            "tests": [_test_row(t, key_version=v) for v, t in sorted(tests.items())],
            "log10_p": log10,
            "p_value": 10.0**log10 if log10 is not None else None,
            "versions": "Bonferroni over key versions",
        }

    def as_dict(self) -> dict:
        log10 = self.provider_log10()
        return {
            "mode": self.mode,
            "evidence": self.evidence.as_dict() if self.evidence is not None else None,
            "error": self.error,
            "usable": self.usable,
            "provider": {
                "tests": [_test_row(t, key_version=v) for v, t in sorted(self.provider.items())],
                "log10_p": log10,
                "p_value": 10.0**log10 if log10 is not None else None,
                "adjusted_p_value": self.provider_adjusted,
                "rejected": self.provider_rejected,
            },
            "accounts": {a: self.account_section(a) for a in sorted(self.accounts)},
            "decoy_check": self.decoys.as_dict() if self.decoys is not None else None,
            "null": "each distinct (context, token) tuple is green with probability gamma independently over "
            "the key's randomness, so green ~ Binomial(n, gamma) exactly; p = P(X >= green)",
            "combination": COMBINATION_TEXT,
        }


def run_channel(
    suspect: Any,
    plan: ChannelPlan,
    *,
    master: Any,
    mode: str,
    tokenizer: Any,
    beacon: str,
    outer_budget: int | None = None,
) -> ChannelRun:
    """Collect the suspect's evidence as registered and score every planned key (``master``: anything
    with ``channel_key(account or None, version=v)``: the master secret, or a disclosure's keys); a
    suspect that fails or runs out of budget leaves ``error`` set (its channel p-values then count as 1).
    The sampled completions (prompts x samples, on top of the pair test's budget) are capped by the
    adapter's own ``outer_budget``."""
    from tracemark.forensics.adapters import SuspectError  # deferred: adapters import is heavy

    out = ChannelRun(mode=mode)
    previous = getattr(suspect, "query_budget", None)
    cap = getattr(suspect, "queries_used", 0) + len(plan.prompts) * plan.samples
    suspect.query_budget = cap if outer_budget is None else min(cap, outer_budget)
    try:
        out.evidence = collect_evidence(
            suspect,
            plan.prompts,
            spec=next(iter(plan.specs.values())),
            mode=mode,
            tokenizer=tokenizer,
            samples_per_prompt=plan.samples,
            max_new_tokens=plan.max_new_tokens,
            temperature=plan.temperature,
            beacon=beacon,
        )
    except (SuspectError, ChannelDetectionError) as exc:
        out.error = f"channel evidence not collected: {exc}"[:300]
        return out
    finally:
        suspect.query_budget = previous
    for version, spec in sorted(plan.specs.items()):
        if version in plan.provider:
            (out.provider[version],) = score_keys(
                out.evidence, [master.channel_key(None, version=version)], spec=spec
            )
    for account, versions in plan.accounts.items():
        for version in versions:
            key = master.channel_key(account, version=version)
            (test,) = score_keys(out.evidence, [key], spec=plan.specs[version])
            out.accounts.setdefault(account, {})[version] = test
    out.decoys = decoy_check(
        out.evidence.tuples, spec=next(iter(plan.specs.values())), seed=beacon, k=plan.decoys
    )
    return out


def decide_provider(runs: list[Any], *, alpha: float) -> None:
    """Holm over the suspects' provider p-values at ``alpha`` (sets ``provider_adjusted``/``rejected``)."""
    rows = [r.channel for r in runs if r.channel is not None and r.channel.provider]
    if not rows:
        return
    ps = [10.0 ** c.provider_log10() for c in rows]
    rejected, adjusted = stats.adjust_pvalues(ps, alpha=alpha, method="holm")
    for c, rej, adj in zip(rows, rejected, adjusted, strict=True):
        c.provider_rejected, c.provider_adjusted = bool(rej), float(adj)
