"""A real PostgreSQL server for the test suite, and throwaway databases on it.

The server comes from the ``pgserver`` wheel (PostgreSQL binaries bundled; no system package needed). As
root, pgserver runs the server as a dedicated system user ``pgserver`` (created with ``useradd`` on first
use), because PostgreSQL refuses to run as root; as a normal user it runs as that user. The data folder
is a fresh temporary folder, removed when the session ends; the server listens on a Unix socket only.

``$TRACEMARK_TEST_POSTGRES_URL`` (an admin URL of an existing server whose role may CREATE DATABASE)
replaces the bundled server. ``$TRACEMARK_REQUIRE_POSTGRES=1`` (``make test``, CI) turns "no server" from
a skip into a failure.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ENV_REQUIRE = "TRACEMARK_REQUIRE_POSTGRES"
ENV_EXTERNAL_URL = "TRACEMARK_TEST_POSTGRES_URL"
DRIVER = "postgresql+psycopg"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started or reached for the tests."""


def required() -> bool:
    """True when the run must not skip PostgreSQL tests (``$TRACEMARK_REQUIRE_POSTGRES=1``)."""
    return os.environ.get(ENV_REQUIRE, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class PostgresServer:
    """One server: ``admin_url`` reaches a maintenance database; :meth:`create_database` makes new ones."""

    admin_url: str  # SQLAlchemy URL (postgresql+psycopg://...)
    description: str
    _handle: object | None = None
    _tmpdir: Path | None = None
    _counter: itertools.count = field(default_factory=itertools.count)
    _created: list[str] = field(default_factory=list)
    _scratch: str | None = None

    def _connect(self, url: str):
        import psycopg
        from sqlalchemy.engine import make_url

        plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        return psycopg.connect(plain, autocommit=True, connect_timeout=10)

    def _admin(self):
        return self._connect(self.admin_url)

    def create_database(self, prefix: str = "tm") -> str:
        """A new empty database; returns its SQLAlchemy URL (CREATE DATABASE: ~0.3 s, see fresh_database)."""
        from sqlalchemy.engine import make_url

        name = f"{prefix}_{os.getpid()}_{next(self._counter)}_{uuid.uuid4().hex[:6]}".lower()
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def fresh_database(self) -> str:
        """The session's scratch database, emptied: other connections to it are terminated and its
        ``public`` schema is recreated (much cheaper than a new database per test)."""
        if self._scratch is None:
            self._scratch = self.create_database("scratch")
        with self._connect(self._scratch) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return self._scratch

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url`` (open connections to it are terminated)."""
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self._created:
            self._created.remove(name)

    def stop(self) -> None:
        """Drop the databases made here (an external server) or stop the bundled server and remove it."""
        if self._handle is None:
            for name in list(self._created):
                with contextlib.suppress(Exception):
                    self.drop_database(f"{self.admin_url.rsplit('/', 1)[0]}/{name}")
        if self._handle is not None:
            import atexit

            from pgserver._commands import pg_ctl  # pgserver's runner (as the `pgserver` user under root)

            # pgserver's own cleanup waits seconds for a postmaster that is a zombie where nothing reaps
            # orphans (containers); an immediate stop is enough for a throwaway server.
            atexit.unregister(self._handle._cleanup)
            type(self._handle)._instances.pop(self._handle.pgdata, None)
            with contextlib.suppress(Exception):
                pg_ctl(
                    ["-m", "immediate", "-w", "stop"],
                    pgdata=self._handle.pgdata,
                    user=self._handle.system_user,
                    timeout=30,
                )
            self._handle = None
        if self._tmpdir is not None:  # removing ~40 MB of small files takes seconds here: in the background
            subprocess.Popen(
                ["rm", "-rf", str(self._tmpdir)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self._tmpdir = None


def _bundled_server() -> PostgresServer:
    try:
        import pgserver
    except ImportError as exc:
        raise PostgresUnavailable(
            f"the pgserver wheel is not installed ({exc.name}); `pip install pgserver psycopg[binary]` "
            f"or set {ENV_EXTERNAL_URL}"
        ) from None
    # A short path under /tmp: the socket lives in the data folder (socket paths are limited to ~100 bytes),
    # and as root pgserver opens the folder's parents to the `pgserver` user.
    tmpdir = Path(tempfile.mkdtemp(prefix="tmpg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    started = time.monotonic()
    try:
        handle = pgserver.get_server(tmpdir / "data", cleanup_mode="delete")
    except Exception as exc:  # noqa: BLE001  (any start failure: report it, with the server log's tail)
        log = tmpdir / "data" / "log"
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise PostgresUnavailable(f"pgserver could not start PostgreSQL: {exc!r}\n{tail}") from None
    from sqlalchemy.engine import make_url

    raw = make_url(handle.get_uri())  # postgresql://postgres:@/postgres?host=<socket dir>
    url = raw.set(drivername=DRIVER, password=None).render_as_string(hide_password=False)
    # A throwaway server: no fsync (a killed *process* still loses no committed row: the data is in the OS
    # page cache; only an OS crash would), so CREATE/DROP DATABASE checkpoints cost little.
    handle.psql(
        "ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET full_page_writes = off; SELECT pg_reload_conf();"
    )
    version = handle.psql("SHOW server_version;").split("\n")[2].strip()
    return PostgresServer(
        admin_url=url,
        description=f"pgserver PostgreSQL {version}, started in {time.monotonic() - started:.1f} s",
        _handle=handle,
        _tmpdir=tmpdir,
    )


def _external_server(url: str) -> PostgresServer:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername=DRIVER)
    server = PostgresServer(
        admin_url=parsed.render_as_string(hide_password=False), description=f"external ({ENV_EXTERNAL_URL})"
    )
    try:
        with server._admin() as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        raise PostgresUnavailable(
            f"{ENV_EXTERNAL_URL} is not reachable: {str(exc).splitlines()[0]}"
        ) from None
    return server


def start_server() -> PostgresServer:
    """The external server of ``$TRACEMARK_TEST_POSTGRES_URL`` or a fresh bundled one."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("psycopg is not installed (`pip install 'psycopg[binary]'`)") from None
    external = os.environ.get(ENV_EXTERNAL_URL, "").strip()
    return _external_server(external) if external else _bundled_server()
