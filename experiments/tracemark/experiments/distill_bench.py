"""``tracemark bench distill``: does protecting the traces make distillation fail, even when the distiller
cleans them first, and what does it cost?

Stages (each writes its own files under the results folder, so an interrupted run resumes where it stopped
and several processes can share one folder; ``--jobs N`` trains the students in N processes):

1. ``traces``: per seed, the teacher's traces of the seed's training problems (``clean-s<seed>``), each
   rewriter's set through the answer and intermediate-result guards (``<method>-s<seed>``, with the
   ``'distinct'`` proxy student for gradient rewriters and optional ``@oracle`` rows), and the adaptive
   distiller's cleanup of each (``<set>+<countermeasure>-s<seed>``); teacher utility on the first seed
   (:mod:`tracemark.experiments.distill_traces`);
2. ``students``: the untrained student once (``students/base.json``) and one student per trace set and seed
   (``students/<set>-s<seed>.json``), each with its per-problem outcomes on the same held-out problems;
3. ``ads``: a local teacher (by default the seed's clean student) decodes with and without
   antidistillation sampling, a student on each;
4. ``watermark``: the demo's real pipeline at each watermark fraction and seed;
5. ``report``: ``results.json``, ``results.md`` and ``plots/`` with the statistics of
   :mod:`tracemark.experiments.distill_stats` (see :mod:`tracemark.experiments.distill_report`).

The folder layout, problem splits and models every stage shares are in
:mod:`tracemark.experiments.distill_setup`.
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
from tracemark.experiments.distill_config import PROXY_METHODS, BenchConfig, BenchConfigError
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
    stage_adaptive,
    stage_clean,
    stage_rewrites,
)
from tracemark.experiments.evaluate import forced_answers, generate_traces
from tracemark.experiments.scenario import run_demo
from tracemark.foundation.console import stage_progress
from tracemark.foundation.problems import Problem
from tracemark.plugins.answers import answers_match, extract_final_answer
from tracemark.server.config import TeacherSection
from tracemark.server.teacher.base import GenerationParams
from tracemark.server.teacher.factory import build_teacher

__all__ = ["STAGES", "BenchPaths", "reuse_identical_student", "run_distill_bench", "student_jobs"]

STAGES = ("traces", "students", "ads", "watermark", "report")


# -- stage 3: students ------------------------------------------------------------------------------------


def _evaluate_student(model: Any, tok: Any, config: BenchConfig, test: Sequence[Problem]) -> dict:
    s = config.student
    start = time.perf_counter()
    questions = [p.question for p in test]
    outputs = generate_traces(
        model, tok, questions, max_new_tokens=s.eval_max_new_tokens, batch_size=s.eval_batch
    )
    free = [extract_final_answer(o) for o in outputs]
    free_ok = [answers_match(p.answer, a) for p, a in zip(test, free, strict=True)]
    result: dict[str, Any] = {
        "accuracy_free": sum(free_ok) / len(test),
        "outcomes_free": free_ok,
        "answers_free": free,
    }
    if s.eval_forced:
        forced = forced_answers(model, tok, questions, outputs, batch_size=s.eval_batch)
        forced_ok = [answers_match(p.answer, a) for p, a in zip(test, forced, strict=True)]
        result.update(accuracy_forced=sum(forced_ok) / len(test), outcomes_forced=forced_ok)
    result["eval_seconds"] = time.perf_counter() - start
    result["outputs"] = [o[:400] for o in outputs]
    return result


def train_and_evaluate(
    config: BenchConfig,
    paths: BenchPaths,
    name: str,
    examples: Sequence[tuple[str, str]] | None,
    test: Sequence[Problem],
    console: Console,
    *,
    seed: int | None,
    keep_model: Path | None = None,
    evaluate: bool = True,
) -> dict:
    """Train one student on ``examples`` (None: the untrained base), evaluate it on ``test`` and write
    ``students/<name>-s<seed>.json`` with its per-problem outcomes; ``keep_model``: also save it there."""
    target = paths.student(name, seed) if evaluate else None
    kept = keep_model is None or (keep_model / "config.json").exists()
    if target is not None and target.exists() and kept:
        return json.loads(target.read_text())
    if target is None and kept:
        return {}
    s = config.student
    torch.set_num_threads(s.threads)
    base = resolve_model(s.model, workdir=paths.models, seed=seed or 0)
    losses: list[float] = []
    start = time.perf_counter()
    if examples is None:
        model, tok = load_student(base, device=s.device)
    else:
        with stage_progress(console) as progress:
            task = progress.add_task(f"train student '{name}' (seed {seed})", total=None)

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
                seed=seed or 0,
                device=s.device,
                progress=report,
            )
    train_s = time.perf_counter() - start
    if keep_model is not None:
        save_student(model, tok, keep_model)
    if target is None:
        return {}
    with console.status(f"evaluate student '{name}' (seed {seed}) on {len(test)} held-out problems"):
        metrics = _evaluate_student(model, tok, config, test)
    result = {
        "name": name,
        "seed": seed,
        "examples": 0 if examples is None else len(examples),
        "steps": len(losses),
        "train_seconds": train_s,
        "final_loss": sum(losses[-3:]) / len(losses[-3:]) if losses else None,
        **metrics,
    }
    write_json(target, result)
    console.print(f"  student {name} (seed {seed}): free accuracy {result['accuracy_free']:.1%}")
    return result


def student_jobs(config: BenchConfig, paths: BenchPaths) -> list[tuple[str, int | None]]:
    """Every (trace set, seed) that needs a student, ``("base", None)`` first; the order shards follow."""
    jobs: list[tuple[str, int | None]] = [("base", None)]
    for seed in config.seeds:
        jobs += [(name, seed) for name in config.student_sets()]
    return jobs


def reuse_identical_student(paths: BenchPaths, name: str, seed: int | None) -> bool:
    """A countermeasure row whose cleanup changed no trace (``clean+all`` usually) trains on exactly its
    source's traces with the same seed: copy the source student's result (marked ``reused_from``) instead of
    training it again. False when the sets differ or the source student is not there yet."""
    source = name.rsplit("+", 1)[0]
    if "+" not in name or seed is None or paths.student(name, seed).exists():
        return False
    if not paths.student(source, seed).exists() or not paths.trace_set(name, seed).exists():
        return False
    _, rows = read_trace_set(paths.trace_set(name, seed))
    _, original = read_trace_set(paths.trace_set(source, seed))
    if [r["trace"] for r in rows] != [r["trace"] for r in original]:
        return False
    result = json.loads(paths.student(source, seed).read_text())
    write_json(paths.student(name, seed), {**result, "name": name, "reused_from": source})
    return True


def stage_students(
    config: BenchConfig,
    paths: BenchPaths,
    test: Sequence[Problem],
    console: Console,
    *,
    shard: tuple[int, int] = (0, 1),
) -> None:
    """The students of shard ``k`` of ``n`` (jobs ``k, k+n, ...`` of :func:`student_jobs`)."""
    k, n = shard
    keep_clean = config.ads.enabled and config.ads.teacher == "student:clean"
    for number, (name, seed) in enumerate(student_jobs(config, paths)):
        if number % n != k:
            continue
        if name == "base":
            train_and_evaluate(config, paths, "base", None, test, console, seed=None)
            continue
        if not paths.trace_set(name, seed).exists():
            console.print(f"  [yellow]skip student {name} (seed {seed}): no trace set yet[/yellow]")
            continue
        if reuse_identical_student(paths, name, seed):
            console.print(f"  student {name} (seed {seed}): same traces as its source, result reused")
            continue
        _, rows = read_trace_set(paths.trace_set(name, seed))
        keep = paths.models / f"clean-s{seed}" if name == "clean" and keep_clean else None
        train_and_evaluate(
            config,
            paths,
            name,
            [(r["question"], r["trace"]) for r in rows],
            test,
            console,
            seed=seed,
            keep_model=keep,
        )


def stage_proxy(config: BenchConfig, paths: BenchPaths, console: Console) -> str | None:
    """The gradient rewriters' and ADS's proxy: ``'distinct'`` trains (once) a student on clean traces of
    problems no seed trains on, with a seed no student uses, and returns its folder; ``'oracle'`` returns
    the student's base model; anything else is a folder. ``None`` when no configured method needs one."""
    needs = any(m in PROXY_METHODS for m in config.rewrite.methods) or config.ads.enabled
    if not needs:
        return None
    proxy = config.rewrite.proxy
    if proxy == "oracle":
        return str(resolve_model(config.student.model, workdir=paths.models))
    if proxy != "distinct":
        return str(resolve_model(proxy, workdir=paths.models))
    folder = paths.models / "proxy"
    if (folder / "config.json").exists():
        return str(folder)
    seed = 10_000 + max(config.seeds)
    pool, test = load_problems(config, seed)
    used = {p.question for s in config.seeds for p in load_problems(config, s)[0]}
    used |= {p.question for p in test}
    problems = [p for p in pool if p.question not in used]
    if not problems:
        raise BenchConfigError("no training problems left for the distinct proxy student")
    train_and_evaluate(
        config,
        paths,
        "proxy",
        [(p.question, p.solution) for p in problems],
        test,
        console,
        seed=seed,
        keep_model=folder,
        evaluate=False,
    )
    return str(folder)


