"""Initial ledger schema: accounts, key versions, issued signatures, investigations, queries, reports.

Revision ID: 0001_initial
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "account",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        _ts("created_at"),
    )
    op.create_index("ix_account_name", "account", ["name"], unique=True)

    op.create_table(
        "key_version",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("signing_key_id", sa.String(length=80), nullable=False),
        _ts("created_at"),
    )

    op.create_table(
        "issued_signature",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account", sa.String(length=200), sa.ForeignKey("account.name"), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("pair_index", sa.Integer(), nullable=False),
        sa.Column("pair_id", sa.String(length=40), nullable=False),
        sa.Column("trace_id", sa.String(length=200), nullable=False),
        sa.Column("rewriter", sa.String(length=200), nullable=False),
        _ts("created_at"),
    )
    op.create_index("ix_issued_signature_account", "issued_signature", ["account"])
    op.create_index("ix_issued_signature_pair_id", "issued_signature", ["pair_id"])
    op.create_index("ix_issued_signature_trace_id", "issued_signature", ["trace_id"])

    op.create_table(
        "investigation",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("suspect", sa.Text(), nullable=False),
        sa.Column("suspect_identity", sa.Text(), nullable=False),
        sa.Column("params_json", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("verdict", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("started_at"),
        _ts("finished_at", nullable=True),
    )
    op.create_index("ix_investigation_status", "investigation", ["status"])

    op.create_table(
        "query_record",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "investigation_id", sa.String(length=64), sa.ForeignKey("investigation.id"), nullable=False
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("prompt_sha256", sa.String(length=64), nullable=False),
        sa.Column("response_sha256", sa.String(length=64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("meta_json", sa.Text(), nullable=True),
        _ts("created_at"),
        sa.UniqueConstraint("investigation_id", "seq", name="uq_query_record_investigation_seq"),
    )
    op.create_index("ix_query_record_investigation_id", "query_record", ["investigation_id"])

    op.create_table(
        "report",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("investigation_id", sa.String(length=64), sa.ForeignKey("investigation.id"), nullable=True),
        _ts("created_at"),
        sa.Column("prev_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column("report_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column("verdict", sa.String(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=80), nullable=False),
        sa.Column("envelope_json", sa.Text(), nullable=False),
    )
    op.create_index("ix_report_seq", "report", ["seq"], unique=True)


def downgrade() -> None:
    op.drop_table("report")
    op.drop_table("query_record")
    op.drop_table("investigation")
    op.drop_table("issued_signature")
    op.drop_table("key_version")
    op.drop_table("account")
