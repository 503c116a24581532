"""A real `qlp serve` process on 127.0.0.1 for API tests and benchmarks, users created
through the same AuthService the server uses, and small HTTP/WebSocket helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from qlp.auth.base import Role
from qlp.config import Settings
from qlp.engine.wiring import make_auth, open_runtime
from qlp.errors import ConflictError

ROOT = Path(__file__).resolve().parents[1]
API = "/api/v1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(home: Path, db_url: str, llm_base_url: str | None, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "QLP_HOME": str(home / "qlp"),
        "QLP_DATABASE_URL": db_url,
        "QLP_VALIDATE": "false",
        "QLP_LOG_LEVEL": "warning",
        # Servers of one test module share its database: each keeps to its own intents.
        "QLP_JOB_QUEUE": f"test-{secrets.token_hex(4)}",
    }
    if llm_base_url is not None:
        env.update(
            QLP_LLM_PROVIDER="openai",
            QLP_LLM_MODEL="gpt-4o-mini",
            QLP_LLM_BASE_URL=llm_base_url,
            OPENAI_API_KEY="test-key",
            QLP_LLM_RETRY_BASE_S="0.01",
            QLP_LLM_TIMEOUT_S="20",
        )
    env.update(extra)
    return env


@dataclass
class ApiServer:
    """One `python -m qlp serve` process. `restart()` starts it again on the same port."""

    env: dict[str, str]
    cwd: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    args: tuple[str, ...] = ()  # more `qlp serve` options (e.g. --no-worker)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def home(self) -> Path:
        return Path(self.env["QLP_HOME"])

    def start(self, timeout: float = 60) -> ApiServer:
        log = (self.cwd / f"server-{self.port}.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qlp", "serve", "--port", str(self.port), *self.args],
            env=self.env,
            cwd=self.cwd,
            text=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}{API}/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        path = self.cwd / f"server-{self.port}.log"
        return path.read_text() if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not stop in time") from None

    def settings(self) -> Settings:
        return Settings(home=Path(self.env["QLP_HOME"]), database_url=self.env["QLP_DATABASE_URL"])

    def create_user(self, username: str, password: str, role: str = "member") -> None:
        self.create_users(password, {username: role})

    def create_users(self, password: str, roles: dict[str, str]) -> None:
        """Users (name -> role) with one password, over one database connection."""

        async def create() -> None:
            settings = self.settings()
            async with open_runtime(settings) as rt:
                auth = make_auth(settings, rt.store)
                for username, role in roles.items():
                    # Servers of one test module share its database: a user may exist already.
                    with contextlib.suppress(ConflictError):
                        await auth.create_user(username, password, Role(role))

        asyncio.run(create())

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"{self.base}{API}", headers=headers, timeout=30)

    def login(self, username: str, password: str) -> dict[str, Any]:
        with self.client() as c:
            r = c.post("/auth/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def token(self, username: str, password: str) -> str:
        return str(self.login(username, password)["access_token"])

    def stream(self, intent_id: str, token: str, after: int = 0) -> Any:
        url = f"ws://127.0.0.1:{self.port}{API}/intents/{intent_id}/stream?after={after}"
        return ws_connect(url, additional_headers={"Authorization": f"Bearer {token}"})

    def wait_status(
        self, token: str, intent_id: str, statuses: set[str], timeout: float = 120
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.client(token) as c:
            while time.monotonic() < deadline:
                body: dict[str, Any] = c.get(f"/intents/{intent_id}").json()
                if body.get("status") in statuses:
                    return body
                time.sleep(0.1)
        raise AssertionError(f"intent {intent_id} never reached {statuses}: {body}")


def qlp_workers(server: ApiServer) -> tuple[int, dict[str, Any]]:
    """`qlp workers --json` on the server's database: its exit code and what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "qlp", "workers", "--json"],
        env=server.env,
        cwd=server.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout)


def read_stream(
    ws: Any, count: int | None = None, until: str | None = None
) -> list[dict[str, Any]]:
    """Events (heartbeats dropped) until the server closes the stream, `count` arrived, or
    an event of type `until` arrived."""
    out: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosed):
        while count is None or len(out) < count:
            message = json.loads(ws.recv(timeout=120))
            if message.get("event") == "intent":
                out.append(message)
                if message["type"] == until:
                    break
    return out


@contextlib.contextmanager
def running(server: ApiServer) -> Iterator[ApiServer]:
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(AssertionError):
            server.stop()
