"""Validation attempts, review rounds and decisions, capsules.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "validations",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("intent_id", sa.String(40), nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("task_id", sa.String(32), nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("report", JSONB, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["intent_id"], ["intents.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_validations_intent", "validations", ["intent_id", "round"])
    op.create_table(
        "review_rounds",
        sa.Column("intent_id", sa.String(40), nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("gates", JSONB, nullable=False),
        sa.Column("scores", JSONB, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("intent_id", "round"),
        sa.ForeignKeyConstraint(["intent_id"], ["intents.id"], ondelete="CASCADE"),
    )
    op.create_table(
        "review_decisions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("intent_id", sa.String(40), nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("tasks", JSONB, nullable=False, server_default="[]"),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("intent_id", "round"),
        sa.ForeignKeyConstraint(
            ["intent_id", "round"],
            ["review_rounds.intent_id", "review_rounds.round"],
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "capsules",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("intent_id", sa.String(40), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("parent", sa.String(40), nullable=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("scores", JSONB, nullable=False),
        sa.Column("decision", JSONB, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("intent_id", "version"),
        sa.ForeignKeyConstraint(["intent_id"], ["intents.id"], ondelete="CASCADE"),
    )


def downgrade() -> None:
    for table in ("capsules", "review_decisions", "review_rounds", "validations"):
        op.drop_table(table)
