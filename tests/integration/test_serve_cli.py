"""`tracemark serve` as a real process: starts, serves, shuts down gracefully on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tracemark.server.auth import add_account
from tracemark.server.client import Stubs, open_channel
from tracemark.v1 import teacher_pb2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_serving(port: int, proc: subprocess.Popen, limit: float) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        pytest.fail("server did not become SERVING in time")
    finally:
        channel.close()


def _serve(tmp_path, *extra: str) -> tuple[subprocess.Popen, int, str]:
    tokens = tmp_path / "tokens.toml"
    token = add_account(tokens, "alice")
    port = _free_port()
    env = {**os.environ, "TRACEMARK_HOME": str(tmp_path / "home")}
    cmd = [
        sys.executable, "-m", "tracemark.cli.main", "serve", "--address", f"127.0.0.1:{port}",
        "--tokens-file", str(tokens), "--grace", "2", "--log-format", "json", *extra,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, port, token


def test_serve_tiny_then_sigterm(tmp_path):
    proc, port, token = _serve(tmp_path, "--backend", "tiny", "--quantization", "none", "--rewriters", "identity")
    try:
        _wait_serving(port, proc, 60)
        stubs = Stubs(open_channel(f"127.0.0.1:{port}", token=token))
        response = stubs.teacher.Generate(teacher_pb2.GenerateRequest(problem="2 + 2?"), timeout=30)
        assert response.trace_id
        stubs.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = proc.stderr.read().decode()
    assert '"msg": "stopped"' in logs and "teacher ready" in logs
    assert token not in logs


def test_serve_bad_config_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[teacher]\nquantization = 'nf5'\n")
    result = subprocess.run(
        [sys.executable, "-m", "tracemark.cli.main", "serve", "--config", str(bad)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("tracemark: error: invalid setting teacher.quantization")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.embedded
def test_serve_embedded_nf4_answers_a_gsm8k_style_problem(tmp_path):
    from tracemark.foundation.models.embedded import EmbeddedModelMissing, embedded_gguf_path

    try:
        embedded_gguf_path()  # the package's __init__ imports `llm`, which is not needed: don't import it
    except EmbeddedModelMissing as exc:
        pytest.skip(str(exc))
    proc, port, token = _serve(tmp_path, "--backend", "embedded", "--quantization", "nf4", "--rewriters", "identity")
    try:
        _wait_serving(port, proc, 240)
        stubs = Stubs(open_channel(f"127.0.0.1:{port}", token=token))
        info = stubs.teacher.GetTeacherInfo(teacher_pb2.GetTeacherInfoRequest(), timeout=10)
        assert info.backend == "embedded"
        # NF4 through bitsandbytes on CPU; if this host's bitsandbytes cannot, the note says why.
        assert info.quantization == "nf4" or info.quantization_note
        problem = "Sara has 12 pencils. She gives 5 to Tom and buys 7 more. How many pencils does she have now?"
        response = stubs.teacher.Generate(
            teacher_pb2.GenerateRequest(problem=problem, params=teacher_pb2.GenerationParams(max_new_tokens=32)),
            timeout=120,
        )
        assert response.completion_tokens > 5 and response.trace.strip()
        stubs.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "quantization=" in proc.stderr.read().decode()  # the start-up log names what is in effect
