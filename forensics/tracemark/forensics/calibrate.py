"""Calibration: the full detection test on clean models and decoy accounts (H0 true by construction).

Each run is one decoy account (a random key that never signed anything) tested against one clean model
(tiny random models at different seeds and sizes, optionally the embedded model, none trained on any
pair): its pairs are derived exactly as for a real account, each target is ranked among all candidates
(``p = rank/N``) and the pairs are combined with Fisher's method. Reported: the empirical false-alarm rate
at ``alpha`` (and at 0.01/0.05/0.1, where it is measurable) with Clopper-Pearson intervals, a KS test of
the per-account p-values, and an exact uniformity battery on the per-pair p-values -- over all ``N``
candidates and, from the same scores, among ``D + 1`` (default 10) decoys, where an off-by-one rank shifts
p by a tenth and cannot hide. Scores are cached per (model, trigger): one trie pass per trigger gives the
score of every candidate, so both rankings cost nothing extra.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracemark.forensics import stats
from tracemark.forensics.adapters import LocalModelSuspect, parse_suspect
from tracemark.forensics.scoring import DEFAULT_CONTEXTS, DEFAULT_PROBLEM, WhiteBoxScorer
from tracemark.forensics.signatures import CandidateSpace, derive_pairs
from tracemark.foundation.errors import InvalidInput
from tracemark.foundation.models.embedded import ensure_embedded_model

ProgressFn = Callable[[str, int, int, str], None]
TINY_SHAPES = ((32, 1), (64, 2), (96, 2), (128, 2))
EXTRA_LEVELS = (0.01, 0.05, 0.1)


class CalibrationError(InvalidInput):
    """Bad calibration parameters; ``field`` names the parameter."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class CalibrationParams:
    """What a calibration measures, validated at construction (:class:`CalibrationError`; a bad ``digits``
    is a :class:`~tracemark.forensics.signatures.SignatureError`).

    ``models``: model folders or ``hf:``/``gguf:`` specs; default ``n_models`` tiny random models (plus the
    embedded model with ``include_embedded``). ``decoy_accounts`` per model defaults to
    ``ceil(runs / models)``. ``decoy_check`` decoys give the off-by-one-sensitive uniformity check; ``level``
    is the significance of each uniformity check (loose on purpose: deterministic seeds make the result
    reproducible) and ``conf`` the confidence of the false-alarm intervals.
    """

    runs: int = 200
    models: Sequence[str | Path] | None = None
    n_models: int = 4
    include_embedded: bool = False
    decoy_accounts: int | None = None
    pairs_per_account: int = 2
    digits: int = 4
    alpha: float = 1e-3
    seed: int = 0
    contexts: Sequence[str] | None = None
    problem: str | None = None
    combine: str = "max"
    decoy_check: int = 9
    level: float = 1e-3
    conf: float = 0.95

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise CalibrationError(f"alpha must be in (0, 1), got {self.alpha}", field="alpha")
        if self.runs < 2:
            raise CalibrationError(f"runs must be >= 2, got {self.runs}", field="runs")
        if self.pairs_per_account < 1:
            raise CalibrationError("pairs_per_account must be >= 1", field="pairs_per_account")
        if not self.models and self.n_models < 1:
            raise CalibrationError("n_models must be >= 1", field="n_models")
        if self.decoy_accounts is not None and self.decoy_accounts < 1:
            raise CalibrationError("decoy_accounts must be >= 1 (or omitted)", field="decoy_accounts")
        if not 1 <= self.decoy_check < self.space.size:
            raise CalibrationError(f"decoy_check must be in 1..{self.space.size - 1}", field="decoy_check")
        contexts = tuple(self.contexts) if self.contexts else DEFAULT_CONTEXTS
        if any("{trigger}" not in c for c in contexts):
            raise CalibrationError("every context must contain '{trigger}'", field="contexts")
        object.__setattr__(self, "contexts", contexts)
        object.__setattr__(self, "problem", self.problem or DEFAULT_PROBLEM)

    @property
    def space(self) -> CandidateSpace:
        return CandidateSpace(self.digits)


