"""Third-party plugins discovered from a (fake) installed distribution: a crash or a hang is isolated."""

from __future__ import annotations

import logging
import os
import re
import sys
import textwrap
import time

import grpc
import pytest
from tracemark.server.app import TracemarkServer
from tracemark.server.client import Stubs, open_channel
from tracemark.server.teacher.reference import ReferenceTeacher
from tracemark.v1 import common_pb2, rewrite_pb2

from .conftest import TOKENS, make_settings, token_store

TRACE = "3 * 4 = <<3*4=12>>12 apples.\n#### 12"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    (site / "tm_misbehaving_plugins.py").write_text(
        textwrap.dedent(
            """
            import time
            from tracemark.plugins.api import Rewriter

            class Crashing(Rewriter):
                name = "crashing"
                def rewrite(self, trace, context):
                    raise RuntimeError("boom: plugin bug, db password=hunter2-s3cret")

            class Spinner(Rewriter):
                name = "spinner"
                def rewrite(self, trace, context):
                    import os, pathlib
                    pathlib.Path(__file__).with_name("spinner.pid").write_text(str(os.getpid()))
                    while True:
                        pass

            class Sleepy(Rewriter):
                name = "sleepy"
                def rewrite(self, trace, context):
                    time.sleep(3)
                    return trace
            """
        )
    )
    info = site / "tm_misbehaving_plugins-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tm-misbehaving-plugins\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(
        "[tracemark.rewriters]\n"
        "crashing = tm_misbehaving_plugins:Crashing\n"
        "sleepy = tm_misbehaving_plugins:Sleepy\n"
        "spinner = tm_misbehaving_plugins:Spinner\n"
    )
    sys.path.insert(0, str(site))
    yield site
    sys.path.remove(str(site))
    sys.modules.pop("tm_misbehaving_plugins", None)


def _server(tmp_path, on_error):
    settings = make_settings(tmp_path, rewrite={"timeout_s": 0.5, "on_error": on_error, "retries": 0})
    server = TracemarkServer(settings, teacher=ReferenceTeacher({}), tokens=token_store())
    server.start()
    assert server.wait_ready(30)
    return server, Stubs(open_channel(f"127.0.0.1:{server.port}", token=TOKENS["alice"]))


def test_plugins_listed_with_their_distribution(plugin_site, tmp_path):
    server, stubs = _server(tmp_path, "fallback")
    try:
        listing = stubs.rewrite.ListRewriters(rewrite_pb2.ListRewritersRequest(), timeout=10)
        by_name = {r.name: r for r in listing.rewriters}
        assert by_name["crashing"].distribution == "tm-misbehaving-plugins"
        assert by_name["sleepy"].version == "0.3"
        assert by_name["crashing"].status == rewrite_pb2.PLUGIN_STATUS_LOADED
    finally:
        stubs.close()
        server.stop(grace=0)


def test_fallback_policy_keeps_serving(plugin_site, tmp_path):
    server, stubs = _server(tmp_path, "fallback")
    try:
        for name in ("crashing", "sleepy"):
            started = time.monotonic()
            reply = stubs.rewrite.Rewrite(
                rewrite_pb2.RewriteRequest(trace=TRACE, rewriters=[name]), timeout=30
            )
            assert time.monotonic() - started < 2.5  # the hang was cut at the 0.5 s limit
            assert reply.trace == TRACE and reply.answer_preserved
            assert reply.rewriters[0].guard == common_pb2.GUARD_OUTCOME_FELL_BACK
            assert reply.rewriters[0].detail and "Traceback" not in reply.rewriters[0].detail
        ok = stubs.rewrite.Rewrite(
            rewrite_pb2.RewriteRequest(trace=TRACE, rewriters=["identity"]), timeout=30
        )
        assert ok.trace == TRACE
    finally:
        stubs.close()
        server.stop(grace=0)


