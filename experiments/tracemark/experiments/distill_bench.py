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
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from tracemark.experiments.distill_config import BenchConfig, BenchConfigError
from tracemark.foundation.console import stage_progress
from tracemark.foundation.problems import Problem, generate_problems, load_gsm8k_jsonl

__all__ = ["STAGES", "BenchPaths", "run_distill_bench"]

STAGES = ("traces", "students", "ads", "watermark", "report")


class BenchPaths:
    """Where each stage's output lives inside the results folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.traces = root / "traces"
        self.students = root / "students"
        self.models = root / "models"
        self.watermark = root / "watermark"
        self.plots = root / "plots"

    def make(self) -> None:
        for folder in (self.traces, self.students, self.models, self.watermark, self.plots):
            folder.mkdir(parents=True, exist_ok=True)

    def trace_set(self, name: str) -> Path:
        return self.traces / f"{name}.jsonl"

    def student(self, name: str) -> Path:
        return self.students / f"{name}.json"



def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    tmp.replace(path)  # atomic: a killed run never leaves half a stage file


def _write_trace_set(path: Path, rows: list[dict], meta: dict) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"meta": meta}, ensure_ascii=False) + "\n")
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_trace_set(path: Path) -> tuple[dict, list[dict]]:
    """``(meta, rows)`` of a trace-set file; rows have ``question``, ``trace``, ``answer``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0])["meta"], [json.loads(line) for line in lines[1:] if line.strip()]


# -- problems and models ----------------------------------------------------------------------------


def load_problems(config: BenchConfig) -> tuple[list[Problem], list[Problem]]:
    """(train, test): the test set comes first, so it does not change when ``train`` grows."""
    p = config.problems
    total = p.train + p.test
    if p.source == "gsm8k":
        problems = load_gsm8k_jsonl(p.path)
        if len(problems) < total:
            raise BenchConfigError(f"{p.path} has {len(problems)} problems, the config needs {total}")
        problems = random.Random(config.seed).sample(problems, total)
    else:
        problems = generate_problems(
            total, seed=1000 + config.seed, difficulty=p.difficulty, annotations=False
        )
    return problems[p.test :], problems[: p.test]


def resolve_model(name: str, *, workdir: Path, seed: int = 0) -> Path:
    """'embedded' → the embedded SmolLM2 folder; 'tiny' → a fresh random tiny model; else a folder."""
    if name == "embedded":
        from tracemark.foundation.models.embedded import ensure_embedded_model

        return ensure_embedded_model()
    if name == "tiny":
        from tracemark.foundation.models.tiny import build_tiny_model

        target = workdir / f"tiny-base-{seed}"
        if not (target / "config.json").exists():
            build_tiny_model(target, hidden_size=64, layers=2, heads=4, seed=seed)
        return target
    path = Path(name).expanduser()
    if not path.exists():
        raise BenchConfigError(f"model folder not found: {path}")
    return path


def _chat_backend(kind: str, model: str, endpoint: str, key_env: str, max_batch: int = 8) -> Any:
    from tracemark.server.config import TeacherSection
    from tracemark.server.teacher.factory import build_teacher

    if kind == "openai":
        section = TeacherSection(backend="openai", model=model, endpoint=endpoint, api_key_env=key_env)
    elif kind == "embedded":
        section = TeacherSection(
            backend="embedded", quantization="none", device="cpu", max_batch_size=max_batch
        )
    else:
        section = TeacherSection(
            backend="transformers", model=model, quantization="none", device="auto", max_batch_size=max_batch
        )
    return build_teacher(section)


# -- stage 1: clean traces ----------------------------------------------------------------------------


def _teacher_traces(
    config: BenchConfig, train: Sequence[Problem], console: Console
) -> tuple[list[str], dict]:
    t = config.teacher
    if t.kind == "reference":
        return [p.solution for p in train], {"teacher": "reference solutions", "seconds_per_trace": 0.0}
    from tracemark.server.teacher.base import GenerationParams

    backend = _chat_backend(t.kind, t.model, t.endpoint, t.api_key_env)
    params = GenerationParams(max_new_tokens=t.max_new_tokens)
    traces, _, seconds = generate_all(
        backend, train, params, batch=8, label="teacher traces", console=console
    )
    return traces, {"teacher": backend.info.model_id, "seconds_per_trace": seconds / max(1, len(train))}


