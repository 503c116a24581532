"""Alembic environment. QLP runs migrations itself (store/db.py) and hands over a connection."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from qlp.store.schema import metadata

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("QLP migrations run through `qlp db upgrade`, which supplies a connection")


def _ours(obj: object, name: str | None, type_: str, reflected: bool, other: object) -> bool:
    """procrastinate's tables (migration 0006) are not described in schema.py."""
    return not (type_ == "table" and (name or "").startswith("procrastinate_"))


context.configure(
    connection=connection,
    target_metadata=metadata,
    transaction_per_migration=True,
    include_object=_ours,
)
with context.begin_transaction():
    context.run_migrations()
