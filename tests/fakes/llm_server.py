"""A real HTTP server on 127.0.0.1 that speaks the OpenAI, Azure OpenAI and Anthropic wire
protocols and answers from the scripted-provider format (`qlp.llm.scripted.Script`).

Extra keys on a script entry inject faults; an entry is consumed whatever it does:

- ``"status": 429`` (any code), optional ``"headers": {"Retry-After": "1"}`` and ``"body"``
  (a JSON value or a string; default: an error body in the protocol's own shape);
- ``"delay_s": 2.0``: answer only after this delay (timeouts, latency);
- ``"raw": "{not json"``: send exactly this body with status 200;
- ``"model"`` / ``"finish_reason"``: what the response reports.

Usage::

    with FakeLLMServer({"responses": [{"content": "{}"}]}) as srv:
        client = AsyncOpenAI(base_url=srv.base_url, api_key="test")
        ...
        assert srv.requests[0].last_user_message == "..."
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from qlp.errors import ScriptExhaustedError
from qlp.llm.scripted import Script

_AZURE_PATH = re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/chat/completions")
_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization"})
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received (credentials removed)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    protocol: str  # "openai", "azure", "anthropic" or "unknown"
    deployment: str | None = None
    received_at: float = field(default_factory=time.time)
    # Which credential headers came (names only, never their values).
    credentials: frozenset[str] = frozenset()

    @property
    def messages(self) -> list[dict[str, Any]]:
        if isinstance(self.body, dict) and isinstance(self.body.get("messages"), list):
            return [m for m in self.body["messages"] if isinstance(m, dict)]
        return []

    @property
    def last_user_message(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _text_of(message.get("content"))
        return ""

    @property
    def system(self) -> str:
        """The system prompt as sent (Anthropic's parameter or OpenAI system messages)."""
        if isinstance(self.body, dict) and "system" in self.body:
            return _text_of(self.body["system"])
        return "\n\n".join(
            _text_of(m.get("content")) for m in self.messages if m.get("role") == "system"
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops the SYNs of a burst of parallel clients,
    # which then wait a second for the retransmission.
    request_queue_size = 128

    def __init__(self, owner: FakeLLMServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect
    # Headers and body go out in separate writes; with Nagle on, the body waits for the
    # client's delayed ACK (about 40 ms a response), which would swamp every measurement.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # keep test output clean

    # -- plumbing --------------------------------------------------------------------
    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            extra = {k.lower(): v for k, v in (headers or {}).items()}
            if "content-type" not in extra:
                self.send_header("Content-Type", "application/json")
            for key, value in (headers or {}).items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            # The client gave up (e.g. its timeout fired while we were "thinking").
            self.close_connection = True

    def _send_json(
        self, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), headers)

    def do_GET(self) -> None:
        self._send_json(404, {"error": {"message": f"fake LLM server: no GET {self.path}"}})

    def do_POST(self) -> None:
        owner = self.server.owner
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw_body) if raw_body else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = raw_body.decode("utf-8", "replace")

        deployment: str | None = None
        if parts.path == "/v1/chat/completions":
            protocol = "openai"
        elif (m := _AZURE_PATH.fullmatch(parts.path)) is not None:
            protocol, deployment = "azure", m.group("deployment")
        elif parts.path == "/v1/messages":
            protocol = "anthropic"
        else:
            protocol = "unknown"
        query = dict(parse_qsl(parts.query))
        headers = {
            k.lower(): v for k, v in self.headers.items() if k.lower() not in _SECRET_HEADERS
        }
        record = RecordedRequest(
            credentials=frozenset(k.lower() for k in self.headers if k.lower() in _SECRET_HEADERS),
            method="POST",
            path=parts.path,
            query=query,
            headers=headers,
            body=body,
            protocol=protocol,
            deployment=deployment,
        )
        owner._record(record)

        if protocol == "unknown":
            self._send_json(404, {"error": {"message": f"fake LLM server: no route {parts.path}"}})
            return
        if protocol == "azure" and "api-version" not in query:
            self._error(protocol, 400, "Missing required query parameter 'api-version'.")
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._error(protocol, 400, "fake LLM server: request body has no 'messages' list")
            return

        if owner.latency_s > 0 and owner._stopping.wait(owner.latency_s):
            return
        try:
            entry = owner.script.take(record.last_user_message)
        except ScriptExhaustedError as exc:
            self._error(protocol, 500, f"fake LLM server: {exc}", kind="script_exhausted")
            return

        delay = float(entry.get("delay_s") or 0)
        if delay > 0 and owner._stopping.wait(delay):
            return
        if "status" in entry:
            status = int(entry["status"])
            extra_headers = {str(k): str(v) for k, v in (entry.get("headers") or {}).items()}
            if "body" in entry:
                payload = entry["body"]
                data = payload if isinstance(payload, str) else json.dumps(payload)
                self._send(status, data.encode("utf-8"), extra_headers)
            else:
                self._error(protocol, status, f"injected HTTP {status}", headers=extra_headers)
            return
        if "raw" in entry:
            self._send(200, str(entry["raw"]).encode("utf-8"))
            return
        self._answer(protocol, body, entry, deployment)

    # -- protocol shapes -------------------------------------------------------------
    def _error(
        self,
        protocol: str,
        status: int,
        message: str,
        *,
        kind: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if protocol == "anthropic":
            err_type = kind or _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
            payload: dict[str, Any] = {
                "type": "error",
                "error": {"type": err_type, "message": message},
            }
        else:
            payload = {
                "error": {
                    "message": message,
                    "type": kind or ("server_error" if status >= 500 else "invalid_request_error"),
                    "param": None,
                    "code": None,
                }
            }
        self._send_json(status, payload, headers)

    def _answer(
        self, protocol: str, body: dict[str, Any], entry: Mapping[str, Any], deployment: str | None
    ) -> None:
        owner = self.server.owner
        content = str(entry.get("content", ""))
        prompt = "\n".join(
            _text_of(m.get("content")) for m in body["messages"] if isinstance(m, dict)
        )
        if "system" in body:
            prompt = _text_of(body["system"]) + "\n" + prompt
        prompt_tokens, completion_tokens = _tokens(prompt), _tokens(content)
        model = str(entry.get("model") or body.get("model") or deployment or "fake-model")
        number = owner._next_id()
        if protocol == "anthropic":
            self._send_json(
                200,
                {
                    "id": f"msg_fake_{number}",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": content}],
                    "stop_reason": entry.get("finish_reason", "end_turn"),
                    "stop_sequence": None,
                    "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
                },
            )
            return
        self._send_json(
            200,
            {
                "id": f"chatcmpl-fake-{number}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": entry.get("finish_reason", "stop"),
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )


class FakeLLMServer:
    """Start with ``with FakeLLMServer(script) as srv:``; see the module docstring."""

    def __init__(
        self,
        script: Script | Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        latency_s: float = 0.0,
    ) -> None:
        if isinstance(script, Script):
            self.script = script
        elif isinstance(script, Mapping):
            self.script = Script.from_data(dict(script), source="<fake server script>")
        else:
            self.script = Script(list(script), source="<fake server script>")
        self.latency_s = latency_s
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> FakeLLMServer:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping on delay_s / latency_s
        server.shutdown()
        with server.connections_lock:
            open_connections = list(server.connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeLLMServer is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """For OpenAI and OpenAI-compatible clients."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def azure_endpoint(self) -> str:
        return self.url

    # -- what happened ---------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, record: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(record)

    def _next_id(self) -> int:
        with self._lock:
            return next(self._ids)
