"""Run a calibration: build the null models, test fresh accounts against them, summarise.

One null run is one *fresh* account (a random key never delivered to any model) whose pairs, derived under
the scheme under test, are scored against one null model by the investigation's own procedure and combined
into one p-value; a false alarm is ``p <= alpha``. The null models:

* ``tiny``: tiny random models of four shapes (no training at all);
* ``student``: tiny students trained on traces watermarked with the pairs of *other* accounts
  (:mod:`~tracemark.forensics.calibrate.students`); their own delivered accounts are scored too, as a
  positive control (not a null run);
* ``model``: clean white-box models given by the caller; ``embedded``: SmolLM2-135M (opt-in, slow on CPU);
* salient-target accounts (:mod:`~tracemark.forensics.calibrate.favourites`), reported apart.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracemark.forensics.calibrate.favourites import summarise_favourites
from tracemark.forensics.calibrate.params import CalibrationParams, StudentRecipe
from tracemark.forensics.calibrate.result import CalibrationResult
from tracemark.forensics.calibrate.runner import (
    AccountTask,
    Job,
    ModelRef,
    Workers,
    fresh_key,
    run_jobs,
    split_tasks,
    v1_scheme,
)
from tracemark.forensics.calibrate.summary import (
    NullFamily,
    check_validity,
    family_wise,
    rate_check,
    verdict,
)
from tracemark.forensics.scheme import SignatureScheme
from tracemark.forensics.signatures import DERIVATION_VERSION, SignaturePair
from tracemark.foundation.models.embedded import ensure_embedded_model

ProgressFn = Callable[[str, int, int, str], None]
TINY_SHAPES = ((32, 1), (64, 2), (96, 2), (128, 2))
FAMILY_ORDER = ("tiny", "student", "model", "embedded")
V1_PER_SALIENT = 4  # v1 random-key accounts with a salient target, per salient-target account


def _delivered(scheme: SignatureScheme, seed: int, student: int, recipe: StudentRecipe) -> list[tuple]:
    out = []
    for a in range(recipe.accounts):
        index = student * recipe.accounts + a
        account = f"calibration-delivered-{seed}-{index:04d}"
        out.append((account, fresh_key(seed, "delivered", index)))
    return out


def _train_student_job(args: tuple) -> dict:
    """Worker entry point: weave the delivered accounts' pairs into traces and train one student."""
    from tracemark.forensics.calibrate import students  # deferred: imports torch

    folder, scheme_dict, delivered, recipe, seed = args
    scheme = SignatureScheme.from_dict(scheme_dict)
    pairs = [p for account, key in delivered for p in scheme.derive(key, account=account, key_version=1)]
    examples, woven = students.woven_examples(scheme, pairs, recipe, seed=seed)
    info = students.train_student(folder, examples, recipe, seed=seed)
    return {**info, "woven_traces": woven, "delivered_pairs": len(pairs)}


def _build_tiny(folder: Path, shape: tuple[int, int], seed: int) -> None:
    from tracemark.forensics.calibrate import students  # deferred: imports torch

    students.build_tiny_model(folder, hidden_size=shape[0], layers=shape[1], seed=seed)


def _models(params: CalibrationParams, workdir: Path, workers: Workers, emit: Any) -> tuple[list, dict]:
    """The null models (built or trained under ``workdir``) and what is known about each."""
    seed = params.seed
    models: list[ModelRef] = []
    info: dict[str, dict] = {}
    for i in range(params.tiny_models):
        shape = TINY_SHAPES[i % len(TINY_SHAPES)]
        name = f"tiny-{i}(h={shape[0]},l={shape[1]})"
        _build_tiny(workdir / f"tiny-{i}", shape, seed * 1000 + i)
        models.append(ModelRef("tiny", name, f"hf:{workdir / f'tiny-{i}'}"))
        info[name] = {"family": "tiny", "seed": seed * 1000 + i}
    recipe = params.student
    jobs = [
        (
            str(workdir / f"student-{j}"),
            params.scheme.as_dict(),
            _delivered(params.scheme, seed, j, recipe),
            recipe,
            seed * 1000 + 500 + j,
        )
        for j in range(params.students)
    ]
    emit("train", 0, len(jobs), f"training {len(jobs)} student(s)")
    for done, (j, trained) in enumerate(workers.map(_train_student_job, jobs), start=1):
        name = f"student-{j}(h={recipe.hidden_size},l={recipe.layers})"
        info[name] = {"family": "student", "training": trained, "delivered_accounts": recipe.accounts}
        emit("train", done, len(jobs), f"student {j}: loss {trained['last_loss']}")
    for j in range(params.students):
        name = f"student-{j}(h={recipe.hidden_size},l={recipe.layers})"
        models.append(ModelRef("student", name, f"hf:{jobs[j][0]}"))
    for spec in params.models:
        s = spec if ":" in spec.split("/")[0] else f"hf:{spec}"
        models.append(ModelRef("model", s, s))
        info[s] = {"family": "model"}
    if params.embedded:
        models.append(ModelRef("embedded", "embedded SmolLM2-135M-Instruct", f"hf:{ensure_embedded_model()}"))
        info[models[-1].name] = {"family": "embedded"}
    return models, info


