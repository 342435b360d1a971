"""Protection through real gRPC: the default pipeline, keyed watermarks per authenticated account."""

from __future__ import annotations

import grpc
import pytest
from tracemark.server.app import TracemarkServer
from tracemark.server.client import Stubs, open_channel
from tracemark.server.teacher.reference import ReferenceTeacher
from tracemark.v1 import rewrite_pb2, teacher_pb2

from .conftest import TOKENS, make_settings, token_store

PROBLEMS = {
    "Ann has 4 boxes of 6 eggs and uses 5 eggs. How many eggs are left?": (
        "Ann has 4 * 6 = <<4*6=24>>24 eggs.\nAfter using 5 she has 24 - 5 = <<24-5=19>>19 eggs.\n#### 19"
    ),
    "A bus carries 30 people per trip and makes 3 trips. How many people does it carry?": (
        "Each trip carries 30 people, so 3 trips carry 30 * 3 = <<30*3=90>>90 people.\n#### 90"
    ),
}


@pytest.fixture(scope="module")
def protected_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protected")
    settings = make_settings(
        tmp,
        rewrite={
            "default_pipeline": ["restructure", "watermark"],
            "mandatory": ["watermark"],
            "watermark_fraction": 1.0,
            "llm": "none",
        },
    )
    server = TracemarkServer(settings, teacher=ReferenceTeacher(PROBLEMS), tokens=token_store())
    server.start()
    assert server.wait_ready(30)
    yield server
    server.stop(grace=1)


def _stubs(server, account):
    return Stubs(open_channel(f"127.0.0.1:{server.port}", token=TOKENS[account]))


def test_default_pipeline_protects_and_signs_for_the_caller(protected_server):
    alice = _stubs(protected_server, "alice")
    issuer = protected_server.runtime.issuer
    alice_texts = {p.text for p in issuer.pairs_for("alice")}
    bob_texts = {p.text for p in issuer.pairs_for("bob")}
    for problem, solution in PROBLEMS.items():
        reply = alice.teacher.Generate(teacher_pb2.GenerateRequest(problem=problem), timeout=30)
        assert [r.name for r in reply.rewriters] == ["restructure", "watermark"]
        assert reply.answer_preserved and reply.final_answer == solution.rsplit("#### ", 1)[1]
        assert reply.trace != solution
        assert any(text in reply.trace for text in alice_texts)
        assert not any(text in reply.trace for text in bob_texts)
    assert sum(issuer.issued_counts("alice").values()) == len(PROBLEMS)
    assert sum(issuer.issued_counts("bob").values()) == 0
    alice.close()


def test_callers_cannot_opt_out_of_the_watermark(protected_server):
    bob = _stubs(protected_server, "bob")
    issuer = protected_server.runtime.issuer
    before = sum(issuer.issued_counts("bob").values())
    problem = next(iter(PROBLEMS))
    reply = bob.teacher.Generate(teacher_pb2.GenerateRequest(problem=problem, rewriters=["identity"]), timeout=30)
    assert [r.name for r in reply.rewriters] == ["identity", "watermark"]
    assert any(p.text in reply.trace for p in issuer.pairs_for("bob"))
    # The fraction is the server's policy: a request may repeat it, never change it (INVALID_ARGUMENT).
    lowered = rewrite_pb2.RewriteRequest(
        trace=PROBLEMS[problem], rewriters=["watermark"], rewriter_options_json={"watermark": '{"fraction": 0.0}'}
    )
    with pytest.raises(grpc.RpcError) as refused:
        bob.rewrite.Rewrite(lowered, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "server's policy" in refused.value.details()
    request = rewrite_pb2.RewriteRequest(
        trace=PROBLEMS[problem], rewriters=["watermark"], rewriter_options_json={"watermark": '{"fraction": 1.0}'}
    )
    rewritten = bob.rewrite.Rewrite(request, timeout=30)
    assert any(p.text in rewritten.trace for p in issuer.pairs_for("bob"))
    assert sum(issuer.issued_counts("bob").values()) == before + 2
    bob.close()
