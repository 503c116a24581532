"""Shared fixtures: one real embedded PostgreSQL per test session, a fresh database per module."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from qlp.store.embedded import EmbeddedPostgres


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    url = server.acquire()
    try:
        yield url
    finally:
        server.release()


def _admin_dsn(url: str) -> str:
    u = make_url(url).set(drivername="postgresql")
    return u.render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def db_url(pg_server_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of its own for each test module, dropped afterwards."""
    stem = re.sub(r"[^a-z0-9]+", "_", request.module.__name__.rsplit(".", 1)[-1].lower())
    name = f"t_{stem[:40]}_{secrets.token_hex(3)}"
    with psycopg.connect(_admin_dsn(pg_server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(_admin_dsn(pg_server_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def qlp_home(tmp_path: Path) -> Path:
    home = tmp_path / "qlp-home"
    home.mkdir()
    return home


@pytest.fixture
async def runtime_env(db_url: str, qlp_home: Path) -> AsyncIterator[dict[str, str]]:
    """Environment variables for a `qlp` subprocess using this module's database."""
    yield {"QLP_DATABASE_URL": db_url, "QLP_HOME": str(qlp_home)}