def _first_phase(params: CalibrationParams, models: list[ModelRef], beacon: str) -> list[Job]:
    scheme, seed = params.scheme, params.seed
    main = [m for m in models if m.family != "embedded"]
    runs = dict(zip([m.name for m in main], params.split_runs(len(main)), strict=True))
    jobs = []
    index = 0
    for r, m in enumerate(models):
        n = params.embedded_runs if m.family == "embedded" else runs[m.name]
        tasks = []
        for _ in range(n):
            account = f"calibration-fresh-{seed}-{index:06d}"
            tasks.append(AccountTask("fresh", account, key=fresh_key(seed, "fresh", index)))
            index += 1
        if m.family == "student":
            j = int(m.name.split("-")[1].split("(")[0])
            tasks += [
                AccountTask("delivered", a, key=k) for a, k in _delivered(scheme, seed, j, params.student)
            ]
        triggers = tuple(
            p.trigger for a in range(params.salient_accounts) for p in _favourite_pairs(params, r, a)
        )
        job = Job(m, scheme.as_dict(), tuple(tasks), triggers, beacon)
        jobs += split_tasks(job, params.workers)
    return jobs


def _favourite_pairs(params: CalibrationParams, source: int, a: int) -> list[SignaturePair]:
    account = f"calibration-favourite-{params.seed}-{source}-{a}"
    return params.scheme.derive(
        fresh_key(params.seed, "favourite", source * 10_000 + a), account=account, key_version=1
    )


def _favourite_tasks(params: CalibrationParams, models: list[ModelRef], found: dict) -> list[AccountTask]:
    """Salient-target accounts built from each source model's favourites (v2: eligible; v1: overall)."""
    tasks = []
    for r, m in enumerate(models):
        for a in range(params.salient_accounts):
            base = _favourite_pairs(params, r, a)
            for variant, slot in (("v2", 0), ("v1", 1)):
                targets = [found[m.name].get(p.trigger, (None, None))[slot] for p in base]
                if any(t is None for t in targets):
                    continue
                derivation = base[0].derivation if variant == "v2" else DERIVATION_VERSION
                account = f"{base[0].account}-{variant}"
                pairs = tuple(
                    SignaturePair(account, 1, p.index, p.trigger, t, derivation)
                    for p, t in zip(base, targets, strict=True)
                )
                tasks.append(
                    AccountTask(
                        f"favourite-{variant}", account, pairs=pairs, v1=variant == "v1", source=m.name
                    )
                )
    return tasks


def v1_salient_accounts(
    scheme: SignatureScheme, count: int, key: Callable[[int], bytes], prefix: str
) -> tuple[list[AccountTask], int]:
    """The first ``count`` random keys whose *v1* pairs have a target in the public salient set (the
    accounts ``tm-sig-v2`` no longer produces), as tasks scored under v1; and how many keys were drawn."""
    v1 = v1_scheme(scheme)
    tasks: list[AccountTask] = []
    drawn = 0
    while len(tasks) < count and drawn < 1000 * max(1, count):
        account = f"{prefix}-{drawn:06d}"
        pairs = v1.derive(key(drawn), account=account, key_version=1)
        drawn += 1
        if any(scheme.salient_for(p.trigger).contains_text(p.target) for p in pairs):
            tasks.append(AccountTask("v1-salient", account, pairs=tuple(pairs), v1=True))
    return tasks, drawn


