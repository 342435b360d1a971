"""Protection is never silently off (issue 13, item 3), over real gRPC with a model-free teacher:

* a watermark whose LLM raises or hangs past the step's time limit still delivers every selected trace
  signed (the template weave of the same pair: the pipeline's protected fallback), recorded as issued;
* response time does not tell which traces are signed: the latencies of signed and unsigned Generate
  calls (which is which is read from the ledger, not from the response) are compared with a two-sided
  Mann-Whitney U test. This is a *statistical* test: it fails when the two samples differ at
  alpha = 0.001 (under equal distributions it fails by chance about once in a thousand runs).
"""

from __future__ import annotations

import statistics
import threading
import time

import pytest
from scipy.stats import mannwhitneyu
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import read_session
from tracemark.foundation.problems import generate_problems
from tracemark.server.app import TracemarkServer
from tracemark.server.auth import TokenStore, hash_token
from tracemark.server.client import Stubs, open_channel
from tracemark.server.config import load_settings
from tracemark.server.teacher.reference import ReferenceTeacher
from tracemark.v1 import teacher_pb2

TOKEN = "tm_never_off_token"
ALPHA = 0.001
N_CALLS = 240


def _server(tmp, problems, **rewrite) -> TracemarkServer:
    settings = load_settings(
        overrides={
            "server": {"address": "127.0.0.1:0"},
            "teacher": {"backend": "tiny", "batch_window_ms": 0, "max_batch_size": 1},
            "rewrite": {
                "default_pipeline": ["restructure", "watermark"],
                "mandatory": ["watermark"],
                **rewrite,
            },
            "ledger": {"url": f"sqlite:///{tmp / 'ledger.db'}", "master_key_file": tmp / "master.key"},
        }
    )
    teacher = ReferenceTeacher({p.question: p.solution for p in problems})
    tokens = TokenStore({"carol": hash_token(TOKEN)})
    server = TracemarkServer(settings, teacher=teacher, tokens=tokens)
    server.start()
    assert server.wait_ready(60), server.runtime.load_error
    return server


def _issued(server: TracemarkServer, trace_id: str) -> list:
    with read_session(server.runtime.engine) as session:
        return records.issued_for_trace(session, trace_id=trace_id)


@pytest.fixture(scope="module")
def problems():
    return generate_problems(N_CALLS, seed=13, difficulty="easy")


class _FailingLLM:
    """An LLM backend that hangs past the step's time limit or raises, counting its calls."""

    model_id = "failing-test-llm"

    def __init__(self, how: str, hang_s: float = 3.0) -> None:
        self.how, self.hang_s, self.calls = how, hang_s, 0
        self._lock = threading.Lock()

    def for_account(self, account):  # the runtime binds the LLM to the caller's channel keys
        return self

    def chat(self, messages, *, max_new_tokens=512, temperature=0.0, seed=None) -> str:
        with self._lock:
            self.calls += 1
        if self.how == "hang":
            time.sleep(self.hang_s)
            return "too late"
        raise RuntimeError("backend down")


@pytest.mark.parametrize("how", ["raise", "hang"])
def test_a_failing_weave_llm_still_signs_every_selected_trace(tmp_path, problems, how):
    server = _server(tmp_path, problems, watermark_fraction=1.0, watermark_weave="llm", timeout_s=0.5)
    llm = _FailingLLM(how)
    server.runtime.llm = llm
    stubs = Stubs(open_channel(f"127.0.0.1:{server.port}", token=TOKEN))
    try:
        pairs = server.runtime.issuer.pairs_for("carol")
        n = 8  # "hang": after 4 hung threads the step goes straight to its fallback ("skipped"), signed
        for problem in problems[:n]:
            reply = stubs.teacher.Generate(teacher_pb2.GenerateRequest(problem=problem.question), timeout=30)
            assert reply.final_answer == problem.answer
            carried = [p for p in pairs if p.text in reply.trace]
            assert len(carried) == 1, reply.trace  # signed: the pair text is in the delivered trace
            issued = _issued(server, reply.trace_id)
            assert [(i.pair_id, i.rewriter) for i in issued] == [(carried[0].pair_id, "watermark/template")]
            step = reply.rewriters[-1]
            assert step.name == "watermark"
            if how == "hang":  # the step timed out (or was taken out of service): the pipeline's fallback
                assert "protected fallback" in step.detail, step.detail
            else:  # the step itself caught the LLM's error and used the template
                assert step.detail == "", step.detail
        assert llm.calls >= 1  # the weave did ask the LLM (until the step was taken out of service)
    finally:
        stubs.close()
        server.stop(grace=1)


def test_signed_and_unsigned_traces_take_the_same_time(tmp_path, problems):
    server = _server(tmp_path, problems, watermark_fraction=0.5)
    stubs = Stubs(open_channel(f"127.0.0.1:{server.port}", token=TOKEN))
    try:
        # warm up: the account's first signature logs its key commitment (a slow, one-time write), caches and
        # the connection; the watermark's recent-write sample fills with steady-state writes
        for problem in problems[:100]:
            stubs.teacher.Generate(teacher_pb2.GenerateRequest(problem=problem.question), timeout=30)
        timed = []
        for problem in problems:
            started = time.perf_counter()
            reply = stubs.teacher.Generate(teacher_pb2.GenerateRequest(problem=problem.question), timeout=30)
            timed.append((time.perf_counter() - started, reply.trace_id))
    finally:
        stubs.close()
    try:
        signed = [t for t, trace_id in timed if _issued(server, trace_id)]
        unsigned = [t for t, trace_id in timed if not _issued(server, trace_id)]
    finally:
        server.stop(grace=1)
    assert len(signed) >= 60 and len(unsigned) >= 60, (len(signed), len(unsigned))
    p = mannwhitneyu(signed, unsigned, alternative="two-sided").pvalue
    medians = f"median signed {statistics.median(signed) * 1e3:.2f} ms, unsigned {statistics.median(unsigned) * 1e3:.2f} ms"
    print(f"\nMann-Whitney p = {p:.3g}; {medians}; n = {len(signed)} / {len(unsigned)}")
    assert p > ALPHA, f"signed and unsigned latencies differ (p = {p:.3g}; {medians})"
