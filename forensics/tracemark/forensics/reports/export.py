"""Human-readable exports of an evidence report: self-contained HTML and PDF with the null-distribution plot.

The plot is taken from the report's ``statistics`` section, first match wins:

1. ``statistics.plot``: ``{"observed": x, "null": {"kind": "chi2", "df": k}}`` or
   ``{"observed": x, "null": {"kind": "samples", "values": [...]}}`` (optional ``"label"``);
2. ``statistics.null_samples`` (a list) with ``statistics.observed`` (or ``statistic``);
3. a Fisher combination: ``fisher_statistic`` / ``statistic`` / ``combined_statistic`` with ``df`` (or
   ``dof``, ``degrees_of_freedom``, else ``2 * n_pairs`` / ``2 * m`` / ``2 * len(pair_p_values)``);
   under H0 it is chi-square with 2m degrees of freedom;
4. ``pair_p_values`` alone: the Fisher statistic ``-2 sum log p`` is computed from them;
5. the same inside ``statistics.accounts`` (list of dicts with ``account``, or a dict by account name):
   the attributed account (``decision.attributed_account``) or else the smallest ``p_value``.

Missing or malformed fields never fail an export: the plot then says that no null distribution is available.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracemark.forensics.reports.core import decode_report, report_hash
from tracemark.forensics.reports.dsse import envelope_body
from tracemark.forensics.reports.verify import VerificationResult
from tracemark.foundation.errors import InvalidInput

_STAT_KEYS = ("fisher_statistic", "statistic", "combined_statistic", "observed", "observed_statistic")
_DF_KEYS = ("df", "dof", "degrees_of_freedom")


class ExportError(InvalidInput):
    """The export cannot be written (bad path, unreadable envelope)."""


@dataclass
class PlotData:
    observed: float
    kind: str  # "chi2" | "samples"
    df: float | None = None
    samples: list[float] | None = None
    label: str = ""
    p_value: float | None = None


def _num(value: Any) -> float | None:
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


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, Mapping) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _first(obj: Any, *paths: str) -> Any:
    for p in paths:
        v = _get(obj, p)
        if v is not None:
            return v
    return None


def _from_stats(stats: Mapping, label: str = "") -> PlotData | None:
    plot = stats.get("plot")
    if isinstance(plot, Mapping):
        obs = _num(plot.get("observed"))
        null = plot.get("null") if isinstance(plot.get("null"), Mapping) else {}
        if obs is not None and null.get("kind") == "chi2" and (_num(null.get("df")) or 0) > 0:
            return PlotData(obs, "chi2", df=_num(null.get("df")), label=str(plot.get("label") or label))
        values = null.get("values")
        if obs is not None and isinstance(values, list):
            samples = [v for v in (_num(x) for x in values) if v is not None and math.isfinite(v)]
            if samples:
                return PlotData(obs, "samples", samples=samples, label=str(plot.get("label") or label))
    observed = next((_num(stats[k]) for k in _STAT_KEYS if _num(stats.get(k)) is not None), None)
    p_value = _num(stats.get("p_value"))
    samples = stats.get("null_samples")
    if observed is not None and isinstance(samples, list):
        clean = [v for v in (_num(x) for x in samples) if v is not None and math.isfinite(v)]
        if clean:
            return PlotData(observed, "samples", samples=clean, label=label, p_value=p_value)
    pair_ps = stats.get("pair_p_values")
    pair_ps = [v for v in (_num(x) for x in pair_ps)] if isinstance(pair_ps, list) else None
    df = next((_num(stats[k]) for k in _DF_KEYS if _num(stats.get(k))), None)
    if df is None:
        m = _num(stats.get("n_pairs")) or _num(stats.get("m"))
        if m is None and pair_ps:
            m = float(len(pair_ps))
        df = 2 * m if m else None
    if observed is None and pair_ps and all(p is not None and 0 < p <= 1 for p in pair_ps):
        observed = -2.0 * sum(math.log(p) for p in pair_ps)
        df = 2.0 * len(pair_ps)
    if observed is not None and df:
        return PlotData(observed, "chi2", df=df, label=label, p_value=p_value)
    return None


def plot_data(report: Mapping[str, Any]) -> PlotData | None:
    """What to plot for ``report`` (see module doc), or ``None``."""
    stats = report.get("statistics")
    if not isinstance(stats, Mapping):
        return None
    found = _from_stats(stats)
    if found is not None:
        return found
    accounts = stats.get("accounts")
    if isinstance(accounts, Mapping):
        entries = [dict(v, account=k) for k, v in accounts.items() if isinstance(v, Mapping)]
    elif isinstance(accounts, list):
        entries = [a for a in accounts if isinstance(a, Mapping)]
    else:
        return None
    attributed = _first(report, "decision.attributed_account", "attributed_account")
    entries.sort(key=lambda a: (a.get("account") != attributed, _num(a.get("p_value")) or 1.0))
    for entry in entries:
        found = _from_stats(entry, label=f"account {entry.get('account', '?')}")
        if found is not None:
            return found
    return None


def null_plot_png(report: Mapping[str, Any], *, dpi: int = 110) -> bytes:
    """PNG of the null distribution with the observed statistic marked (Agg, no display needed)."""
    fig = _null_figure(report)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _null_figure(report: Mapping[str, Any]):
    import numpy as np
    from matplotlib.figure import Figure
    from scipy import stats as st

    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    data = plot_data(report)
    alpha = _num(_first(report, "decision.alpha", "alpha", "parameters.alpha", "params.alpha"))
    if data is None:
        ax.text(0.5, 0.5, "no null distribution data in this report", ha="center", va="center", fontsize=12)
        ax.set_axis_off()
        fig.tight_layout()
        return fig
    obs = data.observed
    if data.kind == "chi2":
        df = float(data.df)
        right = max(st.chi2.isf(1e-6, df), obs * 1.15 if math.isfinite(obs) else 0.0, 1.0)
        x = np.linspace(0, right, 800)
        dens = st.chi2.pdf(x, df)
        floor = max(dens[dens > 0].min(), 1e-300) if (dens > 0).any() else 1e-300
        dens = np.clip(dens, floor, None)
        ax.plot(x, dens, color="#1f4e79", lw=1.8, label=f"null: chi-square, {df:g} d.o.f.")
        p = (
            data.p_value
            if data.p_value is not None
            else float(st.chi2.sf(obs, df))
            if math.isfinite(obs)
            else 0.0
        )
        if math.isfinite(obs):
            tail = x >= obs
            ax.fill_between(
                x[tail], floor, dens[tail], color="#c0392b", alpha=0.3, label="tail beyond observed"
            )
        ax.set_yscale("log")
        ax.set_ylabel("density (log scale)")
        if alpha and 0 < alpha < 1:
            crit = st.chi2.isf(alpha, df)
            ax.axvline(
                crit, color="gray", ls="--", lw=1, label=f"critical value at alpha={alpha:g} (unadjusted)"
            )
    else:
        samples = np.asarray(data.samples, dtype=float)
        ax.hist(
            samples,
            bins=min(60, max(10, int(math.sqrt(samples.size)))),
            density=True,
            color="#1f4e79",
            alpha=0.6,
            label=f"null samples (n={samples.size})",
        )
        ge = int((samples >= obs).sum())
        p = data.p_value if data.p_value is not None else (1 + ge) / (1 + samples.size)
        ax.set_ylabel("density")
        right = max(float(samples.max()), obs if math.isfinite(obs) else float(samples.max()))
        ax.set_xlim(right=right * 1.05 if right > 0 else None)
    x_obs = obs if math.isfinite(obs) else ax.get_xlim()[1]
    ax.axvline(x_obs, color="#c0392b", lw=2, label=f"observed = {obs:.4g}  (p = {p:.3g})")
    label = data.label.replace("$", r"\$")
    ax.set_xlabel("test statistic" + (f" ({label})" if label else ""))
    ax.set_title("Null distribution and observed statistic")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


# --- text helpers -------------------------------------------------------------------------------
def format_value(value: Any) -> str:
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
        ("Verdict", _first(report, "decision.verdict", "verdict")),
        ("Attributed account", _first(report, "decision.attributed_account", "attributed_account")),
        ("p-value", _first(report, "decision.p_value", "statistics.p_value", "p_value")),
        ("alpha", _first(report, "decision.alpha", "alpha", "parameters.alpha", "params.alpha")),
        ("Correction", _first(report, "decision.correction", "parameters.correction", "params.correction")),
        ("Suspect", _first(report, "suspect_identity", "suspect")),
        ("Mode", _first(report, "parameters.mode", "params.mode", "mode")),
        ("Queries", _query_count(report)),
        ("Software", _first(report, "software.version")),
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
    accounts = _first(report, "statistics.accounts", "accounts", "decision.accounts")
    if isinstance(accounts, Mapping):
        return [dict(v, account=k) for k, v in accounts.items() if isinstance(v, Mapping)]
    if isinstance(accounts, list):
        return [dict(a) for a in accounts if isinstance(a, Mapping)]
    return []


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


# --- HTML -------------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:980px;margin:2em auto;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.92em}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}code,pre{font-family:Menlo,Consolas,monospace;font-size:.85em}
pre{background:#f8f8f8;padding:10px;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.badge{display:inline-block;padding:3px 10px;border-radius:4px;color:#fff;font-weight:bold}
.detected{background:#c0392b}.not_detected{background:#27ae60}.inconclusive{background:#7f8c8d}
.ok{color:#27ae60;font-weight:bold}.bad{color:#c0392b;font-weight:bold}
"""


