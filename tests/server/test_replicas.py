"""Two tracemark server processes ("replicas") sharing one PostgreSQL ledger and one master secret.

Each replica is a real `TracemarkServer` process (reference teacher: no model, fast), both on the suite's
PostgreSQL server (tests/pg.py). Checked: concurrent issuance through both; an investigation on one replica
scores the accounts issued through the other; concurrent investigations on both keep the report chain
linear (one chain, no fork); `kill -9` of either replica in the middle of a load loses no row of an RPC
that returned OK; the transparency log and the report chain verify afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
import pytest
from sqlmodel import select
from tracemark.forensics import tlog
from tracemark.forensics.keys import MasterSecret
from tracemark.forensics.ledger.db import make_engine, read_session
from tracemark.forensics.ledger.models import IssuedSignature, Report
from tracemark.forensics.reports.verify import verify_chain
from tracemark.server.auth import hash_token
from tracemark.server.client import Stubs, open_channel
from tracemark.v1 import forensics_pb2, teacher_pb2

pytestmark = pytest.mark.slow

TOKENS = {"alice": "tm_rep_alice", "bob": "tm_rep_bob", "carol": "tm_rep_carol", "audit": "tm_rep_audit"}
ROLES = {"audit": "compliance"}
CUSTOMERS = ("alice", "bob", "carol")
PROBLEMS = {
    "Ann has 4 boxes of 6 eggs and uses 5 eggs. How many eggs are left?": (
        "Ann has 4 * 6 = <<4*6=24>>24 eggs.\nAfter using 5 she has 24 - 5 = <<24-5=19>>19 eggs.\n#### 19"
    ),
    "A bus carries 30 people per trip and makes 3 trips. How many people does it carry?": (
        "Each trip carries 30 people, so 3 trips carry 30 * 3 = <<30*3=90>>90 people.\n#### 90"
    ),
    "Tom reads 12 pages a day for 5 days. How many pages does he read?": (
        "Tom reads 12 pages each day.\nIn 5 days he reads 12 * 5 = <<12*5=60>>60 pages.\n#### 60"
    ),
}

_REPLICA = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from tracemark.server.app import TracemarkServer
    from tracemark.server.auth import TokenStore
    from tracemark.server.config import load_settings
    from tracemark.server.teacher.reference import ReferenceTeacher

    def main():
        cfg = json.loads(Path(sys.argv[1]).read_text())
        server = TracemarkServer(
            load_settings(overrides=cfg["settings"]),
            teacher=ReferenceTeacher(cfg["problems"]),
            tokens=TokenStore(cfg["tokens"], roles=cfg["roles"]),
        )
        server.start()
        if not server.wait_ready(120):
            sys.exit(f"replica not ready: {server.runtime.load_error}")
        print(f"PORT {server.port}", flush=True)
        server.serve_forever()

    if __name__ == "__main__":  # plugin workers are spawned processes: they re-import this module
        main()
    """
)


class Replica:
    """One server process; ``start`` returns at once, ``wait`` reads its port."""

    def __init__(self, name: str, config: Path, workdir: Path) -> None:
        self.name, self.config, self.workdir = name, config, workdir
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> Replica:
        script = self.workdir / "replica.py"
        script.write_text(_REPLICA)
        if self.proc is not None:
            self.log.close()
        self.log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.config)], stdout=subprocess.PIPE, stderr=self.log, env=env
        )
        return self

    def wait(self, timeout: float = 120) -> Replica:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if line.startswith("PORT "):
                self.port = int(line.split()[1])
                return self
            if not line and self.proc.poll() is not None:
                break
        self.kill()
        tail = (self.workdir / f"{self.name}.log").read_text(errors="replace")[-2000:]
        raise AssertionError(f"replica {self.name} did not start:\n{tail}")

    def stubs(self, account: str) -> Stubs:
        return Stubs(open_channel(f"127.0.0.1:{self.port}", token=TOKENS[account]))

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def cluster(tmp_path, postgres_url, tiny_model_dir, clean_master_env):
    """Two replicas on one PostgreSQL ledger and one master secret (created before either starts)."""
    key_file = tmp_path / "master.key"
    master = MasterSecret.load(path=key_file)
    settings = {
        "server": {"address": "127.0.0.1:0", "max_problem_chars": 500, "grace_period_s": 1},
        "rewrite": {
            "default_pipeline": ["watermark"],
            "mandatory": ["watermark"],
            "watermark_fraction": 1.0,  # every trace signed: every OK reply must have its row
            "llm": "none",
        },
        "ledger": {"url": postgres_url, "master_key_file": str(key_file)},
        "forensics": {"model_roots": [str(tiny_model_dir.parent)]},
    }
    config = tmp_path / "replica.json"
    config.write_text(
        json.dumps(
            {
                "settings": settings,
                "problems": PROBLEMS,
                "tokens": {a: hash_token(t) for a, t in TOKENS.items()},
                "roles": ROLES,
            }
        )
    )
    replicas = {name: Replica(name, config, tmp_path) for name in ("a", "b")}
    for r in replicas.values():
        r.start()
    for r in replicas.values():
        r.wait()
    engine = make_engine(postgres_url)
    yield replicas, engine, master
    for r in replicas.values():
        r.stop()
    engine.dispose()


