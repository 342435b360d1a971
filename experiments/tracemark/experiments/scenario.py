"""Run the demo: a server on localhost, a distiller, two students, two investigations, signed reports."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from tracemark.experiments.demo_settings import DemoSize
from tracemark.experiments.distill import distill_student, save_student
from tracemark.forensics.channel.detect import blackbox_evidence, score_keys
from tracemark.forensics.reports import export_html
from tracemark.foundation.console import stage_progress
from tracemark.foundation.models.embedded import EMBEDDED_MODEL_ID, ensure_embedded_model
from tracemark.foundation.models.tiny import build_tiny_model
from tracemark.foundation.problems import generate_problems
from tracemark.server.app import TracemarkServer
from tracemark.server.auth import TokenStore, hash_token
from tracemark.server.client import Stubs, open_channel
from tracemark.server.config import load_settings
from tracemark.server.teacher.local import LocalTeacher
from tracemark.server.teacher.reference import ReferenceTeacher
from tracemark.v1 import forensics_pb2, teacher_pb2

DISTILLER = "distiller"
BYSTANDER_REQUESTS = 40  # Generate calls per other account (about 4 signed traces each at 10%)
INVESTIGATOR = "compliance-team"


@dataclass
class StudentVerdict:
    student: str
    trained_on: str
    verdict: str
    p_value: float
    attributed_account: str
    report_id: str
    report_html: str
    report_valid: bool
    expected: str
    # Accounts other than the distiller whose test rejected: false alarms (should be 0).
    false_alarms: int = 0
    accounts_tested: int = 0
    # The distributional channel: the provider-key test ("trained on our outputs") and the distiller's
    # account-key test (1.0 when not tested).
    provider_p: float = 1.0
    distilled_from_us: bool = False
    channel_p: float = 1.0

    @property
    def correct(self) -> bool:
        return self.verdict == self.expected and (
            self.expected != "detected" or self.attributed_account == DISTILLER
        )


@dataclass
class DemoResult:
    workdir: str
    seconds: float
    traces: int
    watermarked_traces: int
    answers_preserved: int
    verdicts: list[StudentVerdict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # Traces from the model replica (embedded teacher with the channel) and what they carry.
    model_traces: int = 0
    channel_in_harvest: dict = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return bool(self.verdicts) and all(v.correct for v in self.verdicts)

    def as_dict(self) -> dict:
        return {**asdict(self), "correct": self.correct}


def run_demo(size: DemoSize, *, workdir: Path, seed: int = 0, console: Console | None = None) -> DemoResult:
    """Run every stage; the caller prints the summary. Raises only on broken set-up."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "students").mkdir(parents=True)
    (workdir / "reports").mkdir()
    # Small models train faster on one thread than on two oversubscribed ones (measured here).
    torch.set_num_threads(1)

    # 1. Accounts, a fresh ledger and master key, the server on localhost.
    accounts = [DISTILLER] + [f"account-{i:02d}" for i in range(1, size.bystanders + 1)]
    tokens = {a: f"tm_demo_{a}_{seed}" for a in accounts}
    tokens[INVESTIGATOR] = f"tm_demo_{INVESTIGATOR}_{seed}"  # the compliance team's token (ForensicsService)
    problems = generate_problems(size.train_problems, seed=seed, difficulty=size.difficulty)
    bystander_problems = generate_problems(
        BYSTANDER_REQUESTS * size.bystanders, seed=seed + 10_000, difficulty=size.difficulty
    )
    teacher = ReferenceTeacher({p.question: p.solution for p in [*problems, *bystander_problems]})
    model_problems = generate_problems(size.model_traces, seed=seed + 20_000, difficulty=size.difficulty)
    embedded = ensure_embedded_model() if size.model_traces else None
    settings = load_settings(
        overrides={
            "server": {"address": "127.0.0.1:0"},
            # One channel spec for the deployment: the reference replica logs it, the model replica
            # decodes with it (the embedded model's vocabulary).
            "channel": {"tokenizer": str(embedded) if embedded else ""},
            "teacher": {"max_batch_size": 16, "max_queue": 256},
            "rewrite": {
                "default_pipeline": ["restructure", "watermark"],
                "watermark_fraction": size.watermark_fraction,
                "pairs_per_account": size.pairs_per_account,
                "target_digits": size.target_digits,
                "llm": "none",
            },
            "ledger": {
                "url": f"sqlite:///{workdir / 'ledger.db'}",
                "master_key_file": workdir / "master.key",
            },
            # the only suspects this server may investigate: the students trained below
            "forensics": {"model_roots": [workdir / "students"]},
        }
    )
    store = TokenStore({a: hash_token(t) for a, t in tokens.items()}, roles={INVESTIGATOR: "compliance"})
    server = TracemarkServer(settings, teacher=teacher, tokens=store)
    port = server.start()
    server.wait_ready(60)
    address = f"127.0.0.1:{port}"
    console.print(
        f"[bold]server[/bold] on {address}: teacher = {teacher.info.model_id}, pipeline "
        f"restructure → watermark ({size.watermark_fraction:.0%} of each account's traces), "
        f"{len(accounts)} accounts"
    )
    model_server = None
    if embedded is not None:
        # A replica on the same ledger and master key serving the embedded model: its traces carry the
        # distributional channel as well as the pairs.
        model_teacher = LocalTeacher(
            embedded,
            quantization="none",
            model_id=EMBEDDED_MODEL_ID,
            backend_name="embedded",
            max_batch_size=16,
        )
        model_server = TracemarkServer(settings, teacher=model_teacher, tokens=store)
        model_server.start()
        model_server.wait_ready(120)
        console.print(
            f"[bold]model replica[/bold] on 127.0.0.1:{model_server.port}: teacher = {EMBEDDED_MODEL_ID}, "
            f"decoding {model_server.runtime.channel_description()}"
        )
    try:
        # 2. The distiller harvests protected traces through real gRPC.
        t0 = time.perf_counter()
        distiller = Stubs(open_channel(address, token=tokens[DISTILLER]))
        harvested: list[tuple[str, str]] = []
        preserved = 0
        with stage_progress(console) as progress, ThreadPoolExecutor(8) as pool:
            task = progress.add_task("distiller: Generate (gRPC)", total=len(problems))

            def ask(problem):
                request = teacher_pb2.GenerateRequest(problem=problem.question)
                return problem, distiller.teacher.Generate(request, timeout=120)

            for problem, reply in pool.map(ask, problems):
                harvested.append((problem.question, reply.trace))
                preserved += int(reply.answer_preserved)
                progress.advance(task)
        distiller.close()
        model_harvest = _harvest_model_traces(model_server, model_problems, tokens[DISTILLER], size, console)
        harvested.extend((q, t) for q, t, _ in model_harvest)
        preserved += sum(kept for _, _, kept in model_harvest)
        watermarked = sum(server.runtime.issuer.issued_counts(DISTILLER).values())
        # The other accounts are ordinary customers: their own traffic delivers their pairs, which is what
        # makes them accusable (an account with no delivered pair cannot be investigated at all).
        with stage_progress(console) as progress, ThreadPoolExecutor(8) as pool:
            others = accounts[1:]
            task = progress.add_task("other customers: Generate (gRPC)", total=len(bystander_problems))
            clients = {a: Stubs(open_channel(address, token=tokens[a])) for a in others}

            def customer(i):
                request = teacher_pb2.GenerateRequest(problem=bystander_problems[i].question)
                return clients[others[i % len(others)]].teacher.Generate(request, timeout=120)

            for _ in pool.map(customer, range(len(bystander_problems))):
                progress.advance(task)
            for c in clients.values():
                c.close()
        timings["harvest_s"] = time.perf_counter() - t0
        control_examples = [(p.question, p.solution) for p in problems]
        channel_in_harvest = _channel_in_harvest(model_server, [t for _, t, _ in model_harvest])

        # 3. Two students with the same budget: one on protected traces, one on the originals.
        base = workdir / "students" / "base"
        if size.student == "tiny":
            build_tiny_model(base, hidden_size=size.student_hidden, layers=size.student_layers, seed=seed)
        else:
            base = Path(size.student)
        students = {}
        for name, examples in [("distilled", harvested), ("control", control_examples)]:
            t0 = time.perf_counter()
            with stage_progress(console) as progress:
                task = progress.add_task(f"train student '{name}'", total=None)

                def report(p, task=task, progress=progress):
                    progress.update(task, completed=p.step, total=p.total_steps)

                model, tokenizer = distill_student(
                    base,
                    examples,
                    method=size.method,
                    epochs=size.epochs,
                    lr=size.lr,
                    batch_size=size.batch_size,
                    max_length=size.max_length,
                    seed=seed,
                    progress=report,
                )
            students[name] = save_student(model, tokenizer, workdir / "students" / name)
            timings[f"train_{name}_s"] = time.perf_counter() - t0

        # 4. Investigate both students against every account, through ForensicsService.
        investigator = Stubs(open_channel(address, token=tokens[INVESTIGATOR]))
        verdict_names = {1: "detected", 2: "not_detected", 3: "inconclusive"}
        result = DemoResult(
            str(workdir),
            0.0,
            len(harvested),
            watermarked,
            preserved,
            timings=timings,
            model_traces=len(model_harvest),
            channel_in_harvest=channel_in_harvest,
        )
        for name, trained_on, expected in [
            ("distilled", "protected traces", "detected"),
            ("control", "original traces", "not_detected"),
        ]:
            t0 = time.perf_counter()
            request = forensics_pb2.InvestigateRequest(
                suspect=f"hf:{students[name]}", alpha=size.alpha, mode="white-box"
            )
            final = None
            with stage_progress(console) as progress:
                task = progress.add_task(f"investigate '{name}'", total=None)
                for event in investigator.forensics.Investigate(request, timeout=900):
                    if event.HasField("progress"):
                        progress.update(
                            task,
                            completed=event.progress.done,
                            total=event.progress.total or None,
                            description=f"investigate '{name}': {event.progress.stage}"[:34],
                        )
                    else:
                        final = event.result
            timings[f"investigate_{name}_s"] = time.perf_counter() - t0
            stored = investigator.forensics.GetReport(
                forensics_pb2.GetReportRequest(report_id=final.report_id), timeout=30
            )
            check = investigator.forensics.VerifyReport(
                forensics_pb2.VerifyReportRequest(report_id=final.report_id), timeout=30
            )
            html = workdir / "reports" / f"{name}.html"
            export_html(json.loads(stored.envelope_json), html)
            result.verdicts.append(
                StudentVerdict(
                    student=name,
                    trained_on=trained_on,
                    verdict=verdict_names.get(final.verdict, "unknown"),
                    p_value=final.p_value,
                    attributed_account=final.attributed_account,
                    report_id=final.report_id,
                    report_html=str(html),
                    report_valid=check.valid,
                    expected=expected,
                    false_alarms=sum(a.rejected for a in final.accounts if a.account != DISTILLER),
                    accounts_tested=len(final.accounts),
                    provider_p=final.provider_p_value if final.provider_tested else 1.0,
                    distilled_from_us=final.distilled_from_us,
                    channel_p=next(
                        (
                            a.channel_p_value
                            for a in final.accounts
                            if a.account == DISTILLER and a.channel_tested
                        ),
                        1.0,
                    ),
                )
            )
        investigator.close()
    finally:
        if model_server is not None:
            model_server.stop(grace=1)
        server.stop(grace=1)
    result.seconds = time.perf_counter() - started
    (workdir / "demo.json").write_text(json.dumps(result.as_dict(), indent=2))
    return result