SECRET = "hunter2-s3cret"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_hanging_plugin_stops_using_cpu_within_2_s_of_its_limit(plugin_site, tmp_path):
    """Issue 11 acceptance: the step is cut at 0.5 s and its worker process is gone, not left spinning."""
    server, stubs = _server(tmp_path, "fallback")
    try:
        started = time.monotonic()
        reply = stubs.rewrite.Rewrite(
            rewrite_pb2.RewriteRequest(trace=TRACE, rewriters=["spinner"]), timeout=30
        )
        assert reply.rewriters[0].guard == common_pb2.GUARD_OUTCOME_FELL_BACK and reply.trace == TRACE
        assert "timed out after 0.5 s" in reply.rewriters[0].detail
        pid = int((plugin_site / "spinner.pid").read_text())
        assert pid != os.getpid()  # it ran in a worker process
        while _alive(pid) and time.monotonic() - started < 0.5 + 2.0:
            time.sleep(0.01)
        assert not _alive(pid), "the hung plugin's process still runs 2 s after its limit"
        cpu = time.process_time()  # the server runs in this process: nothing of the plugin is left here
        time.sleep(0.5)
        assert time.process_time() - cpu < 0.25
    finally:
        stubs.close()
        server.stop(grace=0)


def test_a_plugins_error_text_never_reaches_the_caller(plugin_site, tmp_path, caplog):
    """Issue 11: a plugin's exception carried password=...; the caller gets an error id, the log the text."""
    server, stubs = _server(tmp_path, "fallback")
    try:
        with caplog.at_level(logging.WARNING):
            reply = stubs.rewrite.Rewrite(
                rewrite_pb2.RewriteRequest(trace=TRACE, rewriters=["crashing"]), timeout=30
            )
        detail = reply.rewriters[0].detail
        assert SECRET not in detail and "password" not in detail and "RuntimeError" not in detail
        error_id = re.search(r"error id ([0-9a-f]{12})", detail).group(1)
        assert any(error_id in r.getMessage() and SECRET in r.getMessage() for r in caplog.records)
    finally:
        stubs.close()
        server.stop(grace=0)
    server, stubs = _server(tmp_path, "raise")
    try:
        with pytest.raises(grpc.RpcError) as info:
            stubs.rewrite.Rewrite(rewrite_pb2.RewriteRequest(trace=TRACE, rewriters=["crashing"]), timeout=30)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert SECRET not in info.value.details() and "error id" in info.value.details()
    finally:
        stubs.close()
        server.stop(grace=0)


def test_raise_policy_maps_to_status_codes(plugin_site, tmp_path):
    server, stubs = _server(tmp_path, "raise")
    try:
        for name, code in (
            ("crashing", grpc.StatusCode.INTERNAL),
            ("sleepy", grpc.StatusCode.DEADLINE_EXCEEDED),
        ):
            with pytest.raises(grpc.RpcError) as info:
                stubs.rewrite.Rewrite(rewrite_pb2.RewriteRequest(trace=TRACE, rewriters=[name]), timeout=30)
            assert info.value.code() == code
            assert "Traceback" not in (info.value.details() or "")
        assert stubs.rewrite.Rewrite(
            rewrite_pb2.RewriteRequest(trace=TRACE, rewriters=["identity"]), timeout=30
        ).trace
    finally:
        stubs.close()
        server.stop(grace=0)


def test_installed_example_plugin_is_served(tmp_path):
    """`make install` pip-installs plugins/tracemark-example-rewriter: it must show up and work."""
    server, stubs = _server(tmp_path, "fallback")
    try:
        listing = stubs.rewrite.ListRewriters(rewrite_pb2.ListRewritersRequest(), timeout=10)
        record = {r.name: r for r in listing.rewriters}["numbered-steps"]
        assert record.distribution == "tracemark-example-rewriter"
        assert record.status == rewrite_pb2.PLUGIN_STATUS_LOADED
        reply = stubs.rewrite.Rewrite(
            rewrite_pb2.RewriteRequest(
                trace="She has 3 + 4 = 7.\nThen 7 * 2 = 14.\n#### 14", rewriters=["numbered-steps"]
            ),
            timeout=30,
        )
        assert reply.trace.startswith("Step 1:") and reply.final_answer == "14" and reply.answer_preserved
    finally:
        stubs.close()
        server.stop(grace=0)