@pytest.fixture
def clean_master_env(monkeypatch):
    for name in ("TRACEMARK_MASTER_KEY", "TRACEMARK_MASTER_KEY_FILE", "TRACEMARK_ALLOW_INSECURE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


class Load:
    """Generate calls from several threads; records (replica, account, trace_id) of every OK reply."""

    def __init__(self) -> None:
        self.ok: list[tuple[str, str, str]] = []
        self.failed: list[tuple[str, grpc.StatusCode]] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def worker(self, replica: Replica, account: str, calls: int | None) -> None:
        stubs = replica.stubs(account)
        problems = list(PROBLEMS)
        try:
            i = 0
            while (calls is None or i < calls) and not self.stop.is_set():
                request = teacher_pb2.GenerateRequest(problem=problems[i % len(problems)])
                i += 1
                try:
                    reply = stubs.teacher.Generate(request, timeout=30)
                except grpc.RpcError as exc:
                    with self._lock:
                        self.failed.append((replica.name, exc.code()))
                    if replica.proc.poll() is not None:
                        return  # killed: nothing more to send there
                    continue
                assert reply.trace_id and [r.name for r in reply.rewriters] == ["watermark"]
                with self._lock:
                    self.ok.append((replica.name, account, reply.trace_id))
        finally:
            stubs.close()

    def run(self, targets: list[tuple[Replica, str]], calls: int | None = None) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.worker, args=(r, a, calls), daemon=True) for r, a in targets]
        for t in threads:
            t.start()
        return threads


def issued_rows(engine) -> dict[str, str]:
    with read_session(engine) as s:
        return dict(s.exec(select(IssuedSignature.trace_id, IssuedSignature.account)).all())


def investigate(replica: Replica, tiny_model_dir: Path) -> forensics_pb2.InvestigateResult:
    stubs = replica.stubs("audit")
    try:
        request = forensics_pb2.InvestigateRequest(suspect=f"hf:{tiny_model_dir}", mode="white-box")
        events = list(stubs.forensics.Investigate(request, timeout=120))
    finally:
        stubs.close()
    assert events and events[-1].HasField("result"), events[-1:]
    return events[-1].result


def assert_no_lost_row(load: Load, engine) -> None:
    rows = issued_rows(engine)
    missing = [(r, a, t) for r, a, t in load.ok if rows.get(t) != a]
    assert not missing, f"{len(missing)} OK replies without their ledger row, e.g. {missing[:3]}"


def assert_log_and_chain_verify(engine, master: MasterSecret, reports: int) -> None:
    tlog.sign_checkpoint(engine, master)
    log = tlog.verify_stored_log(engine, master.signing_public_key_pem())
    assert log.valid, log.problems
    chain = verify_chain(engine, master)
    assert chain.valid, chain.problems
    with read_session(engine) as s:
        seqs = sorted(s.exec(select(Report.seq)).all())
    assert seqs == list(range(1, reports + 1))  # one linear chain: no gap, no fork


def test_two_replicas_share_one_ledger(cluster, tiny_model_dir):
    replicas, engine, master = cluster
    a, b = replicas["a"], replicas["b"]

    # 1. Concurrent issuance through both replicas: every OK reply has its row, under the right account.
    load = Load()
    threads = load.run([(a, "alice"), (b, "alice"), (a, "bob"), (b, "carol")], calls=6)
    for t in threads:
        t.join(timeout=120)
    assert not load.failed and len(load.ok) == 24
    assert_no_lost_row(load, engine)
    assert {r for r, _, _ in load.ok} == {"a", "b"}

    # 2. Concurrent investigations on both replicas: each scores every account, including those issued only
    # through the other replica (carol: b only; bob: a only); the reports form one chain.
    results: dict[str, forensics_pb2.InvestigateResult] = {}

    errors: list[str] = []

    def run_investigation(replica: Replica, key: str) -> None:
        try:
            results[key] = investigate(replica, tiny_model_dir)
        except grpc.RpcError as exc:
            log = (replica.workdir / f"{replica.name}.log").read_text(errors="replace")
            errors.append(f"{key}: {exc.code()} {exc.details()}\n{log[-3000:]}")

    inv = [
        threading.Thread(target=run_investigation, args=(r, f"{r.name}{i}")) for r in (a, b) for i in (1, 2)
    ]
    for t in inv:
        t.start()
    for t in inv:
        t.join(timeout=180)
    assert not errors and len(results) == 4, errors
    for result in results.values():
        assert {acc.account for acc in result.accounts} == set(CUSTOMERS)
        assert all(acc.pairs >= 1 for acc in result.accounts)
        assert result.verdict == forensics_pb2.VERDICT_NOT_DETECTED  # a random tiny model: nothing distilled
    assert len({r.report_id for r in results.values()}) == 4
    assert len({r.registration_seq for r in results.values()}) == 4
    assert_log_and_chain_verify(engine, master, reports=4)

    # 3. kill -9 of each replica in turn, in the middle of a load on both: no OK reply loses its row.
    for victim, survivor in ((a, b), (b, a)):
        load = Load()
        threads = load.run([(victim, "alice"), (victim, "bob"), (survivor, "carol"), (survivor, "alice")])
        deadline = time.monotonic() + 30
        while sum(1 for r, _, _ in load.ok if r == victim.name) < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        victim.kill()  # SIGKILL while its workers are mid-request
        time.sleep(0.5)  # the survivor keeps serving
        load.stop.set()
        for t in threads:
            t.join(timeout=60)
        assert victim.proc.returncode == -signal.SIGKILL
        assert sum(1 for r, _, _ in load.ok if r == victim.name) >= 8
        assert sum(1 for r, _, _ in load.ok if r == survivor.name) >= 1
        assert {r for r, _ in load.failed} <= {victim.name}  # the survivor failed no call
        assert_no_lost_row(load, engine)
        # the survivor still investigates, reading everything both wrote; the chain stays linear
        result = investigate(survivor, tiny_model_dir)
        assert {acc.account for acc in result.accounts} == set(CUSTOMERS)
        if victim is a:
            victim.start().wait()  # a replica is stateless: it comes back on the same ledger

    assert_log_and_chain_verify(engine, master, reports=6)
