from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api_support import ApiServer, running, server_env
from tests.fakes.llm_server import FakeLLMServer
from tests.support import dag_script

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    """A fake model that answers any number of intents of a small diamond plan."""
    script = dag_script({"QL-DEV-001": [], "QL-TST-002": ["QL-DEV-001"], "QL-DOC-003": []})
    with FakeLLMServer({"responses": script * 200}, latency_s=0.02) as server:
        yield server


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, db_url: str, llm: FakeLLMServer
) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("api")
    server = ApiServer(
        server_env(home, db_url, llm.base_url, QLP_LOGIN_RATE_PER_MINUTE="1000"), cwd=home
    )
    server.create_users(
        PASSWORD, {"root": "admin", "ann": "member", "bob": "member", "vic": "viewer"}
    )
    with running(server):
        yield server
