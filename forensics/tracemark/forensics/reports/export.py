"""Human-readable exports of a signed evidence report: a standalone HTML page and a PDF.

Both render the same readable sections (:mod:`~tracemark.forensics.reports.report_sections`): decision,
pre-registration, per-account and per-pair tables, the null distribution of the statistic actually used
(:mod:`~tracemark.forensics.reports.report_plots`), the re-derivation procedure, and signature and
verification. Nothing is shown as raw JSON; every value in the HTML is escaped; the figure is embedded as a
base64 PNG, so the page loads nothing from elsewhere. Missing fields (older reports) read "not recorded".
"""

from __future__ import annotations

import base64
import html
import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tracemark.forensics.reports.core import decode_report, report_hash
from tracemark.forensics.reports.dsse import envelope_body
from tracemark.forensics.reports.report_plots import (
    PlotData,
    null_caption,
    null_figure,
    null_plot_png,
    plot_data,
)
from tracemark.forensics.reports.report_sections import (
    Blob,
    Commands,
    FigureBlock,
    KeyValues,
    Paragraph,
    Section,
    Steps,
    Table,
    account_entries,
    build_sections,
    first,
)
from tracemark.forensics.reports.verify import VerificationResult
from tracemark.foundation.errors import InvalidInput

__all__ = [
    "ExportError",
    "PlotData",
    "account_rows",
    "export_html",
    "export_pdf",
    "format_value",
    "null_plot_png",
    "plot_data",
    "render_html",
    "sections",
    "summary_rows",
]


class ExportError(InvalidInput):
    """The export cannot be written (bad path, unreadable envelope)."""


# --- compact summary (the `tracemark report show` command) ------------------------------------------
def format_value(value: Any) -> str:
    """One value for a terminal line (mappings and lists as compact JSON)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, Mapping | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def summary_rows(report: Mapping[str, Any], envelope: Mapping | None = None) -> list[tuple[str, str]]:
    """Key facts of a report as (label, value) rows."""
    keyids = ""
    digest = None
    if isinstance(envelope, Mapping):
        keyids = ", ".join(
            str(s.get("keyid", "")) for s in envelope.get("signatures", []) if isinstance(s, Mapping)
        )
        try:
            digest = report_hash(envelope_body(envelope))
        except ValueError:
            digest = None
    rows = [
        ("Report id", report.get("report_id")),
        ("Created", report.get("created_at")),
        ("Chain position", report.get("sequence")),
        ("Report hash (SHA-256)", digest),
        ("Previous report hash", report.get("prev_report_hash")),
        ("Verdict", first(report, "decision.verdict", "verdict")),
        ("Attributed account", first(report, "decision.attributed_account", "attributed_account")),
        ("p-value", first(report, "decision.p_value", "statistics.p_value", "p_value")),
        ("alpha", first(report, "decision.alpha", "alpha", "parameters.alpha", "params.alpha")),
        ("Correction", first(report, "decision.correction", "parameters.correction", "params.correction")),
        ("Suspect", first(report, "suspect_identity", "suspect")),
        ("Mode", first(report, "parameters.mode", "params.mode", "mode")),
        ("Queries", _query_count(report)),
        ("Software", first(report, "software.version")),
        ("Signing key", keyids or None),
    ]
    return [(k, format_value(v)) for k, v in rows if v is not None and v != ""]


def _query_count(report: Mapping[str, Any]) -> int | None:
    q = report.get("queries")
    if isinstance(q, list):
        return len(q)
    if isinstance(q, Mapping):
        n = q.get("count")
        if isinstance(n, int):
            return n
        items = q.get("items") or q.get("records")
        return len(items) if isinstance(items, list) else None
    return None


def account_rows(report: Mapping[str, Any]) -> list[dict]:
    """The per-account result dicts of a report (list or mapping by name)."""
    return account_entries(report)


# --- loading ----------------------------------------------------------------------------------
def _load(envelope: Mapping | str | bytes) -> tuple[dict, dict]:
    try:
        env = json.loads(envelope) if isinstance(envelope, str | bytes) else dict(envelope)
        return env, decode_report(env)
    except ValueError as exc:
        raise ExportError(f"cannot read the envelope: {exc}") from None


def _target(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        raise ExportError(f"{p} is a directory; give a file path")
    if not p.parent.exists():
        raise ExportError(f"folder {p.parent} does not exist")
    return p


def sections(
    envelope: Mapping | str | bytes, *, verification: VerificationResult | None = None
) -> tuple[dict, list[Section]]:
    """(the decoded report, its readable sections) for an envelope."""
    env, report = _load(envelope)
    return report, build_sections(report, env, verification, null_caption=null_caption(report))


# --- HTML -------------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f2f2f2}table.kv th{width:34%;font-weight:600}tr.focus td{background:#fff4d6;font-weight:600}
code,pre{font-family:Menlo,Consolas,monospace;font-size:.85em}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;overflow-wrap:anywhere;margin:.3em 0}
p.verdict{font-size:1.05em;padding:.7em;border-left:5px solid #555;background:#f7f7f7}
p.verdict.detected{border-color:#c0392b}p.verdict.not_detected{border-color:#27ae60}
p.note{color:#555;font-size:.92em}ol li{margin:.3em 0}
@media print{body{max-width:none}details{display:none}}
"""


