"""Statistics of the distillation benchmark's table: accuracies over seeds with intervals, gain ratios,
paired tests per problem, and Holm's correction over the table.

Every student is scored on the same held-out problems, so outcomes are a ``seeds × problems`` 0/1 matrix per
trace set (the untrained student is deterministic: one row, reused for every seed).

* **Accuracy**: the mean over seeds and problems. Its 95% interval is a two-level bootstrap: problems are
  resampled (the same draw for every row, so comparisons stay paired), then seeds are resampled within the
  draw. With 3 seeds the seed level is coarse but it widens the interval by the seed-to-seed spread, which
  a problems-only bootstrap would hide.
* **Gain** = accuracy − the untrained student's; **gain ratio** = gain / gain of ``clean`` with a bootstrap
  interval from the same draws (seeds paired: seed ``s`` of a protected set against seed ``s`` of ``clean``,
  which share the training problems and the student's initialisation).
* **Paired test**: per problem, the seed-mean outcome of the row minus that of the reference; an exact
  sign-flip permutation test (Monte Carlo with a fixed generator, add-one p-value, two-sided) of the mean
  difference. Problems are the independent units; seeds are averaged within a problem.
* **Holm**: all the table's tests together (family-wise error at ``alpha``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tracemark.foundation.errors import InvalidInput

__all__ = [
    "PairedTest",
    "RowStats",
    "bootstrap_draws",
    "holm",
    "paired_permutation_test",
    "row_stats",
    "table_stats",
]


@dataclass(frozen=True)
class PairedTest:
    """A paired test of one row against a reference row, per problem."""

    reference: str
    difference: float  # mean accuracy difference (row − reference), in [−1, 1]
    p_value: float
    p_holm: float | None = None
    significant: bool | None = None
    wins: int = 0  # problems where the row's seed-mean outcome is higher
    losses: int = 0


@dataclass
class RowStats:
    """Summary of one trace set's students."""

    name: str
    seeds: int
    problems: int
    accuracy: float
    ci95: tuple[float, float]
    per_seed: list[float]
    gain: float | None = None
    gain_ci95: tuple[float, float] | None = None
    gain_ratio: float | None = None
    gain_ratio_ci95: tuple[float, float] | None = None
    tests: list[PairedTest] = field(default_factory=list)


def _matrix(outcomes: Sequence[Sequence[bool]] | np.ndarray) -> np.ndarray:
    m = np.asarray(outcomes, dtype=float)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[1] == 0 or m.shape[0] == 0:
        raise InvalidInput("outcomes must be a non-empty seeds × problems matrix")
    return m