# -- stage 4: antidistillation sampling ---------------------------------------------------------------------


def stage_ads(
    config: BenchConfig,
    paths: BenchPaths,
    train: Sequence[Problem],
    test: Sequence[Problem],
    forcer: TeacherForcer,
    console: Console,
    *,
    seed: int,
    proxy: str | None,
    utility: bool = False,
) -> None:
    """Standard and ADS decoding of the seed's training problems by a local teacher, a student on each."""
    a = config.ads
    if a.teacher == "student:clean":
        teacher_path = paths.models / f"clean-s{seed}"
        if not (teacher_path / "config.json").exists():
            console.print("  [yellow]ADS needs the clean student first: run the students stage[/yellow]")
            return
    else:
        teacher_path = Path(a.teacher)
    params = GenerationParams(max_new_tokens=config.teacher.max_new_tokens)
    runs = [("teacher-standard", "standard", 0.0)]
    runs += [(name, "ads", lam) for name, lam in zip(a.set_names(), a.lambdas, strict=True)]
    for name, decoding, lam in runs:
        target = paths.trace_set(name, seed)
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
            ads_proxy=a.proxy or proxy or "",
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
            "seed": seed,
            "teacher": str(teacher_path),
            "decoding": backend.info.decoding,
            "seconds_per_trace": seconds / max(1, len(rows)),
            "ms_per_token": 1000 * seconds / max(1, tokens),
            "tokens": tokens,
            **answer_stats(rows),
        }
        if decoding == "ads":
            meta["ads_stats"] = backend.ads.stats()
        meta["teacher_utility"] = forcer(rows) if utility else None
        write_trace_set(target, rows, meta)
        del backend


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
    shard: tuple[int, int] = (0, 1),
) -> dict:
    """Run (or resume) the benchmark into ``out``; returns the assembled results (also written to disk).
    ``shard = (k, n)``: this process trains only students ``k, k+n, ...`` (run ``n`` processes on one
    folder, then ``--only report``)."""
    console = console or Console(stderr=True)
    unknown = set(only) - set(STAGES)
    if unknown:
        raise BenchConfigError(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    if not 0 <= shard[0] < shard[1]:
        raise BenchConfigError(f"bad shard {shard[0]}/{shard[1]}: need 0 <= k < n")
    paths = BenchPaths(Path(out))
    _check_folder(config, paths, fresh and shard[0] == 0)
    if command:  # every command that contributed to this folder (stages may run in separate processes)
        log = paths.root / "command.txt"
        seen = log.read_text().splitlines() if log.exists() else []
        if command not in seen:
            log.write_text("\n".join([*seen, command]) + "\n")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(config.student.threads)
    splits = {seed: load_problems(config, seed) for seed in config.seeds}
    test = splits[config.seeds[0]][1]
    forcer = TeacherForcer(config, paths.models)
    first = config.seeds[0]
    proxy: str | None = None
    for stage in STAGES:
        if stage not in only:
            continue
        if on_stage:
            on_stage(stage)
        console.rule(f"[bold]{stage}")
        if stage == "traces":
            proxy = stage_proxy(config, paths, console)
            for seed in config.seeds:
                stage_clean(config, paths, splits[seed][0], forcer, console, seed=seed, utility=seed == first)
                stage_rewrites(config, paths, forcer, console, seed=seed, proxy=proxy, utility=seed == first)
                stage_adaptive(config, paths, console, seed=seed)
        elif stage == "students":
            stage_students(config, paths, test, console, shard=shard)
        elif stage == "ads" and config.ads.enabled:
            proxy = proxy or stage_proxy(config, paths, console)
            for seed in config.seeds:
                stage_ads(
                    config,
                    paths,
                    splits[seed][0],
                    test,
                    forcer,
                    console,
                    seed=seed,
                    proxy=proxy,
                    utility=seed == first,
                )
                stage_adaptive(config, paths, console, seed=seed)
            stage_students(config, paths, test, console, shard=shard)
        elif stage == "watermark":
            stage_watermark(config, paths, console)
    results = assemble(config, paths.root)
    if "report" in only:
        write_report(results, paths.root)
    return results
