"""The readable sections of an evidence report, as a small document model shared by the HTML and PDF exports.

:func:`build_sections` turns a decoded report (and its envelope) into :class:`Section` objects made of
paragraphs, key/value lists, tables, ordered steps, commands and one figure: (a) decision, (b)
pre-registration, (c) per-account results, (d) per-pair results, (e) the null distribution, (f)
re-derivation, (g) signature and verification. Values are formatted in words and numbers, never as JSON.
Every field may be missing (older reports, format ``tracemark-report/2``): it then reads "not recorded".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tracemark.forensics import stats
from tracemark.forensics.reports.core import report_hash
from tracemark.forensics.reports.dsse import envelope_body

NOT_RECORDED = "not recorded"
MAX_ACCOUNTS = 50
MAX_PAIRS = 200
_MAX_TEXT = 400
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_CORRECTION_NAMES = {"holm": "Holm (step-down)", "bonferroni": "Bonferroni", "fdr_bh": "Benjamini-Hochberg"}


@dataclass
class Paragraph:
    text: str
    style: str = "body"  # body | note | verdict


@dataclass
class KeyValues:
    rows: list[tuple[str, str]]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    highlight: int | None = None  # index of a row to emphasise (the attributed account)


@dataclass
class Steps:
    items: list[str]


@dataclass
class Commands:
    lines: list[str]


@dataclass
class Blob:
    """Long opaque text (the signed payload) shown folded in HTML and left out of the PDF."""

    label: str
    text: str


@dataclass
class FigureBlock:
    caption: str


Block = Paragraph | KeyValues | Table | Steps | Commands | Blob | FigureBlock


@dataclass
class Section:
    key: str
    title: str
    blocks: list[Block] = field(default_factory=list)


# --- reading fields ----------------------------------------------------------------------------
def get(obj: Any, dotted: str) -> Any:
    """``obj["a"]["b"]`` for ``"a.b"``, or ``None`` when any step is missing or not a mapping."""
    for part in dotted.split("."):
        if not isinstance(obj, Mapping) or part not in obj:
            return None
        obj = obj[part]
    return obj


def first(obj: Any, *paths: str) -> Any:
    for p in paths:
        v = get(obj, p)
        if v is not None:
            return v
    return None


def num(value: Any) -> float | None:
    """A number from a report field (numbers, numeric strings, "Infinity"); ``None`` otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace("Infinity", "inf"))
        except ValueError:
            return None
    return None


def as_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value)


# --- formatting ---------------------------------------------------------------------------------
def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fmt_int(value: Any) -> str:
    n = as_int(value)
    return f"{n:,}" if n is not None else NOT_RECORDED


def fmt_p(p: Any, log10_p: Any = None) -> str:
    """A probability for a reader: ``0.034``, ``2.1 × 10⁻⁹``; from ``log10_p`` when ``p`` underflowed."""
    value, lg = num(p), num(log10_p)
    if value is not None and value > 0 and math.isfinite(value):
        lg = math.log10(value) if lg is None or value > 1e-300 else lg
    elif lg is None or not math.isfinite(lg):
        return NOT_RECORDED if value is None else ("0" if value == 0 else str(value))
    if lg >= -3:
        return f"{10**lg:.3g}"
    exponent = math.floor(lg)
    mantissa = 10 ** (lg - exponent)
    if mantissa >= 9.995:
        mantissa, exponent = 1.0, exponent + 1
    return f"{mantissa:.2g} × 10{str(exponent).translate(_SUPERSCRIPT)}"


def plain(value: Any, limit: int = _MAX_TEXT) -> str:
    """Any report value in words: numbers, yes/no, lists joined by commas, mappings as ``key: value``."""
    if value is None or value == "" or value == [] or value == {}:
        return NOT_RECORDED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, Mapping):
        parts = [f"{k}: {plain(v, limit)}" for k, v in value.items()]
        return _clip("; ".join(parts), limit)
    if isinstance(value, list | tuple):
        return _clip(", ".join(plain(v, limit) for v in value), limit)
    return _clip(str(value), limit)


def _label(key: str) -> str:
    return str(key).replace("_", " ").capitalize()


