"""Rate-limit counters shared by every API process.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # UNLOGGED: no write-ahead log (several times faster to update); PostgreSQL empties it
    # after a crash, which only forgets the last minute of counts.
    op.execute(
        "CREATE UNLOGGED TABLE rate_counters ("
        " name text NOT NULL,"
        " window_start bigint NOT NULL,"
        " hits integer NOT NULL,"
        " CONSTRAINT pk_rate_counters PRIMARY KEY (name, window_start))"
    )


def downgrade() -> None:
    op.drop_table("rate_counters")
