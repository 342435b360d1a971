"""`tracemark attack`: play a key-blind distiller against a pipeline and measure what the evidence survives.

``harvest`` collects a harvest file through the gRPC API over K accounts; ``run`` applies the attacks to
a harvest file (detection with the operator's master secret); ``campaign`` does both on a self-hosted
server (the bench stage ``make bench-attack``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from tracemark.experiments.attack.campaign import CampaignConfig, run_campaign, run_on_harvest
from tracemark.experiments.attack.detect import StudentSize
from tracemark.experiments.attack.harvest import (
    account_names,
    harvest_grpc,
    plan_requests,
    read_harvest,
    write_harvest,
)
from tracemark.experiments.attack.measure import read_truth, truth_from_ledger, write_truth
from tracemark.experiments.attack.selfhost import SelfHostedServer
from tracemark.experiments.attack.suite import ALL_ATTACKS, COLUMNS, Paraphraser, table_rows, write_result
from tracemark.forensics.keys import MasterKeyError, MasterSecret
from tracemark.foundation.channel import ChannelSpec
from tracemark.foundation.console import fail
from tracemark.foundation.errors import InvalidInput, NotFound, first_line
from tracemark.foundation.problems import ProblemError, generate_problems

attack_app = typer.Typer(
    help="Attack suite: harvest as a distiller would, apply key-blind attacks, measure what survives.",
    no_args_is_help=True,
)
console = Console(width=150)
err = Console(stderr=True)

AttacksOpt = Annotated[
    str, typer.Option("--attacks", help=f"Comma-separated attacks (default all): {', '.join(ALL_ATTACKS)}.")
]
StudentOpt = Annotated[
    str,
    typer.Option(
        "--student-tokenizer",
        help="'char' (tiny character student) or 'channel' (the channel's vocabulary: needed for the "
        "distributional channel to be learnable token for token), or a model folder.",
    ),
]


def _attacks(value: str) -> tuple[str, ...]:
    names = tuple(a.strip() for a in value.split(",") if a.strip()) if value else ALL_ATTACKS
    unknown = [a for a in names if a not in ALL_ATTACKS]
    if unknown:
        fail(f"unknown attack {unknown[0]!r}; known: {', '.join(ALL_ATTACKS)}")
    return names


def _paraphraser(endpoint: str, model: str, key_env: str, model_dir: str) -> Paraphraser:
    return Paraphraser(
        model_dir=model_dir, endpoint=endpoint, endpoint_model=model, api_key=os.environ.get(key_env, "")
    )


def _print(result, json_out: Path | None, workdir: Path) -> None:
    table = Table(title=f"tracemark attack suite (alpha = {result.alpha:g})")
    for c in COLUMNS:
        table.add_column(c)
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    out, md = write_result(result, json_out or workdir / "attack.json")
    console.print(f"results: {out} and {md}; harvests, students and samples under {workdir}")


@attack_app.command("harvest")
def harvest_command(
    out: Annotated[Path, typer.Option(help="Harvest file to write (JSONL).")] = Path("harvest.jsonl"),
    target: Annotated[str, typer.Option(help="host:port of a running server (needs --tokens-file).")] = "",
    tokens_file: Annotated[
        Path | None, typer.Option(help="JSON {account: token} of the harvesting accounts (with --target).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Server TOML: self-host it here with K fresh accounts and a ledger under --workdir."
        ),
    ] = None,
    workdir: Annotated[Path, typer.Option(help="Ledger/master key folder when self-hosting.")] = Path(
        "results/attack-harvest"
    ),
    accounts: Annotated[int, typer.Option(help="K: accounts the problems are spread over.")] = 1,
    problems: Annotated[int, typer.Option(help="N: generated problems asked.")] = 100,
    repeats: Annotated[int, typer.Option(help="Problems asked a second time by the same account.")] = 0,
    overlap: Annotated[int, typer.Option(help="Problems asked also by a second account.")] = 0,
    difficulty: Annotated[str, typer.Option(help="Problem difficulty (easy, medium, hard).")] = "easy",
    seed: Annotated[int, typer.Option(help="Problem seed.")] = 0,
    workers: Annotated[int, typer.Option(help="Requests in flight.")] = 8,
) -> None:
    """Collect a harvest through the gRPC API (TeacherService.Generate), one record per trace."""
    if bool(target) == bool(config):
        fail("give exactly one of --target (a running server) or --config (self-host)")
    try:
        probs = generate_problems(problems, seed=seed, difficulty=difficulty)
        items = [(f"p{seed}-{i}", p.question, p.solution) for i, p in enumerate(probs)]
        if target:
            if tokens_file is None:
                fail("--target needs --tokens-file (JSON {account: token})")
            try:
                tokens = json.loads(tokens_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                fail(f"cannot read --tokens-file: {type(exc).__name__}")
            names = sorted(tokens)[:accounts]
            if len(names) < accounts:
                fail(f"--tokens-file holds {len(names)} account(s), --accounts asks {accounts}")
            plan = plan_requests(items, names, repeats=repeats, overlap=overlap)
            records = harvest_grpc(target, tokens, plan, workers=workers)
        else:
            names = account_names(accounts)
            with SelfHostedServer(
                workdir, accounts=names, teacher="config", problems=probs, settings_file=config
            ) as server:
                plan = plan_requests(items, names, repeats=repeats, overlap=overlap)
                records = harvest_grpc(server.address, server.tokens, plan, workers=workers)
                issuer = server.runtime.issuer
                truth = truth_from_ledger(issuer.engine, issuer, [r.trace_id for r in records])
                write_truth(truth, workdir / "truth.jsonl")
                err.print(
                    f"truth (secret, 0600): {workdir / 'truth.jsonl'}; master key: {workdir / 'master.key'}"
                )
    except (InvalidInput, NotFound, ProblemError) as exc:
        fail(first_line(exc))
    write_harvest(records, out)
    console.print(f"{len(records)} traces from {len(names)} account(s) written to {out}")


@attack_app.command("run")
def run_command(
    harvest: Annotated[Path, typer.Option(help="Harvest file (JSONL) to attack.")],
    truth: Annotated[Path | None, typer.Option(help="Truth file (which pair each trace carries).")] = None,
    master_key_file: Annotated[
        Path | None, typer.Option(help="The operator's master secret: enables the channel detection.")
    ] = None,
    target: Annotated[str, typer.Option(help="Server to investigate the pair channel through.")] = "",
    investigator_token_env: Annotated[
        str, typer.Option(help="Env var holding a compliance token for --target.")
    ] = "TRACEMARK_INVESTIGATOR_TOKEN",
    attacks: AttacksOpt = "",
    paraphrase_endpoint: Annotated[str, typer.Option(help="OpenAI-compatible base URL for paraphrase.")] = "",
    paraphrase_model: Annotated[str, typer.Option(help="Model name at --paraphrase-endpoint.")] = "",
    paraphrase_key_env: Annotated[
        str, typer.Option(help="Env var with the endpoint's key.")
    ] = "OPENAI_API_KEY",
    paraphrase_model_dir: Annotated[
        str, typer.Option(help="Local paraphrase model (default: embedded).")
    ] = "",
    channel_tokenizer: Annotated[
        str, typer.Option(help="Tokenizer folder of the channel (default: embedded).")
    ] = "",
    gamma: Annotated[float, typer.Option(help="Channel gamma the teacher used.")] = 0.25,
    context_width: Annotated[int, typer.Option(help="Channel context width (0 or 1).")] = 1,
    student_tokenizer: StudentOpt = "channel",
    epochs: Annotated[float, typer.Option(help="Student epochs.")] = 4,
    samples: Annotated[int, typer.Option(help="Prompts sampled from each student.")] = 64,
    alpha: Annotated[float, typer.Option(help="Significance level of the verdicts.")] = 1e-6,
    workdir: Annotated[Path, typer.Option(help="Work folder.")] = Path("results/attack"),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Results JSON (default WORKDIR/attack.json).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Apply the attacks to a harvest file; measure damage (with --truth) and detection (with the key)."""
    names = _attacks(attacks)
    try:
        records = read_harvest(harvest)
        truth_map = read_truth(truth) if truth else None
        master = MasterSecret.load(path=master_key_file, create=False) if master_key_file else None
        token = os.environ.get(investigator_token_env, "") if target else ""
        if target and not token:
            fail(f"--target needs a compliance token in ${investigator_token_env}")
        result = run_on_harvest(
            records,
            truth_map,
            workdir=workdir,
            master=master,
            spec=ChannelSpec(gamma=gamma, context_width=context_width),
            channel_tokenizer=channel_tokenizer,
            attacks=names,
            paraphraser=_paraphraser(
                paraphrase_endpoint, paraphrase_model, paraphrase_key_env, paraphrase_model_dir
            ),
            student=StudentSize(tokenizer=student_tokenizer, epochs=epochs, samples=samples),
            alpha=alpha,
            address=target,
            token=token,
            seed=seed,
            log=err.print,
        )
    except (InvalidInput, NotFound, MasterKeyError) as exc:
        fail(first_line(exc))
    _print(result, json_out, workdir)


