"""The power of the evidence on a demo-scale student: white-box, black-box (every account; or the budget spent
on the suspected account, the correction still over every account), sequential, a control, and the same
student with 1,000 accounts in the family (``tracemark bench forensics``).

It reads a finished demo folder (``tracemark demo``: ledger with the transparency log, master key, the
``distilled`` and ``control`` students) and runs the investigations a compliance team would, in a copy of
the ledger (the demo's own log is left as it was). Every run is pre-registered like any investigation, so
later runs list the earlier ones as prior registrations for the same suspect.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tracemark.forensics.adapters import parse_suspect
from tracemark.forensics.investigate import InvestigationParams, resolve_family, run_investigation
from tracemark.forensics.issuer import SignatureIssuer
from tracemark.forensics.keys import MasterSecret
from tracemark.forensics.ledger.db import make_engine
from tracemark.foundation.errors import NotFound

DISTILLER = "distiller"


@dataclass
class PowerRow:
    """One investigation's outcome, as the bench table shows it."""

    case: str
    student: str
    mode: str
    family: int
    verdict: str
    attributed: str | None
    ranks: list[int]
    ns: list[int]
    p_value: float
    adjusted_p_value: float
    queries: int
    prior_registrations: int
    seconds: float
    detail: str = ""


@dataclass
class PowerResult:
    workdir: str
    rows: list[PowerRow] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"workdir": self.workdir, "rows": [asdict(r) for r in self.rows]}


def _row(case: str, student: str, out: Any, family: int, seconds: float) -> PowerRow:
    distiller = next((a for a in out.accounts if a.account == DISTILLER), None)
    return PowerRow(
        case=case,
        student=student,
        mode=out.mode,
        family=family,
        verdict=out.verdict,
        attributed=out.attributed_account,
        ranks=[p.rank for p in distiller.pair_results] if distiller else [],
        ns=[p.n_candidates for p in distiller.pair_results] if distiller else [],
        p_value=distiller.p_value if distiller else 1.0,
        adjusted_p_value=distiller.adjusted_p_value if distiller else 1.0,
        queries=out.queries,
        prior_registrations=len(out.report["registration"]["prior"]),
        seconds=seconds,
        detail=out.detail,
    )


def grow_family(engine: Any, master: Any, *, to: int) -> int:
    """Add accounts with delivered pairs (under the distiller's logged scheme) until the family has ``to``."""
    family = resolve_family(engine, master)
    scheme = next(iter(family.members[DISTILLER].schemes.values()))
    issuer = SignatureIssuer(master=master, engine=engine, scheme=scheme)
    i = 0
    while family.size + i < to:
        name = f"customer-{i:05d}"
        for pair in issuer.pairs_for(name):
            trace = f"bulk-{name}-{pair.index}"
            issuer.record_issue(account=name, trace_id=trace, pair=pair, rewriter="bench")
        i += 1
    return resolve_family(engine, master).size


def measure_power(
    demo_dir: Path, *, work: Path, big_family: int = 1000, budget: int = 200, progress: Any = None
) -> PowerResult:
    """Run the five investigations (see the module doc) on the demo in ``demo_dir``; scratch in ``work``."""
    students = {name: demo_dir / "students" / name for name in ("distilled", "control")}
    for path in [demo_dir / "ledger.db", demo_dir / "master.key", *students.values()]:
        if not path.exists():
            raise NotFound(f"{path} not found: run `tracemark demo` first (or pass its --out folder)")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copy(demo_dir / "ledger.db", work / "ledger.db")
    master = MasterSecret.load(path=demo_dir / "master.key", create=False)
    engine = make_engine(f"sqlite:///{work / 'ledger.db'}")
    result = PowerResult(str(demo_dir))
    family = resolve_family(engine, master).size
    cases = [
        ("white-box", "distilled", InvestigationParams(mode="white-box")),
        (
            f"black-box, {budget} completions, every account (greedy)",
            "distilled",
            InvestigationParams(mode="black-box", query_budget=budget),
        ),
        (  # a team with a suspect account spends the budget on it; the family (correction) is unchanged
            f"black-box, {budget} completions on the suspected account (T = 0.7)",
            "distilled",
            InvestigationParams(mode="black-box", query_budget=budget, accounts=[DISTILLER], temperature=0.7),
        ),
        ("sequential (white-box)", "distilled", InvestigationParams(mode="white-box", sequential=True)),
        ("control (white-box)", "control", InvestigationParams(mode="white-box")),
    ]
    try:
        for case, student, params in cases:
            if progress:
                progress(case)
            t0 = time.perf_counter()
            out = run_investigation(
                suspect=parse_suspect(f"hf:{students[student]}"), params=params, engine=engine, master=master
            )
            result.rows.append(_row(case, student, out, family, time.perf_counter() - t0))
        if big_family > family:
            if progress:
                progress(f"{big_family}-account family")
            original = sorted(resolve_family(engine, master).members)
            size = grow_family(engine, master, to=big_family)
            t0 = time.perf_counter()
            out = run_investigation(  # the demo's accounts are scored, the added ones enter with p = 1
                suspect=parse_suspect(f"hf:{students['distilled']}"),
                params=InvestigationParams(mode="white-box", accounts=original),
                engine=engine,
                master=master,
            )
            result.rows.append(
                _row(f"white-box, {size} accounts", "distilled", out, size, time.perf_counter() - t0)
            )
    finally:
        engine.dispose()
    return result


def markdown(result: PowerResult) -> str:
    """The bench table (Markdown)."""
    lines = [
        "| case | student | family | verdict | attributed | distiller ranks (of N) | p | adjusted p | "
        "suspect calls | prior registrations | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        ranks = ", ".join(f"{k} ({n:,})" for k, n in zip(r.ranks, r.ns, strict=True)) or "-"
        lines.append(
            f"| {r.case} | {r.student} | {r.family} | {r.verdict} | {r.attributed or '-'} | {ranks} | "
            f"{r.p_value:.3g} | {r.adjusted_p_value:.3g} | {r.queries} | {r.prior_registrations} | "
            f"{r.seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"