def generate_all(
    backend: Any, problems: Sequence[Problem], params: Any, *, batch: int, label: str, console: Console
) -> tuple[list[str], int, float]:
    """(traces, completion tokens, seconds): ``backend`` answers every problem, ``batch`` at a time."""
    traces: list[str] = []
    tokens = 0
    start = time.perf_counter()
    with stage_progress(console) as progress:
        task = progress.add_task(label, total=len(problems))
        for i in range(0, len(problems), batch):
            chunk = problems[i : i + batch]
            outs = backend.generate_batch([[{"role": "user", "content": p.question}] for p in chunk], params)
            traces.extend(o.text for o in outs)
            tokens += sum(o.completion_tokens for o in outs)
            progress.advance(task, len(chunk))
    return traces, tokens, time.perf_counter() - start


def _answer_stats(rows: list[dict]) -> dict:
    from tracemark.plugins.answers import answers_match, extract_final_answer

    correct = sum(answers_match(r["answer"], extract_final_answer(r["trace"])) for r in rows)
    return {"n": len(rows), "answer_correct": correct, "answer_correct_rate": correct / max(1, len(rows))}


class _Forcer:
    """Answer-forced teacher accuracy of a trace set (model loaded once)."""

    def __init__(self, config: BenchConfig, workdir: Path) -> None:
        self.config, self.workdir, self._model = config, workdir, None

    def __call__(self, rows: list[dict]) -> dict | None:
        from tracemark.experiments.answer_forcing import teacher_accuracy

        spec = self.config.teacher.forcing_model
        if not spec:
            return None
        if self._model is None:
            if spec == "teacher":
                t = self.config.teacher
                if t.kind != "openai":
                    raise BenchConfigError("teacher.forcing_model = 'teacher' needs teacher.kind = 'openai'")
                from tracemark.server.llm import DirectLLM

                self._model = (DirectLLM(_chat_backend("openai", t.model, t.endpoint, t.api_key_env)), None)
            else:
                from tracemark.experiments.distill import load_student

                self._model = load_student(
                    resolve_model(spec, workdir=self.workdir), device=self.config.student.device
                )
        model, tok = self._model
        report = teacher_accuracy(
            model, [(r["question"], r["trace"], r["answer"]) for r in rows], tokenizer=tok, workers=4
        )
        return {
            "model": spec,
            "accuracy": report.accuracy,
            "ci95": [report.ci_low, report.ci_high],
            "unanswered": report.unanswered,
        }


def stage_clean(
    config: BenchConfig, paths: BenchPaths, train: Sequence[Problem], forcer: _Forcer, console: Console
) -> None:
    target = paths.trace_set("clean")
    if target.exists():
        return
    traces, meta = _teacher_traces(config, train, console)
    rows = [
        {"question": p.question, "trace": t, "answer": p.answer} for p, t in zip(train, traces, strict=True)
    ]
    meta.update(method="clean", **_answer_stats(rows))
    meta["teacher_forced"] = forcer(rows)
    _write_trace_set(target, rows, meta)


# -- stage 2: rewritten trace sets ----------------------------------------------------------------------


def _rewrite_llm(config: BenchConfig) -> Any:
    r = config.rewrite
    if r.llm == "none":
        return None
    from tracemark.server.llm import DirectLLM, QueuedLLM

    backend = _chat_backend(r.llm, r.llm_model, r.llm_endpoint, r.llm_api_key_env, max_batch=r.workers)
    if r.llm == "openai":
        return DirectLLM(backend)
    from tracemark.server.batching import GenerationQueue

    queue = GenerationQueue(backend, max_batch=r.workers, window_s=0.05, max_queue=4096)
    return QueuedLLM(queue, backend.info.model_id, timeout_s=r.timeout_s * 4)