def _mapping_rows(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, Mapping) or not value:
        return [("Recorded values", NOT_RECORDED)]
    return [(_label(k), plain(v)) for k, v in value.items()]


def _compact_list(values: Any, limit: int = 6) -> str:
    if not isinstance(values, list) or not values:
        return NOT_RECORDED
    shown = ", ".join(fmt_int(v) if as_int(v) is not None else plain(v) for v in values[:limit])
    return shown + (f", … (+{len(values) - limit})" if len(values) > limit else "")


def _candidate_counts(values: Any) -> str:
    ints = [as_int(v) for v in values] if isinstance(values, list) else []
    if not ints or any(v is None for v in ints):
        return NOT_RECORDED
    lo, hi = min(ints), max(ints)
    return fmt_int(lo) if lo == hi else f"{lo:,}–{hi:,}"


def _yes_no(value: Any) -> str:
    return NOT_RECORDED if not isinstance(value, bool) else ("yes" if value else "no")


# --- accounts ---------------------------------------------------------------------------------
def account_entries(report: Mapping[str, Any]) -> list[dict]:
    """The per-account result dicts (list or mapping by name, in ``statistics`` or at the top level)."""
    accounts = first(report, "statistics.accounts", "accounts", "decision.accounts")
    if isinstance(accounts, Mapping):
        return [dict(v, account=k) for k, v in accounts.items() if isinstance(v, Mapping)]
    if isinstance(accounts, list):
        return [dict(a) for a in accounts if isinstance(a, Mapping)]
    return []


def _sort_key(entry: Mapping) -> tuple[float, float]:
    adj = num(entry.get("adjusted_p_value"))
    p = num(entry.get("p_value"))
    lg = num(entry.get("log10_p"))
    p_key = lg if lg is not None else (math.log10(p) if p and p > 0 else (0.0 if p is None else -math.inf))
    return (adj if adj is not None else 2.0, p_key)


def focus_account(report: Mapping[str, Any]) -> dict | None:
    """The attributed account's entry, else the one with the smallest adjusted (then raw) p-value."""
    entries = account_entries(report)
    attributed = first(report, "decision.attributed_account", "attributed_account")
    for e in entries:
        if attributed is not None and e.get("account") == attributed:
            return e
    return min(entries, key=_sort_key) if entries else None


# --- sections ---------------------------------------------------------------------------------
_VERDICT_WORDS = {
    "detected": "Detected",
    "not_detected": "Not detected",
    "inconclusive": "Inconclusive",
}


def _verdict_sentence(report: Mapping[str, Any]) -> str:
    d = report.get("decision") if isinstance(report.get("decision"), Mapping) else {}
    verdict = d.get("verdict") or report.get("verdict")
    account = d.get("attributed_account") or report.get("attributed_account")
    p = fmt_p(d.get("p_value"), d.get("log10_p_value"))
    adj = fmt_p(d.get("adjusted_p_value"))
    alpha = plain(d.get("alpha"))
    family = d.get("family_size")
    tests = f"the {plain(family)} tests" if family is not None else "the tests"
    corrected = d.get("adjusted_p_value") is not None
    if verdict == "detected":
        text = (
            f"DETECTED. The suspect model ranks the secret signature targets of account {plain(account)} "
            "far better than chance. If the model had never been trained on this account's signatures, "
            f"ranks at least this good would occur with probability {p}."
        )
        if corrected:
            return text + (
                f" After correcting for {tests} in the family, the adjusted p-value {adj} is at or below "
                f"the pre-set level alpha = {alpha}."
            )
        return text + f" The pre-set level is alpha = {alpha}; the report records no adjusted p-value."
    if verdict == "not_detected":
        text = (
            "NOT DETECTED. No account's signatures are ranked better than chance allows at the pre-set "
            f"level alpha = {alpha}"
        )
        text += (
            f" after correcting for {tests} in the family (smallest adjusted p-value: {adj})."
            if corrected
            else "."
        )
        return text + (
            " This does not prove the model never saw the signatures; the evidence is not strong enough to "
            "say that it did."
        )
    if verdict == "inconclusive":
        detail = d.get("detail") or NOT_RECORDED
        return (
            f"INCONCLUSIVE. The investigation did not complete as registered ({plain(detail)}); "
            "no conclusion is drawn."
        )
    return f"Verdict: {NOT_RECORDED}."


