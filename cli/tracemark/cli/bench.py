"""`tracemark bench ...`: benchmarks (never part of the test suite)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from tracemark.foundation.console import fail

bench_app = typer.Typer(
    help="Benchmarks: serving throughput and memory; distillation (see README).", no_args_is_help=True
)
console = Console(stderr=True)


@bench_app.command("serve")
def bench_serve(
    backend: Annotated[
        str, typer.Option(help="Teacher backend: embedded | tiny | transformers | openai.")
    ] = "embedded",
    model: Annotated[
        str, typer.Option(help="Model folder/.gguf (transformers) or model name (openai).")
    ] = "",
    endpoint: Annotated[str, typer.Option(help="OpenAI-compatible base URL (openai backend).")] = "",
    quantization: Annotated[str, typer.Option(help="Quantization used for the throughput runs.")] = "nf4",
    requests: Annotated[int, typer.Option(help="Requests per concurrency level.")] = 16,
    concurrency: Annotated[str, typer.Option(help="Comma-separated concurrency levels.")] = "1,8",
    max_new_tokens: Annotated[int, typer.Option(help="New tokens per request.")] = 64,
    protected: Annotated[
        str, typer.Option(help="Pipeline compared with plain generation ('' to skip).")
    ] = "restructure,watermark",
    memory: Annotated[
        str, typer.Option(help="Quantizations to load for the memory table ('' to skip).")
    ] = "none,int8,nf4",
    out: Annotated[Path, typer.Option(help="Results folder (JSON + Markdown).")] = Path(
        "results/bench-serve"
    ),
) -> None:
    """Throughput at each concurrency through real gRPC on localhost, rewriting overhead as a ratio
    against plain generation, and the teacher's memory in fp32 vs int8 vs nf4."""
    from tracemark.experiments.serving import ServeBenchResult, markdown, measure_memory, measure_throughput
    from tracemark.server.app import TracemarkServer
    from tracemark.server.auth import TokenStore, hash_token
    from tracemark.server.client import Stubs, open_channel
    from tracemark.server.config import ConfigError, load_settings
    from tracemark.v1 import teacher_pb2

    try:
        levels = [int(c) for c in concurrency.split(",") if c.strip()]
    except ValueError:
        fail(f"--concurrency must be comma-separated integers, got {concurrency!r}")
    if not levels or min(levels) < 1 or requests < 1:
        fail("--concurrency levels and --requests must be positive")
    tmp = Path(tempfile.mkdtemp(prefix="tracemark-bench-"))
    try:
        settings = load_settings(
            overrides={
                "server": {"address": "127.0.0.1:0"},
                "teacher": {
                    "backend": backend,
                    "model": model,
                    "endpoint": endpoint,
                    "quantization": quantization,
                    "max_new_tokens": max_new_tokens,
                    "max_batch_size": max(levels),
                    "max_queue": 4 * max(levels),
                },
                "rewrite": {"default_pipeline": ["identity"], "mandatory": []},
                "ledger": {"url": f"sqlite:///{tmp / 'ledger.db'}", "master_key_file": tmp / "master.key"},
            }
        )
    except ConfigError as exc:
        fail(str(exc))
    token = "tm_bench_token"
    server = TracemarkServer(settings, tokens=TokenStore({"bench": hash_token(token)}))
    port = server.start()
    console.print("loading the teacher ...")
    if not server.wait_ready(900):
        server.stop(0)
        fail(f"teacher failed to load: {server.runtime.load_error}")
    info = server.runtime.teacher.info
    result = ServeBenchResult(
        device=info.device,
        model_id=info.model_id,
        quantization=info.quantization,
        max_new_tokens=max_new_tokens,
    )
    stubs = Stubs(open_channel(f"127.0.0.1:{port}", token=token))
    pipelines = {"identity": ["identity"]}
    if protected:
        pipelines["protected"] = protected.split(",")
    params = teacher_pb2.GenerationParams(max_new_tokens=max_new_tokens)
    with Progress(console=console) as progress:
        task = progress.add_task("throughput", total=len(levels) * len(pipelines))
        for level in levels:
            for label, names in pipelines.items():
                queue = server.runtime.queue
                queue.largest_batch = 0

                def call(problem: str, names=names) -> int:
                    request = teacher_pb2.GenerateRequest(problem=problem, params=params, rewriters=names)
                    return stubs.teacher.Generate(request, timeout=600).completion_tokens

                result.throughput.append(
                    measure_throughput(
                        call,
                        concurrency=level,
                        requests=requests,
                        pipeline=label,
                        largest_batch=lambda q=queue: q.largest_batch,
                    )
                )
                progress.advance(task)
    stubs.close()
    server.stop(grace=1)
    if memory and backend in ("embedded", "tiny", "transformers"):
        from tracemark.server.config import TeacherSection
        from tracemark.server.teacher.factory import build_teacher

        def load(q: str):
            return build_teacher(TeacherSection(**{**settings.teacher.model_dump(), "quantization": q}))

        console.print("loading the teacher under each quantization for the memory table ...")
        result.memory = measure_memory(load, [q for q in memory.split(",") if q])
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps({**result.as_dict(), "ratios": result.ratios()}, indent=2))
    table = markdown(result)
    (out / "serve.md").write_text(table + "\n")
    typer.echo(table)
    console.print(f"results written to {out}/serve.json and serve.md")


@bench_app.command("distill")
def bench_distill(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML or JSON config (see benchmarks/distill-cpu.toml, benchmarks/distill-gpu.toml); "
            "omitted: the CPU-scale defaults.",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Results folder; a rerun with the same config resumes from it.")
    ] = Path("results/bench-distill"),
    only: Annotated[
        str,
        typer.Option(
            help="Comma-separated stages to run: traces, students, ads, watermark, report "
            "(separate processes may share one --out)."
        ),
    ] = "traces,students,ads,watermark,report",
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Discard earlier results in --out (also after a config change).")
    ] = False,
) -> None:
    """Distill students from clean vs protected traces and measure what protection costs them.

    Teacher traces are rewritten by each configured method (answer guard on); one student per trace set is fine-tuned with the same budget and scored on held-out problems (answer-forced and free accuracy, NLL of clean traces). Antidistillation sampling adds a standard-decoding row and one row per strength. The watermark is measured by running the demo pipeline at several fractions and seeds.

    Writes results.json, results.md (README-ready tables) and plots/ under --out. Configs: benchmarks/distill-cpu.toml (this machine), benchmarks/distill-gpu.toml (full scale).
    """  # noqa: E501
    import shlex
    import sys

    from tracemark.experiments.distill import DistillError
    from tracemark.experiments.distill_bench import run_distill_bench
    from tracemark.experiments.distill_config import BenchConfigError, load_bench_config
    from tracemark.foundation.problems import ProblemError
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    stages = [s.strip() for s in only.split(",") if s.strip()]
    try:
        cfg = load_bench_config(config)
        command = "tracemark bench distill " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        results = run_distill_bench(
            cfg, out, only=stages, fresh=fresh, command=command.strip(), console=console
        )
    except (BenchConfigError, DistillError, ProblemError) as exc:
        fail(str(exc))
    from tracemark.experiments.distill_report import markdown

    typer.echo(markdown(results))
    if "report" in stages:
        console.print(f"results in {out}/results.md, results.json and {out}/plots/")
    else:
        console.print(f"stage files in {out}; run with --only report to write results.md and plots")
