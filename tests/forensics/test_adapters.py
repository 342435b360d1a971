"""Suspect adapters: spec parsing, an OpenAI-compatible endpoint (real local HTTP server), retries with
back-off, budgets, time-outs, the query log, a tracemark-served suspect (real gRPC) and local models."""

from __future__ import annotations

import json
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from tracemark.forensics.adapters import (
    BudgetExhausted,
    LocalModelSuspect,
    OpenAISuspect,
    SuspectError,
    SuspectSpecError,
    SuspectUnavailable,
    TracemarkSuspect,
    parse_suspect,
)


# --- a scripted OpenAI-compatible server -------------------------------------------------------------
class FakeOpenAI:
    """Serves /v1/completions and /v1/chat/completions; ``script[path]`` is a list of
    (status, headers, body-or-None, delay) consumed per request (the last entry repeats)."""

    def __init__(self) -> None:
        self.script: dict[str, list[tuple]] = {}
        self.requests: list[tuple[str, dict, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                fake.requests.append((self.path, dict(self.headers), body))
                steps = fake.script.get(self.path) or [(404, {}, {"error": {"message": "not here"}}, 0)]
                status, headers, payload, delay = steps.pop(0) if len(steps) > 1 else steps[0]
                if delay:
                    time.sleep(delay)
                if callable(payload):
                    payload = payload(body)
                raw = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def completions(texts_for_n):
    """A /completions payload builder: n choices cycling through ``texts_for_n``, with logprobs."""

    def build(body):
        n = body.get("n", 1)
        choices = []
        for i in range(n):
            text = texts_for_n[i % len(texts_for_n)]
            toks = list(text)
            choices.append(
                {
                    "index": i,
                    "text": text,
                    "logprobs": {
                        "tokens": toks,
                        "token_logprobs": [-0.1] * len(toks),
                        "top_logprobs": [{t: -0.1, "9": -3.0} for t in toks],
                    },
                }
            )
        return {"id": "cmpl-1", "object": "text_completion", "choices": choices}

    return build


@pytest.fixture
def server():
    fake = FakeOpenAI()
    yield fake
    fake.close()


@pytest.fixture
def no_sleep():
    waits: list[float] = []
    return waits, waits.append


# --- spec parsing -------------------------------------------------------------------------------------
def test_parse_suspect_specs(tmp_path, tiny_model_dir):
    local = parse_suspect(f"hf:{tiny_model_dir}")
    assert isinstance(local, LocalModelSuspect) and local.white_box and local.kind == "hf"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    g = parse_suspect(f"gguf:{gguf}")
    assert g.white_box and g.kind == "gguf"
    o = parse_suspect("openai:http://127.0.0.1:9/v1#my-model")
    assert isinstance(o, OpenAISuspect) and not o.white_box
    assert o.identity() == {
        "kind": "openai",
        "endpoint": "http://127.0.0.1:9/v1",
        "model": "my-model",
        "api": "auto",
        "authenticated": False,
    }
    assert parse_suspect("openai:https://api.example.com#m").base_url == "https://api.example.com/v1"
    t = parse_suspect("tracemark:localhost:50051")
    assert isinstance(t, TracemarkSuspect) and t.address == "localhost:50051"


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("", "empty"),
        ("ftp:nowhere", "unknown suspect kind 'ftp'"),
        ("nocolon", "no kind prefix"),
        ("hf:/definitely/not/here", "no model folder"),
        ("gguf:/x/model.bin", "expected a .gguf file"),
        ("gguf:/x/missing.gguf", "no such file"),
        ("openai:http://h:1/v1", "needs a model name"),
        ("openai:ftp://h#m", "must start with http"),
        ("tracemark:nohostport", "expected tracemark:HOST:PORT"),
        ("tracemark:h:99999", "port out of range"),
    ],
)
def test_bad_specs_raise_one_line_value_errors(spec, fragment):
    with pytest.raises(SuspectSpecError) as info:
        parse_suspect(spec)
    assert isinstance(info.value, ValueError)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_hf_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(SuspectSpecError, match="no config.json"):
        parse_suspect(f"hf:{tmp_path}")