def run_calibration(
    params: CalibrationParams | None = None,
    *,
    workdir: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> CalibrationResult:
    """Measure the detection test's false-alarm rates under H0 (see the module doc); ``params`` default
    :class:`CalibrationParams()`. Models are built under ``workdir`` (default: a temporary folder)."""
    params = params if params is not None else CalibrationParams()
    started = time.perf_counter()

    def emit(stage: str, done: int, total: int, message: str = "") -> None:
        if progress is not None:
            progress(stage, done, total, message)

    own = tempfile.TemporaryDirectory(prefix="tracemark-calibrate-") if workdir is None else None
    root = Path(own.name if own is not None else workdir)
    beacon = f"tracemark-calibration/2:{params.seed}"
    try:
        with Workers(params.workers) as workers:
            models, info = _models(params, root, workers, emit)
            jobs = _first_phase(params, models, beacon)
            total = sum(len(j.tasks) for j in jobs)
            done = [0]

            def tick(stage: str, total: int) -> Callable[[int], None]:
                def step(n: int) -> None:
                    done[0] += n
                    emit(stage, done[0], total, f"{done[0]}/{total} accounts")

                return step

            first = run_jobs(workers, jobs, tick("score", total))
            found: dict[str, dict] = {m.name: {} for m in models}
            for res in first:
                found[res.model.name].update(res.favourites)
                info[res.model.name]["identity"] = res.identity
                info[res.model.name]["seconds"] = info[res.model.name].get("seconds", 0.0) + res.seconds
            tasks = tuple(_favourite_tasks(params, models, found))
            v1_tasks, v1_drawn = v1_salient_accounts(
                params.scheme,
                V1_PER_SALIENT * params.salient_accounts,
                lambda i: fresh_key(params.seed, "v1", i),
                f"calibration-v1-{params.seed}",
            )
            second_jobs = []
            for m in models:
                # the embedded model scores only its own favourites and a few v1 accounts: the rest would be
                # censored searches of a minute each on a CPU
                if m.family == "embedded":
                    mine = tuple(t for t in tasks if t.source == m.name) + tuple(
                        v1_tasks[: params.salient_accounts]
                    )
                else:
                    mine = tasks + tuple(v1_tasks)
                if mine:
                    second_jobs += split_tasks(
                        Job(m, params.scheme.as_dict(), mine, (), beacon), params.workers
                    )
            done[0] = 0
            second = run_jobs(workers, second_jobs, tick("salient", sum(len(j.tasks) for j in second_jobs)))
    finally:
        if own is not None:
            own.cleanup()
    tests = [t for r in first + second for t in r.tests]
    v1 = {"v1_keys_drawn": v1_drawn, "v1_keys_with_salient_target": len(v1_tasks)}
    return _summarise(params, models, info, tests, found, v1, time.perf_counter() - started)


def _summarise(
    params: CalibrationParams, models: list, info: dict, tests: list, found: dict, v1: dict, seconds: float
) -> CalibrationResult:
    levels, conf, alpha = params.levels, params.conf, params.alpha
    fresh = [t for t in tests if t.kind == "fresh"]
    families = [
        NullFamily.of(name, [t for t in fresh if t.family == name], levels, conf)
        for name in FAMILY_ORDER
        if any(t.family == name for t in fresh)
    ]
    overall = NullFamily.of("overall", fresh, levels, conf)
    problems = check_validity([t for t in tests if t.kind != "delivered"])
    status, reasons = verdict(overall, families, alpha, problems)
    delivered = [t for t in tests if t.kind == "delivered"]
    n_fav = sum(1 for v in found.values() for pair in v.values() if pair[0] is not None)
    salient_favourites = {  # per model: (triggers whose favourite overall is salient, triggers with one)
        name: [
            sum(params.scheme.salient_for(t).contains_text(f[1]) for t, f in v.items() if f[1] is not None),
            sum(f[1] is not None for f in v.values()),
        ]
        for name, v in found.items()
    }
    return CalibrationResult(
        params=params,
        models=[{"name": m.name, **info.get(m.name, {})} for m in models],
        tests=tests,
        families=families,
        overall=overall,
        family_wise=family_wise(fresh, params.family_size, alpha, conf),
        salient=summarise_favourites(tests, alpha, conf, rate_check)
        | {
            "triggers_searched": sum(len(v) for v in found.values()),
            "triggers_with_eligible_favourite": n_fav,
            "favourite_overall_is_salient": salient_favourites,
            **v1,
        },
        positive={
            "accounts": len(delivered),
            "rejected": sum(t.p_value <= alpha for t in delivered),
            "log10_p": [round(t.log10_p, 2) for t in delivered],
        },
        status=status,
        reasons=reasons,
        seconds=seconds,
    )