def decision_section(report: Mapping[str, Any]) -> Section:
    d = report.get("decision") if isinstance(report.get("decision"), Mapping) else {}
    verdict = d.get("verdict") or report.get("verdict")
    correction = first(report, "decision.correction", "parameters.correction", "params.correction")
    meaning = d.get("correction_meaning")
    if not meaning and correction in stats.CORRECTIONS:
        meaning = (
            stats.correction_meaning(correction) + " (explanation added at export, not in the signed report)"
        )
    rows = [
        ("Verdict", _VERDICT_WORDS.get(str(verdict), plain(verdict))),
        ("Suspect model", plain(report.get("suspect"))),
        ("Attributed account", plain(d.get("attributed_account")) if d.get("attributed_account") else "none"),
        ("Combined p-value (before correction)", fmt_p(d.get("p_value"), d.get("log10_p_value"))),
        ("Adjusted p-value (after correction)", fmt_p(d.get("adjusted_p_value"))),
        ("Significance level alpha", plain(first(report, "decision.alpha", "parameters.alpha", "alpha"))),
        ("Multiple-testing correction", _CORRECTION_NAMES.get(str(correction), plain(correction))),
        ("What the correction controls", plain(meaning)),
        ("Tests in the family (accounts × suspects)", plain(d.get("family_size"))),
        ("Accounts scored", plain(d.get("accounts_scored"))),
        ("Decision rule", plain(d.get("rule"))),
    ]
    if d.get("detail"):
        rows.append(("Detail", plain(d.get("detail"))))
    return Section("decision", "Decision", [Paragraph(_verdict_sentence(report), "verdict"), KeyValues(rows)])


def registration_section(report: Mapping[str, Any]) -> Section:
    reg = report.get("registration")
    sec = Section("registration", "Pre-registration")
    if not isinstance(reg, Mapping):
        sec.blocks.append(Paragraph(f"Pre-registration: {NOT_RECORDED} (this report predates it)."))
        identity = report.get("suspect_identity")
        if isinstance(identity, Mapping):
            sec.blocks.append(Paragraph("Suspect identity as recorded in the report:", "note"))
            sec.blocks.append(KeyValues(_mapping_rows(identity)))
        return sec
    sec.blocks.append(
        Paragraph(
            "What would be tested was written to the append-only transparency log before the first query "
            "to the suspect: the suspect's identity, the accounts, the pairs and the parameters."
        )
    )
    identity = reg.get("suspect_identity") if isinstance(reg.get("suspect_identity"), Mapping) else {}
    rows = [
        ("Log entry (sequence number)", plain(reg.get("log_seq"))),
        ("Log entry hash", plain(reg.get("entry_hash"))),
        ("Registered at", plain(reg.get("logged_at"))),
        ("Suspect weights hash (SHA-256)", plain(identity.get("weights_sha256"))),
        ("Suspect tokenizer hash (SHA-256)", plain(identity.get("tokenizer_sha256"))),
        ("Suspect chat-template hash (SHA-256)", plain(identity.get("chat_template_sha256"))),
    ]
    shown = {"weights_sha256", "tokenizer_sha256", "chat_template_sha256"}
    rows += [(f"Suspect {_label(k).lower()}", plain(v)) for k, v in identity.items() if k not in shown]
    family = reg.get("family")
    if isinstance(family, Mapping):
        rows.append(("Family", plain(family)))
    accounts = reg.get("accounts")
    if isinstance(accounts, list):
        rows.append(("Accounts registered", f"{len(accounts):,}"))
    sec.blocks.append(KeyValues(rows))
    sec.blocks.append(Paragraph("Registered parameters:", "note"))
    sec.blocks.append(KeyValues(_mapping_rows(reg.get("parameters"))))
    sec.blocks.append(
        Paragraph(
            "Earlier registrations for the same suspect. Every registration is logged before any query, "
            "so a re-run of an investigation against this model (for example, until a favourable result "
            "appears) is visible here."
        )
    )
    prior = reg.get("prior")
    if isinstance(prior, list) and prior:
        rows = [
            [
                plain(p.get("seq")),
                plain(p.get("logged_at")),
                plain(p.get("investigation_id")),
                plain(p.get("mode")),
            ]
            for p in prior
            if isinstance(p, Mapping)
        ]
        sec.blocks.append(Table(["Log entry", "Registered at", "Investigation", "Mode"], rows))
    elif isinstance(prior, list):
        sec.blocks.append(Paragraph("Earlier registrations: none."))
    else:
        sec.blocks.append(Paragraph(f"Earlier registrations: {NOT_RECORDED}."))
    return sec