# --- OpenAI-compatible endpoint -------------------------------------------------------------------------
def test_openai_completions_samples_logprobs_and_query_log(server, monkeypatch):
    monkeypatch.setenv("TRACEMARK_SUSPECT_API_KEY", "sk-secret-value-123")
    server.script["/v1/completions"] = [(200, {}, completions([" 4821.", " 4821.", " 1234"]), 0)]
    seen = []
    s = parse_suspect(f"openai:{server.url}#student", query_budget=10, on_query=seen.append)
    out = s.sample("x137 =", n=3, max_new_tokens=7, temperature=0.7, seed=5)
    assert [o.text for o in out] == [" 4821.", " 4821.", " 1234"]
    assert out[0].tokens == tuple(" 4821.") and out[0].token_logprobs[0] == pytest.approx(-0.1)
    assert out[0].top_logprobs[1]["9"] == pytest.approx(-3.0)
    path, headers, body = server.requests[-1]
    assert path == "/v1/completions"
    assert body == {
        "model": "student",
        "prompt": "x137 =",
        "n": 3,
        "max_tokens": 7,
        "temperature": 0.7,
        "seed": 5,
        "logprobs": 5,
    }
    assert headers["Authorization"] == "Bearer sk-secret-value-123"
    assert s.queries_used == 3 and s.budget_left == 7
    assert len(seen) == 1 and seen[0] is s.query_log[0]
    entry = s.query_log[0]
    assert entry.kind == "sample" and entry.meta["api"] == "completions" and entry.meta["n"] == 3
    import hashlib

    assert entry.prompt_sha256 == hashlib.sha256(b"x137 =").hexdigest()
    assert entry.response_sha256 == hashlib.sha256(entry.response.encode()).hexdigest()
    # the API key never appears in identity, log or repr
    text = json.dumps(s.identity()) + repr(s) + json.dumps([e.as_dict() for e in s.query_log])
    assert "sk-secret" not in text and s.identity()["authenticated"] is True


def test_openai_falls_back_to_chat_completions(server):
    server.script["/v1/completions"] = [(404, {}, {"error": {"message": "only chat here"}}, 0)]

    def chat(body):
        assert body["messages"][-1] == {"role": "user", "content": "Let x137 ="}
        assert body["logprobs"] is True and body["top_logprobs"] == 5
        return {
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": "x137 = 4821"},
                    "logprobs": {"content": [{"token": "x", "logprob": -0.2, "top_logprobs": []}]},
                }
                for i in range(body["n"])
            ]
        }

    server.script["/v1/chat/completions"] = [(200, {}, chat, 0)]
    s = parse_suspect(f"openai:{server.url}#student")
    out = s.sample("Let x137 =", n=2)
    assert [o.text for o in out] == ["x137 = 4821"] * 2
    assert s.api == "chat"
    s.sample("Let x137 =", n=1)  # sticks to chat: no second /completions request
    assert [p for p, _, _ in server.requests].count("/v1/completions") == 1


def test_openai_retries_429_and_500_with_exponential_backoff(server, no_sleep):
    waits, sleep = no_sleep
    server.script["/v1/completions"] = [
        (429, {"Retry-After": "2"}, {"error": {"message": "slow down"}}, 0),
        (500, {}, {"error": "boom"}, 0),
        (503, {}, {"error": "busy"}, 0),
        (200, {}, completions([" 0042"]), 0),
    ]
    s = parse_suspect(f"openai:{server.url}#m", backoff=0.5, max_retries=4, sleep=sleep)
    out = s.sample("q12 =", n=1)
    assert out[0].text == " 0042"
    assert waits == [2.0, 1.0, 2.0]  # Retry-After honoured, then 0.5 * 2**attempt
    assert s.retries == 3 and s.query_log[-1].attempts == 4 and s.queries_used == 1


def test_openai_gives_up_after_retries_and_refunds_the_budget(server, no_sleep):
    waits, sleep = no_sleep
    server.script["/v1/completions"] = [(500, {}, {"error": "down"}, 0)]
    s = parse_suspect(f"openai:{server.url}#m", backoff=0.25, max_retries=2, sleep=sleep, query_budget=5)
    with pytest.raises(SuspectUnavailable, match="after 3 attempt"):
        s.sample("q12 =", n=2)
    assert waits == [0.25, 0.5]
    assert s.queries_used == 0 and s.budget_left == 5 and s.query_log == []


def test_openai_client_errors_are_not_retried(server, no_sleep):
    waits, sleep = no_sleep
    server.script["/v1/completions"] = [(401, {}, {"error": {"message": "bad key"}}, 0)]
    s = parse_suspect(f"openai:{server.url}#m", sleep=sleep)
    with pytest.raises(SuspectError, match="HTTP 401: bad key"):
        s.sample("q12 =")
    assert waits == []


def test_openai_time_out_is_retried_then_reported(server, no_sleep):
    waits, sleep = no_sleep
    server.script["/v1/completions"] = [(200, {}, completions([" 1"]), 1.0)]
    s = parse_suspect(f"openai:{server.url}#m", timeout=0.2, max_retries=1, sleep=sleep)
    with pytest.raises(SuspectUnavailable, match="time-out"):
        s.sample("q12 =")
    assert len(waits) == 1


def test_budget_exhaustion(server):
    server.script["/v1/completions"] = [(200, {}, completions([" 1111"]), 0)]
    s = parse_suspect(f"openai:{server.url}#m", query_budget=4)
    s.sample("a =", n=3)
    with pytest.raises(BudgetExhausted, match="1 of 4 left"):
        s.sample("a =", n=2)
    s.sample("a =", n=1)
    assert s.budget_left == 0 and len(server.requests) == 2
    with pytest.raises(BudgetExhausted):
        s.sample("a =")


