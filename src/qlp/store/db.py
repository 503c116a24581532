"""Connecting to PostgreSQL (configured or embedded) and keeping its schema current."""

from __future__ import annotations

import hashlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from qlp.errors import ConfigError, StoreError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same for every QLP process.
_MIGRATION_LOCK_KEY = 0x51_4C_50_00


def lock_key(name: str) -> int:
    """The 64-bit key of the PostgreSQL advisory lock named `name` (every QLP process
    derives the same key from the same name)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def normalise_url(url: str) -> str:
    """Accept `postgres://`, `postgresql://` and `postgresql+psycopg://`; use psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            "QLP_DATABASE_URL: not a database URL (expected postgresql://user@host:port/db)"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("postgresql", "postgres"):
        raise ConfigError(
            f"QLP_DATABASE_URL: QLP stores its data in PostgreSQL only, not {backend!r}"
        )
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    # Two QLP processes starting at once must not both migrate.
    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
    command.upgrade(_alembic_config(connection), "head")


def _current_and_head(connection: Connection) -> tuple[str | None, str | None]:
    current = MigrationContext.configure(connection).get_current_revision()
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    return current, head


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


async def connect(
    url: str,
    *,
    migrate: bool = True,
    pool_size: int = 10,
    idle_in_transaction_s: float | None = None,
) -> AsyncEngine:
    """Open an engine, check the server answers, and bring the schema to the latest version.

    `idle_in_transaction_s`: the server ends a session that sits that long inside a
    transaction without sending anything, so a process stopped (SIGSTOP, a frozen VM) in
    the middle of one does not keep its row locks (an intent's, say) from everyone else."""
    connect_args: dict[str, object] = {}
    if idle_in_transaction_s is not None:
        ms = max(1000, int(idle_in_transaction_s * 1000))
        connect_args["options"] = f"-c idle_in_transaction_session_timeout={ms}"
    engine = create_async_engine(
        normalise_url(url),
        pool_size=pool_size,
        # A few more under a burst; closed again on return (reopening them at every burst
        # cost more than the whole query, docs/BENCHMARKS.md "GET /api/v1/intents").
        max_overflow=8,
        pool_pre_ping=False,
        connect_args=connect_args,
    )
    try:
        async with engine.begin() as conn:
            if migrate:
                await conn.run_sync(_upgrade)
            else:
                current, head = await conn.run_sync(_current_and_head)
                if current != head:
                    raise StoreError(
                        f"the database schema is at {current or 'nothing'} but this QLP needs "
                        f"{head}; run `qlp db upgrade`"
                    )
    except (OperationalError, DBAPIError, OSError) as exc:
        await engine.dispose()
        shown = make_url(normalise_url(url)).render_as_string(hide_password=True)
        raise StoreError(f"cannot use the database at {shown}: {_describe(exc)}") from None
    except BaseException:
        await engine.dispose()
        raise
    return engine


async def schema_revision(engine: AsyncEngine) -> tuple[str | None, str | None]:
    async with engine.connect() as conn:
        return await conn.run_sync(_current_and_head)