def _harvest_model_traces(model_server, problems, token: str, size: DemoSize, console: Console) -> list:
    """The distiller's Generate calls to the model replica: ``[(problem, trace, answer_preserved), ...]``."""
    if model_server is None or not problems:
        return []
    stubs = Stubs(open_channel(f"127.0.0.1:{model_server.port}", token=token))
    params = teacher_pb2.GenerationParams(temperature=0.7, max_new_tokens=size.model_max_new_tokens)
    out = []
    try:
        with stage_progress(console) as progress, ThreadPoolExecutor(16) as pool:
            task = progress.add_task("distiller: Generate (model replica)", total=len(problems))

            def ask(problem):
                request = teacher_pb2.GenerateRequest(problem=problem.question, params=params)
                return problem, stubs.teacher.Generate(request, timeout=900)

            for problem, reply in pool.map(ask, problems):
                out.append((problem.question, reply.trace, int(reply.answer_preserved)))
                progress.advance(task)
    finally:
        stubs.close()
    return out


def _channel_in_harvest(model_server, traces: list[str]) -> dict:
    """What the operator (who holds the keys) measures in the model replica's traces: green share of their
    distinct tuples under the provider key and the distiller's key, with exact binomial p-values."""
    if model_server is None or not traces:
        return {}
    runtime = model_server.runtime
    evidence = blackbox_evidence(traces, spec=runtime.channel_spec, tokenizer=runtime.channel_tokenizer)
    keys = [runtime.master.channel_key(None), runtime.master.channel_key(DISTILLER)]
    tests = score_keys(evidence, keys, spec=runtime.channel_spec)
    return {
        label: {"n": t.n, "green": t.green, "fraction": round(t.fraction, 4), "p_value": t.p_value}
        for label, t in zip(("provider", DISTILLER), tests)
    }
