"""`tracemark serve`, `tracemark generate` and `tracemark accounts`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from tracemark.foundation.console import fail
from tracemark.server.app import TracemarkServer
from tracemark.server.auth import ROLES, TokenStore, TokenStoreError, add_account
from tracemark.server.client import Stubs, open_channel
from tracemark.server.config import ConfigError, load_settings
from tracemark.server.logs import configure_logging
from tracemark.v1 import teacher_pb2

console = Console(stderr=True)

accounts_app = typer.Typer(
    help="Manage API accounts and their bearer tokens (stored as hashes).", no_args_is_help=True
)


def serve_command(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config file (see README).")
    ] = None,
    address: Annotated[str | None, typer.Option(help="host:port to listen on [server.address].")] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="Teacher backend: embedded | transformers | openai | tiny [teacher.backend]."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model folder or .gguf file, or the remote model name [teacher.model].")
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible base URL, e.g. http://gpu-host:8000/v1 [teacher.endpoint]."),
    ] = None,
    quantization: Annotated[
        str | None,
        typer.Option(
            help="auto (int8-dynamic on CPU, nf4 on CUDA; see README) | none | int8-dynamic | int8 | "
            "nf4 | fp4 [teacher.quantization]."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N [teacher.device].")] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Requests generated together [teacher.max_batch_size].")
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Queued requests before RESOURCE_EXHAUSTED [teacher.max_queue].")
    ] = None,
    tokens_file: Annotated[
        Path | None, typer.Option(help="TOML file of accounts and token hashes [auth.tokens_file].")
    ] = None,
    rewriters: Annotated[
        str | None,
        typer.Option(help="Default rewriter pipeline, comma-separated [rewrite.default_pipeline]."),
    ] = None,
    ledger: Annotated[
        str | None, typer.Option(help="Ledger URL (sqlite:///... or postgresql://...) [ledger.url].")
    ] = None,
    master_key_file: Annotated[
        Path | None, typer.Option(help="Master secret file [ledger.master_key_file].")
    ] = None,
    grace: Annotated[
        float | None, typer.Option(help="Seconds in-flight RPCs get on SIGTERM [server.grace_period_s].")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error.")] = "info",
    log_format: Annotated[str, typer.Option(help="json (one object per line) | text.")] = "json",
) -> None:
    """Run the gRPC server (TeacherService, RewriteService, ForensicsService, health, reflection).

    Settings come from --config, then TRACEMARK_<SECTION>__<KEY> environment variables (e.g.
    TRACEMARK_TEACHER__QUANTIZATION=int8), then these flags. Health reports NOT_SERVING until the teacher
    has loaded and answered a warm-up request. SIGTERM/SIGINT shut down gracefully.
    """
    configure_logging(log_level, log_format)
    overrides = {
        "server": {"address": address, "grace_period_s": grace},
        "teacher": {
            "backend": backend,
            "model": model,
            "endpoint": endpoint,
            "quantization": quantization,
            "device": device,
            "max_batch_size": max_batch_size,
            "max_queue": max_queue,
        },
        "auth": {"tokens_file": tokens_file},
        "rewrite": {"default_pipeline": rewriters.split(",") if rewriters else None},
        "ledger": {"url": ledger, "master_key_file": master_key_file},
    }
    try:
        settings = load_settings(config, overrides)
        server = TracemarkServer(settings)
        server.start()
    except (ConfigError, TokenStoreError) as exc:
        fail(str(exc))
    except Exception as exc:  # plugins in strict mode, unknown default rewriter, bind failure
        fail(f"{type(exc).__name__}: {exc}".splitlines()[0])
    server.serve_forever()


def generate_command(
    problem: Annotated[str, typer.Argument(help="The problem text to solve.")],
    address: Annotated[str, typer.Option(help="Server address host:port.")] = "127.0.0.1:50051",
    token: Annotated[
        str | None,
        typer.Option(help="Bearer token (default: $TRACEMARK_TOKEN). Never printed.", show_default=False),
    ] = None,
    tls: Annotated[bool, typer.Option(help="Use TLS.")] = False,
    ca_file: Annotated[Path | None, typer.Option(help="CA bundle for TLS (default: system roots).")] = None,
    rewriters: Annotated[
        str | None, typer.Option(help="Rewriter pipeline, comma-separated (default: server's).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="0 = server default.")] = 0,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    stream: Annotated[bool, typer.Option(help="Use GenerateStream and print text as it arrives.")] = False,
    timeout: Annotated[float, typer.Option(help="Deadline in seconds.")] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole response as JSON.")] = False,
) -> None:
    """Ask a running server for a protected trace (TeacherService.Generate)."""

    token = token or os.environ.get("TRACEMARK_TOKEN")
    stubs = Stubs(open_channel(address, token=token, tls=tls, ca_file=ca_file))
    fields = dict(
        problem=problem,
        params=teacher_pb2.GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature),
        rewriters=[r for r in (rewriters or "").split(",") if r],
    )
    try:
        if stream:
            done = None
            for event in stubs.teacher.GenerateStream(
                teacher_pb2.GenerateStreamRequest(**fields), timeout=timeout
            ):
                if event.text_delta and not as_json:
                    typer.echo(event.text_delta, nl=False)
                if event.HasField("done"):
                    done = event.done
            response = done
            if not as_json:
                typer.echo("")
        else:
            response = stubs.teacher.Generate(teacher_pb2.GenerateRequest(**fields), timeout=timeout)
            if not as_json:
                typer.echo(response.trace)
    except grpc.RpcError as exc:
        fail(f"{exc.code().name}: {exc.details()}")
    finally:
        stubs.close()
    if as_json:
        typer.echo(json.dumps(MessageToDict(response), indent=2))
    else:
        steps = ", ".join(r.name for r in response.rewriters) or "none"
        answer = response.final_answer or "-"
        console.print(
            f"[bold]answer:[/bold] {answer}  [bold]preserved:[/bold] {response.answer_preserved}"
            f"  [bold]rewriters:[/bold] {steps}  [bold]trace id:[/bold] {response.trace_id}"
        )


@accounts_app.command("add")
def accounts_add(
    name: Annotated[str, typer.Argument(help="Account name (letters, digits, . _ -).")],
    tokens_file: Annotated[Path, typer.Option(help="Tokens file to update (created 0600).")] = Path(
        "tokens.toml"
    ),
    role: Annotated[
        str,
        typer.Option(
            help="customer (TeacherService, RewriteService) | compliance (ForensicsService: investigations "
            "and reports) | admin (reserved for administrative RPCs; calls nothing else)."
        ),
    ] = "customer",
) -> None:
    """Create an account with a new bearer token and a role. The token is printed once; only its hash is
    stored. Roles are least privilege: each token calls only its role's services."""

    if role not in ROLES:
        fail(f"--role must be one of {', '.join(ROLES)}")
    try:
        token = add_account(tokens_file, name, role)
    except TokenStoreError as exc:
        fail(str(exc))
    console.print(
        f"account [bold]{name}[/bold] ({role}) added to {tokens_file}; its token (shown once) is on stdout"
    )
    typer.echo(token)


@accounts_app.command("list")
def accounts_list(
    tokens_file: Annotated[Path, typer.Option(help="Tokens file.")] = Path("tokens.toml"),
) -> None:
    """List the accounts in a tokens file with their roles (one "NAME<TAB>ROLE" a line)."""

    try:
        store = TokenStore.load(tokens_file)
    except TokenStoreError as exc:
        fail(str(exc))
    for name in store.accounts:
        typer.echo(f"{name}\t{store.role_of(name)}")
