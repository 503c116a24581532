"""The lease on an intent: which process works on it, until when, and its epoch (the fence
every state write of the intent checks; store/leases.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("intents", sa.Column("lease", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column("intents", sa.Column("lease_holder", sa.Text, nullable=True))
    op.add_column("intents", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("intents", "lease_until")
    op.drop_column("intents", "lease_holder")
    op.drop_column("intents", "lease")
