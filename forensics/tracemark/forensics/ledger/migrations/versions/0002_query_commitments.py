"""query_record: keyed commitments instead of plain SHA-256 digests of prompts and responses.

A plain SHA-256 of a prompt lets anyone who reads the row recover its trigger by hashing the ~22k possible
triggers. New rows hold HMAC-SHA256 commitments under the investigation's commitment key
(tracemark.forensics.commitments). Rows written before this revision keep the values they had, now under the
new column names; without the master secret they cannot be converted.

Revision ID: 0002_query_commitments
Revises: 0001_initial
"""

from __future__ import annotations

from alembic import op

revision = "0002_query_commitments"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("query_record") as batch:
        batch.alter_column("prompt_sha256", new_column_name="prompt_commitment")
        batch.alter_column("response_sha256", new_column_name="response_commitment")


def downgrade() -> None:
    with op.batch_alter_table("query_record") as batch:
        batch.alter_column("prompt_commitment", new_column_name="prompt_sha256")
        batch.alter_column("response_commitment", new_column_name="response_sha256")
