"""What the fuzz suite sends and what it expects: hypothesis strategies built from the tracemark.v1 request
fields, an oracle giving the status codes the contract allows for each request, and a sender that puts raw
bytes on the wire (so undecodable messages can be sent too) and checks every answer.

The oracle is a union: a request with several faults may be refused for any one of them, never for
something else. A request without faults must succeed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from hypothesis import strategies as st
from tracemark.v1 import account_pb2, forensics_pb2, rewrite_pb2, teacher_pb2

from .conftest import (
    MAX_MESSAGE_BYTES,
    MAX_NEW_TOKENS,
    MAX_PROBLEM_CHARS,
    MAX_TRACE_CHARS,
    TOKENS,
    WATERMARK_FRACTION,
    FuzzServer,
)

C = grpc.StatusCode
NEVER = frozenset({C.INTERNAL, C.UNKNOWN})

# Every RPC of the four services, read from the protos: a new RPC without fuzz coverage fails a test.
RPCS: dict[str, tuple[str, bool, type]] = {}
for _module in (teacher_pb2, rewrite_pb2, forensics_pb2, account_pb2):
    for _service in _module.DESCRIPTOR.services_by_name.values():
        for _method in _service.methods:
            RPCS[_method.name] = (
                f"/{_service.full_name}/{_method.name}",
                _method.server_streaming,
                getattr(_module, _method.input_type.name),
            )
SERVICE_OF = {name: path.split("/")[1].rsplit(".", 1)[-1] for name, (path, _, _) in RPCS.items()}
# The roles of issue 11: who may call which service (admin manages accounts and keys, calls none of these).
MAY_CALL = {
    "customer": {"TeacherService", "RewriteService", "AccountService"},
    "compliance": {"ForensicsService", "AccountService"},
    "admin": {"AccountService"},  # every role may fetch its own key receipt
}
VALID_REWRITERS = ["identity", "restructure", "watermark"]
MUST_BE_LAST = {"watermark"}
MAX_PIPELINE_STEPS = 16  # the caller's steps after stripping (the mandatory watermark not counted)
REWRITER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # tracemark.plugins.loader.NAME_PATTERN
KNOWN_REWRITERS = {
    "identity", "restructure", "watermark", "hotflip", "embedding-ascent", "semantic", "optimized", "example",
}  # fmt: skip

# --- strategies --------------------------------------------------------------------------------------
NASTY = [
    "", " ", "\x00", "\x00" * 64, "\n\t\r", "\\ud800", "\\udfff\\ud800", "\ufeff", "\u202e\u2066", "𝟘𝟙",
    "💥" * 16, "e\u0301" * 8, "%s%n%x", "{0}{1}", "' OR 1=1 --", "../../../../etc/passwd", "\\boxed{",
    "\\boxed{" * 200, "#### 8", "3 + 5 = 8\n#### 8", "x137 = ", "Bearer", "tm_", "-1", "NaN", "1e309",
]  # fmt: skip
huge_text = st.builds(
    lambda chunk, n: chunk * n,
    st.sampled_from(["a", "é", "💥", "\x00", "9 ", "\\boxed{", "{", "[", "#### ", "\u202e"]),
    st.integers(1, 300_000),
)
text = st.one_of(st.text(max_size=40), st.sampled_from(NASTY), st.text(max_size=2000), huge_text)
short_text = st.one_of(st.text(max_size=40), st.sampled_from(NASTY))


def deep_json(depth: int, kind: str) -> str:
    if kind == "array":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


json_options = st.one_of(
    st.sampled_from(["", "{}", " {} ", "{", "null", "[]", "1", '"s"', "true", '{"fz_k": 1}', "{}{}"]),
    st.sampled_from(['{"fz_\\ud800": 1}', '{"fz": "\\u0000"}', '{"fz": 1e999}', '{"fz": NaN}']),
    st.builds(lambda n: '{"fz": ' + "9" * n + "}", st.integers(1, 20_000)),  # huge integers
    st.builds(
        deep_json, st.sampled_from([10, 100, 1_000, 5_000, 100_000]), st.sampled_from(["array", "object"])
    ),
    st.builds(lambda n: '{"fz": "' + "x" * n + '"}', st.integers(0, 200_000)),
    st.builds(lambda n: json.dumps({f"fz_{i}": i for i in range(n)}), st.integers(1, 3_000)),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
        max_leaves=12,
    ).map(lambda v: json.dumps({"fz": v})),
    short_text,
)
rewriter_names = st.lists(
    st.one_of(
        st.sampled_from(VALID_REWRITERS),
        st.sampled_from([" identity ", "", "  ", "no-such-rewriter", "a" * 64, "a" * 65, "Identity"]),
        short_text,
    ),
    max_size=4,
) | st.builds(lambda n: ["identity"] * n, st.integers(15, 40))  # pipelines longer than any sane one


@st.composite
def options_for(draw, names: list[str]) -> dict[str, str]:
    keys = draw(
        st.lists(st.one_of(st.sampled_from(names or ["identity"]), short_text), max_size=3, unique=True)
    )
    return {k: draw(json_options) for k in keys}


int32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, -1, 1, 2**31 - 1, -(2**31)]))
uint64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1]))
float32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
double = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 1e-3, 0.5, 1.0, 2.0, -1e-3, 1e308]))


@st.composite
def generate_request(draw, cls=teacher_pb2.GenerateRequest):
    names = draw(rewriter_names)
    params = teacher_pb2.GenerationParams(
        max_new_tokens=draw(st.one_of(int32, st.integers(0, MAX_NEW_TOKENS))),
        temperature=draw(st.one_of(float32, st.sampled_from([0.0, 0.7]))),
        seed=draw(uint64),
    )
    problem = draw(st.one_of(text, st.sampled_from(["What is 3 + 5?", "2+2?"])))
    return cls(
        problem=problem, params=params, rewriters=names, rewriter_options_json=draw(options_for(names))
    )


@st.composite
def rewrite_request(draw):
    names = draw(rewriter_names)
    trace = draw(
        st.one_of(text, st.sampled_from(["3 + 5 = 8 apples.\n#### 8", "The answer is \\boxed{12}."]))
    )
    return rewrite_pb2.RewriteRequest(
        trace=trace,
        problem=draw(short_text),
        rewriters=names,
        rewriter_options_json=draw(options_for(names)),
        seed=draw(uint64),
    )


SUSPECTS = [
    "hf:/etc", "hf:/root/.ssh", "hf:~/.ssh", "gguf:/etc/passwd", "hf:../../..", "openai:http://127.0.0.1:1/v1#m",
    "openai:http://[::1]:1/v1#m", "openai:file:///etc/passwd#m", "tracemark:127.0.0.1:1", "tracemark:localhost:1",
]  # fmt: skip
WELL_FORMED_SUSPECT = ("hf:", "gguf:", "openai:http", "tracemark:")


@st.composite
def investigate_request(draw):
    return forensics_pb2.InvestigateRequest(
        suspect=draw(st.one_of(st.sampled_from(SUSPECTS), text)),
        accounts=draw(st.lists(st.one_of(st.sampled_from([TOKENS["customer"][0]]), short_text), max_size=3)),
        alpha=draw(double),
        mode=draw(st.one_of(st.sampled_from(["", "white-box", "black-box", "auto"]), short_text)),
        query_budget=draw(int32),
        correction=draw(st.one_of(st.sampled_from(["", "holm", "fdr_bh"]), short_text)),
    )


report_id = st.one_of(
    text, st.sampled_from(["latest", "0", "r-", "%", "_", "*"]), st.text("0123456789abcdef", max_size=64)
)
MESSAGES = {
    "Generate": generate_request(),
    "GenerateStream": generate_request(teacher_pb2.GenerateStreamRequest),
    "GetTeacherInfo": st.just(teacher_pb2.GetTeacherInfoRequest()),
    "GetKeyReceipt": st.just(account_pb2.GetKeyReceiptRequest()),
    "Rewrite": rewrite_request(),
    "ListRewriters": st.just(rewrite_pb2.ListRewritersRequest()),
    "Investigate": investigate_request(),
    "GetReport": st.builds(forensics_pb2.GetReportRequest, report_id=report_id),
    "VerifyReport": st.builds(
        forensics_pb2.VerifyReportRequest,
        report_id=st.one_of(st.just(""), report_id),
        envelope_json=json_options,
    ),
}


@st.composite
def raw_bytes(draw, rpc: str):
    """Bytes that are mostly not a valid message of ``rpc``'s request type."""
    valid = draw(MESSAGES[rpc]).SerializeToString()
    return draw(
        st.one_of(
            st.binary(max_size=512),
            st.sampled_from(
                [b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x0a\x02\xff\xfe", b"\x0b", b"\xff"]
            ),
            st.sampled_from([b"\x0a\x05abc", b"\x12\x80\x80\x80\x80\x10", b"\x0f", b"\x08" + b"\xff" * 11]),
            st.builds(
                lambda i, b: valid[:i] + bytes([b]) + valid[i + 1 :],
                st.integers(0, max(len(valid), 1)),
                st.integers(0, 255),
            ),
            st.builds(lambda i: valid[:i], st.integers(0, max(len(valid) - 1, 0))),
        )
    )


# --- the oracle --------------------------------------------------------------------------------------
def _json_fault(raw: str) -> bool:
    if not raw:
        return False
    try:
        return json.loads(raw) != {}
    except Exception:  # invalid, too deep, too large: all the caller's fault
        return True


def pipeline_codes(names: Iterable[str], options: dict[str, str]) -> set[C]:
    cleaned = [n.strip() for n in names if n.strip()]
    names = (cleaned or ["identity"]) + [m for m in ["watermark"] if m not in cleaned]
    codes: set[C] = set()
    if len(cleaned) > MAX_PIPELINE_STEPS:
        codes.add(C.INVALID_ARGUMENT)
    if set(options) - set(names) or any(_json_fault(v) for v in options.values()):
        codes.add(C.INVALID_ARGUMENT)
    unknown = [n for n in names if n not in KNOWN_REWRITERS]
    if any(REWRITER_NAME.fullmatch(n) for n in unknown):
        codes.add(C.NOT_FOUND)  # a well-formed name nobody registered
    if any(not REWRITER_NAME.fullmatch(n) for n in unknown):
        codes |= {C.INVALID_ARGUMENT, C.NOT_FOUND}  # cannot be a name at all: either refusal is precise
    if any(n in MUST_BE_LAST and i != len(names) - 1 for i, n in enumerate(names)):
        codes.add(C.INVALID_ARGUMENT)
    return codes


def field_codes(rpc: str, msg) -> set[C]:
    """Codes the contract allows for ``msg`` from a caller whose role may call ``rpc``."""
    codes: set[C] = set()
    if rpc in ("Generate", "GenerateStream"):
        problem, p = msg.problem.strip(), msg.params
        if not problem or len(problem) > MAX_PROBLEM_CHARS:
            codes.add(C.INVALID_ARGUMENT)
        if p.max_new_tokens < 0 or p.max_new_tokens > MAX_NEW_TOKENS or p.temperature < 0:
            codes.add(C.INVALID_ARGUMENT)
        if math.isnan(p.temperature):
            codes.add(C.INVALID_ARGUMENT)
        elif math.isinf(p.temperature) and not codes:
            codes |= {C.OK, C.INVALID_ARGUMENT}
        codes |= pipeline_codes(msg.rewriters, dict(msg.rewriter_options_json))
    elif rpc == "Rewrite":
        if not msg.trace.strip() or len(msg.trace) > MAX_TRACE_CHARS:
            codes.add(C.INVALID_ARGUMENT)
        codes |= pipeline_codes(msg.rewriters, dict(msg.rewriter_options_json))
    elif rpc == "Investigate":
        # No suspect is allowlisted on the fuzz server: a well-formed one is refused, a malformed one invalid.
        codes.add(C.PERMISSION_DENIED)
        if not msg.suspect.startswith(WELL_FORMED_SUSPECT):
            codes.add(C.INVALID_ARGUMENT)
        if not (msg.alpha == 0 or 0 < msg.alpha < 1) or msg.query_budget < 0:
            codes.add(C.INVALID_ARGUMENT)
        if msg.mode not in ("", "white-box", "black-box", "auto") or msg.correction not in (
            "",
            "holm",
            "fdr_bh",
        ):
            codes.add(C.INVALID_ARGUMENT)
        if any(a != TOKENS["customer"][0] for a in msg.accounts):
            codes |= {C.INVALID_ARGUMENT, C.NOT_FOUND}
    elif rpc == "GetReport":
        codes |= {C.INVALID_ARGUMENT} if not msg.report_id else {C.NOT_FOUND, C.INVALID_ARGUMENT}
    elif rpc == "GetKeyReceipt":
        codes |= {C.OK, C.NOT_FOUND}  # the caller's own receipt, or none before its first signed trace
    elif rpc == "VerifyReport":
        if msg.envelope_json:
            codes |= {C.OK, C.INVALID_ARGUMENT}  # OK only with valid=False (checked by the sender)
        elif msg.report_id:
            codes |= {C.NOT_FOUND, C.INVALID_ARGUMENT}
        else:
            codes.add(C.INVALID_ARGUMENT)
    return codes or {C.OK}


CREDENTIALS = ["customer", "compliance", "admin", "none", "bad", "malformed"]
bad_tokens = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80),
    st.sampled_from(
        ["tm_", TOKENS["customer"][1][:-1], TOKENS["customer"][1] + "x", TOKENS["customer"][1].upper()]
    ),
)
malformed_auth = st.sampled_from(
    [
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "bearer",
        "Token " + TOKENS["customer"][1],
        TOKENS["customer"][1],
    ]
)


