"""`tracemark bench ...`: benchmarks and measurements (never part of the test suite)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from tracemark.experiments.distill_config import load_bench_config
from tracemark.experiments.distill_report import markdown as distill_markdown
from tracemark.experiments.forensics_bench import markdown as power_markdown
from tracemark.experiments.forensics_bench import measure_power
from tracemark.experiments.preservation import (
    LLM_KINDS,
    measure_preservation,
    prepare_gsm8k,
    rewriting_llm,
    scratch_issuer,
)
from tracemark.experiments.serving import (
    compare_served_raw,
    measure_memory,
    measure_speed,
    memory_markdown,
    ratio_markdown,
)
from tracemark.foundation.console import fail, stage_progress
from tracemark.foundation.errors import InvalidInput, NotFound, first_line
from tracemark.foundation.problems import ProblemError
from tracemark.server.config import ConfigError, TeacherSection, load_settings
from tracemark.server.teacher.factory import build_teacher

bench_app = typer.Typer(
    help="Benchmarks: serving throughput and memory; distillation; answer preservation of rewriters; the "
    "power of the evidence on the demo's students (see README).",
    no_args_is_help=True,
)
console = Console(stderr=True)


@bench_app.command("serve")
def bench_serve(
    backend: Annotated[str, typer.Option(help="Local teacher backend: embedded | tiny | transformers.")] = (
        "embedded"
    ),
    model: Annotated[str, typer.Option(help="Model folder/.gguf (transformers).")] = "",
    quantization: Annotated[
        str, typer.Option(help="Quantization of the served teacher (auto: the per-device default).")
    ] = "auto",
    rounds: Annotated[int, typer.Option(help="Raw/served alternations per concurrency level.")] = 3,
    concurrency: Annotated[str, typer.Option(help="Comma-separated concurrency levels.")] = "1,8",
    max_new_tokens: Annotated[int, typer.Option(help="New tokens per request.")] = 64,
    speed: Annotated[
        str,
        typer.Option(
            help="Modes whose raw generate speed is measured at batch 1 and 8 ('' to skip): "
            "none (fp32), bf16, int8-dynamic, nf4, int8."
        ),
    ] = "none,bf16,int8-dynamic,nf4",
    speed_tokens: Annotated[int, typer.Option(help="New tokens per row in the speed table.")] = 32,
    memory: Annotated[
        str, typer.Option(help="Quantizations to load for the memory table ('' to skip).")
    ] = "none,int8-dynamic,nf4",
    out: Annotated[Path, typer.Option(help="Results folder (JSON + Markdown).")] = Path(
        "results/bench-serve"
    ),
) -> None:
    """Served vs raw: real gRPC Generate calls (default pipeline, a customer account, the channel) through
    a server on a free port, against model.generate on the same model and batch, alternated in one run at
    each concurrency; the ratio, p50 latency, batch sizes. Then raw speed per quantization (the measurement
    behind quantization = auto) and memory per quantization."""
    try:
        levels = [int(c) for c in concurrency.split(",") if c.strip()]
    except ValueError:
        fail(f"--concurrency must be comma-separated integers, got {concurrency!r}")
    if not levels or min(levels) < 1 or rounds < 1:
        fail("--concurrency levels and --rounds must be positive")
    tmp = Path(tempfile.mkdtemp(prefix="tracemark-bench-"))
    try:
        settings = load_settings(
            overrides={
                "server": {"address": "127.0.0.1:0"},
                "teacher": {
                    "backend": backend,
                    "model": model,
                    "quantization": quantization,
                    "max_new_tokens": max_new_tokens,
                    "max_batch_size": max(levels),
                    "max_queue": 4 * max(levels),
                },
                "ledger": {"url": f"sqlite:///{tmp / 'ledger.db'}", "master_key_file": tmp / "master.key"},
            }
        )
    except ConfigError as exc:
        fail(str(exc))
    load_before = os.getloadavg()
    try:
        rows, info = compare_served_raw(settings, levels=levels, rounds=rounds, progress=console.print)
    except RuntimeError as exc:
        fail(first_line(str(exc)))
    load_after = os.getloadavg()

    def load(q: str):
        mode, dtype = ("none", "bfloat16") if q == "bf16" else (q, "auto")
        section = TeacherSection(**{**settings.teacher.model_dump(), "quantization": mode})
        return build_teacher(section, dtype=dtype)

    modes = [q for q in speed.split(",") if q]
    speed_rows = []
    if modes:
        console.print("raw generate speed per quantization ...")
        speed_rows = measure_speed(
            load, modes, max_new_tokens=speed_tokens, system_prompt=settings.teacher.system_prompt
        )
    memory_rows = []
    if memory:
        console.print("loading the teacher under each quantization for the memory table ...")
        memory_rows = measure_memory(load, [q for q in memory.split(",") if q])
    machine = (
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after the served/raw runs "
        f"on {os.cpu_count()} CPUs"
    )
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "teacher": info,
        "max_new_tokens": max_new_tokens,
        "served_vs_raw": [asdict(r) for r in rows],
        "speed": [asdict(r) for r in speed_rows],
        "memory": [asdict(r) for r in memory_rows],
        "machine": machine,
    }
    (out / "serve.json").write_text(json.dumps(result, indent=2))
    head = (
        f"Teacher: {info['model_id']} ({info['quantization']}, {info['device']}), {max_new_tokens} new tokens"
        f"\nQuantization: {info['quantization_note'] or info['quantization']}\n"
    )
    table = head + "\n" + ratio_markdown(rows, speed_rows, load=machine, speed_tokens=speed_tokens)
    if memory_rows:
        table += "\n\n" + memory_markdown(memory_rows)
    (out / "serve.md").write_text(table + "\n")
    typer.echo(table)
    console.print(f"results written to {out}/serve.json and serve.md")


def _students_in_parallel(config: Path | None, out: Path, jobs: int) -> None:
    """Train the students in ``jobs`` processes (shards of one results folder) and wait for all."""
    import subprocess  # deferred: only the parallel students stage starts processes

    base = [
        sys.executable,
        "-m",
        "tracemark.cli.main",
        "bench",
        "distill",
        "--out",
        str(out),
        "--only",
        "students",
    ]
    if config is not None:
        base += ["--config", str(config)]
    procs = [subprocess.Popen([*base, "--shard", f"{k}/{jobs}"]) for k in range(jobs)]
    codes = [p.wait() for p in procs]
    if any(codes):
        fail(f"a students process failed (exit codes {codes}); rerun to resume")


@bench_app.command("distill")
def bench_distill(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML or JSON config (benchmarks/distill-quick.toml, -cpu.toml, -gpu.toml); "
            "omitted: the built-in defaults (every rewriter, ADS on).",
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
    jobs: Annotated[
        int,
        typer.Option(
            min=1,
            max=16,
            help="Processes for the students stage (each trains every JOBS-th student; 2 on a 2-core CPU).",
        ),
    ] = 1,
    shard: Annotated[
        str,
        typer.Option(help="K/N: this process trains students K, K+N, ... only (what --jobs starts)."),
    ] = "0/1",
) -> None:
    """Distill students from clean vs protected traces, with and without the distiller's countermeasure.

    For each seed (training problems, rewrites and student initialisation) the teacher's traces are rewritten by each configured method (answer and intermediate-result guards on) and cleaned by the adaptive distiller's countermeasure; one student per trace set and seed is fine-tuned with the same budget and scored on the same held-out problems (problems from templates never seen in training, or a fixed held-out part of GSM8K train). The table reports accuracy with 95% intervals, gain ratios, paired tests against clean and the untrained student (Holm), teacher utility with the answer line removed, readability, detectability AUC and wall seconds per trace. Antidistillation sampling and the watermark stage are optional.

    Writes results.json, results.md (README-ready tables) and plots/ under --out; the per-problem outcomes of every student are in students/. Configs: benchmarks/distill-quick.toml (about 20 minutes), benchmarks/distill-cpu.toml (this machine, about 95 minutes with --jobs 2), benchmarks/distill-gpu.toml (full scale).
    """  # noqa: E501
    from tracemark.experiments.distill_bench import run_distill_bench  # deferred: imports torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    stages = [s.strip() for s in only.split(",") if s.strip()]
    try:
        k, n = (int(x) for x in shard.split("/"))
    except ValueError:
        fail(f"--shard must be K/N with integers, got {shard!r}")
    try:
        cfg = load_bench_config(config)
        command = "tracemark bench distill " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        if jobs > 1 and "students" in stages:
            before = [s for s in stages if s == "traces"]
            if before:
                run_distill_bench(
                    cfg, out, only=before, fresh=fresh, command=command.strip(), console=console
                )
            _students_in_parallel(config, out, jobs)
            stages = [s for s in stages if s not in ("traces", "students")]
            fresh = False
        results = run_distill_bench(
            cfg, out, only=stages, fresh=fresh, command=command.strip(), console=console, shard=(k, n)
        )
    except (InvalidInput, ProblemError) as exc:  # BenchConfigError, DistillError are InvalidInput
        fail(str(exc))
    typer.echo(distill_markdown(results))
    if "report" in stages:
        console.print(f"results in {out}/results.md, results.json and {out}/plots/")
    else:
        console.print(f"stage files in {out}; run with --only report to write results.md and plots")


@bench_app.command("preservation")
def bench_preservation(
    gsm8k: Annotated[
        Path | None,
        typer.Option(
            "--gsm8k",
            help="Required. GSM8K-style JSONL: one {question, answer} object per line; each answer (the "
            "worked solution) is a reference trace.",
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Traces measured: the file's first N.")] = 200,
    rewriters: Annotated[
        str, typer.Option(help="Comma-separated pipeline, run in this order (see `tracemark plugins list`).")
    ] = "restructure,watermark",
    options: Annotated[
        str, typer.Option(help='Rewriter options as a JSON object: {"name": {"option": value}}.')
    ] = "{}",
    account: Annotated[
        str, typer.Option(help="Account the watermark is keyed to ('' = anonymous request).")
    ] = "measure-account",
    llm: Annotated[
        str, typer.Option(help="LLM for the rewriters that need one: none | embedded | tiny (on the CPU).")
    ] = "none",
    quantization: Annotated[str, typer.Option(help="Quantization of that LLM: none | int8 | nf4.")] = "none",
    workers: Annotated[
        int, typer.Option(help="Traces rewritten concurrently (LLM calls batch together).")
    ] = 1,
    timeout: Annotated[float, typer.Option(help="Seconds each rewriter may take per trace.")] = 600.0,
    retries: Annotated[int, typer.Option(help="Answer-guard retries per step.")] = 1,
    dump: Annotated[
        Path | None, typer.Option(help="Also write every result (trace, guard steps) to this JSONL file.")
    ] = None,
) -> None:
    """How often a rewriter pipeline keeps the final answer, measured on reference traces.

    Each GSM8K solution goes through the pipeline with the answer guard, as the server runs it (a scratch signature ledger keys the watermark). Prints a JSON report: per step, the share of traces whose rewrite kept the answer on the first try, after a guard retry, or that the guard replaced by the original trace (answer changed, error, time-out); and how many final traces kept the answer.
    """  # noqa: E501
    if gsm8k is None:
        fail("--gsm8k FILE is required (GSM8K-style JSONL)")
    if not gsm8k.is_file():
        fail(f"--gsm8k {gsm8k} is not a file")
    names = [name.strip() for name in rewriters.split(",") if name.strip()]
    if not names:
        fail("--rewriters is empty")
    if llm not in LLM_KINDS:
        fail(f"--llm must be one of {', '.join(LLM_KINDS)}, got {llm!r}")
    if quantization not in ("none", "int8", "nf4"):
        fail(f"--quantization must be none, int8 or nf4, got {quantization!r}")
    if n < 1 or workers < 1 or retries < 0 or timeout <= 0:
        fail("--n and --workers must be >= 1, --retries >= 0 and --timeout > 0")
    try:
        parsed = json.loads(options)
    except json.JSONDecodeError as exc:
        fail(f"--options is not valid JSON ({exc.msg})")
    if not isinstance(parsed, dict):
        fail('--options must be a JSON object: {"name": {...}}')
    try:
        pipeline, items = prepare_gsm8k(gsm8k, names, n=n, options=parsed, timeout_s=timeout, retries=retries)
    except (InvalidInput, NotFound) as exc:  # bad file, unknown rewriter, bad rewriter options
        fail(first_line(exc))
    signatures = scratch_issuer(Path(tempfile.mkdtemp(prefix="tm-measure-")))
    chat = rewriting_llm(llm, quantization=quantization, timeout_s=timeout)
    with stage_progress(console) as progress:
        task = progress.add_task(f"rewrite: {','.join(names)}", total=len(items))
        report = measure_preservation(
            pipeline,
            items,
            names,
            options=parsed,
            account=account or None,
            signatures=signatures,
            llm=chat,
            workers=workers,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    if dump is not None:
        with dump.open("w", encoding="utf-8") as fh:
            for row in report.outputs:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = report.summary()
    summary["failures"] = report.failures[:20]
    summary["config"] = {
        "gsm8k": str(gsm8k),
        "n": n,
        "rewriters": rewriters,
        "options": options,
        "account": account,
        "llm": llm,
        "quantization": quantization,
        "workers": workers,
        "timeout": timeout,
        "retries": retries,
        "dump": None if dump is None else str(dump),
    }
    typer.echo(json.dumps(summary, indent=2))


@bench_app.command("forensics")
def bench_forensics(
    demo: Annotated[
        Path, typer.Option(help="A finished `tracemark demo` folder (ledger, master key, students).")
    ] = Path("results/demo"),
    accounts: Annotated[
        int, typer.Option(help="Family size of the last run (accounts with delivered pairs are added).")
    ] = 1000,
    budget: Annotated[int, typer.Option(help="Black-box query budget.")] = 200,
    out: Annotated[Path, typer.Option(help="Results folder (scratch ledger, JSON, Markdown).")] = Path(
        "results/bench-forensics"
    ),
) -> None:
    """The power of the evidence on the demo's students: white-box, black-box within the budget,
    sequential, the control student, and the distilled student with ACCOUNTS accounts in the family. Runs
    in a copy of the demo's ledger; every run is pre-registered like any investigation."""
    from transformers.utils import logging as hf_logging

    if accounts < 1 or budget < 1:
        fail("--accounts and --budget must be positive")
    hf_logging.disable_progress_bar()
    with stage_progress(console) as progress:
        task = progress.add_task("investigate", total=None)
        try:
            result = measure_power(
                demo,
                work=out / "ledger",
                big_family=accounts,
                budget=budget,
                progress=lambda case: progress.update(task, description=f"investigate: {case}"[:40]),
            )
        except (InvalidInput, NotFound) as exc:
            fail(first_line(exc))
    out.mkdir(parents=True, exist_ok=True)
    (out / "forensics.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    table = power_markdown(result)
    (out / "forensics.md").write_text(table)
    typer.echo(table)
