"""What a calibration measured (:class:`CalibrationResult`): JSON, rich tables and the PNG plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracemark.forensics.calibrate.params import CalibrationParams
from tracemark.forensics.calibrate.summary import CORRECTIONS, NullFamily, RateCheck, rule_text

FAMILY_COLOURS = {"tiny": "#1f4e79", "student": "#e67e22", "model": "#27ae60", "embedded": "#8e44ad"}


@dataclass
class CalibrationResult:
    """Everything :func:`~tracemark.forensics.calibrate.run_calibration` measured; ``status`` is ``PASS``,
    ``FAIL`` or ``INCONCLUSIVE`` under :func:`~tracemark.forensics.calibrate.summary.rule_text`."""

    params: CalibrationParams
    models: list[dict]
    tests: list[Any]
    families: list[NullFamily]
    overall: NullFamily
    family_wise: dict[str, RateCheck | None]
    salient: dict
    positive: dict
    status: str
    reasons: list[str]
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    @property
    def n_runs(self) -> int:
        return self.overall.runs

    @property
    def alpha(self) -> float:
        return self.params.alpha

    @property
    def rule(self) -> str:
        return rule_text(self.params.alpha, self.params.conf)

    def as_dict(self, *, accounts: bool = True) -> dict:
        """JSON-ready; ``accounts`` adds every tested account's ranks and p-value (no trigger, no target)."""
        p = self.params
        out = {
            "status": self.status,
            "passed": self.passed,
            "rule": self.rule,
            "reasons": list(self.reasons),
            "alpha": p.alpha,
            "conf": p.conf,
            "scheme": p.scheme.as_dict(),
            "parameters": {
                "runs": p.runs,
                "tiny_models": p.tiny_models,
                "students": p.students,
                "student": vars(p.student),
                "models": list(p.models),
                "embedded": p.embedded,
                "embedded_runs": p.embedded_runs,
                "salient_accounts": p.salient_accounts,
                "family_size": p.family_size,
                "seed": p.seed,
                "workers": p.workers,
            },
            "models": self.models,
            "overall": self.overall.as_dict(),
            "families": [f.as_dict() for f in self.families],
            "family_wise": {
                label: ({**c.as_dict(), "status": "reported (not gated)"} if c else None)
                for (method, label) in CORRECTIONS
                for c in [self.family_wise.get(method)]
            },
            "family_wise_note": (
                f"families of {p.family_size} fresh accounts per null model; Holm controls the family-wise "
                "error rate, BH the false discovery rate (under this complete null both are P(any rejection))"
            ),
            "salient_target_accounts": self.salient,
            "positive_control": self.positive,
            "seconds": round(self.seconds, 1),
        }
        if accounts:
            out["accounts"] = [t.as_dict() for t in self.tests]
        return out

    # --- tables ---------------------------------------------------------------------------------------
    def tables(self) -> list[Any]:
        """Rich renderables: one table per null family and overall, family-wise, salient-target, verdict."""
        from rich.table import Table
        from rich.text import Text

        out: list[Any] = []
        for fam in [*self.families, self.overall]:
            t = Table(
                title=f"{fam.name}: {fam.runs} random-key null runs on {len(fam.models)} model(s); "
                f"{fam.censored}/{fam.pairs} pairs censored (p = 1)",
                title_justify="left",
            )
            _rate_columns(t, "alpha")
            for level, c in fam.checks.items():
                gated = level == self.alpha
                _rate_row(t, f"{level:g}" + (" *" if gated else ""), c, gated=gated)
            if fam.ks:
                t.add_row("KS (one-sided)", f"D+ = {fam.ks['statistic']:.4f}", f"p = {fam.ks['p_value']:.3g}")
            out.append(t)
        t = Table(
            title=f"family-wise: families of {self.params.family_size} fresh accounts per null model, any "
            f"rejection at alpha = {self.alpha:g} (under this complete null, FWER = FDR = P(any rejection))",
            title_justify="left",
        )
        _rate_columns(t, "correction")
        for method, label in CORRECTIONS:
            c = self.family_wise.get(method)
            if c is not None:
                _rate_row(t, label, c, gated=False)
        out.append(t)
        out.append(self._salient_table())
        pos = self.positive
        if pos["accounts"]:
            out.append(
                Text(
                    f"positive control: {pos['rejected']}/{pos['accounts']} accounts delivered to the "
                    f"students rejected at alpha = {self.alpha:g} (log10 p: {pos['log10_p']})"
                )
            )
        out.append(Text(f"rule: {self.rule}", style="dim"))
        style = "bold green" if self.passed else "bold red"
        reasons = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        out.append(Text(f"verdict: {self.status}{reasons}", style=style))
        return out

    def _salient_table(self) -> Any:
        from rich.table import Table

        s = self.salient
        drawn = s["v1_keys_drawn"]
        share = s["v1_keys_with_salient_target"] / drawn if drawn else float("nan")
        sal_k = sum(k for k, _ in s["favourite_overall_is_salient"].values())
        sal_n = sum(n for _, n in s["favourite_overall_is_salient"].values())
        t = Table(
            title="salient-target accounts (built, not drawn: reported, not pooled). v2: targets a null "
            "model favours among eligible candidates; v1: its favourites overall; v1 random keys: accounts "
            f"with a salient target ({s['v1_keys_with_salient_target']}/{drawn} = {share:.1%} of v1 keys; "
            f"v2 never draws them). {s['triggers_with_eligible_favourite']}/{s['triggers_searched']} "
            f"triggers had a sharp eligible favourite; the favourite overall was salient in {sal_k}/{sal_n}.",
            title_justify="left",
        )
        _rate_columns(t, "accounts tested on")
        t.add_column("median log10 p", justify="right")
        rows = [(f"{v}: {w}", c) for v in ("v2", "v1") for w, c in s[v].items() if w != "accounts"]
        rows += [(f"v1 random keys: {w}", c) for w, c in s["v1-salient"].items() if w != "accounts"]
        for label, c in rows:
            if c is None:
                continue
            t.add_row(
                label,
                f"{c['false_alarms']}/{c['runs']}",
                f"{c['rate']:.4f} [{c['ci'][0]:.4f}, {c['ci'][1]:.4f}]",
                f"{c['upper_one_sided']:.4f}",
                f"{c['limit']:g}",
                "reported",
                f"{c['median_log10_p']:.2f}",
            )
        return t

    # --- plot -----------------------------------------------------------------------------------------
    def plot(self, path: str | Path) -> Path:
        """PNG: QQ plot of the random-key per-account p-values on log axes (one series per family) and the
        false-alarm rate against the level with its Clopper-Pearson intervals."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        path = Path(path)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
        floor = 1.0
        for fam in self.families:
            ps = np.sort(np.asarray(fam.pvalues, dtype=float))
            q = (np.arange(1, ps.size + 1) - 0.5) / ps.size
            shown = np.maximum(ps, 1e-300)
            floor = min(floor, float(q[0]), float(shown[0]))
            ax1.loglog(
                q, shown, ".", ms=3, color=FAMILY_COLOURS.get(fam.name, "k"), label=f"{fam.name} ({ps.size})"
            )
        ax1.plot([floor, 1], [floor, 1], color="#c0392b", lw=1, label="uniform")
        ax1.plot([floor, 0.5], [2 * floor, 1], color="#c0392b", lw=1, ls=":", label="2 x uniform")
        ax1.set_xlabel("uniform quantile")
        ax1.set_ylabel("per-account p-value (rank product, exact)")
        ax1.set_title("QQ, log axes: points above the line are conservative")
        ax1.legend(fontsize=8)
        levels = sorted(self.overall.checks)
        rates = [self.overall.checks[a].rate for a in levels]
        lo = [self.overall.checks[a].rate - self.overall.checks[a].ci[0] for a in levels]
        hi = [self.overall.checks[a].ci[1] - self.overall.checks[a].rate for a in levels]
        ax2.errorbar(
            levels,
            np.maximum(rates, 1e-5),
            yerr=[lo, hi],
            fmt="o",
            color="#1f4e79",
            capsize=3,
            label=f"false-alarm rate, {self.params.conf:.0%} CP",
        )
        grid = np.array([levels[0] / 2, levels[-1] * 2])
        ax2.loglog(grid, grid, color="#c0392b", lw=1, label="alpha")
        ax2.loglog(grid, 2 * grid, color="#c0392b", lw=1, ls=":", label="2 x alpha (PASS limit)")
        ax2.set_xlabel("alpha")
        ax2.set_ylabel("false-alarm rate")
        ax2.set_title(f"{self.n_runs} null runs: {self.status}")
        ax2.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _rate_columns(t: Any, first: str) -> None:
    t.add_column(first)
    t.add_column("false alarms", justify="right")
    t.add_column("rate [95% CI]", justify="right")
    t.add_column("one-sided upper", justify="right")
    t.add_column("limit 2a", justify="right")
    t.add_column("status", justify="right")


def _rate_row(t: Any, label: str, c: RateCheck, *, gated: bool = True) -> None:
    status = c.status if gated else "reported"
    t.add_row(
        label,
        f"{c.k}/{c.n}",
        f"{c.rate:.4f} [{c.ci[0]:.4f}, {c.ci[1]:.4f}]",
        f"{c.upper:.4f}",
        f"{c.limit:g}",
        status,
        style="bold red" if status == "FAIL" else None,
    )
