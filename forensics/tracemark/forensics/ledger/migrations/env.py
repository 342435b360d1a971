"""Alembic environment for the tracemark ledger (run programmatically by ``make_engine``).

The caller passes an open connection in ``config.attributes["connection"]``; offline (SQL script) mode
and ``alembic`` CLI use are supported through ``sqlalchemy.url`` too.
"""

from __future__ import annotations

import tracemark.forensics.ledger.models  # noqa: F401  (registers the tables)
from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

config = context.config
target_metadata = SQLModel.metadata


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:  # noqa: ANN001
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
