"""Red team (issue 11): a third-party plugin that escapes its worker's kill by spawning a grandchild process
(a subprocess that spins, or one that ignores SIGTERM and outlives the worker). The claim under test: "a
rewriter step that exceeds its time limit is actually stopped ... a hanging third-party plugin's CPU use stops
within 2 s of its limit"."""

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
