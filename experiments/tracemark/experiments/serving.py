"""Serving benchmark: throughput at several concurrencies through real gRPC, rewriting overhead, and the
teacher's memory under each quantization."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from tracemark.server.app import TracemarkServer
from tracemark.server.auth import TokenStore, hash_token
from tracemark.server.client import Stubs, open_channel
from tracemark.server.config import Settings
from tracemark.server.teacher.base import GenerationParams, TeacherBackend
from tracemark.v1 import teacher_pb2

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
    latencies: list[float] | None = None,
) -> ThroughputRow:
    """Run ``requests`` calls of ``call(problem) -> completion_tokens`` with ``concurrency`` threads
    (each call's latency is also appended to ``latencies`` when given)."""
    mine: list[float] = []
    total, seconds = _clients(call, concurrency, requests, mine)
    row = ThroughputRow(
        concurrency=concurrency,
        pipeline=pipeline,
        requests=requests,
        seconds=round(seconds, 2),
        requests_per_s=round(requests / seconds, 3),
        tokens_per_s=round(total / seconds, 2),
        p50_latency_s=round(statistics.median(mine), 3),
        largest_batch=largest_batch(),
    )
    if latencies is not None:
        latencies.extend(mine)
    return row


def _clients(
    call: Callable[[str], int], concurrency: int, requests: int, latencies: list[float]
) -> tuple[int, float]:
    """``requests`` calls from ``concurrency`` threads: (completion tokens in all, wall seconds)."""
    tokens: list[int] = []

    def one(i: int) -> None:
        start = time.perf_counter()
        tokens.append(call(PROBLEMS[i % len(PROBLEMS)]))
        latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    return sum(tokens), time.perf_counter() - start


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
    lines += ["", memory_markdown(result.memory)]
    ratios = result.ratios()
    if ratios:
        lines += ["", "| ratio | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    return "\n".join(lines)


# --- served vs raw: the serving overhead as a ratio measured in one run ----------------------------------


@dataclass
class RatioRow:
    """Served throughput (real gRPC ``Generate`` calls, default pipeline) against ``model.generate`` on
    the same model and batch, the two measured alternately in one run."""

    concurrency: int
    served_requests: int
    raw_batches: int
    raw_tokens_per_s: float
    served_tokens_per_s: float
    ratio: float
    served_p50_latency_s: float
    batch_sizes: dict[int, int]


@dataclass
class SpeedRow:
    """Raw ``model.generate`` speed of one quantization at one batch size."""

    quantization: str
    in_effect: str
    batch: int
    tokens_per_s: float
    seconds: float


def measure_served_vs_raw(
    raw: Callable[[list[str]], int],
    served: Callable[[str], int],
    *,
    concurrency: int,
    rounds: int,
    per_client: int = 2,
    batch_sizes: Callable[[], dict[int, int]] = dict,
) -> RatioRow:
    """Alternate ``rounds`` times: one raw batch of ``concurrency`` problems (``raw(problems) -> tokens``)
    and ``concurrency`` clients each sending ``per_client`` requests (``served(problem) -> tokens``); the
    ratio is total served tokens/s over total raw tokens/s, so machine load weighs on both sides alike."""
    raw_tokens = served_tokens = 0
    raw_seconds = served_seconds = 0.0
    latencies: list[float] = []
    problems = [PROBLEMS[i % len(PROBLEMS)] for i in range(concurrency)]
    raw(problems)  # untimed: the first call at a new batch shape pays one-off kernel set-up
    for _ in range(rounds):
        start = time.perf_counter()
        raw_tokens += raw(problems)
        raw_seconds += time.perf_counter() - start
        tokens, seconds = _clients(served, concurrency, concurrency * per_client, latencies)
        served_tokens += tokens
        served_seconds += seconds
    raw_rate, served_rate = raw_tokens / raw_seconds, served_tokens / served_seconds
    return RatioRow(
        concurrency=concurrency,
        served_requests=rounds * concurrency * per_client,
        raw_batches=rounds,
        raw_tokens_per_s=round(raw_rate, 2),
        served_tokens_per_s=round(served_rate, 2),
        ratio=round(served_rate / raw_rate, 3),
        served_p50_latency_s=round(statistics.median(latencies), 3),
        batch_sizes=dict(sorted(batch_sizes().items())),
    )


def measure_speed(
    load: Callable[[str], TeacherBackend],
    quantizations: list[str],
    *,
    batches: tuple[int, ...] = (1, 8),
    max_new_tokens: int = 32,
    rounds: int = 2,
    system_prompt: str = "",
) -> list[SpeedRow]:
    """Raw generate tokens/s of each quantization at each batch size: the measurement behind
    ``teacher.quantization = auto``. ``load(q)`` returns a local teacher; all are loaded first, warmed
    up, then timed in turns (``rounds`` times each mode and batch), so a changing machine load weighs on
    every mode alike."""
    teachers = {}
    for quantization in quantizations:
        teacher = load(quantization)
        if getattr(teacher, "generate_plain", None) is None:
            teacher.close()
            continue
        teachers[quantization] = teacher
    params = GenerationParams(max_new_tokens=max_new_tokens)
    totals: dict[tuple[str, int], list[float]] = {(q, b): [0, 0.0] for q in teachers for b in batches}
    try:
        for batch in batches:
            conversations = [_messages(PROBLEMS[i % len(PROBLEMS)], system_prompt) for i in range(batch)]
            for teacher in teachers.values():  # untimed: one-off kernel set-up at this batch shape
                teacher.generate_plain(conversations, GenerationParams(max_new_tokens=2))
            for _ in range(rounds):
                for quantization, teacher in teachers.items():
                    start = time.perf_counter()
                    tokens = sum(teacher.generate_plain(conversations, params))
                    total = totals[(quantization, batch)]
                    total[0] += tokens
                    total[1] += time.perf_counter() - start
    finally:
        infos = {q: t.info.quantization for q, t in teachers.items()}
        for teacher in teachers.values():
            teacher.close()
        teachers.clear()
        gc.collect()
    return [
        SpeedRow(
            quantization=q,
            in_effect=infos[q],
            batch=b,
            tokens_per_s=round(totals[(q, b)][0] / totals[(q, b)][1], 2),
            seconds=round(totals[(q, b)][1], 2),
        )
        for q in infos
        for b in batches
    ]


def _messages(problem: str, system_prompt: str) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*head, {"role": "user", "content": problem}]


def memory_markdown(rows: list[MemoryRow]) -> str:
    lines = [
        "| quantization | in effect | parameter memory (MB) | load (s) | note |",
        "|---|---|---:|---:|---|",
    ]
    lines += [
        f"| {m.quantization} | {m.in_effect} | {m.parameter_mb} | {m.load_seconds} | {m.note} |" for m in rows
    ]
    return "\n".join(lines)


def ratio_markdown(
    rows: list[RatioRow], speed: list[SpeedRow], *, load: str = "", speed_tokens: int | None = None
) -> str:
    """README-ready tables: served/raw per concurrency, raw speed per quantization."""
    lines = [
        "| concurrency | raw tokens/s | served tokens/s | served/raw | p50 latency (s) "
        "| batches (size: count) |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        sizes = ", ".join(f"{k}: {v}" for k, v in r.batch_sizes.items())
        lines.append(
            f"| {r.concurrency} | {r.raw_tokens_per_s} | {r.served_tokens_per_s} | {r.ratio:.2f} "
            f"| {r.served_p50_latency_s} | {sizes} |"
        )
    if speed:
        tokens = f" ({speed_tokens} new tokens)" if speed_tokens else ""
        lines += ["", f"| quantization | in effect | batch | raw tokens/s{tokens} |", "|---|---|---:|---:|"]
        lines += [f"| {s.quantization} | {s.in_effect} | {s.batch} | {s.tokens_per_s} |" for s in speed]
    if load:
        lines += ["", f"Machine load: {load}"]
    return "\n".join(lines)


def compare_served_raw(
    settings: Settings,
    *,
    levels: list[int],
    rounds: int,
    per_client: int = 2,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[list[RatioRow], dict]:
    """Start a server on port 0 under ``settings`` (its default pipeline, a bench customer), then for each
    concurrency level measure served vs raw generate on the server's own teacher (see
    :func:`measure_served_vs_raw`). Returns the rows and the teacher info (quantization and its reason)."""
    token = "tm_bench_token"
    server = TracemarkServer(settings, tokens=TokenStore({"bench": hash_token(token)}))
    port = server.start()
    progress("loading the teacher ...")
    if not server.wait_ready(900):
        server.stop(0)
        raise RuntimeError(f"teacher failed to load: {server.runtime.load_error}")
    teacher = server.runtime.teacher
    if not hasattr(teacher, "generate_plain"):
        server.stop(0)
        raise RuntimeError(f"backend {teacher.info.backend!r} has no local model to compare with")
    tokens_cap = settings.teacher.max_new_tokens
    system = settings.teacher.system_prompt
    stubs = Stubs(open_channel(f"127.0.0.1:{port}", token=token))
    params = GenerationParams(max_new_tokens=tokens_cap)
    request_params = teacher_pb2.GenerationParams(max_new_tokens=tokens_cap)

    def raw(problems: list[str]) -> int:
        return sum(teacher.generate_plain([_messages(p, system) for p in problems], params))

    def served(problem: str) -> int:
        request = teacher_pb2.GenerateRequest(problem=problem, params=request_params)
        return stubs.teacher.Generate(request, timeout=900).completion_tokens

    rows = []
    try:
        served(PROBLEMS[0])  # warm the pipeline (first ledger writes, plugin imports)
        for level in levels:
            progress(f"concurrency {level}: raw and served, {rounds} rounds ...")
            queue = server.runtime.queue
            queue.batch_sizes.clear()
            rows.append(
                measure_served_vs_raw(
                    raw,
                    served,
                    concurrency=level,
                    rounds=rounds,
                    per_client=per_client,
                    batch_sizes=lambda q=queue: dict(q.batch_sizes),
                )
            )
    finally:
        stubs.close()
        server.stop(grace=1)
    info = teacher.info
    return rows, {
        "model_id": info.model_id,
        "device": info.device,
        "quantization": info.quantization,
        "quantization_note": info.quantization_note,
        "channel_seconds": round(getattr(teacher, "channel_seconds", 0.0), 2),
    }
