"""Alembic environment. QLP runs migrations itself (store/db.py) and hands over a connection."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from qlp.store.schema import metadata

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("QLP migrations run through `qlp db upgrade`, which supplies a connection")

context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