def bootstrap_draws(n_problems: int, n_seeds: int, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(problem indices [draws, n_problems], seed indices [draws, n_seeds])`` for the two-level bootstrap;
    one set of draws is shared by every row of a table so that differences and ratios stay paired."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_problems, (draws, n_problems)), rng.integers(0, n_seeds, (draws, n_seeds))


def _boot_accuracy(m: np.ndarray, problems: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Bootstrap accuracies of matrix ``m`` (seeds × problems); a one-row matrix ignores the seed draw."""
    per_seed = m[:, problems]  # seeds × draws × problems
    per_seed = per_seed.mean(axis=2).T  # draws × seeds
    if m.shape[0] == 1:
        return per_seed[:, 0]
    chosen = np.take_along_axis(per_seed, seeds % m.shape[0], axis=1)
    return chosen.mean(axis=1)


def _interval(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (float("nan"), float("nan"))
    low, high = np.quantile(finite, [0.025, 0.975])
    return (float(low), float(high))


def paired_permutation_test(
    row: Sequence[Sequence[bool]] | np.ndarray,
    reference: Sequence[Sequence[bool]] | np.ndarray,
    *,
    permutations: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, int, int]:
    """Two-sided sign-flip permutation test of the per-problem seed-mean difference ``row − reference``.

    Returns ``(mean difference, p-value, wins, losses)``. The p-value is exact when ``2**k`` (``k`` problems
    with a non-zero difference) is at most ``permutations``, else Monte Carlo with the add-one estimate."""
    a, b = _matrix(row), _matrix(reference)
    if a.shape[1] != b.shape[1]:
        raise InvalidInput("paired rows need the same problems")
    d = a.mean(axis=0) - b.mean(axis=0)
    nonzero = d[d != 0]
    observed = abs(float(d.sum()))
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    if nonzero.size == 0:
        return 0.0, 1.0, wins, losses
    k = nonzero.size
    if 2**k <= permutations:
        signs = ((np.arange(2**k)[:, None] >> np.arange(k)) & 1) * 2 - 1
        stats = np.abs(signs @ nonzero)
        p = float(np.mean(stats >= observed - 1e-12))
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(permutations, k))
        stats = np.abs(signs @ nonzero)
        p = float((1 + np.sum(stats >= observed - 1e-12)) / (permutations + 1))
    return float(d.mean()), min(1.0, p), wins, losses


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[list[float], list[bool]]:
    """Holm-adjusted p-values and rejections (family-wise error ``alpha``), in input order."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist(), (adjusted <= alpha).tolist()


def row_stats(name: str, outcomes: np.ndarray, problems: np.ndarray, seeds: np.ndarray) -> RowStats:
    """Accuracy, per-seed accuracies and the bootstrap interval of one row."""
    m = _matrix(outcomes)
    boots = _boot_accuracy(m, problems, seeds)
    return RowStats(
        name=name,
        seeds=m.shape[0],
        problems=m.shape[1],
        accuracy=float(m.mean()),
        ci95=_interval(boots),
        per_seed=[float(x) for x in m.mean(axis=1)],
    )


def table_stats(
    rows: Mapping[str, np.ndarray | Sequence[Sequence[bool]]],
    *,
    base: str,
    clean: str,
    references: Mapping[str, Sequence[str]],
    alpha: float = 0.05,
    bootstrap: int = 2000,
    permutations: int = 10_000,
    seed: int = 0,
) -> dict[str, RowStats]:
    """Every row's :class:`RowStats` with gains against ``base``, gain ratios against ``clean`` and the
    paired tests ``references[name]`` asks for (e.g. ``{"restructure": ["clean", "base"]}``), Holm-corrected
    together."""
    mats = {k: _matrix(v) for k, v in rows.items()}
    if base not in mats or clean not in mats:
        raise InvalidInput(f"the table needs the rows {base!r} and {clean!r}")
    widths = {m.shape[1] for m in mats.values()}
    if len(widths) != 1:
        raise InvalidInput("every row must be scored on the same problems")
    n_problems = widths.pop()
    n_seeds = max(m.shape[0] for m in mats.values())
    problems, seeds = bootstrap_draws(n_problems, n_seeds, bootstrap, seed)
    boots = {k: _boot_accuracy(m, problems, seeds) for k, m in mats.items()}
    out = {k: row_stats(k, m, problems, seeds) for k, m in mats.items()}
    clean_gain = boots[clean] - boots[base]
    for k, stats in out.items():
        if k == base:
            continue
        gain = boots[k] - boots[base]
        stats.gain = stats.accuracy - out[base].accuracy
        stats.gain_ci95 = _interval(gain)
        point_clean = out[clean].accuracy - out[base].accuracy
        if k != clean and point_clean != 0:
            stats.gain_ratio = stats.gain / point_clean
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(clean_gain != 0, gain / np.where(clean_gain == 0, 1, clean_gain), np.nan)
            stats.gain_ratio_ci95 = _interval(ratio)
    flat: list[tuple[str, int]] = []
    for k, refs in references.items():
        for ref in refs:
            if ref not in mats or k not in mats:
                continue
            diff, p, wins, losses = paired_permutation_test(
                mats[k], mats[ref], permutations=permutations, seed=seed
            )
            out[k].tests.append(PairedTest(ref, diff, p, wins=wins, losses=losses))
            flat.append((k, len(out[k].tests) - 1))
    if flat:
        adjusted, reject = holm([out[k].tests[i].p_value for k, i in flat], alpha)
        for (k, i), p_adj, rej in zip(flat, adjusted, reject, strict=True):
            t = out[k].tests[i]
            out[k].tests[i] = PairedTest(t.reference, t.difference, t.p_value, p_adj, rej, t.wins, t.losses)
    return out
