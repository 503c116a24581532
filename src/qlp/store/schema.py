"""Table definitions (SQLAlchemy Core). The schema itself is created by Alembic migrations;
these objects describe it for queries and are checked against the database in the tests."""

from __future__ import annotations

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Identity,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

# all-MiniLM-L6-v2, the local embedding model planned for similar-intent search.
EMBEDDING_DIMENSIONS = 384

metadata = MetaData()

intents = Table(
    "intents",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("text", Text, nullable=False),
    Column("options", JSONB, nullable=False, server_default="{}"),
    Column("user_id", String(200), nullable=True),
    Column("status", String(20), nullable=False),
    Column("plan", JSONB, nullable=True),
    Column("error", Text, nullable=True),
    Column("workspace", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, server_default="0"),
    # Sum of the calls whose price is known; calls of unknown price are counted apart.
    Column("cost_usd", Numeric(14, 6), nullable=False, server_default="0"),
    Column("unpriced_calls", Integer, nullable=False, server_default="0"),
    Column("llm_calls", Integer, nullable=False, server_default="0"),
    Column("event_seq", BigInteger, nullable=False, server_default="0"),
    Column("embedding", Vector(EMBEDDING_DIMENSIONS), nullable=True),
)

tasks = Table(
    "tasks",
    metadata,
    Column("intent_id", String(40), nullable=False),
    Column("id", String(32), nullable=False),
    Column("type", String(16), nullable=False),
    Column("title", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("dependencies", JSONB, nullable=False, server_default="[]"),
    Column("priority", Integer, nullable=False, server_default="3"),
    Column("acceptance_criteria", JSONB, nullable=False, server_default="[]"),
    Column("position", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("error", Text, nullable=True),
    Column("notes", Text, nullable=True),
    Column("input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("intent_id", "id"),
    ForeignKeyConstraint(["intent_id"], ["intents.id"], ondelete="CASCADE"),
)

llm_calls = Table(
    "llm_calls",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("intent_id", String(40), nullable=False, index=True),
    Column("task_id", String(32), nullable=True),
    Column("purpose", String(80), nullable=False),
    Column("provider", String(40), nullable=False),
    Column("model", String(200), nullable=False),
    Column("request", JSONB, nullable=False),
    Column("response", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("input_tokens", Integer, nullable=False, server_default="0"),
    Column("output_tokens", Integer, nullable=False, server_default="0"),
    Column("cost_usd", Numeric(14, 6), nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["intent_id"], ["intents.id"], ondelete="CASCADE"),
)

files = Table(
    "files",
    metadata,
    Column("intent_id", String(40), nullable=False),
    Column("path", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("task_id", String(32), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("intent_id", "path"),
    ForeignKeyConstraint(["intent_id"], ["intents.id"], ondelete="CASCADE"),
)

events = Table(
    "events",
    metadata,
    Column("intent_id", String(40), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("type", String(60), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("payload", JSONB, nullable=False, server_default="{}"),
    PrimaryKeyConstraint("intent_id", "seq"),
    ForeignKeyConstraint(["intent_id"], ["intents.id"], ondelete="CASCADE"),
)