def _html_block(block: Any, verdict: str) -> str:
    e = html.escape
    if isinstance(block, Paragraph):
        cls = f"verdict {verdict}" if block.style == "verdict" else block.style
        return f"<p class='{e(cls)}'>{e(block.text)}</p>"
    if isinstance(block, KeyValues):
        rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in block.rows)
        return f"<table class='kv'>{rows}</table>"
    if isinstance(block, Table):
        head = "".join(f"<th>{e(h)}</th>" for h in block.headers)
        body = []
        for i, row in enumerate(block.rows):
            cls = " class='focus'" if i == block.highlight else ""
            body.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
        note = f"<p class='note'>{e(block.note)}</p>" if block.note else ""
        return f"<table><tr>{head}</tr>{''.join(body)}</table>{note}"
    if isinstance(block, Steps):
        return "<ol>" + "".join(f"<li>{e(s)}</li>" for s in block.items) + "</ol>"
    if isinstance(block, Commands):
        return "".join(f"<pre><code>{e(c)}</code></pre>" for c in block.lines)
    if isinstance(block, Blob):
        return f"<details><summary>{e(block.label)}</summary><pre>{e(block.text)}</pre></details>"
    if isinstance(block, FigureBlock):
        return block.caption  # replaced by the caller (needs the report)
    raise TypeError(f"unknown block {type(block).__name__}")


def render_html(envelope: Mapping | str | bytes, *, verification: VerificationResult | None = None) -> str:
    """The HTML export as a string (see :func:`export_html`)."""
    report, secs = sections(envelope, verification=verification)
    e = html.escape
    verdict = str(first(report, "decision.verdict", "verdict") or "")
    rid = e(str(report.get("report_id") or "(no id)"))
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>tracemark evidence report {rid}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>tracemark evidence report <code>{rid}</code></h1>",
    ]
    for n, sec in enumerate(secs):
        parts.append(f"<h2 id='{e(sec.key)}'>{chr(ord('A') + n)}. {e(sec.title)}</h2>")
        for block in sec.blocks:
            if isinstance(block, FigureBlock):
                png = base64.b64encode(null_plot_png(report)).decode("ascii")
                parts.append(f"<p>{e(block.caption)}</p>")
                parts.append(
                    f"<img alt='null distribution of the statistic with the observed value marked' "
                    f"src='data:image/png;base64,{png}' style='max-width:100%'>"
                )
            else:
                parts.append(_html_block(block, verdict))
    parts.append("</body></html>")
    return "\n".join(parts)


def export_html(
    envelope: Mapping | str | bytes, path: str | Path, *, verification: VerificationResult | None = None
) -> Path:
    """Write a standalone HTML report (readable sections, embedded PNG figure, the signed payload)."""
    target = _target(path)
    target.write_text(render_html(envelope, verification=verification), encoding="utf-8")
    return target


# --- PDF --------------------------------------------------------------------------------------
_PAGE = (8.27, 11.69)  # A4 portrait, inches
_LEFT, _TOP, _BOTTOM = 0.07, 0.95, 0.05
_STYLES = {  # font size (pt), weight, family, wrap width (characters)
    "title": (14.0, "bold", "sans-serif", 80),
    "h2": (11.0, "bold", "sans-serif", 90),
    "body": (8.5, "normal", "sans-serif", 112),
    "note": (8.0, "normal", "sans-serif", 118),
    "verdict": (9.0, "bold", "sans-serif", 104),
    "mono": (6.8, "normal", "monospace", 122),
}


