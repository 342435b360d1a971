"""`tracemark calibrate-channel`: the channel test's decoy-key check on a real model's own text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from tracemark.forensics.adapters import SuspectError, SuspectSpecError, parse_suspect
from tracemark.forensics.channel import ChannelDetectionError, collect_evidence, decoy_check
from tracemark.forensics.channel.prompts import DEFAULT_PROMPTS
from tracemark.foundation.channel import ChannelError, ChannelSpec, tokenizer_fingerprint
from tracemark.foundation.console import fail
from tracemark.foundation.errors import first_line


def calibrate_channel_command(
    suspect: Annotated[
        str,
        typer.Option(
            "--suspect", "-s", help="Model whose own text is scored (hf:/gguf:/openai:/tracemark:)."
        ),
    ],
    tokenizer: Annotated[
        Path | None,
        typer.Option(help="Channel tokenizer folder (default: the suspect's own; black-box needs one)."),
    ] = None,
    mode: Annotated[str, typer.Option(help="black-box | white-box.")] = "black-box",
    prompts: Annotated[
        Path | None, typer.Option(help="Public prompts, one per line (default: the built-in held-out set).")
    ] = None,
    samples: Annotated[int, typer.Option(help="Completions per prompt.")] = 1,
    tokens: Annotated[int, typer.Option(help="Tokens per completion.")] = 128,
    gamma: Annotated[float, typer.Option(help="Green-list fraction of the channel.")] = 0.25,
    context_width: Annotated[int, typer.Option(help="Context width of the channel (0 or 1).")] = 1,
    decoys: Annotated[int, typer.Option(help="Decoy keys.")] = 400,
    seed: Annotated[
        str, typer.Option(help="Public seed of the decoy keys and of the sampling.")
    ] = "calibration",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the check as JSON.")] = None,
) -> None:
    """Score a model's own text under DECOYS keys nobody used (exit 1 unless the check passes).

    PASS iff at each level alpha with decoys x alpha >= 20 the one-sided 95% Clopper-Pearson upper bound of
    the decoys' false-alarm rate is <= 2 x alpha, and a one-sided KS test does not find p-values smaller
    than uniform (p >= 1e-3).
    """
    if decoys < 1 or samples < 1 or tokens < 1:
        fail("decoys, samples and tokens must be >= 1")
    try:
        adapter = parse_suspect(suspect)
    except SuspectSpecError as exc:
        fail(str(exc))
    lines = DEFAULT_PROMPTS
    if prompts is not None:
        try:
            lines = tuple(x.strip() for x in prompts.read_text(encoding="utf-8").splitlines() if x.strip())
        except OSError as exc:
            fail(f"cannot read {prompts}: {exc.strerror}")
    try:
        if tokenizer is not None:
            from transformers import AutoTokenizer  # deferred: transformers only when a tokenizer is given

            tok = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
        else:
            tok = getattr(adapter, "tokenizer", None) if adapter.white_box else None
        if tok is None:
            fail("give --tokenizer: the suspect has no local tokenizer")
        spec = ChannelSpec(gamma=gamma, context_width=context_width, tokenizer=tokenizer_fingerprint(tok))
        evidence = collect_evidence(
            adapter,
            lines,
            spec=spec,
            mode=mode,
            tokenizer=tok,
            samples_per_prompt=samples,
            max_new_tokens=tokens,
            beacon=seed,
        )
    except (ChannelDetectionError, ChannelError, OSError, ValueError) as exc:
        fail(first_line(exc))
    except SuspectError as exc:
        fail(first_line(exc), code=1)
    finally:
        adapter.close()
    check = decoy_check(evidence.tuples, spec=spec, seed=seed, k=decoys)
    table = Table(title=f"decoy-key check: {decoys} decoys on {evidence.n} distinct tuples ({mode})")
    for col in ("alpha", "false alarms", "rate", "CP upper (95%)", "limit 2 alpha", "gated", "status"):
        table.add_column(col, justify="right")
    for r in check.rates:
        table.add_row(
            f"{r.alpha:g}",
            str(r.k),
            f"{r.k / r.n:.4f}",
            f"{r.upper:.4f}",
            f"{2 * r.alpha:g}",
            "yes" if r.decidable else "no",
            "pass" if r.passed else ("FAIL" if r.decidable else "over"),
        )
    out = Console()
    out.print(table)
    out.print(
        f"one-sided KS (p smaller than uniform): p = {check.ks_p_value:.3g}; "
        f"{'PASS' if check.passed else 'FAIL'}"
    )
    if json_out is not None:
        try:
            json_out.write_text(
                json.dumps({**check.as_dict(), "evidence": evidence.as_dict()}, indent=2) + "\n"
            )
        except OSError as exc:
            fail(f"cannot write {json_out}: {exc.strerror}")
    if not check.passed:
        raise typer.Exit(1)
