"""Scoring null accounts against null models exactly as an investigation does, in this process or in a pool.

Every pair is scored by :func:`~tracemark.forensics.investigate.run.make_scorer` and
:func:`~tracemark.forensics.investigate.run.score_registered_pair` (the procedure investigations and
re-scores use, nothing else), an account's pairs are combined by
:func:`~tracemark.forensics.stats.combine_ranks`. One scorer per (job, scheme) keeps the scorer's own
per-model and per-trigger caches (layout check, prompt KV caches, small-space tables); query logging is off
(it changes no rank and would keep every prompt in memory).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracemark.forensics import stats
from tracemark.forensics.adapters import parse_suspect
from tracemark.forensics.calibrate.favourites import favourites
from tracemark.forensics.investigate.run import make_scorer, score_registered_pair
from tracemark.forensics.scheme import SignatureScheme
from tracemark.forensics.signatures import DERIVATION_VERSION, SignaturePair

KINDS = ("fresh", "delivered", "favourite-v2", "favourite-v1", "v1-salient")


def fresh_key(seed: int, purpose: str, index: int) -> bytes:
    """The key of calibration account ``index`` for ``purpose`` (``fresh``: tested, never delivered to any
    model; ``delivered``: in a student's traces; ``favourite``: triggers of salient-target accounts)."""
    return hashlib.sha256(f"tracemark-calibration/2\x00{purpose}\x00{seed}\x00{index}".encode()).digest()


def v1_scheme(scheme: SignatureScheme) -> SignatureScheme:
    """``scheme`` under the old derivation: targets from the whole space, ranks among all candidates."""
    return dataclasses.replace(scheme, derivation=DERIVATION_VERSION, salient="none")


@dataclass(frozen=True)
class ModelRef:
    """A null model: its family (``tiny``, ``student``, ``model``, ``embedded``), name and suspect spec."""

    family: str
    name: str
    spec: str


@dataclass(frozen=True)
class AccountTask:
    """One account to test: derived from ``key`` under the scheme, or given ``pairs`` (salient-target
    accounts); ``v1`` scores under :func:`v1_scheme`; ``source`` names the model whose favourites built it."""

    kind: str
    account: str
    key: bytes | None = field(default=None, repr=False)
    pairs: tuple[SignaturePair, ...] = ()
    v1: bool = False
    source: str = ""


@dataclass(frozen=True)
class Job:
    """Work for one null model: account tasks and triggers whose favourite candidates to find."""

    model: ModelRef
    scheme: dict
    tasks: tuple[AccountTask, ...] = ()
    favourite_triggers: tuple[str, ...] = ()
    beacon: str = ""


@dataclass
class AccountTest:
    """One account tested against one null model (no trigger, no target: only ranks)."""

    family: str
    model: str
    kind: str
    account: str
    source: str
    ranks: list[int]
    ns: list[int]
    censored: int
    methods: list[str]
    p_value: float
    log10_p: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class JobResult:
    model: ModelRef
    tests: list[AccountTest]
    favourites: dict[str, tuple[str | None, str | None]]
    seconds: float
    identity: dict


def run_job(job: Job) -> JobResult:
    """Score every task of ``job`` (and find its favourites) on its model; the worker entry point."""
    started = time.perf_counter()
    scheme = SignatureScheme.from_dict(job.scheme)
    suspect = parse_suspect(job.model.spec)
    scorers: dict[bool, Any] = {}

    def scorer_for(v1: bool) -> tuple[Any, SignatureScheme]:
        s = v1_scheme(scheme) if v1 else scheme
        if v1 not in scorers:
            scorers[v1] = make_scorer(suspect, s, mode="white-box")
            scorers[v1].log_queries = False
        return scorers[v1], s

    try:
        found = {t: favourites(scorer_for(False)[0], scheme, t) for t in job.favourite_triggers}
        tests = []
        for task in job.tasks:
            scorer, s = scorer_for(task.v1)
            pairs = task.pairs or tuple(s.derive(task.key, account=task.account, key_version=1))
            results = [score_registered_pair(scorer, s, p, beacon=job.beacon) for p in pairs]
            combined = stats.combine_ranks([r.rank for r in results], [r.n_candidates for r in results])
            tests.append(
                AccountTest(
                    family=job.model.family,
                    model=job.model.name,
                    kind=task.kind,
                    account=task.account,
                    source=task.source,
                    ranks=[r.rank for r in results],
                    ns=[r.n_candidates for r in results],
                    censored=sum(r.method == "trie-censored" for r in results),
                    methods=sorted({r.method for r in results}),
                    p_value=combined.p_value,
                    log10_p=combined.log10_p,
                )
            )
        identity = suspect.identity()
    finally:
        suspect.close()
    return JobResult(job.model, tests, found, time.perf_counter() - started, identity)


def split_tasks(job: Job, pieces: int) -> list[Job]:
    """``job`` cut into at most ``pieces`` jobs of consecutive tasks (favourites stay with the first)."""
    n = len(job.tasks)
    pieces = max(1, min(pieces, n))
    bounds = [round(i * n / pieces) for i in range(pieces + 1)]
    return [
        dataclasses.replace(
            job,
            tasks=job.tasks[bounds[i] : bounds[i + 1]],
            favourite_triggers=job.favourite_triggers * (i == 0),
        )
        for i in range(pieces)
    ]


def _init_worker() -> None:
    import torch  # deferred: heavy (workers only)
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per job on the caller's terminal


class Workers:
    """Runs calls in this process (``workers == 1``) or in a pool of spawned processes, one torch thread
    each. Use as a context manager."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._threads = 1
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> Workers:
        import torch  # deferred: heavy

        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)  # here too: the machine's cores belong to the workers and to others
        if self.workers > 1:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch  # deferred: heavy

        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(self._threads)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """``(index, fn(item))`` for every item, in completion order."""
        if self._pool is None:
            for i, item in enumerate(items):
                yield i, fn(item)
            return
        futures = {self._pool.submit(fn, item): i for i, item in enumerate(items)}
        for fut in concurrent.futures.as_completed(futures):
            yield futures[fut], fut.result()


def run_jobs(
    workers: Workers, jobs: Iterable[Job], progress: Callable[[int], None] | None = None
) -> list[JobResult]:
    """Every job's result (in job order); ``progress(accounts_done)`` after each."""
    jobs = list(jobs)
    out: list[JobResult | None] = [None] * len(jobs)
    for i, result in workers.map(run_job, jobs):
        out[i] = result
        if progress is not None:
            progress(len(result.tests))
    return [r for r in out if r is not None]