@attack_app.command("campaign")
def campaign_command(
    teacher: Annotated[
        str, typer.Option(help="reference | embedded | tiny | config (use --config's).")
    ] = "reference",
    config: Annotated[
        Path | None, typer.Option(help="Server TOML to self-host (its ledger is replaced).")
    ] = None,
    accounts: Annotated[int, typer.Option(help="K harvesting accounts.")] = 2,
    problems: Annotated[int, typer.Option(help="N problems harvested.")] = 120,
    repeats: Annotated[int, typer.Option(help="Problems asked twice by the same account.")] = 0,
    overlap: Annotated[int, typer.Option(help="Problems asked by two accounts.")] = 0,
    spread_accounts: Annotated[
        int, typer.Option(help="Second harvest over this many accounts (0: none).")
    ] = 0,
    spread_problems: Annotated[int, typer.Option(help="Problems of the spread harvest.")] = 0,
    attacks: AttacksOpt = "",
    pipeline: Annotated[
        str, typer.Option(help="Server pipeline the harvest goes through (comma-separated).")
    ] = "restructure,watermark",
    paraphrase_endpoint: Annotated[str, typer.Option(help="OpenAI-compatible base URL for paraphrase.")] = "",
    paraphrase_model: Annotated[str, typer.Option(help="Model name at --paraphrase-endpoint.")] = "",
    paraphrase_key_env: Annotated[
        str, typer.Option(help="Env var with the endpoint's key.")
    ] = "OPENAI_API_KEY",
    watermark_fraction: Annotated[float, typer.Option(help="Share of traces carrying a pair.")] = 0.1,
    max_new_tokens: Annotated[int, typer.Option(help="Teacher's token limit per trace.")] = 200,
    student_tokenizer: StudentOpt = "channel",
    epochs: Annotated[float, typer.Option(help="Student epochs.")] = 4,
    samples: Annotated[int, typer.Option(help="Prompts sampled from each student.")] = 64,
    sample_tokens: Annotated[int, typer.Option(help="Tokens sampled per prompt.")] = 160,
    control: Annotated[bool, typer.Option(help="Also train a clean control student.")] = True,
    investigate: Annotated[bool, typer.Option(help="Investigate the pair channel per student.")] = True,
    alpha: Annotated[float, typer.Option(help="Significance level of the verdicts.")] = 1e-6,
    workdir: Annotated[Path, typer.Option(help="Work folder (ledger, harvests, students).")] = Path(
        "results/attack"
    ),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Results JSON (default WORKDIR/attack.json).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Self-host a server, harvest over gRPC, run every attack, distil and test a student per attack."""
    if teacher not in ("reference", "embedded", "tiny", "config"):
        fail(f"--teacher must be reference, embedded, tiny or config, got {teacher!r}")
    if teacher == "config" and config is None:
        fail("--teacher config needs --config")
    cfg = CampaignConfig(
        teacher=teacher,
        settings_file=config,
        accounts=accounts,
        problems=problems,
        repeats=repeats,
        overlap=overlap,
        spread_accounts=spread_accounts,
        spread_problems=spread_problems,
        attacks=_attacks(attacks),
        pipeline=tuple(p.strip() for p in pipeline.split(",") if p.strip()),
        paraphraser=_paraphraser(paraphrase_endpoint, paraphrase_model, paraphrase_key_env, ""),
        student=StudentSize(
            tokenizer=student_tokenizer, epochs=epochs, samples=samples, sample_tokens=sample_tokens
        ),
        alpha=alpha,
        seed=seed,
        watermark_fraction=watermark_fraction,
        max_new_tokens=max_new_tokens,
        control=control,
        investigate=investigate,
    )
    try:
        result = run_campaign(cfg, workdir, log=err.print)
    except (InvalidInput, NotFound, ProblemError) as exc:
        fail(first_line(exc))
    _print(result, json_out, workdir)
