"""Fixtures for the LLM adapter tests: a fake LLM server per test, clients closed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from qlp.llm.base import LLMClient
from tests.fakes import FakeLLMServer


@pytest.fixture
def fake_llm() -> Iterator[Callable[..., FakeLLMServer]]:
    """Start a fake server from a list of script entries: ``srv = fake_llm([{...}])``."""
    servers: list[FakeLLMServer] = []

    def start(responses: list[dict[str, Any]], **options: Any) -> FakeLLMServer:
        server = FakeLLMServer({"responses": responses}, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
async def closing() -> AsyncIterator[Callable[[LLMClient], LLMClient]]:
    """Register a client to be closed after the test: ``client = closing(Client(...))``."""
    clients: list[LLMClient] = []

    def register(client: LLMClient) -> LLMClient:
        clients.append(client)
        return client

    yield register
    for client in clients:
        await client.aclose()