class _PdfWriter:
    """Flows styled lines onto A4 pages (matplotlib figures) and saves them into a PdfPages."""

    def __init__(self, pdf: Any) -> None:
        self.pdf = pdf
        self.fig: Any = None
        self.y = _TOP

    def _new_page(self) -> None:
        from matplotlib.figure import Figure  # deferred: matplotlib is heavy and only exports need it

        self.flush()
        self.fig = Figure(figsize=_PAGE)
        self.y = _TOP

    def flush(self) -> None:
        if self.fig is not None:
            self.pdf.savefig(self.fig)
            self.fig = None

    def line(self, text: str, style: str = "body", indent: float = 0.0, hanging: bool = False) -> None:
        size, weight, family, width = _STYLES[style]
        wrapped = textwrap.wrap(text, max(20, int(width - indent * 160)), break_long_words=True) or [""]
        step = size * 1.45 / (_PAGE[1] * 72)
        for i, piece in enumerate(wrapped):
            if self.fig is None or self.y - step < _BOTTOM:
                self._new_page()
            self.fig.text(
                _LEFT + indent + (0.02 if i and hanging else 0.0),
                self.y,
                piece,
                fontsize=size,
                weight=weight,
                family=family,
                va="top",
                parse_math=False,
            )
            self.y -= step

    def gap(self, points: float = 5.0) -> None:
        self.y -= points / (_PAGE[1] * 72)

    def figure(self, fig: Any) -> None:
        self.flush()
        self.pdf.savefig(fig)
        self.y = _TOP


def _mono_table(headers: list[str], rows: list[list[str]], width: int = 120) -> list[str]:
    cols = list(zip(headers, *rows, strict=False)) if rows else [(h,) for h in headers]
    widths = [max(len(str(c)) for c in col) for col in cols]
    cap = max(8, (width - 2 * len(widths)) // max(1, len(widths)))
    while sum(widths) + 2 * len(widths) > width and max(widths) > cap:
        i = widths.index(max(widths))
        widths[i] = max(cap, widths[i] - 4)

    def fmt(cells: list[str]) -> str:
        out = []
        for c, w in zip(cells, widths, strict=False):
            c = str(c)
            out.append((c if len(c) <= w else c[: w - 1] + "…").ljust(w))
        return "  ".join(out).rstrip()

    return [fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]


def _pdf_section(w: _PdfWriter, letter: str, sec: Section, report: Mapping[str, Any]) -> None:
    w.gap(8)
    w.line(f"{letter}. {sec.title}", "h2")
    w.gap(3)
    for block in sec.blocks:
        if isinstance(block, Paragraph):
            w.line(block.text, block.style)
        elif isinstance(block, KeyValues):
            width = max((len(k) for k, _ in block.rows), default=0)
            for k, v in block.rows:
                pieces = textwrap.wrap(v, _STYLES["mono"][3] - width - 2, break_long_words=True) or [""]
                w.line(f"{k.ljust(width)}  {pieces[0]}", "mono")
                for piece in pieces[1:]:
                    w.line(" " * (width + 2) + piece, "mono")
        elif isinstance(block, Table):
            for row in _mono_table(block.headers, block.rows):
                w.line(row, "mono")
            if block.note:
                w.line(block.note, "note")
        elif isinstance(block, Steps):
            for i, step in enumerate(block.items, start=1):
                w.line(f"{i}. {step}", "body", indent=0.01, hanging=True)
        elif isinstance(block, Commands):
            for c in block.lines:
                w.line(c, "mono", indent=0.02, hanging=True)
        elif isinstance(block, Blob):
            w.line(
                f"{block.label}: in the HTML export and the envelope file ({len(block.text):,} characters).",
                "note",
            )
        elif isinstance(block, FigureBlock):
            w.line(block.caption, "body")
            w.figure(null_figure(report))
        w.gap(3)


def export_pdf(
    envelope: Mapping | str | bytes, path: str | Path, *, verification: VerificationResult | None = None
) -> Path:
    """Write a PDF with the same sections as the HTML export; the figure is a page of its own."""
    from matplotlib.backends.backend_pdf import PdfPages  # deferred: matplotlib is heavy

    target = _target(path)
    report, secs = sections(envelope, verification=verification)
    meta = {"Title": f"tracemark evidence report {report.get('report_id', '')}", "Creator": "tracemark"}
    with PdfPages(target, metadata=meta) as pdf:
        w = _PdfWriter(pdf)
        w.line(f"tracemark evidence report {report.get('report_id') or '(no id)'}", "title")
        for n, sec in enumerate(secs):
            _pdf_section(w, chr(ord("A") + n), sec, report)
        w.flush()
    return target