def render_html(envelope: Mapping | str | bytes, *, verification: VerificationResult | None = None) -> str:
    """The HTML export as a string (see :func:`export_html`)."""
    env, report = _load(envelope)
    e = html.escape
    verdict = str(_first(report, "decision.verdict", "verdict") or "inconclusive")
    png = base64.b64encode(null_plot_png(report)).decode("ascii")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>tracemark evidence report {e(str(report.get('report_id', '')))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>tracemark evidence report <code>{e(str(report.get('report_id', '')))}</code></h1>",
        f"<p>Verdict: <span class='badge {e(verdict)}'>{e(verdict.replace('_', ' ').upper())}</span></p>",
    ]
    if verification is not None:
        cls = "ok" if verification.valid else "bad"
        parts.append(f"<p>Verification at export: <span class='{cls}'>{e(verification.summary())}</span></p>")
    else:
        parts.append(
            "<p>Verification: not performed at export; run <code>tracemark report verify</code>.</p>"
        )
    parts.append("<h2>Summary</h2><table>")
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary_rows(report, env)]
    parts.append("</table>")
    parts.append("<h2>Null distribution and observed statistic</h2>")
    parts.append(
        f"<img alt='null distribution plot' src='data:image/png;base64,{png}' style='max-width:100%'>"
    )
    accounts = account_rows(report)
    if accounts:
        cols = [
            c
            for c in ("account", "p_value", "adjusted_p_value", "rejected", "pairs")
            if any(c in a for a in accounts)
        ]
        parts.append(
            "<h2>Accounts tested</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>"
        )
        for a in accounts:
            parts.append("<tr>" + "".join(f"<td>{e(format_value(a.get(c)))}</td>" for c in cols) + "</tr>")
        parts.append("</table>")
    for section in ("decision", "statistics", "parameters", "params", "seeds", "commitments", "decoys"):
        if section in report:
            body = json.dumps(report[section], indent=2, sort_keys=True, ensure_ascii=False)
            parts.append(f"<h2>{e(section.capitalize())}</h2><pre>{e(body)}</pre>")
    parts.append("<h2>Full signed report</h2><details><summary>canonical JSON payload</summary>")
    parts.append(
        f"<pre>{e(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False))}</pre></details>"
    )
    parts.append(
        "<details><summary>DSSE envelope (verify with <code>tracemark report verify --envelope FILE "
        "--public-key KEY.pem</code> or any DSSE/Ed25519 verifier)</summary>"
        f"<pre>{e(json.dumps(env, indent=2, sort_keys=True))}</pre></details>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def export_html(
    envelope: Mapping | str | bytes, path: str | Path, *, verification: VerificationResult | None = None
) -> Path:
    """Write a self-contained HTML report (summary, embedded PNG plot, full signed payload and envelope)."""
    target = _target(path)
    target.write_text(render_html(envelope, verification=verification), encoding="utf-8")
    return target


