"""`tracemark investigate` and `tracemark calibrate` (typer command functions mounted by the CLI)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from tracemark.forensics.adapters import SuspectError, SuspectSpecError, parse_suspect
from tracemark.forensics.calibrate import CalibrationError, CalibrationParams, StudentRecipe, run_calibration
from tracemark.forensics.investigate import InvestigationError, InvestigationParams, run_investigations
from tracemark.forensics.issuer import SignatureIssuer
from tracemark.forensics.keys import MasterKeyError, MasterSecret
from tracemark.forensics.ledger.db import LedgerError, default_ledger_url, make_engine
from tracemark.foundation.console import fail, stage_progress
from tracemark.foundation.errors import first_line

# the command-line option of each parameter field (InvestigationParams, CalibrationParams), for messages
OPTIONS = {
    "alpha": "--alpha",
    "mode": "--mode",
    "correction": "--correction",
    "query_budget": "--budget",
    "samples_per_pair": "--samples-per-pair",
    "runs": "--runs",
    "tiny_models": "--tiny-models",
    "students": "--students",
    "student_accounts": "--student-accounts",
    "student_epochs": "--student-epochs",
    "embedded_runs": "--embedded-runs",
    "salient_accounts": "--salient-accounts",
    "family_size": "--family-size",
    "workers": "--workers",
    "digits": "--digits",
    "pairs_per_account": "--pairs-per-account",
    "contexts": "--context",
}


def _param_message(exc: InvestigationError | CalibrationError) -> str:
    """``exc``'s message, naming the command-line option instead of the parameter (``--budget ...``)."""
    message = first_line(exc)
    field = exc.field or ""
    option = OPTIONS.get(field)
    if option and message.startswith(f"{field} "):
        return option + message[len(field) :]
    return message


def _open_ledger(url: str | None) -> Any:
    try:
        return make_engine(url or default_ledger_url())
    except LedgerError as exc:
        fail(str(exc))


def _load_master(key_file: Path | None) -> Any:
    try:
        return MasterSecret.load(path=key_file, create=False)
    except MasterKeyError as exc:
        fail(str(exc))


def _fmt_p(p: float, log10_p: float | None = None) -> str:
    if p > 0 and math.isfinite(p):
        return f"{p:.3g}"
    return f"10^{log10_p:.1f}" if log10_p is not None else "0"