@dataclass
class Call:
    rpc: str
    payload: bytes
    who: str  # one of CREDENTIALS
    metadata: tuple = ()
    timeout: float = 30.0
    extra: frozenset = frozenset()  # codes allowed on top of the oracle (deadlines, bursts)
    allowed: frozenset | None = None  # replaces the oracle where a test knows better

    def expected(self) -> set[C]:
        if self.allowed is not None:
            return set(self.allowed)
        cls = RPCS[self.rpc][2]
        if len(self.payload) > MAX_MESSAGE_BYTES:
            # Refused by size before anything else; an auth refusal first is fine too.
            return {C.RESOURCE_EXHAUSTED, C.UNAUTHENTICATED, C.PERMISSION_DENIED} | self.extra
        if self.who in ("none", "bad", "malformed"):
            return {C.UNAUTHENTICATED} | self.extra
        try:
            msg = cls.FromString(self.payload)
        except DecodeError:
            codes = {C.INVALID_ARGUMENT}
        else:
            codes = field_codes(self.rpc, msg)
        if SERVICE_OF[self.rpc] not in MAY_CALL[self.who]:
            return {C.PERMISSION_DENIED} | self.extra
        return codes | self.extra


@st.composite
def calls(draw, rpcs=tuple(RPCS), who=st.sampled_from(CREDENTIALS), raw_share: float = 0.2):
    rpc = draw(st.sampled_from(rpcs))
    who = draw(who)
    if draw(st.floats(0, 1)) < raw_share:
        payload = draw(raw_bytes(rpc))
    else:
        payload = draw(MESSAGES[rpc]).SerializeToString()
    metadata: tuple = ()
    if who in TOKENS:
        metadata = bearer(who)
    elif who == "bad":
        metadata = (("authorization", f"Bearer {draw(bad_tokens)}"),)
    elif who == "malformed":
        metadata = (("authorization", draw(malformed_auth)),)
    return Call(rpc, payload, who, metadata)


