"""Fixtures for forensics tests: a master secret in a temp file, a migrated ledger (SQLite, or PostgreSQL where a module asks), an issuer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture
def clean_key_env(monkeypatch):
    """No master secret from the environment (tests choose their own source)."""
    for name in ("TRACEMARK_MASTER_KEY", "TRACEMARK_MASTER_KEY_FILE", "TRACEMARK_ALLOW_INSECURE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def key_file(tmp_path: Path, clean_key_env) -> Path:
    return tmp_path / "keys" / "master.key"


@pytest.fixture
def master(key_file):
    from tracemark.forensics.keys import MasterSecret

    return MasterSecret.load(path=key_file)


@pytest.fixture
def ledger_url(tmp_path: Path, ledger_backend: str, request) -> str:
    """A migrated-on-open ledger URL: a SQLite file, or a fresh PostgreSQL database (LEDGER_BACKENDS)."""
    if ledger_backend == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def engine(ledger_url):
    from tracemark.forensics.ledger.db import make_engine

    eng = make_engine(ledger_url)
    yield eng
    eng.dispose()


@pytest.fixture
def issuer(master, engine):
    from tracemark.forensics.issuer import SignatureIssuer

    return SignatureIssuer(master=master, engine=engine, pairs_per_account=2)


@pytest.fixture(scope="session")
def detection_helpers():
    """tests/forensics/conftest_detection.py as a module (traces, weaving, a tiny distilled student)."""
    name = "tracemark_tests_detection_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("conftest_detection.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]