def _read_prompts(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    prompts = [line for line in lines if line]
    if not prompts:
        fail(f"{path} holds no prompt")
    return prompts


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer  # deferred: transformers only when a tokenizer is given

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        fail(f"cannot load the channel tokenizer from {path}: {first_line(exc)}")


def channel_table(suspect: str, section: dict) -> Table:
    """The channel tests of one suspect: n, green, fraction and p per key."""
    evidence = section.get("evidence") or {}
    n, texts = evidence.get("distinct_tuples", 0), evidence.get("texts", 0)
    title = f"{suspect}: channel test ({section.get('mode')}, {n} distinct tuples from {texts} texts)"
    table = Table(title=title)
    for col in ("key", "n", "green", "fraction", "p-value"):
        table.add_column(col, justify="left" if col == "key" else "right")
    rows = list(section.get("provider", {}).get("tests", []))
    for account in (section.get("accounts") or {}).values():
        rows.extend((account or {}).get("tests", []))
    for r in rows:
        table.add_row(
            str(r.get("key")),
            str(r.get("n")),
            str(r.get("green")),
            f"{r.get('fraction', 0.0):.3f} (gamma {r.get('gamma')})",
            _fmt_p(r.get("p_value", 1.0), r.get("log10_p")),
        )
    return table


def provider_line(provider: dict | None, section: dict) -> str:
    """The "distilled from us" headline (provider key), with the decoy-key check."""
    decoys = section.get("decoy_check") or {}
    status = "passed" if decoys.get("passed") else "FAILED (channel evidence not used)"
    check = (
        f"decoy-key check: {decoys.get('decoy_keys')} decoys, {status}" if decoys else "no decoy-key check"
    )
    if section.get("error"):
        check = f"{section['error']}; {check}"
    if provider is None:
        return f"provider key: not tested (no provider-key commitment logged); {check}"
    verdict = "DISTILLED FROM US" if provider.get("rejected") else "not detected"
    p = _fmt_p(provider.get("p_value") or 0.0, provider.get("log10_p"))
    adjusted = _fmt_p(provider.get("adjusted_p_value", 1.0))
    return (
        f"provider key: [bold]{verdict}[/bold]; p = {p} (adjusted {adjusted}, "
        f"provider alpha = {provider.get('alpha'):g}); {check}"
    )


def investigate_command(
    suspect: Annotated[
        list[str],
        typer.Option(
            "--suspect",
            "-s",
            help="Suspect model: hf:PATH | gguf:PATH | openai:URL#MODEL | tracemark:ADDR (repeatable).",
            show_default=False,
        ),
    ],
    account: Annotated[
        list[str] | None,
        typer.Option(
            "--account",
            "-a",
            help="Account to score (repeatable). Default: every account with delivered pairs. The correction "
            "always covers all of them, so narrowing the list never lowers a p-value.",
        ),
    ] = None,
    alpha: Annotated[
        float,
        typer.Option(
            help="Level over accounts x suspects, fixed up front (family-wise error with holm, false "
            "discovery rate with fdr_bh)."
        ),
    ] = 1e-3,
    mode: Annotated[
        str, typer.Option(help="white-box | black-box | auto (white-box for local models).")
    ] = "auto",
    budget: Annotated[
        int, typer.Option(help="Black-box query budget (sampled completions) per suspect.")
    ] = 200,
    correction: Annotated[str, typer.Option(help="Multiplicity correction: holm | fdr_bh.")] = "holm",
    sequential: Annotated[
        bool, typer.Option("--sequential/--fixed", help="Anytime-valid e-process that may stop early.")
    ] = False,
    ledger: Annotated[
        str | None,
        typer.Option(help="Ledger URL. Default: $TRACEMARK_LEDGER_URL, else <data dir>/ledger.db."),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(help="Master secret file (default: $TRACEMARK_MASTER_KEY[_FILE], data dir)."),
    ] = None,
    temperature: Annotated[float, typer.Option(help="Black-box sampling temperature (0 = greedy).")] = 0.0,
    samples_per_pair: Annotated[
        int | None, typer.Option(help="Black-box completions per pair (default: budget / pairs).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Per-request time-out in seconds (remote suspects).")] = 60.0,
    rate_limit: Annotated[
        float | None, typer.Option(help="Maximum requests per second to a remote suspect.")
    ] = None,
    retries: Annotated[int, typer.Option(help="Retries with exponential back-off per request.")] = 4,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the outcome (verdicts, report ids) as JSON.")
    ] = None,
    channel: Annotated[
        bool,
        typer.Option(
            "--channel/--no-channel",
            help="Also test the distributional channel (provider key and account keys) when it was logged.",
        ),
    ] = True,
    channel_prompts: Annotated[
        Path | None,
        typer.Option(help="Public held-out prompts for the channel test, one per line (default: built-in)."),
    ] = None,
    channel_samples: Annotated[int, typer.Option(help="Channel test: completions per prompt.")] = 1,
    channel_tokens: Annotated[int, typer.Option(help="Channel test: tokens per completion.")] = 128,
    channel_tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="Tokenizer folder the channel was decoded with (re-tokenizes completions of suspects "
            "with another vocabulary; default: the suspect's own when it matches)."
        ),
    ] = None,
    provider_alpha: Annotated[
        float | None, typer.Option(help="Level of the provider-key test (default: --alpha).")
    ] = None,
) -> None:
    """Investigate suspect model(s) for this server's keyed signatures; sign an evidence report each.

    Pre-registered in the transparency log before the first query; no seed exists.

    Pairs, candidate space and scoring contexts are those logged when the pairs were issued.
    """
    try:
        params = InvestigationParams(
            alpha=alpha,
            mode=mode,
            correction=correction,
            query_budget=budget,
            sequential=sequential,
            accounts=account or None,
            temperature=temperature,
            samples_per_pair=samples_per_pair,
            channel=channel,
            channel_prompts=_read_prompts(channel_prompts),
            channel_samples=channel_samples,
            channel_max_new_tokens=channel_tokens,
            provider_alpha=provider_alpha,
        )
    except InvestigationError as exc:
        fail(_param_message(exc))
    tokenizer = _load_tokenizer(channel_tokenizer) if channel_tokenizer is not None else None
    if not suspect:
        fail("give at least one --suspect")
    adapters = []
    for spec in suspect:
        try:
            adapters.append(parse_suspect(spec, timeout=timeout, rate_limit=rate_limit, max_retries=retries))
        except SuspectSpecError as exc:
            fail(str(exc))
    master = _load_master(key_file)
    engine = _open_ledger(ledger)
    try:
        SignatureIssuer(master=master, engine=engine)  # refuses a ledger written under another secret
    except Exception as exc:
        fail(first_line(exc))
    console = Console(stderr=True)
    with stage_progress(console) as progress:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int, message: str = "") -> None:
            task = tasks.get(stage)
            if task is None:
                task = tasks[stage] = progress.add_task(stage, total=total or None)
            progress.update(task, completed=done, total=total or None, description=f"{stage}: {message}"[:40])

        try:
            outcomes = run_investigations(
                suspects=adapters,
                params=params,
                engine=engine,
                master=master,
                progress=report,
                channel_tokenizer=tokenizer,
            )
        except InvestigationError as exc:
            fail(_param_message(exc))
        except LedgerError as exc:
            fail(first_line(exc))
        except SuspectError as exc:
            fail(first_line(exc), code=1)
        finally:
            for a in adapters:
                a.close()
    out = Console()
    for o in outcomes:
        stats_channel = o.report.get("statistics", {}).get("channel")
        if stats_channel is not None:
            out.print(channel_table(o.suspect, stats_channel))
            out.print(provider_line(o.provider, stats_channel))
        table = Table(title=f"{o.suspect}: {o.verdict.upper()} ({o.mode}, {o.queries} queries)")
        columns = ["account", "pairs", "ranks", "of N"]
        columns += ["pair p", "channel p"] if stats_channel is not None else []
        for col in [*columns, "p-value", "adjusted p", "rejected"]:
            table.add_column(col, justify="left" if col == "account" else "right")
        for a in sorted(o.accounts, key=lambda r: (not r.rejected, r.adjusted_p_value, r.log10_p)):
            extra = []
            if stats_channel is not None:
                channel_row = a.channel or {}
                extra = [
                    _fmt_p(a.pair_p_value, a.pair_log10_p) if a.pair_p_value is not None else "-",
                    _fmt_p(channel_row.get("p_value") or 0.0, channel_row.get("log10_p"))
                    if a.channel
                    else "-",
                ]
            table.add_row(
                a.account,
                f"{a.pairs}/{a.pairs_total}",
                ",".join(str(p.rank) for p in a.pair_results),
                ",".join(str(p.n_candidates) for p in a.pair_results),
                *extra,
                _fmt_p(a.anytime_p if a.anytime_p is not None else a.p_value, a.log10_p),
                _fmt_p(a.adjusted_p_value),
                "yes" if a.rejected else "no",
                style="bold red" if a.rejected else None,
            )
        out.print(table)
        who = f", attributed to account {o.attributed_account!r}" if o.attributed_account else ""
        out.print(
            f"verdict: [bold]{o.verdict}[/bold]{who}; p = {_fmt_p(o.p_value, o.log10_p)} "
            f"(adjusted {_fmt_p(o.adjusted_p_value)}, alpha = {alpha:g}, {correction})"
            + (f"; {o.detail}" if o.detail else "")
        )
        registration = o.report.get("registration", {})
        prior = registration.get("prior") or []
        out.print(
            f"report: {o.report_id} (investigation {o.investigation_id}); verify with "
            f"`tracemark report verify {o.report_id}`; pre-registered as transparency-log entry "
            f"#{registration.get('log_seq')}; earlier registrations for this suspect: {len(prior)}"
        )
    if json_out is not None:
        data = [
            {
                "suspect": o.suspect,
                "verdict": o.verdict,
                "attributed_account": o.attributed_account,
                "p_value": o.p_value,
                "log10_p": o.log10_p,
                "adjusted_p_value": o.adjusted_p_value,
                "distilled_from_us": o.distilled_from_us,
                "provider": o.provider,
                "report_id": o.report_id,
                "investigation_id": o.investigation_id,
                "accounts": [a.as_dict() for a in o.accounts],
            }
            for o in outcomes
        ]
        try:
            json_out.write_text(json.dumps(data, indent=2) + "\n")
        except OSError as exc:
            fail(f"cannot write {json_out}: {exc.strerror}")


