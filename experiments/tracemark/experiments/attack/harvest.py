"""Harvest files (JSONL, one record per trace) and harvesting through the real gRPC API over K accounts.

A record holds what a distiller sees: the account that asked, a problem id, the prompt, the trace text,
the trace id the server returned, the request time and (optionally) the teacher's token ids. Nothing
keyed is stored here; the ground truth (which pair a trace carries) lives in a separate truth file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tracemark.foundation.errors import InvalidInput


class HarvestError(InvalidInput):
    """A bad harvest file or harvest plan."""


@dataclass(frozen=True)
class HarvestRecord:
    """One harvested trace."""

    account: str
    problem_id: str
    prompt: str
    trace: str
    trace_id: str = ""
    request_s: float = 0.0
    token_ids: list[int] | None = None
    reference: str = ""  # the problem's reference solution when known (clean-control training only)
    meta: dict = field(default_factory=dict)

    def with_trace(self, trace: str) -> HarvestRecord:
        return replace(self, trace=trace, token_ids=None if trace != self.trace else self.token_ids)

    def as_dict(self) -> dict:
        data = asdict(self)
        if data["token_ids"] is None:
            del data["token_ids"]
        if not data["meta"]:
            del data["meta"]
        if not data["reference"]:
            del data["reference"]
        return data


_REQUIRED = ("account", "problem_id", "prompt", "trace")


def read_harvest(path: Path) -> list[HarvestRecord]:
    """Read a harvest JSONL file; raises :class:`HarvestError` on a malformed line."""
    path = Path(path)
    if not path.is_file():
        raise HarvestError(f"harvest file not found: {path}")
    records = []
    known = set(HarvestRecord.__dataclass_fields__)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HarvestError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(data, dict) or any(not isinstance(data.get(k), str) for k in _REQUIRED):
            raise HarvestError(f"{path}:{n}: a record needs string fields {', '.join(_REQUIRED)}")
        records.append(HarvestRecord(**{k: v for k, v in data.items() if k in known}))
    if not records:
        raise HarvestError(f"harvest file {path} holds no record")
    return records


def write_harvest(records: Iterable[HarvestRecord], path: Path) -> Path:
    """Write records as JSONL (UTF-8, one object a line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r.as_dict(), ensure_ascii=False) + "\n")
    return path


@dataclass(frozen=True)
class HarvestRequest:
    account: str
    problem_id: str
    prompt: str
    reference: str = ""


def plan_requests(
    problems: Sequence[tuple[str, str, str]],
    accounts: Sequence[str],
    *,
    repeats: int = 0,
    overlap: int = 0,
) -> list[HarvestRequest]:
    """The requests of a harvest: ``problems`` (id, prompt, reference) spread round-robin over
    ``accounts``; then the first ``repeats`` problems asked a second time by the same account, and the
    first ``overlap`` problems asked also by the next account (two accounts, same problem)."""
    if not accounts:
        raise HarvestError("a harvest needs at least one account")
    if not problems:
        raise HarvestError("a harvest needs at least one problem")
    if repeats < 0 or overlap < 0:
        raise HarvestError("repeats and overlap must be >= 0")
    if overlap and len(accounts) < 2:
        raise HarvestError("overlap needs at least two accounts")
    plan = [
        HarvestRequest(accounts[i % len(accounts)], pid, prompt, ref)
        for i, (pid, prompt, ref) in enumerate(problems)
    ]
    for i, (pid, prompt, ref) in enumerate(problems[: min(repeats, len(problems))]):
        plan.append(HarvestRequest(accounts[i % len(accounts)], pid, prompt, ref))
    for i, (pid, prompt, ref) in enumerate(problems[: min(overlap, len(problems))]):
        plan.append(HarvestRequest(accounts[(i + 1) % len(accounts)], pid, prompt, ref))
    return plan


def account_names(k: int, prefix: str = "harvester") -> list[str]:
    """``k`` account names ``harvester-000``, ``harvester-001``, ..."""
    if k < 1:
        raise HarvestError(f"--accounts must be >= 1, got {k}")
    width = max(3, len(str(k - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(k)]


def harvest_grpc(
    address: str,
    tokens: dict[str, str],
    plan: Sequence[HarvestRequest],
    *,
    workers: int = 8,
    timeout_s: float = 600.0,
    rewriters: Sequence[str] = (),
    tls: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[HarvestRecord]:
    """Send every planned request through ``TeacherService.Generate`` with its account's token and
    return the records in plan order (``tokens`` maps account -> bearer token; never logged)."""
    from tracemark.server.client import Stubs, open_channel  # deferred: gRPC only when harvesting live
    from tracemark.v1 import teacher_pb2  # deferred: as above

    missing = sorted({r.account for r in plan} - set(tokens))
    if missing:
        raise HarvestError(f"no token for {len(missing)} account(s), e.g. {missing[0]!r}")
    stubs = {a: Stubs(open_channel(address, token=tokens[a], tls=tls)) for a in {r.account for r in plan}}
    done = 0

    def ask(req: HarvestRequest) -> HarvestRecord:
        message = teacher_pb2.GenerateRequest(problem=req.prompt, rewriters=list(rewriters))
        t0 = time.perf_counter()
        reply = stubs[req.account].teacher.Generate(message, timeout=timeout_s)
        return HarvestRecord(
            account=req.account,
            problem_id=req.problem_id,
            prompt=req.prompt,
            trace=reply.trace,
            trace_id=reply.trace_id,
            request_s=time.perf_counter() - t0,
            reference=req.reference,
            meta={"answer_preserved": bool(reply.answer_preserved)},
        )

    out: list[HarvestRecord] = []
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for record in pool.map(ask, plan):
                out.append(record)
                done += 1
                if progress is not None:
                    progress(done, len(plan))
    finally:
        for s in stubs.values():
            s.close()
    return out
