"""The scripted provider: answers read from a JSON file, for tests, demos and offline runs.

The file format is public and frozen::

    {"responses": [{"when": "optional substring", "content": "assistant reply"}, ...]}

Each call takes the first unused entry whose ``when`` is absent or occurs (plain, case-sensitive
substring) in the call's last user message. Every intent has its own pass through the script
(`ScriptedClient.for_intent`): one server answers any number of intents from one file.
Entries may carry extra keys (the fake HTTP server in ``tests/fakes`` uses ``status``,
``headers``, ``body``, ``delay_s``, ``raw``); this client reads only ``when`` and ``content``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qlp.errors import LLMError, ScriptExhaustedError, UserInputError
from qlp.llm.base import LLMRequest, LLMResponse, Usage

# An entry without "content" is only meaningful to the fake server (a fault to inject).
_FAULT_KEYS = ("status", "raw")
_SNIPPET = 120
# Intents whose place in the script is remembered; an older one asking again (a review
# re-run long after) starts from the start, as it would in a new process.
MAX_INTENT_SESSIONS = 1024


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters a token), at least 1."""
    return max(1, len(text) // 4)


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _SNIPPET else flat[:_SNIPPET] + "..."


class Script:
    """An ordered list of scripted answers; `take` is thread-safe and never blocks for long."""

    def __init__(self, entries: Sequence[Mapping[str, Any]], *, source: str = "<inline script>"):
        self.source = source
        self._entries: list[dict[str, Any]] = [
            _check_entry(entry, index, source) for index, entry in enumerate(entries)
        ]
        self._used = [False] * len(self._entries)
        self._lock = threading.Lock()

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_data(cls, data: Any, *, source: str = "<inline script>") -> Script:
        """Build from the parsed file content, raising UserInputError on the wrong shape."""
        if not isinstance(data, dict) or "responses" not in data:
            raise UserInputError(
                f'script {source} must be a JSON object with a "responses" list, '
                'like {"responses": [{"content": "..."}]}'
            )
        responses = data["responses"]
        if not isinstance(responses, list):
            raise UserInputError(
                f'script {source}: "responses" must be a list, not {type(responses).__name__}'
            )
        return cls(responses, source=source)

    @classmethod
    def load(cls, path: str | Path) -> Script:
        """Read a script file, raising UserInputError naming the file when it is unusable."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserInputError(f"script file not found: {p}") from None
        except IsADirectoryError:
            raise UserInputError(f"script path is a directory, not a file: {p}") from None
        except UnicodeDecodeError:
            raise UserInputError(f"script file {p} is not UTF-8 text") from None
        except OSError as exc:
            raise UserInputError(f"cannot read script file {p}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserInputError(
                f"script file {p} is not valid JSON: {exc.msg} at line {exc.lineno} "
                f"column {exc.colno}"
            ) from None
        return cls.from_data(data, source=str(p))

    def fresh(self) -> Script:
        """The same answers, none used yet."""
        copy = Script.__new__(Script)
        copy.source = self.source
        copy._entries = self._entries  # checked once, never changed
        copy._used = [False] * len(self._entries)
        copy._lock = threading.Lock()
        return copy

    # -- use -------------------------------------------------------------------------
    def take(self, last_user_message: str) -> dict[str, Any]:
        """Mark and return the first unused entry that matches; ScriptExhaustedError if none."""
        with self._lock:
            for index, entry in enumerate(self._entries):
                if self._used[index]:
                    continue
                when = entry.get("when")
                if when is None or when in last_user_message:
                    self._used[index] = True
                    return dict(entry)
            used = sum(self._used)
            total = len(self._entries)
        raise ScriptExhaustedError(
            f"script {self.source} has no unused response for this call "
            f"({used} of {total} entries used); the last user message starts with: "
            f"{_snippet(last_user_message)!r}"
        )

    @property
    def used(self) -> int:
        with self._lock:
            return sum(self._used)

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._entries) - sum(self._used)

    def __len__(self) -> int:
        return len(self._entries)


def _check_entry(entry: Any, index: int, source: str) -> dict[str, Any]:
    where = f"script {source}, response #{index + 1}"
    if not isinstance(entry, Mapping):
        raise UserInputError(f"{where} must be a JSON object, not {type(entry).__name__}")
    when = entry.get("when")
    if when is not None and not isinstance(when, str):
        raise UserInputError(f'{where}: "when" must be a string')
    content = entry.get("content")
    if content is None:
        if not any(key in entry for key in _FAULT_KEYS):
            raise UserInputError(f'{where} has no "content"')
    elif not isinstance(content, str):
        raise UserInputError(f'{where}: "content" must be a string')
    return dict(entry)


class ScriptedClient:
    """An `LLMClient` that answers from a `Script`; costs nothing, takes no time."""

    def __init__(self, script: Script, model: str = "scripted") -> None:
        self._script = script
        self._model = model
        self._sessions: OrderedDict[str, ScriptedClient] = OrderedDict()
        self._sessions_lock = threading.Lock()

    def for_intent(self, intent_id: str) -> ScriptedClient:
        """The client for one intent's calls: its own pass through the script, from the
        start, kept while the intent goes on (so a re-run takes the next unused answers)."""
        with self._sessions_lock:
            client = self._sessions.get(intent_id)
            if client is None:
                client = ScriptedClient(self._script.fresh(), self._model)
                self._sessions[intent_id] = client
                while len(self._sessions) > MAX_INTENT_SESSIONS:
                    self._sessions.popitem(last=False)
            else:
                self._sessions.move_to_end(intent_id)
            return client

    @property
    def provider(self) -> str:
        return "scripted"

    @property
    def model(self) -> str:
        return self._model

    @property
    def script(self) -> Script:
        return self._script

    async def complete(self, request: LLMRequest) -> LLMResponse:
        started = time.perf_counter()
        entry = self._script.take(request.last_user_message)
        content = entry.get("content")
        if not isinstance(content, str):
            raise LLMError(
                f'script {self._script.source}: the matching response has no "content" '
                '(fault entries such as "status" only work with the fake HTTP server)'
            )
        prompt = "\n".join(m.content for m in request.messages)
        return LLMResponse(
            content=content,
            provider="scripted",
            model=self._model,
            usage=Usage(
                input_tokens=estimate_tokens(prompt), output_tokens=estimate_tokens(content)
            ),
            cost_usd=0.0,
            latency_s=time.perf_counter() - started,
            attempts=1,
            finish_reason="stop",
        )

    async def aclose(self) -> None:
        return None
