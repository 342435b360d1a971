"""Engines and sessions for the ledger; migrations are applied on open.

SQLite connections run in WAL mode with ``synchronous=FULL`` (every commit is fsynced: a killed process,
or even a power cut, loses no committed row), ``busy_timeout`` so concurrent writers wait rather than fail,
and ``foreign_keys=ON``. Transactions are begun explicitly: ``BEGIN IMMEDIATE`` for :func:`session_scope`
(read-then-write sequences such as appending to the report chain are serialised across processes) and
plain ``BEGIN`` for :func:`read_session`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlmodel import Session, create_engine
from tracemark.foundation.errors import NotFound, Unavailable
from tracemark.foundation.paths import user_data_dir

log = logging.getLogger(__name__)

ENV_LEDGER_URL = "TRACEMARK_LEDGER_URL"
LEDGER_FILE_NAME = "ledger.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
IMMEDIATE_OPTION = "tracemark_immediate"
PG_DEFAULT_DRIVER = "postgresql+psycopg"
_PG_MIGRATION_LOCK = 0x7472_6D6B  # advisory lock key ("trmk")
MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class LedgerError(Unavailable):
    """The ledger cannot be opened or used as asked (bad URL, schema mismatch, ...)."""


class ReportNotFound(NotFound, LedgerError):
    """No report with the requested id (or prefix) exists in the ledger."""


def default_ledger_url() -> str:
    """``$TRACEMARK_LEDGER_URL`` or a SQLite file ``ledger.db`` in :func:`user_data_dir`."""
    url = os.environ.get(ENV_LEDGER_URL, "").strip()
    if url:
        return url
    return f"sqlite:///{user_data_dir() / LEDGER_FILE_NAME}"


def _is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None  # the driver must not open transactions behind our back
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if engine.url.database not in (None, "", ":memory:"):
                mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()
                if mode and str(mode[0]).lower() != "wal":
                    log.warning("SQLite ledger could not switch to WAL (journal_mode=%s)", mode[0])
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        immediate = conn.get_execution_options().get(IMMEDIATE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str | None = None, *, migrate: bool = True, echo: bool = False) -> Engine:
    """Open the ledger at ``url`` (default :func:`default_ledger_url`) and migrate it to the latest schema."""
    url = url or default_ledger_url()
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise LedgerError(f"not a database URL: {url!r} (use sqlite:///PATH or postgresql://...)") from None
    if parsed.drivername in ("postgresql", "postgres"):  # plain URL: psycopg 3 (the `postgres` extra)
        parsed = parsed.set(drivername=PG_DEFAULT_DRIVER)
    backend = parsed.get_backend_name()
    kwargs: dict = {"echo": echo}
    if backend == "sqlite":
        db = parsed.database
        if db and db != ":memory:" and not db.startswith("file:"):
            path = Path(db).expanduser()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.exists():  # the ledger may hold query texts: private by default
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as exc:
                raise LedgerError(f"cannot create ledger file {path}: {exc.strerror}") from None
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    elif backend == "postgresql":
        kwargs["pool_pre_ping"] = True
    else:
        raise LedgerError(f"unsupported ledger backend {backend!r} (use sqlite or postgresql)")
    try:
        engine = create_engine(parsed, **kwargs)
    except ImportError as exc:
        raise LedgerError(
            f"database driver for {backend} is not installed ({exc.name}); e.g. `pip install "
            "'psycopg[binary]'` and use a postgresql+psycopg:// URL"
        ) from None
    if backend == "sqlite":
        _install_sqlite_pragmas(engine)
    if migrate:
        try:
            upgrade(engine)
        except OperationalError as exc:
            engine.dispose()
            raise LedgerError(
                f"cannot open ledger {parsed.render_as_string(hide_password=True)}: "
                f"{str(exc.orig).splitlines()[0]}"
            ) from None
    return engine


def _alembic_config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    """The newest migration revision shipped with this package."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the ledger's schema is at (``None`` for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations up to ``revision`` (serialised across processes)."""
    from alembic import command

    if revision == "head" and current_revision(engine) == head_revision():
        return
    cfg = _alembic_config()
    locked = engine.execution_options(**{IMMEDIATE_OPTION: True}) if _is_sqlite(engine) else engine
    with locked.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    log.info("ledger migrated to %s", revision)


@contextmanager
def session_scope(engine: Engine, *, immediate: bool = True) -> Iterator[Session]:
    """A session that commits on success and rolls back on error.

    By default the transaction takes SQLite's write lock when it begins (``BEGIN IMMEDIATE``), so
    read-then-write sequences never fail with "database is locked" on a stale snapshot and writers queue
    up behind ``busy_timeout`` instead. Pass ``immediate=False`` (or use :func:`read_session`) for
    read-only work, which then never waits for writers (WAL).
    """
    bind = (
        engine.execution_options(**{IMMEDIATE_OPTION: True}) if immediate and _is_sqlite(engine) else engine
    )
    session = Session(bind, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def read_session(engine: Engine):
    """Shorthand for ``session_scope(engine, immediate=False)`` (read-only work)."""
    return session_scope(engine, immediate=False)
