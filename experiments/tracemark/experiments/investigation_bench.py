"""How long a white-box investigation takes as accounts grow: seconds per account-pair and the total.

``python -m tracemark.experiments.investigation_bench --accounts 1000 --pairs 2`` builds a fresh ledger
(SQLite in a temporary folder) and a fresh master secret, delivers ``--pairs`` signature pairs to each of
``--accounts`` accounts under the default scheme (6-digit targets, the three default contexts, search
budget 4096), and runs the real investigation (:func:`~tracemark.forensics.investigate.run_investigation`:
pre-registration, scoring, family-wide correction, signed report) against the embedded SmolLM2-135M as the
suspect, white-box, on the CPU. The embedded model never saw these pairs, so this is the innocent suspect:
the common case of an investigation over many accounts, where most pairs end censored (``p = 1``).

``--score K`` scores only the first ``K`` accounts (the family stays ``--accounts``) and extrapolates the
total linearly; the output says so. ``--reference K`` also times the reference (unbatched, full-level)
search on ``K`` of the same pairs, and checks that it gives the same ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tracemark.forensics.adapters import parse_suspect
from tracemark.forensics.investigate import InvestigationParams, run_investigation
from tracemark.forensics.investigate.family import resolve_family
from tracemark.forensics.investigate.run import make_scorer
from tracemark.forensics.issuer import SignatureIssuer
from tracemark.forensics.keys import MasterSecret
from tracemark.forensics.ledger.db import make_engine
from tracemark.forensics.scheme import SignatureScheme
from tracemark.foundation.models.embedded import ensure_embedded_model


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m tracemark.experiments.investigation_bench",
        description="Time a white-box investigation of the embedded model over many accounts.",
    )
    ap.add_argument("--accounts", type=int, default=1000, help="accounts with delivered pairs (the family)")
    ap.add_argument("--pairs", type=int, default=2, help="delivered pairs per account")
    ap.add_argument("--score", type=int, default=None, help="score only this many accounts; extrapolate")
    ap.add_argument("--reference", type=int, default=0, help="also time the reference search on K pairs")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--suspect", default=None, help="suspect spec (default: hf:<embedded SmolLM2>)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.accounts < 1 or not 1 <= args.pairs <= 16:
        ap.error("--accounts must be >= 1 and --pairs in 1..16")
    if args.score is not None and not 1 <= args.score <= args.accounts:
        ap.error("--score must be in 1..--accounts")
    if args.reference < 0 or args.threads < 1:
        ap.error("--reference must be >= 0 and --threads >= 1")
    return args


def _setup(folder: Path, accounts: int, pairs: int) -> tuple[Any, Any, list[str], float]:

    start = time.perf_counter()
    master = MasterSecret.load(path=folder / "master.key", create=True)
    engine = make_engine(f"sqlite:///{folder / 'ledger.db'}")
    issuer = SignatureIssuer(master=master, engine=engine, scheme=SignatureScheme(pairs_per_account=pairs))
    names = [f"acct-{i:05d}" for i in range(accounts)]
    for name in names:
        issuer.ensure_account(name)
        for p in issuer.pairs_for(name):
            issuer.record_issue(account=name, trace_id=f"t-{name}-{p.index}", pair=p, rewriter="watermark")
    return master, engine, names, time.perf_counter() - start


def _reference(suspect: Any, outcome: Any, engine: Any, master: Any, k: int) -> dict:
    """Re-score ``k`` of the investigation's pairs with the reference search; same ranks?"""

    family = resolve_family(engine, master)
    done = {(r.account, r.pair_index): r for a in outcome.accounts for r in a.pair_results}
    pairs = [p for m in family.members.values() for p in m.pairs if (p.account, p.index) in done][:k]
    if not pairs:
        return {"pairs": 0}
    scheme = family.members[pairs[0].account].scheme_of(pairs[0])
    scorer = make_scorer(suspect, scheme, mode="white-box")
    scorer.fast = False
    scorer.log_queries = False
    start = time.perf_counter()
    same = 0
    for p in pairs:
        r = scorer.score_pair(p)
        want = done[(p.account, p.index)]
        same += int((r.rank, r.p_value, r.method) == (want.rank, want.p_value, want.method))
    seconds = time.perf_counter() - start
    return {"pairs": len(pairs), "seconds_per_pair": seconds / len(pairs), "same_rank": same}


def run(args: argparse.Namespace) -> dict:
    """The measurement (see the module docstring); returns the figures."""
    import torch

    torch.set_num_threads(args.threads)
    spec = args.suspect
    if spec is None:
        spec = f"hf:{ensure_embedded_model()}"
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tm-invbench-") as tmp:
        master, engine, names, setup_s = _setup(Path(tmp), args.accounts, args.pairs)
        scored = names[: args.score] if args.score is not None else None
        suspect = parse_suspect(spec)
        suspect.tokenizer  # noqa: B018 - load the model before the clock starts
        start = time.perf_counter()
        outcome = run_investigation(
            suspect=suspect,
            engine=engine,
            master=master,
            params=InvestigationParams(accounts=scored, channel=False),
        )
        total_s = time.perf_counter() - start
        results = [r for a in outcome.accounts for r in a.pair_results]
        reference = _reference(suspect, outcome, engine, master, args.reference) if args.reference else None
        engine.dispose()
    n_scored = len(results)
    per_pair = total_s / max(1, n_scored)
    n_all = args.accounts * args.pairs
    out = {
        "suspect": spec,
        "accounts": args.accounts,
        "pairs_per_account": args.pairs,
        "accounts_scored": len(scored) if scored is not None else args.accounts,
        "pairs_scored": n_scored,
        "methods": dict(Counter(r.method for r in results)),
        "verdict": outcome.verdict,
        "setup_seconds": round(setup_s, 2),
        "investigation_seconds": round(total_s, 2),
        "seconds_per_account_pair": round(per_pair, 3),
        "total_seconds": round(per_pair * n_all if scored is not None else total_s, 1),
        "extrapolated": scored is not None,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    if reference is not None:
        out["reference"] = reference
    return out


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    try:
        figures = run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, no traceback
        text = str(exc).strip().splitlines()
        print(f"error: {type(exc).__name__}: {text[0] if text else ''}", file=sys.stderr)
        return 1
    how = "extrapolated from the scored accounts" if figures["extrapolated"] else "measured"
    print(f"suspect: {figures['suspect']}")
    print(
        f"accounts: {figures['accounts']} x {figures['pairs_per_account']} pairs "
        f"({figures['pairs_scored']} pairs scored; methods {figures['methods']}; "
        f"verdict {figures['verdict']})"
    )
    print(f"s/account-pair: {figures['seconds_per_account_pair']:.3f}")
    print(f"total: {figures['total_seconds']:.1f} s ({how}); setup {figures['setup_seconds']:.1f} s")
    if "reference" in figures:
        ref = figures["reference"]
        print(
            f"reference search: {ref.get('seconds_per_pair', 0):.2f} s/pair on {ref['pairs']} pairs, "
            f"same rank on {ref.get('same_rank', 0)}"
        )
    print(
        f"machine: {figures['cpus']} CPUs, {figures['threads']} torch thread(s), load average "
        f"{figures['load_average_before']} before, {figures['load_average_after']} after"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
