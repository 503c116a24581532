"""A sandbox that reports every finished command to an observer (the service's metrics),
otherwise exactly the sandbox it wraps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from qlp.sandbox.base import WORKSPACE, ExecResult, Limits, Sandbox, SandboxSession

Observer = Callable[[str, ExecResult], None]


class _ObservedSession:
    def __init__(self, inner: SandboxSession, backend: str, observer: Observer) -> None:
        self._inner = inner
        self._backend = backend
        self._observer = observer

    @property
    def workspace(self) -> Path:
        return self._inner.workspace

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        cwd: str = WORKSPACE,
        stdin: bytes | None = None,
    ) -> ExecResult:
        result = await self._inner.run(argv, env=env, limits=limits, cwd=cwd, stdin=stdin)
        self._observer(self._backend, result)
        return result


class ObservedSandbox:
    def __init__(self, inner: Sandbox, observer: Observer) -> None:
        self._inner = inner
        self._observer = observer
        self.name = inner.name
        self.default_limits = inner.default_limits

    def check(self) -> None:
        self._inner.check()

    def session(
        self, workspace: Path, *, network: bool = False, language: str = "python"
    ) -> AbstractAsyncContextManager[SandboxSession]:
        return self._session(workspace, network, language)

    @asynccontextmanager
    async def _session(
        self, workspace: Path, network: bool, language: str
    ) -> AsyncIterator[SandboxSession]:
        async with self._inner.session(workspace, network=network, language=language) as s:
            yield _ObservedSession(s, self.name, self._observer)
