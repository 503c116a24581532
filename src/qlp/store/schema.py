"""Table definitions (SQLAlchemy Core). The schema itself is created by Alembic migrations;
these objects describe it for queries and are checked against the database in the tests."""

from __future__ import annotations

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
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
    # The lease (store/leases.py): its epoch, bumped by every claim and checked by every
    # state write of the intent; who holds it and until when (renewed while it works).
    Column("lease", BigInteger, nullable=False, server_default="0"),
    Column("lease_holder", Text, nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Index("ix_intents_created_at", "created_at"),
    Index("ix_intents_status", "status"),
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

validations = Table(
    "validations",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("intent_id", String(40), nullable=False),
    Column("round", Integer, nullable=False),
    Column("task_id", String(32), nullable=True),
    Column("attempt", Integer, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("report", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_validations_intent", "intent_id", "round"),
    ForeignKeyConstraint(["intent_id"], ["intents.id"], ondelete="CASCADE"),
)

review_rounds = Table(
    "review_rounds",
    metadata,
    Column("intent_id", String(40), nullable=False),
    Column("round", Integer, nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("gates", JSONB, nullable=False),
    Column("scores", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("intent_id", "round"),
    ForeignKeyConstraint(["intent_id"], ["intents.id"], ondelete="CASCADE"),
)

review_decisions = Table(
    "review_decisions",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("intent_id", String(40), nullable=False),
    Column("round", Integer, nullable=False),
    Column("decision", String(20), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=True),
    Column("tasks", JSONB, nullable=False, server_default="[]"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("intent_id", "round"),
    ForeignKeyConstraint(
        ["intent_id", "round"],
        ["review_rounds.intent_id", "review_rounds.round"],
        ondelete="CASCADE",
    ),
)

capsules = Table(
    "capsules",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("intent_id", String(40), nullable=False),
    Column("version", Integer, nullable=False),
    Column("parent", String(40), nullable=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("uri", Text, nullable=False),
    Column("scores", JSONB, nullable=False),
    Column("decision", JSONB, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("intent_id", "version"),
    ForeignKeyConstraint(["intent_id"], ["intents.id"], ondelete="CASCADE"),
)

# -- identity and audit (revision 0003; docs/SECURITY.md) -----------------------------------
users = Table(
    "users",
    metadata,
    Column("id", String(40), primary_key=True),
    # Stored lower-cased, so "Alice" and "alice" are one account.
    Column("username", String(64), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("disabled", Boolean, nullable=False, server_default="false"),
    UniqueConstraint("username", name="uq_users_username"),
    CheckConstraint("role IN ('admin', 'member', 'viewer')", name="ck_users_role"),
)

# One row per refresh token. A login starts a family; each refresh marks its row rotated and
# adds the next one to the same family, so presenting a rotated token again is detectable.
user_sessions = Table(
    "user_sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_id", String(40), nullable=False),
    Column("family_id", String(40), nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("rotated_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revoked_reason", Text, nullable=True),
    Column("client_ip", Text, nullable=True),
    Column("user_agent", Text, nullable=True),
    UniqueConstraint("token_hash", name="uq_user_sessions_token_hash"),
    Index("ix_user_sessions_family", "family_id"),
    Index("ix_user_sessions_user", "user_id"),
    ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_id", String(40), nullable=False),
    Column("name", Text, nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    Index("ix_api_keys_user", "user_id"),
    ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
)

# Hash-chained: each row's hash covers its content and the previous row's hash. `seq` is
# numbered by the store (last + 1 under a lock), not by a sequence: a sequence leaves holes
# when a transaction rolls back, and a hole is exactly what signals a deleted row.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("resource", Text, nullable=True),
    Column("outcome", Text, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("client_ip", Text, nullable=True),
    Column("user_agent", Text, nullable=True),
    Column("request_id", Text, nullable=True),
    Column("details", JSONB, nullable=False, server_default="{}"),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_actor", "actor"),
    Index("ix_audit_log_action", "action"),
)

# The chain's last seq and hash, updated with every append: without it, deleting the newest
# rows would leave a shorter chain that still verifies.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("id = 1", name="ck_audit_head_one_row"),
)

# Rate-limit counters (store/counters.py): hits per name and window, for every API process.
rate_counters = Table(
    "rate_counters",
    metadata,
    Column("name", Text, primary_key=True),
    Column("window_start", BigInteger, primary_key=True, autoincrement=False),
    Column("hits", Integer, nullable=False),
    prefixes=["UNLOGGED"],
)

# File contents by sha256 (store/blobs.py): what the `files` table names, on every host.
blobs = Table(
    "blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
