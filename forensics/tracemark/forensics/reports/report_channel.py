"""The report section of the distributional channel: the provider headline ("distilled from us") and, per
key, the distinct tuples scored (n), how many were green, the fraction and the exact binomial p-value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tracemark.forensics.reports.report_sections import (
    KeyValues,
    Paragraph,
    Section,
    Table,
    fmt_p,
    get,
    plain,
)


def _rows(section: Mapping[str, Any]) -> list[tuple[str, Mapping]]:
    rows: list[tuple[str, Mapping]] = []
    for t in get(section, "provider.tests") or []:
        rows.append(("provider", t))
    accounts = section.get("accounts") if isinstance(section.get("accounts"), Mapping) else {}
    for name, acc in sorted(accounts.items()):
        for t in (acc or {}).get("tests") or []:
            rows.append((f"account {name}", t))
    return [(who, t) for who, t in rows if isinstance(t, Mapping)]


def _headline(report: Mapping[str, Any], section: Mapping[str, Any]) -> str:
    provider = get(report, "decision.provider")
    if not isinstance(provider, Mapping):
        return (
            "No provider key was tested (no provider-key commitment in the log); the channel only adds "
            "evidence to the accounts below."
        )
    p = fmt_p(provider.get("p_value"), provider.get("log10_p"))
    adj, alpha = fmt_p(provider.get("adjusted_p_value")), plain(provider.get("alpha"))
    if provider.get("rejected"):
        return (
            "DISTILLED FROM US. The suspect's own text carries the provider key's keyed green-list bias, "
            "which every trace we served carries whatever the account. Text never derived from ours would "
            f"show this excess with probability {p} (adjusted over suspects {adj} <= alpha = {alpha})."
        )
    if not section.get("usable", True):
        return "NOT DETECTED by the provider key: the channel evidence was not usable (see below)."
    return (
        f"NOT DETECTED by the provider key: p = {p} (adjusted {adj}) is above alpha = {alpha}. This does not "
        "prove the model never learnt from our outputs."
    )


def channel_section(report: Mapping[str, Any]) -> Section | None:
    """The channel section, or ``None`` when the investigation did not test the channel."""
    section = get(report, "statistics.channel")
    if not isinstance(section, Mapping):
        return None
    sec = Section("channel", "Distributional channel")
    sec.blocks.append(Paragraph(_headline(report, section), "verdict"))
    evidence = section.get("evidence") if isinstance(section.get("evidence"), Mapping) else {}
    decoys = section.get("decoy_check") if isinstance(section.get("decoy_check"), Mapping) else {}
    sec.blocks.append(
        KeyValues(
            [
                ("Mode", plain(section.get("mode"))),
                ("Distinct (context, token) tuples", plain(evidence.get("distinct_tuples"))),
                (
                    "Texts / completions sampled",
                    f"{plain(evidence.get('texts'))} / {plain(evidence.get('completions_sampled'))}",
                ),
                ("Prompts (SHA-256)", plain(evidence.get("prompts_sha256"))),
                (
                    "Decoy-key check",
                    f"{plain(decoys.get('decoy_keys'))} decoys: "
                    f"{'passed' if decoys.get('passed') else 'FAILED (channel evidence not used)'}"
                    if decoys
                    else "not run",
                ),
                ("Null", plain(section.get("null"))),
                ("Combination with the pair test", plain(section.get("combination"))),
            ]
            + ([("Problem", plain(section.get("error")))] if section.get("error") else [])
        )
    )
    rows = [
        [
            who,
            plain(t.get("key")),
            plain(t.get("n")),
            plain(t.get("green")),
            f"{float(t.get('fraction') or 0.0):.3f}",
            plain(t.get("gamma")),
            fmt_p(t.get("p_value"), t.get("log10_p")),
        ]
        for who, t in _rows(section)
    ]
    headers = ["Test", "Key", "Tuples (n)", "Green", "Fraction", "Expected (gamma)", "p-value"]
    sec.blocks.append(Table(headers, rows))
    combined = []
    for e in get(report, "statistics.accounts") or []:
        if isinstance(e, Mapping) and isinstance(e.get("channel"), Mapping):
            ch = e["channel"]
            pair = (
                fmt_p(e.get("pair_p_value"), e.get("pair_log10_p"))
                if e.get("pair_p_value") is not None
                else "-"
            )
            combined.append(
                [
                    plain(e.get("account")),
                    pair,
                    fmt_p(ch.get("p_value"), ch.get("log10_p")),
                    plain(e.get("evidence")),
                    fmt_p(e.get("p_value"), e.get("log10_p")),
                ]
            )
    if combined:
        sec.blocks.append(
            Table(
                ["Account", "Pair p", "Channel p", "Combination", "Account p (before correction)"],
                combined,
                note="The account p-value enters the family-wide correction of the per-account results.",
            )
        )
    return sec
