"""Red team (issue 11): what a third-party plugin's worker process can still do to the server: answers that
come back over the worker pipe (a pickle would run code in the server), a plugin that ignores SIGTERM, one
that floods stdout/stderr, one whose LLM calls outlast the step, and one that spawns a grandchild process
that must stop within 2 s of the step's limit."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import textwrap
import time
import uuid

import pytest
from tracemark.plugins.isolation import WorkerPool
from tracemark.plugins.loader import RewriterRegistry, entry_points_from_paths
from tracemark.plugins.pipeline import RewritePipeline

TRACE = "Tom has 3 * 4 = <<3*4=12>>12 apples.\n#### 12"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    for var in ("TRACEMARK_PLUGINS", "TRACEMARK_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "ran-in"
    name = f"tm_redteam_esc2_{uuid.uuid4().hex[:8]}"
    (site / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys, time
            from tracemark.plugins.api import Rewriter

            class _Payload:
                def __reduce__(self):
                    code = "import os; open({str(marker)!r}, 'w').write(str(os.getpid()))"
                    return (exec, (code,))

            class Pickles(Rewriter):
                name = "pickles"
                def rewrite(self, trace, context):
                    return _Payload()

            class NoTerm(Rewriter):
                name = "noterm"
                def rewrite(self, trace, context):
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    with open({str(marker)!r}, "w") as fh:
                        fh.write(str(os.getpid()))
                    while True:
                        pass

            class AsksLong(Rewriter):
                name = "asks-long"
                requires_llm = True
                def rewrite(self, trace, context):
                    return context.llm.chat([{{"role": "user", "content": "go"}}], max_new_tokens=2800) + trace

            class Floods(Rewriter):
                name = "floods"
                def rewrite(self, trace, context):
                    chunk = "x" * 65536
                    for _ in range(160):  # 10 MiB on each stream
                        sys.stdout.write(chunk)
                        sys.stderr.write(chunk)
                    return trace
            """
        )
    )
    info = site / "acme_esc2-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-esc2\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[tracemark.rewriters]\n"
        + "".join(
            f"{n} = {name}:{c}\n"
            for n, c in [
                ("pickles", "Pickles"),
                ("noterm", "NoTerm"),
                ("floods", "Floods"),
                ("asks-long", "AsksLong"),
            ]
        )
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    registry = RewriterRegistry.discover(
        strict=True, allowlist=[], entry_points=entry_points_from_paths([site])
    )
    pool = WorkerPool(max_workers=1)
    yield registry, pool, marker
    pool.close()
    sys.modules.pop(name, None)


def test_a_plugins_answer_cannot_run_code_in_the_server(plugins):
    registry, pool, marker = plugins
    RewritePipeline(registry, pool=pool, timeout_s=5, retries=0).run(TRACE, names=["pickles"])
    assert not (marker.exists() and int(marker.read_text()) == os.getpid()), "plugin code ran in the server"


def test_a_plugin_ignoring_sigterm_is_still_stopped(plugins):
    registry, pool, marker = plugins
    started = time.monotonic()
    result = RewritePipeline(registry, pool=pool, timeout_s=0.5, retries=0).run(TRACE, names=["noterm"])
    assert result.steps[0].guard == "timeout" and result.trace == TRACE
    pid = int(marker.read_text())
    while _alive(pid) and time.monotonic() - started < 2.5:
        time.sleep(0.02)
    assert not _alive(pid), "a SIGTERM-ignoring worker is still running 2 s after its limit"


def test_a_plugin_flooding_stdout_and_stderr_does_not_hang_the_step(plugins):
    registry, pool, _ = plugins
    started = time.monotonic()
    result = RewritePipeline(registry, pool=pool, timeout_s=3, retries=0).run(TRACE, names=["floods"])
    assert result.trace == TRACE and result.steps[0].guard in ("preserved", "timeout")
    assert time.monotonic() - started < 4


class _TokenTimedLLM:
    """A host LLM that takes 1 ms per requested token (a real teacher honours max_new_tokens uncapped)."""

    model_id = "timed"

    def __init__(self) -> None:
        self.asked: list[int] = []

    def chat(self, messages, *, max_new_tokens=512, temperature=0.0, seed=None) -> str:
        self.asked.append(max_new_tokens)
        time.sleep(max_new_tokens / 1000)
        return "ok "


def test_a_forwarded_llm_call_is_bounded_by_the_step_limit(plugins):
    from tracemark.plugins.api import RewriteContext

    registry, pool, _ = plugins
    llm = _TokenTimedLLM()
    context = RewriteContext(account="alice", trace_id="t1", llm=llm)
    started = time.monotonic()
    result = RewritePipeline(registry, pool=pool, timeout_s=0.5, retries=0).run(
        TRACE, names=["asks-long"], context=context
    )
    took = time.monotonic() - started
    assert llm.asked == [2800]
    assert result.steps[0].guard == "timeout", result.steps[0].guard
    assert took < 0.5 + 2.0, f"step returned {took:.2f} s after start (limit 0.5 s)"


# -- a plugin whose child process outlives the worker ------------------------------------------------
@pytest.fixture
def escaping_plugin(tmp_path, monkeypatch):
    for var in ("TRACEMARK_PLUGINS", "TRACEMARK_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    site = tmp_path / "site"
    site.mkdir()
    pidfile = tmp_path / "grandchild.pid"
    name = f"tm_redteam_escape_{uuid.uuid4().hex[:8]}"
    spin = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\\nwhile True: pass"
    (site / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            import os, subprocess, sys, time
            from tracemark.plugins.api import Rewriter

            class Escape(Rewriter):
                name = "escape"
                def rewrite(self, trace, context):
                    child = subprocess.Popen([sys.executable, "-c", "{spin}"])
                    with open({str(pidfile)!r}, "w") as fh:
                        fh.write(str(child.pid))
                    while True:
                        time.sleep(0.05)

            class Warm(Rewriter):
                name = "warm"
                def rewrite(self, trace, context):
                    return trace
            """
        )
    )
    info = site / "acme_escape-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-escape\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[tracemark.rewriters]\nescape = {name}:Escape\nwarm = {name}:Warm\n"
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    registry = RewriterRegistry.discover(strict=True, allowlist=[], entry_points=entry_points_from_paths([site]))
    pool = WorkerPool(max_workers=1)
    yield registry, pool, pidfile
    pool.close()
    sys.modules.pop(name, None)
    if pidfile.exists():  # clean up whatever escaped, by its pid only
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_a_plugins_grandchild_stops_within_2s_of_the_limit(escaping_plugin):
    registry, pool, pidfile = escaping_plugin
    pipeline = RewritePipeline(registry, pool=pool, timeout_s=0.5, retries=0)
    pipeline.run(TRACE, names=["warm"])
    started = time.monotonic()
    result = pipeline.run(TRACE, names=["escape"])
    assert result.steps[0].guard == "timeout" and result.trace == TRACE
    pid = int(pidfile.read_text())
    while _alive(pid) and time.monotonic() - started < 2.5:
        time.sleep(0.02)
    assert not _alive(pid), f"grandchild {pid} of the killed worker still running 2 s after the limit"
