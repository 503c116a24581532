"""Shared fixtures: one real embedded PostgreSQL per test session, a fresh database per module."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from qlp.store.embedded import EmbeddedPostgres

_NETWORK_ENV = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "OPENAI_BASE_URL",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_CUSTOM_HEADERS",
)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or base-URL variable may send a test request anywhere but 127.0.0.1."""
    for name in _NETWORK_ENV:
        monkeypatch.delenv(name, raising=False)


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
