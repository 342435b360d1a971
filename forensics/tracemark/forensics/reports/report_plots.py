"""The null-distribution figure of an evidence report: the statistic the report actually used.

* New reports (``statistics.combination.method`` ``"exact"`` or ``"fisher-bound"``): the exact null CDF of
  the rank product (:func:`~tracemark.forensics.stats.rank_combination_null_curve`), Fisher's chi-square
  bound next to it, and the observed product of the account marked.
* Older reports: the chi-square density of Fisher's statistic, or null samples, found by :func:`plot_data`:

  1. ``statistics.plot``: ``{"observed": x, "null": {"kind": "chi2", "df": k}}`` or
     ``{"observed": x, "null": {"kind": "samples", "values": [...]}}`` (optional ``"label"``);
  2. ``statistics.null_samples`` (a list) with ``statistics.observed`` (or ``statistic``);
  3. a Fisher combination: ``fisher_statistic`` / ``statistic`` / ``combined_statistic`` with ``df`` (or
     ``dof``, ``degrees_of_freedom``, else ``2 * n_pairs`` / ``2 * m`` / ``2 * len(pair_p_values)``);
  4. ``pair_p_values`` alone: the Fisher statistic ``-2 sum log p`` is computed from them;
  5. the same inside ``statistics.accounts``: the attributed account or else the smallest ``p_value``.

Missing or malformed fields never fail an export: the figure then says that no null distribution is recorded.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tracemark.forensics import stats
from tracemark.forensics.reports.report_sections import as_int, first, fmt_p, num

_STAT_KEYS = ("fisher_statistic", "statistic", "combined_statistic", "observed", "observed_statistic")
_DF_KEYS = ("df", "dof", "degrees_of_freedom")
_MAX_PAIRS_PLOTTED = 2000
_MAX_N = 10**12


@dataclass
class PlotData:
    observed: float
    kind: str  # "chi2" | "samples"
    df: float | None = None
    samples: list[float] | None = None
    label: str = ""
    p_value: float | None = None


@dataclass
class RankProductPlot:
    """The exact rank-product null of one account with its observed ``sum ln(r_i / n_i)``."""

    ns: list[int]
    observed: float  # natural log of the product of r_i / n_i
    log10_p: float | None
    method: str
    account: str


def _from_stats(st: Mapping, label: str = "") -> PlotData | None:
    plot = st.get("plot")
    if isinstance(plot, Mapping):
        obs = num(plot.get("observed"))
        null = plot.get("null") if isinstance(plot.get("null"), Mapping) else {}
        if obs is not None and null.get("kind") == "chi2" and (num(null.get("df")) or 0) > 0:
            return PlotData(obs, "chi2", df=num(null.get("df")), label=str(plot.get("label") or label))
        values = null.get("values")
        if obs is not None and isinstance(values, list):
            samples = [v for v in (num(x) for x in values) if v is not None and math.isfinite(v)]
            if samples:
                return PlotData(obs, "samples", samples=samples, label=str(plot.get("label") or label))
    observed = next((num(st[k]) for k in _STAT_KEYS if num(st.get(k)) is not None), None)
    p_value = num(st.get("p_value"))
    samples = st.get("null_samples")
    if observed is not None and isinstance(samples, list):
        clean = [v for v in (num(x) for x in samples) if v is not None and math.isfinite(v)]
        if clean:
            return PlotData(observed, "samples", samples=clean, label=label, p_value=p_value)
    pair_ps = st.get("pair_p_values")
    pair_ps = [num(x) for x in pair_ps] if isinstance(pair_ps, list) else None
    df = next((num(st[k]) for k in _DF_KEYS if num(st.get(k))), None)
    if df is None:
        m = num(st.get("n_pairs")) or num(st.get("m"))
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
    """The chi-square or sampled null of an older report (see the module doc), or ``None``."""
    st = report.get("statistics")
    if not isinstance(st, Mapping):
        return None
    found = _from_stats(st)
    if found is not None:
        return found
    accounts = st.get("accounts")
    if isinstance(accounts, Mapping):
        entries = [dict(v, account=k) for k, v in accounts.items() if isinstance(v, Mapping)]
    elif isinstance(accounts, list):
        entries = [a for a in accounts if isinstance(a, Mapping)]
    else:
        return None
    attributed = first(report, "decision.attributed_account", "attributed_account")
    entries.sort(key=lambda a: (a.get("account") != attributed, num(a.get("p_value")) or 1.0))
    for entry in entries:
        found = _from_stats(entry, label=f"account {entry.get('account', '?')}")
        if found is not None:
            return found
    return None


def rank_product_data(report: Mapping[str, Any]) -> RankProductPlot | None:
    """``statistics.combination`` of a new report, validated, or ``None``."""
    comb = first(report, "statistics.combination")
    if not isinstance(comb, Mapping) or comb.get("method") not in stats.COMBINATION_METHODS:
        return None
    ns = comb.get("ns")
    observed = num(comb.get("observed"))
    if not isinstance(ns, list) or not 0 < len(ns) <= _MAX_PAIRS_PLOTTED or observed is None:
        return None
    ints = [as_int(n) for n in ns]
    if any(n is None or not 1 <= n <= _MAX_N for n in ints) or not math.isfinite(observed) or observed > 0:
        return None
    lg = num(comb.get("log10_p_value"))
    return RankProductPlot(
        ns=[int(n) for n in ints if n is not None],
        observed=observed,
        log10_p=lg if lg is not None and lg <= 0 else None,
        method=str(comb["method"]),
        account=str(comb.get("account") or ""),
    )


def null_caption(report: Mapping[str, Any]) -> str:
    """A sentence saying what the figure shows, for the section text."""
    rp = rank_product_data(report)
    if rp is not None:
        x = rp.observed / stats.LN10
        p = fmt_p(None, rp.log10_p)
        text = (
            "Under the hypothesis that the suspect never saw the account's signatures, each pair's rank is "
            "uniform among its N candidates. The solid curve is the exact probability that the product of "
            f"the {len(rp.ns)} rank ratios r/N is at or below x; the red mark is the observed product of "
            f"account {rp.account or '(not recorded)'} (log10 x = {x:.3f}), whose probability is p = {p}. "
            "The dashed curve is Fisher's chi-square approximation, which is always above the exact curve."
        )
        if rp.method == "fisher-bound":
            text += (
                " For this account the exact count was too expensive, so the report uses Fisher's value: an "
                "upper bound on the exact p-value, which can only understate the evidence."
            )
        return text
    data = plot_data(report)
    if data is None:
        return "Null distribution: not recorded in this report."
    if data.kind == "chi2":
        return (
            f"Fisher's statistic -2 Σ ln p is chi-square with {data.df:g} degrees of freedom under the "
            "hypothesis that the suspect never saw the signatures; the red line marks the observed value."
        )
    return "Null samples of the statistic with the observed value marked."


def null_plot_png(report: Mapping[str, Any], *, dpi: int = 110) -> bytes:
    """PNG of the null distribution with the observed statistic marked (Agg, no display needed)."""
    fig = null_figure(report)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _safe(text: str) -> str:
    return text.replace("$", r"\$")


def null_figure(report: Mapping[str, Any]) -> Any:
    """A matplotlib Figure of the statistic the report used (rank product, else the older chi-square)."""
    from matplotlib.figure import Figure  # deferred: matplotlib is heavy and only exports need it

    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.subplots()
    rp = rank_product_data(report)
    if rp is not None:
        _rank_product_axes(ax, rp)
    else:
        data = plot_data(report)
        if data is None:
            ax.text(0.5, 0.5, "no null distribution recorded in this report", ha="center", va="center")
            ax.set_axis_off()
        else:
            alpha = num(first(report, "decision.alpha", "alpha", "parameters.alpha", "params.alpha"))
            _legacy_axes(ax, data, alpha)
    fig.tight_layout()
    return fig


def _rank_product_axes(ax: Any, rp: RankProductPlot) -> None:
    import numpy as np

    curve = stats.rank_combination_null_curve(rp.ns, points=60)
    xs = [x for x, _ in curve]
    ax.plot(
        xs,
        [p for _, p in curve],
        color="#1f4e79",
        lw=1.8,
        marker=".",
        ms=4,
        label="exact null: P(product ≤ x)",
    )
    lo = min(xs[0] if xs else 0.0, rp.observed / stats.LN10)
    grid = np.linspace(lo, 0.0, 120)
    m = len(rp.ns)
    bound = [min(0.0, stats.chi2_logsf(-2.0 * x * stats.LN10, 2 * m) / stats.LN10) for x in grid]
    ax.plot(grid, bound, color="gray", ls="--", lw=1.2, label=f"Fisher chi-square({2 * m}) bound")
    obs_x = rp.observed / stats.LN10
    if rp.log10_p is not None:
        ax.plot(
            [obs_x],
            [rp.log10_p],
            "o",
            color="#c0392b",
            ms=8,
            label=f"observed: p = {fmt_p(None, rp.log10_p)}",
        )
    ax.axvline(obs_x, color="#c0392b", lw=1, alpha=0.5)
    ax.set_xlabel("log10 of the product of rank ratios r/N  (further left = stronger evidence)")
    ax.set_ylabel("log10 probability under H0")
    who = f", account {rp.account}" if rp.account else ""
    ax.set_title(_safe(f"Exact null distribution of the rank product ({m} pairs{who})"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def _legacy_axes(ax: Any, data: PlotData, alpha: float | None) -> None:
    import numpy as np

    sps = stats._scipy_stats()
    obs = data.observed
    if data.kind == "chi2":
        df = float(data.df or 2.0)
        right = max(sps.chi2.isf(1e-6, df), obs * 1.15 if math.isfinite(obs) else 0.0, 1.0)
        x = np.linspace(0, right, 800)
        dens = sps.chi2.pdf(x, df)
        floor = max(dens[dens > 0].min(), 1e-300) if (dens > 0).any() else 1e-300
        dens = np.clip(dens, floor, None)
        ax.plot(x, dens, color="#1f4e79", lw=1.8, label=f"null: chi-square, {df:g} d.o.f.")
        if data.p_value is not None:
            p = data.p_value
        else:
            p = float(sps.chi2.sf(obs, df)) if math.isfinite(obs) else 0.0
        if math.isfinite(obs):
            tail = x >= obs
            ax.fill_between(
                x[tail], floor, dens[tail], color="#c0392b", alpha=0.3, label="tail beyond observed"
            )
        ax.set_yscale("log")
        ax.set_ylabel("density (log scale)")
        if alpha and 0 < alpha < 1:
            ax.axvline(
                sps.chi2.isf(alpha, df),
                color="gray",
                ls="--",
                lw=1,
                label=f"critical value at alpha={alpha:g}",
            )
    else:
        samples = np.asarray(data.samples, dtype=float)
        bins = min(60, max(10, int(math.sqrt(samples.size))))
        ax.hist(
            samples,
            bins=bins,
            density=True,
            color="#1f4e79",
            alpha=0.6,
            label=f"null samples (n={samples.size})",
        )
        p = (
            data.p_value
            if data.p_value is not None
            else (1 + int((samples >= obs).sum())) / (1 + samples.size)
        )
        ax.set_ylabel("density")
        right = max(float(samples.max()), obs if math.isfinite(obs) else float(samples.max()))
        ax.set_xlim(right=right * 1.05 if right > 0 else None)
    x_obs = obs if math.isfinite(obs) else ax.get_xlim()[1]
    ax.axvline(x_obs, color="#c0392b", lw=2, label=f"observed = {obs:.4g}  (p = {p:.3g})")
    ax.set_xlabel(_safe("test statistic" + (f" ({data.label})" if data.label else "")))
    ax.set_title("Null distribution and observed statistic")
    ax.legend(fontsize=8, loc="upper right")