def accounts_section(report: Mapping[str, Any]) -> Section:
    sec = Section("accounts", "Per-account results")
    entries = sorted(account_entries(report), key=_sort_key)
    if not entries:
        sec.blocks.append(Paragraph(f"Per-account results: {NOT_RECORDED}."))
        return sec
    attributed = first(report, "decision.attributed_account", "attributed_account")
    rows, highlight = [], None
    for i, e in enumerate(entries[:MAX_ACCOUNTS]):
        ranks = e.get("pair_ranks", e.get("ranks"))
        scored, total = e.get("pairs"), e.get("pairs_total")
        pairs = f"{plain(scored)} of {plain(total)}" if total is not None else plain(scored)
        rows.append(
            [
                plain(e.get("account")),
                pairs,
                _compact_list(ranks),
                _candidate_counts(e.get("pair_n_candidates")),
                fmt_p(e.get("p_value"), e.get("log10_p")),
                fmt_p(e.get("adjusted_p_value")),
                _yes_no(e.get("rejected")),
            ]
        )
        if attributed is not None and e.get("account") == attributed:
            highlight = i
    rest = len(entries) - MAX_ACCOUNTS
    note = f"… and {rest:,} more accounts (larger adjusted p-values), not shown." if rest > 0 else ""
    sec.blocks.append(
        Paragraph(
            "Each account's pairs are combined into one p-value; the adjusted p-value accounts for testing "
            "every account in the family. Rank 1 is the best of N candidates."
        )
    )
    headers = ["Account", "Pairs scored", "Ranks", "Candidates (N)", "Combined p", "Adjusted p", "Rejected"]
    sec.blocks.append(Table(headers, rows, note=note, highlight=highlight))
    return sec


def pairs_section(report: Mapping[str, Any]) -> Section:
    sec = Section("pairs", "Per-pair results")
    entry = focus_account(report)
    if entry is None:
        sec.blocks.append(Paragraph(f"Per-pair results: {NOT_RECORDED}."))
        return sec
    account = entry.get("account")
    attributed = first(report, "decision.attributed_account", "attributed_account")
    who = "the attributed account" if account == attributed and attributed else "the most significant account"
    sec.blocks.append(Paragraph(f"Pairs of {who}, {plain(account)}. p = rank / N."))
    pairs = get(report, "statistics.pairs")
    rows = []
    if isinstance(pairs, list):
        for p in pairs:
            if isinstance(p, Mapping) and p.get("account") == account:
                rows.append(
                    [
                        plain(p.get("pair_id")),
                        plain(p.get("key_version")),
                        fmt_int(p.get("rank")),
                        fmt_int(p.get("n_candidates")),
                        fmt_p(p.get("p_value")),
                        plain(p.get("method")),
                    ]
                )
    if not rows:  # older reports: the account's own lists
        ranks = entry.get("pair_ranks", entry.get("ranks"))
        ns = entry.get("pair_n_candidates")
        ps = entry.get("pair_p_values")
        length = max((len(x) for x in (ranks, ns, ps) if isinstance(x, list)), default=0)
        for i in range(length):

            def at(xs: Any, i: int = i) -> Any:
                return xs[i] if isinstance(xs, list) and i < len(xs) else None

            rows.append(
                [NOT_RECORDED, NOT_RECORDED, fmt_int(at(ranks)), fmt_int(at(ns)), fmt_p(at(ps)), NOT_RECORDED]
            )
    if not rows:
        sec.blocks.append(Paragraph(f"Pairs: {NOT_RECORDED}."))
        return sec
    note = f"… and {len(rows) - MAX_PAIRS:,} more pairs, not shown." if len(rows) > MAX_PAIRS else ""
    headers = ["Pair id", "Key version", "Rank", "Candidates (N)", "p", "Method"]
    sec.blocks.append(Table(headers, rows[:MAX_PAIRS], note=note))
    return sec


