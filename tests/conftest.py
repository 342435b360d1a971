"""Suite-wide fixtures: isolated data/cache folders, a tiny random model, a real PostgreSQL server.

Ledger backends: a test module that sets ``LEDGER_BACKENDS = ("sqlite", "postgresql")`` runs every test
that uses the ``ledger_backend`` fixture (directly or through ``ledger_url``/``engine``) once per backend.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory):
    """Keep ledgers and master keys of the suite out of the user's folders; share the model cache."""
    home = tmp_path_factory.mktemp("tracemark-home")
    os.environ["TRACEMARK_HOME"] = str(home)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tracemark.foundation.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module: small models on a shared 2-core machine run ~10x faster
    than with two contended threads. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pg_helpers():
    """tests/pg.py as a module (the suite is collected with --import-mode=importlib)."""
    name = "tracemark_tests_pg"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("pg.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (see tests/pg.py); skips, or fails when it is required."""
    pg = _pg_helpers()
    try:
        server = pg.start_server()
    except pg.PostgresUnavailable as exc:
        if pg.required():
            pytest.fail(f"PostgreSQL is required ({pg.ENV_REQUIRE}=1) but unavailable: {exc}", pytrace=False)
        pytest.skip(f"no PostgreSQL server ({pg.ENV_REQUIRE}=1 makes this a failure): {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """An empty PostgreSQL database for one test (the session's scratch database, emptied); a SQLAlchemy
    URL. Its other connections are cut when the next test takes it."""
    return postgres_server.fresh_database()


@pytest.fixture
def ledger_backend(request) -> str:
    """``sqlite`` unless the module's LEDGER_BACKENDS parametrizes it."""
    return getattr(request, "param", "sqlite")


def pytest_generate_tests(metafunc):
    backends = getattr(metafunc.module, "LEDGER_BACKENDS", None)
    if backends and "ledger_backend" in metafunc.fixturenames:
        metafunc.parametrize("ledger_backend", backends, indirect=True)