# --- PDF --------------------------------------------------------------------------------------
_LINES_PER_PAGE = 64
_MAX_TEXT_PAGES = 20


def _text_pages(
    report: Mapping[str, Any], env: Mapping, verification: VerificationResult | None
) -> list[list[str]]:
    lines = ["tracemark evidence report", "=" * 25, ""]
    width = max(len(k) for k, _ in summary_rows(report, env) or [("", "")])
    for k, v in summary_rows(report, env):
        wrapped = textwrap.wrap(v, 92 - width) or [""]
        lines.append(f"{k.ljust(width)}  {wrapped[0]}")
        lines += [" " * (width + 2) + w for w in wrapped[1:]]
    lines.append("")
    if verification is not None:
        lines += textwrap.wrap("Verification at export: " + verification.summary(), 95) + [""]
    for section in ("decision", "statistics", "parameters", "params", "seeds", "commitments"):
        if section in report:
            lines += [f"{section.upper()}", "-" * len(section)]
            for raw in json.dumps(report[section], indent=2, sort_keys=True, ensure_ascii=False).splitlines():
                lines += textwrap.wrap(raw, 95, subsequent_indent="    ", drop_whitespace=False) or [""]
            lines.append("")
    pages = [lines[i : i + _LINES_PER_PAGE] for i in range(0, len(lines), _LINES_PER_PAGE)]
    if len(pages) > _MAX_TEXT_PAGES:
        pages = pages[:_MAX_TEXT_PAGES]
        pages[-1][-1] = "... (truncated; the full report is in the HTML export and the signed envelope)"
    return pages


def export_pdf(
    envelope: Mapping | str | bytes, path: str | Path, *, verification: VerificationResult | None = None
) -> Path:
    """Write a PDF: text page(s) with the summary and statistics, then the null-distribution plot."""
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    target = _target(path)
    env, report = _load(envelope)
    meta = {"Title": f"tracemark evidence report {report.get('report_id', '')}", "Creator": "tracemark"}
    with PdfPages(target, metadata=meta) as pdf:
        for lines in _text_pages(report, env, verification):
            fig = Figure(figsize=(8.27, 11.69))  # A4 portrait
            fig.text(
                0.06, 0.96, "\n".join(lines), family="monospace", fontsize=7.2, va="top", parse_math=False
            )
            pdf.savefig(fig)
        pdf.savefig(_null_figure(report))
    return target
