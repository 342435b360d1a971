"""Serving benchmark: throughput at several concurrencies through real gRPC, rewriting overhead, and the
teacher's memory under each quantization."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from tracemark.server.teacher.base import TeacherBackend

PROBLEMS = [
    "Sara has 12 pencils. She gives 5 to Tom and buys 7 more. How many pencils does she have now?",
    "Pens cost 3 dollars each. Ali buys 4 pens and pays with a 20 dollar bill. What is his change?",
    "A train travels 60 km per hour for 3 hours. How far does it go?",
    "Mia reads 15 pages a day. How many pages does she read in a week?",
    "There are 24 students split equally into 4 groups. How many students are in each group?",
    "Ben earns 8 dollars an hour and works 6 hours. He spends 10 dollars. How much does he keep?",
    "A farmer has 3 fields with 14 cows each. He sells 9 cows. How many cows are left?",
    "Lily bakes 5 trays of 12 cookies and eats 7. How many cookies remain?",
]


@dataclass
class ThroughputRow:
    concurrency: int
    pipeline: str
    requests: int
    seconds: float
    requests_per_s: float
    tokens_per_s: float
    p50_latency_s: float
    largest_batch: int


@dataclass
class MemoryRow:
    quantization: str
    in_effect: str
    note: str
    parameter_mb: float
    load_seconds: float


@dataclass
class ServeBenchResult:
    device: str
    model_id: str
    quantization: str
    max_new_tokens: int
    throughput: list[ThroughputRow] = field(default_factory=list)
    memory: list[MemoryRow] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def ratios(self) -> dict[str, float]:
        by = {(r.concurrency, r.pipeline): r for r in self.throughput}
        out = {}
        if (1, "identity") in by and (8, "identity") in by:
            out["batching_speedup_c8_vs_c1"] = (
                by[(8, "identity")].tokens_per_s / by[(1, "identity")].tokens_per_s
            )
        for c in (1, 8):
            plain, protected = by.get((c, "identity")), by.get((c, "protected"))
            if plain and protected:
                out[f"protected_vs_plain_latency_c{c}"] = protected.p50_latency_s / plain.p50_latency_s
        return out


def measure_throughput(
    call: Callable[[str], int],
    *,
    concurrency: int,
    requests: int,
    pipeline: str,
    largest_batch: Callable[[], int],
) -> ThroughputRow:
    """Run ``requests`` calls of ``call(problem) -> completion_tokens`` with ``concurrency`` threads."""
    latencies: list[float] = []
    tokens: list[int] = []

    def one(i: int) -> None:
        start = time.perf_counter()
        tokens.append(call(PROBLEMS[i % len(PROBLEMS)]))
        latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    return ThroughputRow(
        concurrency=concurrency,
        pipeline=pipeline,
        requests=requests,
        seconds=round(seconds, 2),
        requests_per_s=round(requests / seconds, 3),
        tokens_per_s=round(sum(tokens) / seconds, 2),
        p50_latency_s=round(statistics.median(latencies), 3),
        largest_batch=largest_batch(),
    )


def measure_memory(load: Callable[[str], TeacherBackend], quantizations: list[str]) -> list[MemoryRow]:
    rows = []
    for quantization in quantizations:
        start = time.perf_counter()
        teacher = load(quantization)
        seconds = time.perf_counter() - start
        info = teacher.info
        rows.append(
            MemoryRow(
                quantization=quantization,
                in_effect=info.quantization,
                note=info.quantization_note,
                parameter_mb=round(info.parameter_bytes / 1e6, 1),
                load_seconds=round(seconds, 2),
            )
        )
        teacher.close()
        del teacher
        gc.collect()
    return rows


def markdown(result: ServeBenchResult) -> str:
    lines = [
        f"Teacher: {result.model_id} ({result.quantization}, {result.device}),"
        f" {result.max_new_tokens} new tokens",
        "",
        "| concurrency | pipeline | requests | req/s | tokens/s | p50 latency (s) | largest batch |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result.throughput:
        lines.append(
            f"| {r.concurrency} | {r.pipeline} | {r.requests} | {r.requests_per_s} | {r.tokens_per_s} "
            f"| {r.p50_latency_s} | {r.largest_batch} |"
        )
    lines += [
        "",
        "| quantization | in effect | parameter memory (MB) | load (s) | note |",
        "|---|---|---:|---:|---|",
    ]
    for m in result.memory:
        lines.append(f"| {m.quantization} | {m.in_effect} | {m.parameter_mb} | {m.load_seconds} | {m.note} |")
    ratios = result.ratios()
    if ratios:
        lines += ["", "| ratio | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    return "\n".join(lines)
