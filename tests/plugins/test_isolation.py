"""Third-party rewriter steps run in worker processes: killed at their time limit, errors kept in the log."""

from __future__ import annotations

import logging
import os
import re
import time

import pytest
from tracemark.plugins.api import RewriteContext, Rewriter
from tracemark.plugins.isolation import WorkerPool
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import RewritePipeline

TRACE = "Tom has 3 * 4 = <<3*4=12>>12 apples.\n#### 12"
SECRET = "password=hunter2-do-not-leak"


class LocalWhereAmI(Rewriter):
    name = "where-am-i"

    def rewrite(self, trace, context):
        context.note(f"pid {os.getpid()}")
        return trace


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"  # a zombie has stopped running
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture
def third_party(fake_site, h, tmp_path):
    """A fake distribution with well-behaved, crashing, hanging and exiting plugins."""
    pidfile = tmp_path / "pid"
    mod = fake_site.module(
        "isolated",
        f"""
        import os
        from tracemark.plugins.api import RewriteContext, Rewriter

        class WhereAmI(Rewriter):
            name = "where-am-i"
            def rewrite(self, trace, context):
                context.note(f"pid {{os.getpid()}}")
                return trace

        class Leaky(Rewriter):
            name = "leaky"
            def rewrite(self, trace, context):
                raise ValueError("could not connect with {SECRET}")

        class Spin(Rewriter):
            name = "spin"
            def rewrite(self, trace, context):
                with open({str(pidfile)!r}, "w") as fh:
                    fh.write(str(os.getpid()))
                while True:
                    pass

        class Asks(Rewriter):
            name = "asks"
            requires_llm = True
            def rewrite(self, trace, context):
                assert context.signatures is None  # never sent to a third-party worker
                reply = context.llm.chat([{{"role": "user", "content": "hi"}}], max_new_tokens=5)
                return reply + chr(10) + trace

        class Exits(Rewriter):
            name = "exits"
            def rewrite(self, trace, context):
                os._exit(3)
        """,
    )
    fake_site.dist(
        "acme-isolated",
        "1.0",
        {
            n: f"{mod}:{c}"
            for n, c in [
                ("where-am-i", "WhereAmI"),
                ("leaky", "Leaky"),
                ("spin", "Spin"),
                ("exits", "Exits"),
                ("asks", "Asks"),
            ]
        },
    )
    registry = RewriterRegistry.discover(strict=True, allowlist=[], entry_points=fake_site.entry_points())
    pool = WorkerPool(max_workers=2)
    yield registry, pool, pidfile
    pool.close()


def test_third_party_steps_run_in_a_worker_process(third_party):
    registry, pool, _ = third_party
    pipeline = RewritePipeline(registry, pool=pool, timeout_s=30)
    assert pipeline.isolated("where-am-i") and not pipeline.isolated("identity")
    result = pipeline.run(TRACE, names=["where-am-i"])
    step = result.steps[0]
    assert step.guard == "preserved" and result.trace == TRACE
    pid = int(step.detail.removeprefix("pid "))
    assert pid != os.getpid() and pid in pool.pids()  # reused: the worker went back to the pool


def test_a_hanging_plugin_is_killed_and_stops_using_cpu(third_party):
    """The acceptance test of issue 11: CPU use of a hung third-party step stops within 2 s of its limit."""
    registry, pool, pidfile = third_party
    pipeline = RewritePipeline(registry, pool=pool, timeout_s=0.5, retries=0)
    pipeline.run(TRACE, names=["where-am-i"])  # a warm worker, so the limit measures the plugin only
    started = time.monotonic()
    result = pipeline.run(TRACE, names=["spin"])
    returned = time.monotonic() - started
    assert result.steps[0].guard == "timeout" and result.trace == TRACE
    pid = int(pidfile.read_text())
    while _alive(pid) and time.monotonic() - started < 0.5 + 2.0:
        time.sleep(0.01)
    stopped = time.monotonic() - started
    assert not _alive(pid), "the spinning worker is still running 2 s after its limit"
    print(f"\nspin: step returned after {returned:.3f} s, worker gone after {stopped:.3f} s (limit 0.5 s)")
    cpu = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.25  # nothing of the plugin burns CPU in this process either
    assert pool.killed == 1


def test_a_plugins_error_text_stays_in_the_log(third_party, caplog):
    registry, pool, _ = third_party
    with caplog.at_level(logging.DEBUG, logger="tracemark.plugins"):
        step = RewritePipeline(registry, pool=pool).run(TRACE, names=["leaky"]).steps[0]
    assert step.guard == "error" and SECRET not in step.detail and "ValueError" not in step.detail
    error_id = re.search(r"error id ([0-9a-f]{12})", step.detail).group(1)
    logged = [r.getMessage() for r in caplog.records if error_id in r.getMessage()]
    assert logged and SECRET in logged[0]  # the operator can find the message by the id


def test_llm_calls_are_forwarded_to_the_host(third_party, h, fake_issuer):
    registry, pool, _ = third_party
    llm = h.ScriptedLLM(lambda messages, i: "hello from the host")
    context = RewriteContext(account="alice", trace_id="t1", llm=llm, signatures=fake_issuer)
    result = RewritePipeline(registry, pool=pool).run(TRACE, names=["asks"], context=context)
    assert result.steps[0].guard == "preserved", result.steps[0].detail
    assert result.trace == "hello from the host\n" + TRACE
    assert llm.calls[0]["max_new_tokens"] == 5 and llm.calls[0]["messages"][0]["content"] == "hi"


def test_a_worker_that_exits_is_replaced(third_party):
    registry, pool, _ = third_party
    pipeline = RewritePipeline(registry, pool=pool, retries=0)
    step = pipeline.run(TRACE, names=["exits"]).steps[0]
    assert step.guard == "error" and "error id" in step.detail
    assert pipeline.run(TRACE, names=["where-am-i"]).steps[0].guard == "preserved"


def test_a_plugin_that_always_hangs_is_quarantined(third_party):
    registry, pool, _ = third_party
    pipeline = RewritePipeline(registry, pool=pool, timeout_s=0.3, retries=0, max_abandoned=2)
    first = pipeline.run(TRACE, names=["spin"]).steps[0]
    second = pipeline.run(TRACE, names=["spin"]).steps[0]
    assert first.guard == second.guard == "timeout" and "disabled after 2" in second.detail
    assert registry.record("spin").status == "failed"
    assert pipeline.run(TRACE, names=["where-am-i"]).steps[0].guard == "preserved"


def test_worker_overhead_per_step(third_party):
    """Measured: the cost of a worker round trip for a trivial step (reported in the README)."""
    registry, pool, _ = third_party
    pipeline = RewritePipeline(registry, pool=pool)
    trace = TRACE + "\n" + "x" * 60_000
    pipeline.run(trace, names=["where-am-i"])
    n = 20
    started = time.perf_counter()
    for _ in range(n):
        pipeline.run(trace, names=["where-am-i"])
    isolated = (time.perf_counter() - started) / n
    local = RewritePipeline(RewriterRegistry.from_classes(LocalWhereAmI))
    local.run(trace, names=["where-am-i"])
    started = time.perf_counter()
    for _ in range(n):
        local.run(trace, names=["where-am-i"])
    in_process = (time.perf_counter() - started) / n
    print(
        f"\nper step with a 60 kB trace: worker {isolated * 1000:.1f} ms, thread {in_process * 1000:.1f} ms"
    )
    assert isolated - in_process < 0.1
