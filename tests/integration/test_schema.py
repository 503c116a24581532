"""The migrations and the table descriptions in store/schema.py must agree."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from qlp.store.db import connect, schema_revision
from qlp.store.schema import metadata


def _ours(obj: object, name: str | None, type_: str, reflected: bool, other: object) -> bool:
    # procrastinate's tables are its own schema (migration 0006), not described in schema.py.
    return not (type_ == "table" and (name or "").startswith("procrastinate_"))


def _diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"include_object": _ours})
    return list(compare_metadata(context, metadata))


async def test_migrated_schema_matches_schema_py(db_url: str) -> None:
    engine = await connect(db_url)
    try:
        current, head = await schema_revision(engine)
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff)
            ext = (
                await conn.exec_driver_sql(
                    "SELECT extname FROM pg_extension WHERE extname = 'vector'"
                )
            ).scalar_one_or_none()
    finally:
        await engine.dispose()
    assert current == head
    assert diff == []
    assert ext == "vector"


async def test_migrating_twice_is_harmless(db_url: str) -> None:
    for _ in range(2):
        engine = await connect(db_url)
        await engine.dispose()
