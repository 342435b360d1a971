"""`tracemark optimize run|install|show`: search, install and inspect the ``optimized`` rewriter's
instruction (OPRO style; see ``tracemark.experiments.optimize``)."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from tracemark.experiments.optimize import (
    OptimizeError,
    RunFolder,
    SearchConfig,
    SearchPlan,
    best_of,
    install_instruction,
    load_sample,
    prepare_proxy,
    read_seed_instructions,
)
from tracemark.foundation.console import fail
from tracemark.foundation.models.embedded import EMBEDDED_MODEL_ID, ensure_embedded_model
from tracemark.plugins.builtin.optimized import active_instruction, installed_instruction_path
from tracemark.server.batching import GenerationQueue
from tracemark.server.llm import QueuedLLM
from tracemark.server.teacher.base import TeacherError
from tracemark.server.teacher.remote import OpenAITeacher

optimize_app = typer.Typer(
    help="Search the `optimized` rewriter's instruction (OPRO style: rewrite with each candidate, score "
    "by how little a proxy student gains from fine-tuning on the rewrites, ask an LLM for new "
    "candidates). `run` searches (resumable: rerun the same command to continue), `install RUN_DIR` "
    "makes the best instruction the rewriter's default, `show` prints a run's leaderboard or the active "
    "instruction.",
    no_args_is_help=True,
)
console = Console(stderr=True)

LLM_KINDS = ("embedded", "tiny", "transformers", "openai")


def _llm_id(llm: str, model: str, endpoint: str) -> str:
    if llm == "embedded":
        return EMBEDDED_MODEL_ID
    if llm == "tiny":
        return "tiny-random-llama"
    if llm == "transformers":
        if not model:
            fail("--llm transformers needs --llm-model (a model folder)")
        if not (Path(model) / "config.json").is_file():
            fail(f"--llm-model {model} is not a model folder (no config.json)")
        return str(Path(model).resolve())
    if not endpoint or not model:
        fail("--llm openai needs --llm-endpoint URL and --llm-model NAME")
    return f"{model}@{endpoint.rstrip('/')}"


def _build_llm(llm: str, model: str, endpoint: str, key_env: str, workers: int, timeout_s: float) -> Any:
    """A chat backend: the local model or endpoint behind a batching queue (greedy rewrites batch)."""
    try:
        if llm == "openai":
            backend: Any = OpenAITeacher(endpoint, model, api_key_env=key_env, max_batch_size=workers)
        else:
            from tracemark.server.teacher.local import LocalTeacher  # deferred: imports torch

            if llm == "embedded":
                path, model_id = ensure_embedded_model(), EMBEDDED_MODEL_ID
            elif llm == "tiny":
                from tracemark.foundation.models.tiny import build_tiny_model  # deferred: imports torch

                path = build_tiny_model(tempfile.mkdtemp(prefix="tracemark-tiny-llm-"))
                model_id = "tiny-random-llama"
            else:
                path, model_id = Path(model), str(Path(model).resolve())
            backend = LocalTeacher(
                path, quantization="none", device="cpu", model_id=model_id, max_batch_size=workers
            )
    except (TeacherError, OSError, ValueError) as exc:
        fail(
            f"cannot set up the LLM {llm!r}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
        )
    queue = GenerationQueue(backend, max_batch=workers, window_s=0.05, max_queue=16 * workers)
    return QueuedLLM(queue, backend.info.model_id, timeout_s=timeout_s)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@optimize_app.command("run")
def run_command(
    out: Annotated[Path, typer.Option("--out", help="Run folder (created; reused to resume).")] = Path(
        "results/optimize"
    ),
    data: Annotated[
        str, typer.Option("--data", help="'procedural' (built-in generator) or a GSM8K-style JSONL path.")
    ] = "procedural",
    difficulty: Annotated[str, typer.Option(help="Procedural difficulty: easy | medium | hard.")] = "easy",
    sample: Annotated[int, typer.Option(help="Traces rewritten and trained on per candidate.")] = 8,
    heldout: Annotated[int, typer.Option(help="Held-out clean traces scoring the proxy's gain.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the sample, rewrites and proxy training.")] = 0,
    proxy: Annotated[
        str, typer.Option(help="Proxy student: embedded (SmolLM2-135M) | tiny (random char model) | FOLDER.")
    ] = "embedded",
    proxy_method: Annotated[
        str, typer.Option(help="lora | full | auto (full for tiny, lora otherwise).")
    ] = "auto",
    proxy_epochs: Annotated[float, typer.Option(help="Fine-tuning budget in epochs of the sample.")] = 2.0,
    proxy_lr: Annotated[float, typer.Option(help="Proxy learning rate.")] = 5e-4,
    proxy_batch_size: Annotated[int, typer.Option(help="Proxy batch size.")] = 8,
    proxy_max_length: Annotated[int, typer.Option(help="Token limit per training example.")] = 512,
    llm: Annotated[
        str, typer.Option(help="LLM that rewrites and proposes: embedded | tiny | transformers | openai.")
    ] = "embedded",
    llm_model: Annotated[
        str, typer.Option("--llm-model", help="Model folder (transformers) or name (openai).")
    ] = "",
    llm_endpoint: Annotated[str, typer.Option("--llm-endpoint", help="OpenAI-compatible base URL.")] = "",
    llm_api_key_env: Annotated[
        str, typer.Option("--llm-api-key-env", help="Env var holding the endpoint's API key.")
    ] = "TRACEMARK_TEACHER_API_KEY",
    rounds: Annotated[int, typer.Option(help="Proposal rounds after the initial candidates.")] = 3,
    proposals: Annotated[int, typer.Option(help="New instructions asked for per round.")] = 4,
    top_k: Annotated[int, typer.Option("--top-k", help="Best instructions shown in the meta-prompt.")] = 8,
    seeds: Annotated[
        Path | None, typer.Option("--seeds", help="File of extra initial instructions, one per line.")
    ] = None,
    min_preservation: Annotated[
        float, typer.Option(help="Disqualify candidates whose guard kept fewer rewrites than this share.")
    ] = 0.5,
    rewrite_max_tokens: Annotated[int, typer.Option(help="Length limit of each rewrite.")] = 256,
    rewrite_temperature: Annotated[
        float, typer.Option(help="Rewrite temperature (0: greedy, batched, reproducible).")
    ] = 0.0,
    guard_retries: Annotated[int, typer.Option(help="Answer-guard retries per trace.")] = 1,
    propose_max_tokens: Annotated[int, typer.Option(help="Length limit of each proposal.")] = 320,
    workers: Annotated[int, typer.Option(help="Traces rewritten concurrently (batch size).")] = 8,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 1,
    force: Annotated[
        bool, typer.Option("--force", help="Config differs from the folder's: archive its results, restart.")
    ] = False,
    install: Annotated[
        bool, typer.Option("--install", help="Install the best instruction when the search ends.")
    ] = False,
) -> None:
    """Run or continue the search in --out: results.jsonl gets one line per scored candidate."""
    if llm not in LLM_KINDS:
        fail(f"--llm must be one of {', '.join(LLM_KINDS)}, got {llm!r}")
    if proxy_method == "auto":
        proxy_method = "full" if proxy == "tiny" else "lora"
    if data != "procedural" and not Path(data).is_file():
        fail(f"--data must be 'procedural' or a JSONL file; {data} does not exist")
    if threads < 1:
        fail("--threads must be >= 1")
    try:
        config = SearchConfig(
            data=data if data == "procedural" else str(Path(data).resolve()),
            difficulty=difficulty,
            sample=sample,
            heldout=heldout,
            seed=seed,
            proxy=proxy if proxy in ("embedded", "tiny") else str(Path(proxy).resolve()),
            proxy_method=proxy_method,
            proxy_epochs=proxy_epochs,
            proxy_lr=proxy_lr,
            proxy_batch_size=proxy_batch_size,
            proxy_max_length=proxy_max_length,
            llm=_llm_id(llm, llm_model, llm_endpoint),
            rewrite_temperature=rewrite_temperature,
            rewrite_max_new_tokens=rewrite_max_tokens,
            guard_retries=guard_retries,
            min_preservation=min_preservation,
        )
        plan = SearchPlan(
            rounds=rounds,
            proposals=proposals,
            top_k=top_k,
            propose_max_new_tokens=propose_max_tokens,
            seeds=tuple(read_seed_instructions(seeds)) if seeds is not None else (),
            workers=workers,
        )
        folder = RunFolder(out)
        folder.open(config, force=force)  # a config mismatch fails before any model loads
        load_sample(config)  # bad data fails before any model loads
        proxy_dir = prepare_proxy(config, folder.path)
    except OptimizeError as exc:
        fail(str(exc))

    import torch  # deferred: heavy, only needed once the search starts
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    # Guard fallbacks are counted in each result line; per-trace warnings would only break the bars.
    plugin_log = logging.getLogger("tracemark.plugins")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        _search(folder, config, plan, proxy_dir, llm, llm_model, llm_endpoint, llm_api_key_env, install)
    finally:
        plugin_log.setLevel(level)


def _search(
    folder: Any,
    config: Any,
    plan: Any,
    proxy_dir: Path,
    llm: str,
    llm_model: str,
    llm_endpoint: str,
    llm_api_key_env: str,
    install: bool,
) -> None:
    from tracemark.experiments.optimize.search import run_search  # deferred: imports torch

    rounds, proposals, sample, workers = plan.rounds, plan.proposals, config.sample, plan.workers
    console.print(f"loading the LLM ({llm}) ...")
    chat = _build_llm(llm, llm_model, llm_endpoint, llm_api_key_env, workers, timeout_s=600.0)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bars:
        rounds_bar = bars.add_task("rounds", total=rounds + 1)
        rewrite_bar = bars.add_task("rewrite", total=sample, visible=False)
        train_bar = bars.add_task("train", total=1, visible=False)
        propose_bar = bars.add_task("propose", total=proposals, visible=False)

        def on_event(kind: str, info: dict[str, Any]) -> None:
            if kind == "stage":
                bars.console.print(info["text"])
            elif kind == "round":
                bars.update(rounds_bar, completed=info["round"], description=f"round {info['round']}")
                bars.update(propose_bar, visible=False)
            elif kind == "candidate_start":
                bars.update(
                    rewrite_bar,
                    completed=0,
                    visible=True,
                    description=f"rewrite {info['sha'][:8]} ({info['index'] + 1}/{info['count']})",
                )
                bars.update(train_bar, completed=0, visible=False)
            elif kind == "rewrite":
                bars.update(rewrite_bar, completed=info["done"])
            elif kind == "train":
                bars.update(
                    train_bar,
                    total=info["total"],
                    completed=info["step"],
                    visible=True,
                    description=f"train {info['label'][:12]} loss {info['loss']:.3f}",
                )
            elif kind == "propose":
                bars.update(propose_bar, visible=True, completed=info["calls"], total=max(3 * proposals, 1))
            elif kind == "propose_error":
                bars.console.print(f"[yellow]LLM call failed: {info['error']}[/yellow]")
            elif kind == "candidate":
                r, best = info["result"], info["best"]
                verdict = f"[red]disqualified: {r.reason}[/red]" if r.disqualified else f"score {r.score:.4f}"
                bars.console.print(
                    f"round {r.round} {r.sha[:8]} ({r.origin}): gain {r.gain:.4f}, kept {r.kept}/{r.n}, "
                    f"{r.seconds:.0f} s - {verdict}"
                    + (f"; best {best.sha[:8]} {best.score:.4f}" if best is not None else "")
                )

        try:
            summary = run_search(folder.path, config, plan, chat, proxy_dir=proxy_dir, on_event=on_event)
        except KeyboardInterrupt:
            done = len(folder.results())
            console.print(
                f"interrupted: {folder.results_file} holds {done} scored candidates; "
                "rerun the same command to continue"
            )
            raise typer.Exit(130) from None
        except OptimizeError as exc:
            fail(str(exc))
        bars.update(rounds_bar, completed=rounds + 1)
    best = best_of(summary.results)
    ref = summary.reference
    console.print(
        f"{summary.scored_now} candidates scored now, {summary.reused} reused from the log; "
        f"reference: untrained NLL {ref['nll_base']:.4f}, gain from clean traces {ref['clean_gain']:.4f}"
    )
    if best is None:
        console.print("no qualified candidate (every one fell below --min-preservation)")
        if install:
            fail("nothing to install: no qualified candidate")
        return
    console.print(f"best {best.sha} (round {best.round}, gain {best.score:.4f}, kept {best.kept}/{best.n})")
    typer.echo(best.instruction)
    if install:
        try:
            path, _ = install_instruction(folder.path, min_improvement=0.05)
        except OptimizeError as exc:
            fail(str(exc))
        console.print(f"installed to {path}")


@optimize_app.command("install")
def install_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder of `tracemark optimize run`.")],
    to: Annotated[
        Path | None,
        typer.Option(
            "--to",
            help="Target file (default: $TRACEMARK_OPTIMIZED_INSTRUCTION, else optimized-instruction.json "
            "in $TRACEMARK_HOME or ~/.local/share/tracemark).",
        ),
    ] = None,
    min_improvement: Annotated[
        float,
        typer.Option(
            help="Install a proposed instruction only when it lowers the proxy's gain by at least this "
            "fraction against the built-in one (differences on small samples are noise).",
            min=0.0,
            max=1.0,
        ),
    ] = 0.05,
) -> None:
    """Install the run's best qualified instruction as the `optimized` rewriter's default (used when a
    request gives no `instruction` option)."""
    try:
        path, best = install_instruction(run_dir, to, min_improvement=min_improvement)
    except OptimizeError as exc:
        fail(str(exc))
    note = (
        ""
        if to is None or path == installed_instruction_path()
        else (f" (the rewriter reads it when TRACEMARK_OPTIMIZED_INSTRUCTION={path})")
    )
    typer.echo(f"installed {best.sha} (gain {best.score:.4f}, kept {best.kept}/{best.n}) to {path}{note}")


@optimize_app.command("show")
def show_command(
    run_dir: Annotated[
        Path | None,
        typer.Argument(help="Run folder: print its leaderboard (default: the active instruction)."),
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows of the leaderboard.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The instruction the `optimized` rewriter uses now (and where it comes from), or a run's results."""
    if run_dir is None:
        text, source = active_instruction()
        meta: dict[str, Any] = {}
        if source != "built-in":
            try:
                meta = json.loads(installed_instruction_path().read_text(encoding="utf-8"))
                meta.pop("instruction", None)
            except (OSError, ValueError, AttributeError):
                meta = {}
        if as_json:
            typer.echo(json.dumps({"source": source, "instruction": text, **meta}, indent=2))
            return
        typer.echo(f"source: {source}")
        for key in ("sha", "score", "relative_gain", "preservation", "run", "installed_at"):
            if key in meta:
                typer.echo(f"{key}: {meta[key]}")
        typer.echo(text)
        return
    folder = RunFolder(run_dir)
    if not folder.path.is_dir() or not folder.results_file.is_file():
        fail(f"{run_dir} is not a `tracemark optimize run` folder (no results.jsonl)")
    try:
        results = folder.results()
    except OptimizeError as exc:
        fail(str(exc))
    ranked = sorted(results, key=lambda r: (r.score is None, r.score if r.score is not None else 0.0))
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "reference": folder.reference(),
                    "best": best_of(results).sha if best_of(results) else None,
                    "results": [r.__dict__ for r in ranked],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    ref = folder.reference() or {}
    table = Table(
        title=f"{len(results)} candidates; untrained NLL {_fmt(ref.get('nll_base'))}, "
        f"gain from clean traces {_fmt(ref.get('clean_gain'))}"
    )
    for column in ("#", "sha", "round", "origin", "score", "rel", "kept", "s"):
        table.add_column(column, no_wrap=True)
    table.add_column("instruction", overflow="fold")
    for rank, r in enumerate(ranked[:limit], 1):
        table.add_row(
            str(rank),
            r.sha[:8],
            str(r.round),
            r.origin,
            _fmt(r.score) if r.score is not None else "[red]disq.[/red]",
            _fmt(r.relative_gain, 2),
            f"{r.kept}/{r.n}",
            f"{r.seconds:.0f}",
            r.instruction if len(r.instruction) <= 240 else r.instruction[:237] + "...",
        )
    Console().print(table)
