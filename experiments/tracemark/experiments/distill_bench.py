"""``tracemark bench distill``: does protecting the traces make distillation fail, and is it detected?

Stages (each writes its own file under the results folder, so an interrupted run resumes where it
stopped and several ``--only`` processes can share one folder):

1. ``traces/clean.jsonl``: teacher traces for the training problems (the worked solutions, or generated
   by a local model or an OpenAI-compatible endpoint);
2. ``traces/<method>.jsonl``: each rewriter applied through the answer guard, with the guard's outcomes,
   answer preservation, rewrite seconds per trace, and answer-forced teacher accuracy on the set;
3. ``students/<set>.json``: one student per trace set with the same budget; held-out accuracy (free and
   answer-forced) and held-out NLL of clean traces, against the untrained student (``students/base.json``);
4. ADS: a local teacher decodes the training problems with standard decoding and with antidistillation
   sampling (``traces/teacher-standard.jsonl``, ``traces/ads.jsonl``), a student on each;
5. ``watermark/f<fraction>-s<seed>.json``: the demo's real pipeline (gRPC server, watermark, tiny student,
   ``ForensicsService.Investigate``) at each watermark fraction and seed: p-values, attributions, false
   alarms among bystander accounts and control students;
6. ``results.json``, ``results.md`` and ``plots/*.png`` (see :mod:`tracemark.experiments.distill_report`).

Stages 1 and 2 are in :mod:`tracemark.experiments.distill_traces`; the folder layout, problem split and
models every stage shares are in :mod:`tracemark.experiments.distill_setup`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from tracemark.experiments.demo_settings import DEFAULT
from tracemark.experiments.distill import distill_student, load_student, save_student
from tracemark.experiments.distill_config import BenchConfig, BenchConfigError
from tracemark.experiments.distill_report import assemble, write_report
from tracemark.experiments.distill_setup import (
    BenchPaths,
    load_problems,
    read_trace_set,
    resolve_model,
    write_json,
    write_trace_set,
)
from tracemark.experiments.distill_traces import (
    TeacherForcer,
    answer_stats,
    generate_all,
    stage_clean,
    stage_rewrites,
)
from tracemark.experiments.evaluate import forced_answers, generate_traces, heldout_nll
from tracemark.experiments.scenario import run_demo
from tracemark.foundation.console import stage_progress
from tracemark.foundation.problems import Problem
from tracemark.plugins.answers import answers_match, extract_final_answer
from tracemark.server.config import TeacherSection
from tracemark.server.teacher.base import GenerationParams
from tracemark.server.teacher.factory import build_teacher

__all__ = ["STAGES", "BenchPaths", "run_distill_bench"]

STAGES = ("traces", "students", "ads", "watermark", "report")


# -- stage 3: students ------------------------------------------------------------------------------------


def _evaluate_student(model: Any, tok: Any, config: BenchConfig, test: Sequence[Problem]) -> dict:
    s = config.student
    start = time.perf_counter()
    questions = [p.question for p in test]
    outputs = generate_traces(
        model, tok, questions, max_new_tokens=s.eval_max_new_tokens, batch_size=s.eval_batch
    )
    forced = forced_answers(model, tok, questions, outputs, batch_size=s.eval_batch)
    free = [extract_final_answer(o) for o in outputs]
    free_ok = [answers_match(p.answer, a) for p, a in zip(test, free, strict=True)]
    forced_ok = [answers_match(p.answer, a) for p, a in zip(test, forced, strict=True)]
    nll = heldout_nll(model, tok, [(p.question, p.solution) for p in test], batch_size=s.eval_batch)
    return {
        "accuracy_forced": sum(forced_ok) / len(test),
        "accuracy_free": sum(free_ok) / len(test),
        "heldout_nll": nll,
        "eval_seconds": time.perf_counter() - start,
        "samples": [o[:240] for o in outputs[:3]],
    }


def train_and_evaluate(
    config: BenchConfig,
    paths: BenchPaths,
    name: str,
    examples: Sequence[tuple[str, str]] | None,
    test: Sequence[Problem],
    console: Console,
    *,
    keep_model: bool = False,
) -> dict:
    """Train one student on ``examples`` (None: the untrained base) and write ``students/<name>.json``."""
    target = paths.student(name)
    if target.exists() and (not keep_model or (paths.models / name / "config.json").exists()):
        return json.loads(target.read_text())
    s = config.student
    torch.set_num_threads(s.threads)
    base = resolve_model(s.model, workdir=paths.models, seed=config.seed)
    losses: list[float] = []
    start = time.perf_counter()
    if examples is None:
        model, tok = load_student(base, device=s.device)
    else:
        with stage_progress(console) as progress:
            task = progress.add_task(f"train student '{name}'", total=None)

            def report(p: Any) -> None:
                losses.append(p.loss)
                progress.update(task, completed=p.step, total=p.total_steps)

            model, tok = distill_student(
                base,
                list(examples),
                method=s.method,
                epochs=s.epochs,
                lr=s.lr,
                lora_r=s.lora_r,
                lora_alpha=s.lora_alpha,
                batch_size=s.batch_size,
                max_length=s.max_length,
                seed=config.seed,
                device=s.device,
                progress=report,
            )
    train_s = time.perf_counter() - start
    if keep_model:
        save_student(model, tok, paths.models / name)
    with console.status(f"evaluate student '{name}' on {len(test)} held-out problems"):
        metrics = _evaluate_student(model, tok, config, test)
    result = {
        "name": name,
        "examples": 0 if examples is None else len(examples),
        "steps": len(losses),
        "train_seconds": train_s,
        "final_loss": sum(losses[-3:]) / len(losses[-3:]) if losses else None,
        **metrics,
    }
    write_json(target, result)
    console.print(
        f"  student {name}: forced accuracy {result['accuracy_forced']:.1%}, "
        f"free {result['accuracy_free']:.1%}, clean NLL {result['heldout_nll']:.3f}"
    )
    return result


def stage_students(config: BenchConfig, paths: BenchPaths, test: Sequence[Problem], console: Console) -> None:
    train_and_evaluate(config, paths, "base", None, test, console)
    for name in ["clean", *config.rewrite.methods]:
        if not paths.trace_set(name).exists():
            console.print(f"  [yellow]skip student {name}: traces/{name}.jsonl not there yet[/yellow]")
            continue
        _, rows = read_trace_set(paths.trace_set(name))
        keep = name == "clean" and config.ads.enabled and config.ads.teacher == "student:clean"
        train_and_evaluate(
            config, paths, name, [(r["question"], r["trace"]) for r in rows], test, console, keep_model=keep
        )


# -- stage 4: antidistillation sampling ---------------------------------------------------------------------


def stage_ads(
    config: BenchConfig,
    paths: BenchPaths,
    train: Sequence[Problem],
    test: Sequence[Problem],
    forcer: TeacherForcer,
    console: Console,
) -> None:
    a = config.ads
    if a.teacher == "student:clean":
        teacher_path = paths.models / "clean"
        if not (teacher_path / "config.json").exists():
            console.print("  [yellow]ADS needs the clean student first: run the students stage[/yellow]")
            return
    else:
        teacher_path = Path(a.teacher)
    params = GenerationParams(max_new_tokens=config.teacher.max_new_tokens)
    runs = [("teacher-standard", "standard", 0.0)]
    runs += [(name, "ads", lam) for name, lam in zip(a.set_names(), a.lambdas, strict=True)]
    for name, decoding, lam in runs:
        target = paths.trace_set(name)
        if target.exists():
            continue
        section = TeacherSection(
            backend="transformers",
            model=str(teacher_path),
            quantization="none",
            device="auto",
            max_batch_size=a.batch_size,
            decoding=decoding,
            ads_lambda=lam,
            ads_epsilon=a.epsilon,
            ads_proxy=a.proxy,
            ads_heldout=a.heldout,
        )
        with console.status(f"load teacher ({decoding})"):
            backend = build_teacher(section)
        traces, tokens, seconds = generate_all(
            backend, train, params, batch=a.batch_size, label=f"teacher traces: {name}", console=console
        )
        rows = [
            {"question": p.question, "trace": t, "answer": p.answer}
            for p, t in zip(train, traces, strict=True)
        ]
        meta = {
            "method": name,
            "teacher": str(teacher_path),
            "decoding": backend.info.decoding,
            "seconds_per_trace": seconds / max(1, len(rows)),
            "ms_per_token": 1000 * seconds / max(1, tokens),
            "tokens": tokens,
            **answer_stats(rows),
        }
        if decoding == "ads":
            meta["ads_stats"] = backend.ads.stats()
        meta["teacher_forced"] = forcer(rows)
        write_trace_set(target, rows, meta)
        del backend
    for name, _, _ in runs:
        _, rows = read_trace_set(paths.trace_set(name))
        train_and_evaluate(config, paths, name, [(r["question"], r["trace"]) for r in rows], test, console)


# -- stage 5: watermark detection ------------------------------------------------------------------------


def stage_watermark(config: BenchConfig, paths: BenchPaths, console: Console) -> None:
    w = config.watermark
    for fraction in w.fractions:
        for seed in w.seeds:
            target = paths.watermark / f"f{fraction:g}-s{seed}.json"
            if target.exists():
                continue
            size = replace(
                DEFAULT,
                train_problems=w.train,
                watermark_fraction=fraction,
                bystanders=w.bystanders,
                alpha=w.alpha,
                pairs_per_account=w.pairs_per_account,
                target_digits=w.target_digits,
                epochs=w.epochs,
            )
            console.print(f"[bold]watermark[/bold] fraction {fraction:g}, seed {seed}")
            with tempfile.TemporaryDirectory(prefix="tm-bench-wm-") as tmp:
                result = run_demo(size, workdir=Path(tmp) / "run", seed=seed, console=console)
                data = result.as_dict()
            data.update(fraction=fraction, seed=seed)
            write_json(target, data)


# -- driver ---------------------------------------------------------------------------------------------


def _check_folder(config: BenchConfig, paths: BenchPaths, fresh: bool) -> None:
    stamp = paths.root / "config.fingerprint"
    if stamp.exists() and stamp.read_text().strip() != config.fingerprint() and not fresh:
        raise BenchConfigError(
            f"{paths.root} holds results of a different config; use another --out or pass --fresh"
        )
    if fresh and paths.root.exists():
        for child in ("traces", "students", "models", "watermark", "plots"):
            shutil.rmtree(paths.root / child, ignore_errors=True)
    paths.make()
    stamp.write_text(config.fingerprint() + "\n")
    (paths.root / "config.json").write_text(config.model_dump_json(indent=2, by_alias=True))


def run_distill_bench(
    config: BenchConfig,
    out: Path,
    *,
    only: Sequence[str] = STAGES,
    fresh: bool = False,
    command: str = "",
    console: Console | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict:
    """Run (or resume) the benchmark into ``out``; returns the assembled results (also written to disk)."""
    console = console or Console(stderr=True)
    unknown = set(only) - set(STAGES)
    if unknown:
        raise BenchConfigError(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    paths = BenchPaths(Path(out))
    _check_folder(config, paths, fresh)
    if command:  # every command that contributed to this folder (stages may run in separate processes)
        log = paths.root / "command.txt"
        seen = log.read_text().splitlines() if log.exists() else []
        if command not in seen:
            log.write_text("\n".join([*seen, command]) + "\n")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(config.student.threads)
    train, test = load_problems(config)
    forcer = TeacherForcer(config, paths.models)
    for stage in STAGES:
        if stage not in only:
            continue
        if on_stage:
            on_stage(stage)
        console.rule(f"[bold]{stage}")
        if stage == "traces":
            stage_clean(config, paths, train, forcer, console)
            stage_rewrites(config, paths, forcer, console)
        elif stage == "students":
            stage_students(config, paths, test, console)
        elif stage == "ads" and config.ads.enabled:
            stage_ads(config, paths, train, test, forcer, console)
        elif stage == "watermark":
            stage_watermark(config, paths, console)
    results = assemble(config, paths.root)
    if "report" in only:
        write_report(results, paths.root)
    return results