def stage_rewrites(config: BenchConfig, paths: BenchPaths, forcer: _Forcer, console: Console) -> None:
    from tracemark.plugins.api import RewriteContext
    from tracemark.plugins.builtin.llm_base import LLMRewriter
    from tracemark.plugins.loader import RewriterRegistry
    from tracemark.plugins.pipeline import RewritePipeline

    pending = [m for m in config.rewrite.methods if not paths.trace_set(m).exists()]
    if not pending:
        return
    _, clean = read_trace_set(paths.trace_set("clean"))
    registry = RewriterRegistry.discover(strict=False)
    pipeline = RewritePipeline(registry, timeout_s=config.rewrite.timeout_s, retries=1)
    llm = None
    for method in pending:
        options = {method: config.rewrite.options[method]} if method in config.rewrite.options else {}
        pipeline.prepare([method], options)  # unknown rewriter or bad options: fail before any work
        llm_method = issubclass(registry.get(method), LLMRewriter)
        if llm is None and llm_method:
            llm = _rewrite_llm(config)
        results: list[Any] = [None] * len(clean)
        # LLM rewriters batch concurrent calls; gradient rewriters are compute-bound with a wall-clock
        # budget per trace, so running them concurrently would only starve each of them.
        workers = config.rewrite.workers if llm_method else 1
        start = time.perf_counter()
        with stage_progress(console) as progress, ThreadPoolExecutor(workers) as pool:
            task = progress.add_task(f"rewrite: {method}", total=len(clean))

            def one(
                i: int,
                method: str = method,
                options: dict = options,
                task: Any = task,
                llm: Any = llm,
                results: list = results,
            ) -> None:
                row = clean[i]
                context = RewriteContext(
                    problem=row["question"],
                    trace_id=f"bench-{method}-{i}",
                    rng=random.Random(config.seed * 1_000_003 + i),
                    llm=llm,
                )
                results[i] = pipeline.run(row["trace"], names=[method], options=options, context=context)
                progress.advance(task)

            list(pool.map(one, range(len(clean))))
        wall = time.perf_counter() - start
        rows, guards = [], {}
        step_seconds = 0.0
        for row, result in zip(clean, results, strict=True):
            step = result.steps[0]
            guards[step.guard] = guards.get(step.guard, 0) + 1
            step_seconds += step.seconds
            rows.append({**row, "trace": result.trace, "guard": step.guard})
        meta = {
            "method": method,
            "guards": guards,
            "rewritten": sum(v for k, v in guards.items() if k in ("preserved", "preserved_after_retry")),
            "answer_preserved": sum(r.answer_preserved for r in results),
            # Cost = wall time / traces (throughput, batching included); latency = mean time per step.
            "seconds_per_trace": wall / max(1, len(rows)),
            "latency_seconds": step_seconds / max(1, len(rows)),
            "wall_seconds": wall,
            "workers": workers,
            "options": options.get(method, {}),
            **_answer_stats(rows),
        }
        meta["teacher_forced"] = forcer(rows)
        _write_trace_set(paths.trace_set(method), rows, meta)
        console.print(
            f"  {method}: rewritten {meta['rewritten']}/{len(rows)}, answers preserved "
            f"{meta['answer_preserved']}/{len(rows)}, {meta['seconds_per_trace']:.2f} s/trace"
        )


# -- stage 3: students ------------------------------------------------------------------------------------


def _evaluate_student(model: Any, tok: Any, config: BenchConfig, test: Sequence[Problem]) -> dict:
    from tracemark.experiments.evaluate import forced_answers, generate_traces, heldout_nll
    from tracemark.plugins.answers import answers_match, extract_final_answer

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
    import torch
    from tracemark.experiments.distill import distill_student, load_student, save_student

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
    _write_json(target, result)
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
    forcer: _Forcer,
    console: Console,
) -> None:
    from tracemark.server.config import TeacherSection
    from tracemark.server.teacher.base import GenerationParams
    from tracemark.server.teacher.factory import build_teacher

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
            **_answer_stats(rows),
        }
        if decoding == "ads":
            meta["ads_stats"] = backend.ads.stats()
        meta["teacher_forced"] = forcer(rows)
        _write_trace_set(target, rows, meta)
        del backend
    for name, _, _ in runs:
        _, rows = read_trace_set(paths.trace_set(name))
        train_and_evaluate(config, paths, name, [(r["question"], r["trace"]) for r in rows], test, console)


# -- stage 5: watermark detection ------------------------------------------------------------------------


def stage_watermark(config: BenchConfig, paths: BenchPaths, console: Console) -> None:
    from tracemark.experiments.demo_settings import DEFAULT
    from tracemark.experiments.scenario import run_demo

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
            _write_json(target, data)


# -- driver ---------------------------------------------------------------------------------------------


def _check_folder(config: BenchConfig, paths: BenchPaths, fresh: bool) -> None:
    stamp = paths.root / "config.fingerprint"
    if stamp.exists() and stamp.read_text().strip() != config.fingerprint() and not fresh:
        raise BenchConfigError(
            f"{paths.root} holds results of a different config; use another --out or pass --fresh"
        )
    if fresh and paths.root.exists():
        import shutil

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
    from tracemark.experiments.distill_report import assemble, write_report

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
    import torch

    torch.set_num_threads(config.student.threads)
    train, test = load_problems(config)
    forcer = _Forcer(config, paths.models)
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