def caller_of(rpc: str) -> st.SearchStrategy[str]:
    return st.just("compliance" if SERVICE_OF[rpc] == "ForensicsService" else "customer")


# --- sending -----------------------------------------------------------------------------------------
@dataclass
class Outcome:
    call: Call
    code: C
    details: str
    responses: list[bytes]


def send(channel: grpc.Channel, call: Call) -> Outcome:
    path, streaming, _ = RPCS[call.rpc]
    kwargs = dict(timeout=call.timeout, metadata=call.metadata or None)
    try:
        if streaming:
            stream = channel.unary_stream(path)(call.payload, **kwargs)
            responses = list(stream)
        else:
            responses = [channel.unary_unary(path)(call.payload, **kwargs)]
        return Outcome(call, C.OK, "", responses)
    except grpc.RpcError as exc:
        return Outcome(call, exc.code(), exc.details() or "", [])


class Violation(AssertionError):
    """An answer the contract does not allow; ``key`` groups violations as (RPC, what went wrong)."""

    def __init__(self, key: tuple[str, str], message: str) -> None:
        super().__init__(message)
        self.key = key


def check(fuzz: FuzzServer, outcome: Outcome) -> None:
    """The status is allowed, never INTERNAL/UNKNOWN, and the answer reveals no secret."""
    call = outcome.call
    fuzz.record(call.rpc, outcome.code)
    where = f"{call.rpc} as {call.who} ({len(call.payload)} bytes, timeout {call.timeout})"
    expected = call.expected()
    if outcome.code in NEVER or outcome.code not in expected:
        raise Violation(
            (call.rpc, f"{call.who}->{outcome.code.name} {outcome.details[:40]!r}"),
            f"{where}: got {outcome.code.name} {outcome.details[:200]!r}, "
            f"expected one of {sorted(c.name for c in expected)}; payload {call.payload[:120]!r}",
        )
    ok_verify = call.rpc == "VerifyReport" and outcome.code == C.OK
    if ok_verify and forensics_pb2.VerifyReportResponse.FromString(outcome.responses[0]).valid:
        raise Violation((call.rpc, "forged envelope valid"), f"{where}: a fuzzed envelope verified")
    answer = outcome.details.encode("utf-8", "replace") + b"".join(outcome.responses)
    own = set(fuzz.own_pairs.get(TOKENS[call.who][0], [])) if call.who in TOKENS else set()
    for what, secret in fuzz.secrets.items():
        raw = secret.encode()
        if secret not in own and raw in answer and raw not in call.payload:
            raise Violation((call.rpc, f"leaks {what}"), f"{where}: the answer reveals the {what}")


def send_all(fuzz: FuzzServer, channel: grpc.Channel, batch: list[Call], workers: int = 16) -> list[Outcome]:
    """Send ``batch`` concurrently (a burst) and check every answer."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda c: send(channel, c), batch))
    for outcome in outcomes:
        check(fuzz, outcome)
    return outcomes


def watermark_fraction_call(fraction: float) -> Call:
    """A Rewrite that asks for a watermark fraction other than the server's (issue 11, item 6)."""
    msg = rewrite_pb2.RewriteRequest(
        trace="3 + 5 = 8\n#### 8",
        rewriters=["watermark"],
        rewriter_options_json={"watermark": json.dumps({"fraction": fraction})},
    )
    allowed = frozenset({C.OK} if fraction == WATERMARK_FRACTION else {C.INVALID_ARGUMENT})
    return Call("Rewrite", msg.SerializeToString(), "customer", bearer("customer"), allowed=allowed)


def bearer(role: str) -> tuple:
    return (("authorization", f"Bearer {TOKENS[role][1]}"),)