@dataclass
class CalibrationRun:
    model: str
    account: str
    ranks: list[int]
    p_values: list[float]
    decoy_ranks: list[int]
    decoy_p_values: list[float]
    p_value: float
    log10_p: float


@dataclass
class CalibrationResult:
    """Everything measured by :func:`run_calibration`; ``passed`` is the overall verdict."""

    runs: list[CalibrationRun]
    alpha: float
    n_candidates: int
    decoy_candidates: int
    models: list[dict]
    false_alarms: int
    false_alarm_rate: float
    false_alarm_ci: tuple[float, float]
    levels: dict[float, dict]
    account_ks: stats.UniformityResult | None
    pair_uniformity: stats.UniformityReport | None
    decoy_uniformity: stats.UniformityReport | None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    conf: float = 0.95

    @property
    def n_runs(self) -> int:
        return len(self.runs)

    @property
    def calibrated(self) -> bool:
        """The false-alarm rate is compatible with ``<= alpha`` (its interval reaches down to alpha)."""
        return self.false_alarm_ci[0] <= self.alpha

    @property
    def passed(self) -> bool:
        checks = [self.account_ks, self.pair_uniformity, self.decoy_uniformity]
        return (
            not self.problems
            and self.calibrated
            and all(c is not None and c.uniform for c in checks)
            and all(v["ci"][0] <= level for level, v in self.levels.items())
        )

    def as_dict(self) -> dict:
        return {
            "runs": self.n_runs,
            "alpha": self.alpha,
            "n_candidates": self.n_candidates,
            "decoy_candidates": self.decoy_candidates,
            "models": self.models,
            "false_alarms": self.false_alarms,
            "false_alarm_rate": self.false_alarm_rate,
            "false_alarm_ci": list(self.false_alarm_ci),
            "conf": self.conf,
            "levels": {str(k): v for k, v in self.levels.items()},
            "account_ks": self.account_ks.as_dict() if self.account_ks else None,
            "pair_uniformity": self.pair_uniformity.as_dict() if self.pair_uniformity else None,
            "decoy_uniformity": self.decoy_uniformity.as_dict() if self.decoy_uniformity else None,
            "calibrated": self.calibrated,
            "passed": self.passed,
            "problems": list(self.problems),
            "seconds": round(self.seconds, 3),
        }

    def table(self) -> Any:
        """A rich Table of the results."""
        from rich.table import Table

        t = Table(
            title=f"tracemark calibration: {self.n_runs} null runs on {len(self.models)} clean model(s)"
        )
        t.add_column("check")
        t.add_column("result", justify="right")
        t.add_column("expected under H0", justify="right")
        lo, hi = self.false_alarm_ci
        t.add_row(
            f"false alarms at alpha={self.alpha:g}",
            f"{self.false_alarms}/{self.n_runs} = {self.false_alarm_rate:.4f} "
            f"[{lo:.4f}, {hi:.4f}] ({self.conf:.0%} CP)",
            f"<= {self.alpha:g}",
        )
        for level, v in self.levels.items():
            t.add_row(
                f"false alarms at {level:g}",
                f"{v['k']}/{v['n']} = {v['rate']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]",
                f"<= {level:g}",
            )
        if self.account_ks:
            t.add_row(
                "KS, per-account p-values",
                f"D={self.account_ks.statistic:.3f}, p={self.account_ks.p_value:.3g}",
                "p >= 0.001",
            )
        for name, u in (
            ("per-pair p, all N", self.pair_uniformity),
            ("per-pair p, D+1 decoys", self.decoy_uniformity),
        ):
            if u is not None:
                t.add_row(
                    f"uniformity: {name} (N={u.n_candidates})",
                    f"KS p={u.ks.p_value:.3g}, mean z={u.mean_z:+.2f}, ranks p={u.ranks.p_value:.3g}"
                    + (f"; {'; '.join(u.problems)}" if u.problems else ""),
                    "all p >= 0.001",
                )
        t.add_row("verdict", "PASS" if self.passed else "FAIL", "PASS")
        return t

    def plot(self, path: str | Path) -> Path:
        """PNG: histogram of per-account p-values and a QQ plot of (randomized) per-pair p-values."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        path = Path(path)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        acc = np.array([r.p_value for r in self.runs])
        ax1.hist(acc, bins=20, range=(0, 1), color="#1f4e79", alpha=0.8, edgecolor="white")
        ax1.axhline(len(acc) / 20, color="#c0392b", lw=1.5, ls="--", label="uniform (H0)")
        ax1.set_xlabel("per-account p-value (Fisher)")
        ax1.set_ylabel("runs")
        ax1.set_title(f"{len(acc)} null runs; alpha={self.alpha:g}: {self.false_alarms} false alarm(s)")
        ax1.legend()
        rng = np.random.default_rng(0)
        for values, n, label, color in (
            (
                [p for r in self.runs for p in r.p_values],
                self.n_candidates,
                f"all N={self.n_candidates}",
                "#1f4e79",
            ),
            (
                [p for r in self.runs for p in r.decoy_p_values],
                self.decoy_candidates,
                f"D+1={self.decoy_candidates}",
                "#e67e22",
            ),
        ):
            if not values:
                continue
            u = np.sort(stats.randomize_discrete(values, n, rng))
            q = (np.arange(1, u.size + 1) - 0.5) / u.size
            ax2.plot(q, u, ".", ms=3, color=color, label=f"per-pair p ({label})")
        ax2.plot([0, 1], [0, 1], color="#c0392b", lw=1)
        ax2.set_xlabel("uniform quantile")
        ax2.set_ylabel("observed (randomized within rank atoms)")
        ax2.set_title("QQ plot of per-pair p-values")
        ax2.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _decoy_key(seed: int, index: int) -> bytes:
    return hashlib.sha256(f"tracemark-calibration/1\x00{seed}\x00{index}".encode()).digest()


def _load_models(
    models: Sequence[str | Path] | None, n_models: int, include_embedded: bool, workdir: Path, seed: int
) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if models:
        for m in models:
            spec = str(m)
            if ":" not in spec.split("/")[0]:
                spec = f"hf:{spec}"
            suspect = parse_suspect(spec)
            if not getattr(suspect, "white_box", False):
                raise CalibrationError(f"calibration needs local (white-box) models, got {spec}")
            out.append((spec, suspect))
    else:
        from tracemark.foundation.models.tiny import build_tiny_model  # deferred: imports torch

        for i in range(n_models):
            hidden, layers = TINY_SHAPES[i % len(TINY_SHAPES)]
            folder = build_tiny_model(
                workdir / f"tiny-{i}", hidden_size=hidden, layers=layers, seed=seed * 1000 + i
            )
            out.append(
                (
                    f"tiny(h={hidden},l={layers},seed={seed * 1000 + i})",
                    LocalModelSuspect(f"hf:{folder}", folder),
                )
            )
    if include_embedded:
        folder = ensure_embedded_model()
        out.append(("embedded SmolLM2-135M-Instruct", LocalModelSuspect(f"hf:{folder}", folder)))
    return out


def run_calibration(
    params: CalibrationParams | None = None,
    *,
    workdir: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> CalibrationResult:
    """Run the full detection test ``params.runs`` times under H0 (see module doc); ``params`` default
    :class:`CalibrationParams()`. Models are built or loaded under ``workdir`` (default: a temporary
    folder)."""
    params = params if params is not None else CalibrationParams()
    space = params.space
    seed = params.seed
    started = time.perf_counter()
    own_dir = None
    if workdir is None:
        own_dir = tempfile.TemporaryDirectory(prefix="tracemark-calibrate-")
        workdir = own_dir.name
    try:
        loaded = _load_models(params.models, params.n_models, params.include_embedded, Path(workdir), seed)
        per_model = params.decoy_accounts or math.ceil(params.runs / len(loaded))
        total = per_model * len(loaded)
        results: list[CalibrationRun] = []
        model_info = []
        done = 0
        for m_index, (name, suspect) in enumerate(loaded):
            scorer = WhiteBoxScorer(
                suspect,
                space,
                contexts=params.contexts,
                problem=params.problem,
                combine=params.combine,
                log_queries=False,
            )
            t0 = time.perf_counter()
            for a in range(per_model):
                index = m_index * per_model + a
                account = f"calibration-decoy-{seed}-{index:05d}"
                pairs = derive_pairs(
                    _decoy_key(seed, index),
                    account=account,
                    key_version=1,
                    m=params.pairs_per_account,
                    space=space,
                )
                run_seed = f"calibration/{seed}"
                full = [scorer.score_pair(p, use_table=True) for p in pairs]
                dec = [
                    scorer.score_pair(p, beacon=run_seed, decoys=params.decoy_check, use_table=True)
                    for p in pairs
                ]
                ps = [r.p_value for r in full]
                valid = min(ps) > 0 and max(ps) <= 1  # anything else is a bug the summary reports
                fisher = stats.fisher_combine(log_pvalues=[math.log(p) for p in ps]) if valid else None
                results.append(
                    CalibrationRun(
                        model=name,
                        account=account,
                        ranks=[r.rank for r in full],
                        p_values=ps,
                        decoy_ranks=[r.rank for r in dec],
                        decoy_p_values=[r.p_value for r in dec],
                        p_value=fisher.p_value if fisher else 0.0,
                        log10_p=fisher.log10_p if fisher else -math.inf,
                    )
                )
                done += 1
                if progress is not None:
                    progress("calibrate", done, total, f"{name}: decoy account {a + 1}/{per_model}")
            model_info.append(
                {
                    "model": name,
                    "identity": suspect.identity(),
                    "decoy_accounts": per_model,
                    "seconds": round(time.perf_counter() - t0, 3),
                    "triggers_scored": len(scorer._tables),
                }
            )
            suspect.close()
        return _summarise(
            results,
            model_info,
            params.alpha,
            space.size,
            params.decoy_check + 1,
            params.level,
            params.conf,
            started,
        )
    finally:
        if own_dir is not None:
            own_dir.cleanup()


def _summarise(
    results: list[CalibrationRun],
    model_info: list[dict],
    alpha: float,
    n: int,
    n_decoy: int,
    level: float,
    conf: float,
    started: float,
) -> CalibrationResult:
    problems: list[str] = []
    account_p = [r.p_value for r in results]
    if any(p <= 0 or p > 1 for p in account_p):
        problems.append("some per-account p-values fell outside (0, 1]")
    k = sum(1 for p in account_p if p <= alpha)
    levels = {}
    for lv in EXTRA_LEVELS:
        if lv > alpha:
            kk = sum(1 for p in account_p if p <= lv)
            levels[lv] = {
                "k": kk,
                "n": len(results),
                "rate": kk / len(results),
                "ci": stats.clopper_pearson(kk, len(results), conf),
            }
    pair_p = [p for r in results for p in r.p_values]
    decoy_p = [p for r in results for p in r.decoy_p_values]
    account_ks = stats.ks_uniformity(account_p, level=level) if len(account_p) >= 2 else None
    pair_u = stats.discrete_uniformity(pair_p, n, level=level) if len(pair_p) >= 2 else None
    decoy_u = stats.discrete_uniformity(decoy_p, n_decoy, level=level, seed=1) if len(decoy_p) >= 2 else None
    return CalibrationResult(
        runs=results,
        alpha=alpha,
        n_candidates=n,
        decoy_candidates=n_decoy,
        models=model_info,
        false_alarms=k,
        false_alarm_rate=k / len(results),
        false_alarm_ci=stats.clopper_pearson(k, len(results), conf),
        levels=levels,
        account_ks=account_ks,
        pair_uniformity=pair_u,
        decoy_uniformity=decoy_u,
        problems=problems,
        seconds=time.perf_counter() - started,
        conf=conf,
    )