def test_rate_limit_spaces_requests(server):
    server.script["/v1/completions"] = [(200, {}, completions([" 1111"]), 0)]
    s = parse_suspect(f"openai:{server.url}#m", rate_limit=20.0)
    start = time.monotonic()
    for _ in range(5):
        s.sample("a =")
    assert time.monotonic() - start >= 4 / 20.0 - 0.01


# --- tracemark-served suspect over real gRPC -------------------------------------------------------------
def test_tracemark_suspect_over_grpc(monkeypatch):
    import grpc
    from tracemark.v1 import teacher_pb2, teacher_pb2_grpc

    calls = []

    class Teacher(teacher_pb2_grpc.TeacherServiceServicer):
        def Generate(self, request, context):  # noqa: N802
            md = dict(context.invocation_metadata())
            if md.get("authorization") != "Bearer tm_test_token":
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
            calls.append((request.problem, request.params.temperature, request.params.seed))
            if len(calls) == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
            return teacher_pb2.GenerateResponse(trace=f"{request.problem} 4821\n#### 1", trace_id="t")

        def GetTeacherInfo(self, request, context):  # noqa: N802
            return teacher_pb2.GetTeacherInfoResponse(
                model_id="student-7", backend="transformers", quantization="none"
            )

    srv = grpc.server(futures.ThreadPoolExecutor(2))
    teacher_pb2_grpc.add_TeacherServiceServicer_to_server(Teacher(), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        monkeypatch.setenv("TRACEMARK_TOKEN", "tm_test_token")
        waits = []
        s = parse_suspect(f"tracemark:127.0.0.1:{port}", sleep=waits.append, backoff=0.1)
        assert s.identity()["model_id"] == "student-7"
        out = s.sample("x137 =", n=2, temperature=0.5, seed=10)
        assert [o.text for o in out] == ["x137 = 4821\n#### 1"] * 2
        assert waits == [0.1]  # one UNAVAILABLE retried
        assert [c[2] for c in calls] == [10, 10, 11]  # per-sample seeds; the retry repeats its seed
        assert len(s.query_log) == 2 and s.queries_used == 2
        assert "tm_test_token" not in repr(s) + json.dumps(s.identity())
        monkeypatch.setenv("TRACEMARK_TOKEN", "wrong")
        bad = parse_suspect(f"tracemark:127.0.0.1:{port}")
        with pytest.raises(SuspectError, match="UNAUTHENTICATED"):
            bad.sample("x =")
        bad.close()
        s.close()
    finally:
        srv.stop(0)


# --- local models -------------------------------------------------------------------------------------------
def test_local_model_identity_and_logprob_paths_agree(tiny_model_dir):
    import hashlib

    s = parse_suspect(f"hf:{tiny_model_dir}")
    ident = s.identity()
    weights = tiny_model_dir / "model.safetensors"
    assert ident["weight_files"]["model.safetensors"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert ident["weights_sha256"] == ident["weight_files"]["model.safetensors"]
    prefix = s.encode("Let x137 =")
    sufs = [s.encode(f" {d}{e}")[:] for d in "0123" for e in "59"]
    digits = [s.encode(str(d))[0] for d in range(10)]
    plain = s.next_token_logprobs([prefix + x for x in sufs], columns=digits)
    shared = s.next_token_logprobs_shared(prefix, sufs, columns=digits)
    assert np.allclose(plain, shared, atol=1e-5)
    conts = [s.encode(" 4821"), s.encode(" 0007")]
    cl = s.continuation_logprobs(prefix, conts)
    full = s.next_token_logprobs([prefix + c[:i] for c in conts for i in range(len(c))])
    manual = [sum(full[k * 5 + i, c[i]] for i in range(5)) for k, c in enumerate(conts)]
    assert np.allclose(cl, manual, atol=1e-5)
    base = prefix + s.encode(" ")
    tree = s.tree_logprobs(base, digits, 2, digits)
    assert [t.shape for t in tree] == [(1, 10), (10, 10), (100, 10)]
    lvl2 = s.next_token_logprobs_shared(
        base, [[digits[a], digits[b]] for a in range(10) for b in range(10)], digits
    )
    assert np.allclose(tree[2], lvl2, atol=1e-5)


def test_local_sampling_is_seeded_and_logged(tiny_model_dir):
    s = parse_suspect(f"hf:{tiny_model_dir}", query_budget=8)
    a = s.sample("x137 =", n=3, temperature=1.0, seed=7, max_new_tokens=5)
    b = s.sample("x137 =", n=3, temperature=1.0, seed=7, max_new_tokens=5)
    assert [x.text for x in a] == [x.text for x in b]
    g = s.sample("x137 =", n=2, temperature=0.0, max_new_tokens=5)
    assert g[0].text == g[1].text
    assert s.queries_used == 8 and len(s.query_log) == 3
    with pytest.raises(BudgetExhausted):
        s.sample("x137 =")
