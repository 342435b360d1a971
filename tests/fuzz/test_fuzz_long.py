"""The long fuzz run (``make fuzz``): at least 10,000 requests over every RPC, bounded in time.

One hypothesis example is one call (any RPC, any credentials, raw bytes or fields, sometimes a tiny
deadline) and about one example in 25 adds a burst of concurrent calls. Environment:

* ``TRACEMARK_FUZZ_REQUESTS`` (default 10000): examples to run (bursts add requests on top);
* ``TRACEMARK_FUZZ_SECONDS`` (default 1500): wall-clock bound; examples past it send nothing and the test
  fails if fewer than the asked requests were sent;
* ``TRACEMARK_FUZZ_SURVEY=1``: record violations instead of stopping at the first, then fail listing one
  per (RPC, status) — the measurement mode used for the figures in README.

The summary line (requests, count per status code, INTERNAL/UNKNOWN) is printed at the end of the session.
"""

from __future__ import annotations

import os
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .calls import CREDENTIALS, RPCS, SERVICE_OF, Violation, caller_of, calls, check, send, send_all

pytestmark = pytest.mark.fuzz_long  # `make fuzz`; excluded from `make test`

C = grpc.StatusCode
REQUESTS = int(os.environ.get("TRACEMARK_FUZZ_REQUESTS", "10000"))
SECONDS = float(os.environ.get("TRACEMARK_FUZZ_SECONDS", "1500"))
SURVEY = os.environ.get("TRACEMARK_FUZZ_SURVEY", "") == "1"
TIMEOUTS = [0.0, 1e-4, 0.01, 0.2]


@st.composite
def any_call(draw):
    rpc = draw(st.sampled_from(list(RPCS)))
    owner = draw(st.booleans())  # half the calls from the role that may call the RPC
    who = caller_of(rpc) if owner else st.sampled_from(CREDENTIALS)
    call = draw(calls(rpcs=(rpc,), who=who, raw_share=0.2))
    if draw(st.integers(0, 9)) == 0:
        call.timeout, call.extra = draw(st.sampled_from(TIMEOUTS)), frozenset({C.DEADLINE_EXCEEDED})
    return call


def test_long_fuzz_run(fuzz_server):
    channel = grpc.insecure_channel(
        fuzz_server.address, options=[("grpc.max_receive_message_length", 8 << 20)]
    )
    started = time.monotonic()
    violations: dict[tuple[str, str], str] = {}

    def guarded(run) -> None:
        try:
            run()
        except Violation as exc:
            if not SURVEY:
                raise
            violations.setdefault(exc.key, str(exc)[:500])

    @settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=REQUESTS,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(call=any_call(), data=st.data())
    def run(call, data):
        # Draws never depend on outside state (hypothesis replays examples): one example in 25 bursts.
        burst = (
            data.draw(st.lists(any_call(), min_size=8, max_size=32))
            if data.draw(st.integers(0, 24)) == 0
            else []
        )
        if time.monotonic() - started > SECONDS:
            return
        guarded(lambda: check(fuzz_server, send(channel, call)))
        if burst:
            for c in burst:
                if SERVICE_OF[c.rpc] == "TeacherService":
                    c.extra |= {C.RESOURCE_EXHAUSTED}
            guarded(lambda: send_all(fuzz_server, channel, burst, workers=len(burst)))
            assert fuzz_server.health() == health_pb2.HealthCheckResponse.SERVING

    try:
        run()
    finally:
        channel.close()
    sent = sum(fuzz_server.stats.values())
    print(f"\nlong fuzz run: {sent} requests in {time.monotonic() - started:.0f} s")
    assert fuzz_server.health() == health_pb2.HealthCheckResponse.SERVING
    listing = "\n".join(f"- {key}: {v}" for key, v in sorted(violations.items()))
    assert not violations, f"{len(violations)} kinds of violation:\n{listing}"
    assert sent >= REQUESTS, f"only {sent} requests in the {SECONDS:.0f} s bound"
    bad = sum(n for (_rpc, code), n in fuzz_server.stats.items() if code in ("INTERNAL", "UNKNOWN"))
    assert bad == 0