def calibrate_command(
    runs: Annotated[
        int, typer.Option(help="Random-key null runs (fresh accounts), split over tiny models and students.")
    ] = 1000,
    tiny_models: Annotated[int, typer.Option(help="Tiny random null models.")] = 4,
    students: Annotated[
        int, typer.Option(help="Null students trained on other accounts' watermarked traces.")
    ] = 2,
    student_accounts: Annotated[int, typer.Option(help="Other accounts delivered to each student.")] = 2,
    student_epochs: Annotated[float, typer.Option(help="Training epochs of each student.")] = 50,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Extra clean white-box null model: folder or hf:/gguf: spec."),
    ] = None,
    embedded: Annotated[
        bool,
        typer.Option(
            "--embedded/--no-embedded", help="Also test the embedded SmolLM2 (about a minute a pair)."
        ),
    ] = False,
    embedded_runs: Annotated[int, typer.Option(help="Null runs on the embedded model.")] = 10,
    salient_accounts: Annotated[
        int, typer.Option(help="Salient-target accounts built from each null model's favourites (0: none).")
    ] = 3,
    digits: Annotated[int, typer.Option(help="Digits of the scheme's candidate space.")] = 6,
    pairs_per_account: Annotated[int, typer.Option(help="Signature pairs per account.")] = 2,
    context: Annotated[
        list[str] | None,
        typer.Option(
            "--context", help="Scheme scoring context with {trigger} (repeatable; default: the scheme's)."
        ),
    ] = None,
    alpha: Annotated[
        float, typer.Option(help="Level of the verdict (others reported: 0.001 0.01 0.05 0.1).")
    ] = 0.01,
    family_size: Annotated[int, typer.Option(help="Accounts per family for the Holm / BH version.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the null models and the fresh account keys.")] = 0,
    workers: Annotated[int, typer.Option(help="Worker processes (one CPU thread each).")] = 2,
    plot: Annotated[Path, typer.Option(help="Where to write the PNG plot.")] = Path(
        "tracemark-calibration.png"
    ),
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON.")] = None,
) -> None:
    """Measure the detection test's false-alarm rate on null models (exit 1 unless PASS).

    PASS only if the one-sided 95% Clopper-Pearson upper bound of the false-alarm rate at alpha is <= 2 x
    alpha (overall and per null family with enough runs; the full rule is printed).
    """
    try:
        params = CalibrationParams(
            runs=runs,
            tiny_models=tiny_models,
            students=students,
            student=StudentRecipe(accounts=student_accounts, epochs=student_epochs),
            models=model or None,
            embedded=embedded,
            embedded_runs=embedded_runs,
            salient_accounts=salient_accounts,
            digits=digits,
            pairs_per_account=pairs_per_account,
            contexts=context or None,
            alpha=alpha,
            family_size=family_size,
            seed=seed,
            workers=workers,
        )
    except CalibrationError as exc:
        fail(_param_message(exc))
    if not plot.parent.exists():
        fail(f"folder {plot.parent} does not exist")
    console = Console(stderr=True)
    with stage_progress(console) as progress:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int, message: str = "") -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total or None)
            progress.update(
                tasks[stage], completed=done, total=total or None, description=f"{stage}: {message}"[:34]
            )

        try:
            result = run_calibration(params, progress=report)
        except (CalibrationError, SuspectSpecError) as exc:
            fail(first_line(exc))
        except SuspectError as exc:
            fail(first_line(exc), code=1)
    out = Console()
    for renderable in result.tables():
        out.print(renderable)
    written = result.plot(plot)
    out.print(f"plot: {written}; {result.n_runs} null runs in {result.seconds:.1f} s")
    if json_out is not None:
        try:
            json_out.write_text(json.dumps(result.as_dict(), indent=2, default=str) + "\n")
        except OSError as exc:
            fail(f"cannot write {json_out}: {exc.strerror}")
    if not result.passed:
        raise typer.Exit(1)
