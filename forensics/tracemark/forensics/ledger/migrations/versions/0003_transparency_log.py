"""Transparency log: hash-chained entries and signed checkpoints (tracemark.forensics.tlog).

Revision ID: 0003_transparency_log
Revises: 0002_query_commitments
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_transparency_log"
down_revision = "0002_query_commitments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_entry",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=True, unique=True),
        sa.Column("body_json", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column("entry_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_log_entry_kind", "log_entry", ["kind"])

    op.create_table(
        "log_checkpoint",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("envelope_json", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_log_checkpoint_size", "log_checkpoint", ["size"])


def downgrade() -> None:
    op.drop_table("log_checkpoint")
    op.drop_table("log_entry")
