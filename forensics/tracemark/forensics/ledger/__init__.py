"""The ledger: accounts, key versions, issued signatures, investigations, queries and reports (SQLModel).

SQLite (WAL) in the user data folder by default; PostgreSQL by URL. Alembic migrations ship in
``ledger/migrations`` and are applied by :func:`tracemark.forensics.ledger.db.make_engine`.
"""

from tracemark.forensics.ledger.db import (
    LedgerError,
    ReportNotFound,
    default_ledger_url,
    make_engine,
    read_session,
    session_scope,
)

__all__ = [
    "LedgerError",
    "ReportNotFound",
    "default_ledger_url",
    "make_engine",
    "read_session",
    "session_scope",
]