def null_section(report: Mapping[str, Any], caption: str) -> Section:
    return Section("null", "Null distribution of the statistic used", [FigureBlock(caption)])


def rederivation_section(report: Mapping[str, Any]) -> Section:
    sec = Section("rederivation", "Re-derivation procedure")
    red = report.get("rederivation") if isinstance(report.get("rederivation"), Mapping) else {}
    steps = red.get("steps")
    if isinstance(steps, list) and steps:
        sec.blocks.append(Paragraph("An independent expert can re-derive the result in these steps:"))
        sec.blocks.append(Steps([plain(s, 2000) for s in steps]))
    else:
        sec.blocks.append(Paragraph(f"Re-derivation steps: {NOT_RECORDED}."))
    commands = red.get("commands")
    if isinstance(commands, list) and commands:
        sec.blocks.append(Paragraph("Commands:", "note"))
        sec.blocks.append(Commands([plain(c, 2000) for c in commands]))
    else:
        sec.blocks.append(Paragraph(f"Commands: {NOT_RECORDED}."))
    return sec


def signature_section(report: Mapping[str, Any], envelope: Mapping | None, verification: Any) -> Section:
    sec = Section("signature", "Signature and verification")
    keyids, digest, payload_type, payload = [], None, None, None
    if isinstance(envelope, Mapping):
        sigs = envelope.get("signatures")
        keyids = (
            [str(s.get("keyid", "")) for s in sigs if isinstance(s, Mapping)]
            if isinstance(sigs, list)
            else []
        )
        payload_type, payload = envelope.get("payloadType"), envelope.get("payload")
        try:
            digest = report_hash(envelope_body(envelope))
        except ValueError:
            digest = None
    if verification is None:
        checked = "not performed at export; run `tracemark report verify` with the operator's public key"
    else:
        checked = verification.summary()
    rows = [
        ("Report id", plain(report.get("report_id"))),
        ("Report format", plain(report.get("report_format"))),
        ("Created", plain(report.get("created_at"))),
        ("Position in the report chain", plain(report.get("sequence"))),
        ("Previous report hash", plain(report.get("prev_report_hash"))),
        ("Report hash (SHA-256 of the signed payload)", plain(digest)),
        ("Signing key id", ", ".join(keyids) if keyids else NOT_RECORDED),
        ("Signature envelope", f"DSSE, Ed25519, payload type {plain(payload_type)}"),
        ("Software", plain(get(report, "software.version"))),
        ("Verification at export", checked),
    ]
    sec.blocks.append(KeyValues(rows))
    if isinstance(payload, str):
        sec.blocks.append(
            Paragraph(
                "The signed payload (base64) follows; together with the payload type and the signature it "
                "is the DSSE envelope any Ed25519/DSSE verifier can check.",
                "note",
            )
        )
        sec.blocks.append(Blob("Signed payload (base64)", payload))
    return sec


def build_sections(
    report: Mapping[str, Any],
    envelope: Mapping | None = None,
    verification: Any = None,
    *,
    null_caption: str = "",
) -> list[Section]:
    """Sections (a)-(g) of a report, in reading order (see the module docstring), with the channel's
    after the accounts when the investigation tested it."""
    from tracemark.forensics.reports.report_channel import channel_section  # deferred: it imports this module

    channel = channel_section(report)
    return [
        decision_section(report),
        registration_section(report),
        accounts_section(report),
        *([channel] if channel is not None else []),
        pairs_section(report),
        null_section(report, null_caption),
        rederivation_section(report),
        signature_section(report, envelope, verification),
    ]
