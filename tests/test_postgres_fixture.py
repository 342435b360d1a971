"""The suite's PostgreSQL fixture: without a server, tests skip, or fail with a clear message when
$TRACEMARK_REQUIRE_POSTGRES=1 (make test, CI). Runs pytest on a one-test project in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"  # nothing listens on port 1


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pgfixture")
    shutil.copy(HERE / "conftest.py", root / "conftest.py")
    shutil.copy(HERE / "pg.py", root / "pg.py")
    (root / "test_uses_pg.py").write_text("def test_needs_server(postgres_url):\n    assert postgres_url\n")
    return root


def _run(project: Path, require: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRACEMARK_REQUIRE_POSTGRES"}
    env["TRACEMARK_TEST_POSTGRES_URL"] = UNREACHABLE
    if require is not None:
        env["TRACEMARK_REQUIRE_POSTGRES"] = require
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(project),
        "-c",
        "/dev/null",
        str(project),
    ]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=120)


def test_no_server_skips_by_default(project):
    out = _run(project, None)
    assert out.returncode == 0 and "1 skipped" in out.stdout, out.stdout[-2000:]
    assert "TRACEMARK_REQUIRE_POSTGRES=1 makes this a failure" in out.stdout


def test_no_server_fails_when_required(project):
    out = _run(project, "1")
    assert out.returncode == 1 and "1 error" in out.stdout, out.stdout[-2000:]
    assert "PostgreSQL is required (TRACEMARK_REQUIRE_POSTGRES=1) but unavailable" in out.stdout
    assert "TRACEMARK_TEST_POSTGRES_URL is not reachable" in out.stdout
