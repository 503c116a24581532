"""The ONE place that reads configuration and picks adapters (DESIGN.md §2)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qlp.agents.agent import AgentSettings
from qlp.auth.base import SecretProvider
from qlp.auth.secrets import (
    JWT_KEYS_NAME,
    EnvSecretProvider,
    KeyVaultSecretProvider,
    load_signing_keys,
)
from qlp.auth.service import AuthService
from qlp.auth.tokens import TokenService
from qlp.capsule.azure_store import AzureCapsuleStore
from qlp.capsule.base import CapsuleStore
from qlp.capsule.keys import load_or_create_signing_key
from qlp.capsule.local_store import LocalCapsuleStore
from qlp.config import SandboxBackend, Settings
from qlp.domain.artifacts import FileLimits
from qlp.domain.events import Event
from qlp.engine.events import EventBus
from qlp.engine.pipeline import EngineConfig, Pipeline
from qlp.engine.quality import CapsuleIdentity, Quality, QualityConfig
from qlp.errors import ConfigError, UserInputError
from qlp.llm.anthropic_provider import AnthropicClient
from qlp.llm.base import LLMClient, LLMRequest, LLMResponse
from qlp.llm.openai_compat import OpenAICompatClient
from qlp.llm.retry import RetryPolicy
from qlp.llm.scripted import Script, ScriptedClient
from qlp.logs import configure as configure_logging
from qlp.logs import log_events
from qlp.planning.planner import PlannerLimits
from qlp.review.gate import Policy
from qlp.sandbox.base import Limits, Sandbox
from qlp.sandbox.bubblewrap import BubblewrapConfig, BubblewrapSandbox
from qlp.sandbox.docker_backend import DockerConfig, DockerSandbox
from qlp.sandbox.gvisor import GvisorConfig, GvisorSandbox
from qlp.sandbox.observed import ObservedSandbox, Observer
from qlp.sandbox.runtime import resolve_runtime, runtime_path
from qlp.store.base import IntentRecord
from qlp.store.db import connect
from qlp.store.embedded import EmbeddedPostgres
from qlp.store.repository import Store
from qlp.store.users import UserStore
from qlp.validation import ValidationConfig

# --- sandbox ------------------------------------------------------------------------------


def sandbox_limits(settings: Settings) -> Limits:
    return Limits(
        timeout_s=settings.sandbox_timeout_s,
        cpu_s=settings.sandbox_cpu_s,
        memory_bytes=settings.sandbox_memory_mb * 1024 * 1024,
        pids=settings.sandbox_pids,
        file_size_bytes=settings.sandbox_file_size_mb * 1024 * 1024,
        open_files=settings.sandbox_open_files,
        output_bytes=settings.sandbox_output_bytes,
        cpus=settings.sandbox_cpus,
    )


def make_sandbox(settings: Settings, backend: SandboxBackend | None = None) -> Sandbox:
    """The configured (or named) backend, not yet checked: call `.check()` at start-up, which
    raises SandboxError saying what to install. There is no unsandboxed fallback."""
    name = backend or settings.sandbox
    limits = sandbox_limits(settings)
    runtime = resolve_runtime(settings.sandbox_runtime, settings.home)
    if name == "bubblewrap":
        return BubblewrapSandbox(
            BubblewrapConfig(
                runtime=runtime,
                default_limits=limits,
                uid=settings.sandbox_uid,
                gid=settings.sandbox_gid,
                cgroups=settings.sandbox_cgroups,
            )
        )
    if name == "docker":
        return DockerSandbox(
            DockerConfig(
                base_url=settings.sandbox_docker_host,
                images=dict(settings.sandbox_docker_images),
                default_limits=limits,
                uid=settings.sandbox_uid,
                gid=settings.sandbox_gid,
                path=runtime_path(runtime),
            )
        )
    if name == "gvisor":
        return GvisorSandbox(
            GvisorConfig(
                runtime=runtime,
                default_limits=limits,
                uid=settings.sandbox_uid,
                gid=settings.sandbox_gid,
                platform=settings.sandbox_gvisor_platform,
            )
        )
    raise ConfigError(f"QLP_SANDBOX: unknown backend {name!r}; use bubblewrap, docker or gvisor")


# --- llm ----------------------------------------------------------------------------------
DEFAULT_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-6"}
_NO_LLM = (
    "no LLM is configured: set QLP_LLM_PROVIDER (openai, azure, anthropic or scripted) and "
    "its key, or pass --llm (e.g. --llm scripted:examples/todo-cli/script.json)"
)


def apply_llm_spec(settings: Settings, spec: str | None) -> Settings:
    """`--llm PROVIDER[:ARG]`: ARG is the script path for scripted, else the model name."""
    if not spec:
        return settings
    provider, _, arg = spec.partition(":")
    if provider not in LLM_PROVIDERS:
        raise ConfigError(
            f"--llm {spec!r}: unknown provider {provider!r}; "
            "use openai[:MODEL], azure:DEPLOYMENT, anthropic[:MODEL] or scripted:PATH"
        )
    update: dict[str, object] = {"llm_provider": provider}
    if provider == "scripted":
        if not arg:
            raise ConfigError("--llm scripted needs a script path: --llm scripted:PATH")
        update["llm_script"] = Path(arg).expanduser().resolve()
    elif arg:
        update["llm_model"] = arg
    return settings.model_copy(update=update)


# Where an intent started with --llm keeps that choice: provider and model or script path.
# Never a key, nor the endpoint: those come from the environment at each run (an intent
# started from the environment's settings continues with the environment's settings).
LLM_OPTION = "qlp.llm"
LLM_PROVIDERS = ("openai", "azure", "anthropic", "scripted")


def llm_identity(settings: Settings) -> dict[str, str]:
    """What an intent remembers of its model (empty when none is configured)."""
    if settings.llm_provider is None:
        return {}
    out = {"provider": str(settings.llm_provider)}
    if settings.llm_model:
        out["model"] = settings.llm_model
    if settings.llm_script is not None:
        out["script"] = str(settings.llm_script)
    return out


def with_remembered_llm(settings: Settings, options: dict[str, Any]) -> Settings:
    """The settings to continue an intent with: the model it was started with, when it
    remembers one (an explicit --llm is applied after this, and wins)."""
    ident = options.get(LLM_OPTION)
    if not isinstance(ident, dict) or ident.get("provider") not in LLM_PROVIDERS:
        return settings
    script = ident.get("script")
    return settings.model_copy(
        update={
            "llm_provider": ident["provider"],
            "llm_model": ident.get("model"),
            "llm_script": Path(script) if isinstance(script, str) and script else None,
        }
    )


def continuing_llm(rt: Runtime, intent: IntentRecord, spec: str | None) -> LLMClient | None:
    """The model to continue `intent` with: `--llm` when given, else the one it was started
    with, else (None) the runtime's configured one."""
    if spec or LLM_OPTION not in intent.options:
        return None
    return make_llm(with_remembered_llm(rt.settings, intent.options))


def make_llm(settings: Settings) -> LLMClient:
    provider = settings.llm_provider
    if provider is None:
        raise ConfigError(_NO_LLM)
    if provider == "scripted":
        if settings.llm_script is None:
            raise ConfigError("QLP_LLM_SCRIPT: the scripted provider needs a script file")
        return ScriptedClient(Script.load(settings.llm_script))
    retry = RetryPolicy(
        max_retries=settings.llm_max_retries,
        base_s=settings.llm_retry_base_s,
        max_s=settings.llm_retry_max_s,
    )
    prices = settings.price_table()
    if provider == "anthropic":
        key = settings.anthropic_api_key
        if key is None:
            raise ConfigError("ANTHROPIC_API_KEY is not set (needed by QLP_LLM_PROVIDER=anthropic)")
        return AnthropicClient(
            model=settings.llm_model or DEFAULT_MODELS["anthropic"],
            api_key=key.get_secret_value(),
            base_url=settings.llm_base_url,
            timeout_s=settings.llm_timeout_s,
            retry=retry,
            prices=prices,
        )
    if provider == "azure":
        azure_key = settings.azure_openai_api_key
        if azure_key is None or not settings.azure_openai_endpoint:
            raise ConfigError(
                "AZURE_OPENAI_API_KEY and AZURE_OPENAI_ENDPOINT must both be set "
                "(needed by QLP_LLM_PROVIDER=azure)"
            )
        if not settings.llm_model:
            raise ConfigError("QLP_LLM_MODEL: name the Azure OpenAI deployment to use")
        return OpenAICompatClient(
            model=settings.llm_model,
            api_key=azure_key.get_secret_value(),
            azure_endpoint=settings.azure_openai_endpoint,
            azure_api_version=settings.azure_openai_api_version,
            timeout_s=settings.llm_timeout_s,
            retry=retry,
            prices=prices,
            provider_name="azure",
        )
    openai_key = settings.openai_api_key
    if openai_key is None and settings.llm_base_url is None:
        raise ConfigError(
            "OPENAI_API_KEY is not set (needed by QLP_LLM_PROVIDER=openai; for a local "
            "OpenAI-compatible server set QLP_LLM_BASE_URL instead)"
        )
    return OpenAICompatClient(
        model=settings.llm_model or DEFAULT_MODELS["openai"],
        api_key=openai_key.get_secret_value() if openai_key else None,
        base_url=settings.llm_base_url,
        timeout_s=settings.llm_timeout_s,
        retry=retry,
        prices=prices,
        provider_name="openai" if settings.llm_base_url is None else "openai-compatible",
    )


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        workspaces_dir=settings.workspaces_dir,
        max_parallel_tasks=settings.max_parallel_tasks,
        task_timeout_s=settings.task_timeout_s,
        token_budget=settings.token_budget_per_intent,
        context_token_budget=settings.context_token_budget,
        planner=PlannerLimits(
            max_tasks=settings.max_tasks_per_plan,
            max_reasks=settings.llm_max_reasks,
            max_output_tokens=settings.llm_max_output_tokens,
            temperature=settings.llm_temperature,
        ),
        agent=AgentSettings(
            limits=FileLimits(
                max_files=settings.max_files_per_task,
                max_file_bytes=settings.max_file_bytes,
                max_path_length=settings.max_path_length,
            ),
            max_reasks=settings.llm_max_reasks,
            max_output_tokens=settings.llm_max_output_tokens,
            temperature=settings.llm_temperature,
        ),
    )


# --- secrets ------------------------------------------------------------------------------
def make_secret_provider(settings: Settings) -> SecretProvider:
    """QLP_SECRETS: "env" (the settings themselves) or "keyvault:https://NAME.vault.azure.net"."""
    source = settings.secrets.strip()
    if source == "env":
        keys = settings.jwt_keys
        return EnvSecretProvider({JWT_KEYS_NAME: keys.get_secret_value() if keys else None})
    if source.startswith("keyvault:"):
        return KeyVaultSecretProvider(source.removeprefix("keyvault:").strip())
    raise ConfigError(
        f"QLP_SECRETS: unknown secret source {source!r}; use env or "
        "keyvault:https://NAME.vault.azure.net"
    )


def make_auth(settings: Settings, store: Store) -> AuthService:
    """Users, sessions and API keys over the store, tokens signed with the keys from the
    configured secret source (a key file under QLP_HOME when none is configured)."""
    keys = load_signing_keys(make_secret_provider(settings), settings.home)
    return AuthService(
        UserStore(store),
        TokenService(keys, settings.access_token_ttl_s),
        settings.refresh_token_ttl_s,
    )


# --- store --------------------------------------------------------------------------------
@dataclass
class Runtime:
    """Everything a face needs, opened once per process (or per test)."""

    settings: Settings
    store: Store
    bus: EventBus
    database_url: str = ""  # the one in use (the embedded server's, when not configured)
    _llm: LLMClient | None = field(default=None, repr=False)

    def llm(self) -> LLMClient:
        if self._llm is None:
            self._llm = make_llm(self.settings)
        return self._llm

    def pipeline(
        self,
        *,
        need_llm: bool = True,
        llm: LLMClient | None = None,
        sandbox_observer: Observer | None = None,
        replay: CapsuleIdentity | None = None,
    ) -> Pipeline:
        """`need_llm=False` (review decisions that re-run nothing): a missing model setting
        only matters if a model is actually called. `replay` (`qlp replay`): the capsule is
        rebuilt under the original's identity, to the file it names; needs validation."""
        quality = (
            make_quality(self.settings, self.store, sandbox_observer)
            if self.settings.validation_enabled
            else None
        )
        if replay is not None:
            if quality is None:
                raise UserInputError("replay needs validation, which is off (QLP_VALIDATE=false)")
            quality = Quality(self.store, quality.config, replay=replay)
        if llm is None:
            llm = self.llm() if need_llm or self.settings.llm_provider else _Unconfigured()
        return Pipeline(self.store, llm, engine_config(self.settings), quality)


class _Unconfigured:
    """Stands where no model is configured; any call says which settings are missing."""

    provider = "none"
    model = "none"

    async def complete(self, request: LLMRequest) -> LLMResponse:
        raise ConfigError(_NO_LLM)

    async def aclose(self) -> None:
        return None


# --- validation, review, capsules -----------------------------------------------------------
def make_capsule_store(settings: Settings) -> CapsuleStore:
    if settings.storage == "azure":
        if not settings.storage_url:
            raise ConfigError(
                "QLP_STORAGE_URL: name the Azure Blob container for QLP_STORAGE=azure"
            )
        secret = settings.storage_connection_string
        return AzureCapsuleStore.from_settings_values(
            settings.storage_url, secret.get_secret_value() if secret else None
        )
    return LocalCapsuleStore(settings.home / "capsules")


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    secret = settings.signing_key
    return load_or_create_signing_key(settings.home, secret.get_secret_value() if secret else None)


def make_quality(
    settings: Settings, store: Store, sandbox_observer: Observer | None = None
) -> Quality:
    """Validation needs a working sandbox: an unavailable backend stops here, saying what to
    install (there is no unsandboxed fallback). `sandbox_observer` sees every command's end
    (the service's metrics)."""
    sandbox: Sandbox = make_sandbox(settings)
    sandbox.check()
    if sandbox_observer is not None:
        sandbox = ObservedSandbox(sandbox, sandbox_observer)
    return Quality(
        store,
        QualityConfig(
            sandbox=sandbox,
            validation=ValidationConfig.from_settings(settings),
            max_repairs=settings.max_repairs,
            policy=Policy(settings.review_policy),
            threshold=settings.approve_threshold,
            capsule_store=make_capsule_store(settings),
            signing_key=signing_key(settings),
            capsules_tmp=settings.home / "tmp",
        ),
    )


@asynccontextmanager
async def open_runtime(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Runtime]:
    """Connect to (or start) PostgreSQL, migrate, and yield a Runtime; close all on exit."""
    configure_logging(settings.log_level, settings.log_format)
    embedded: EmbeddedPostgres | None = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(settings.home / "postgres" / "data")
        url = await asyncio.to_thread(embedded.acquire)
    try:
        # Every running task may hold a connection at once, and an API process serves
        # dozens of requests at once; overflow connections are closed on return, so a pool
        # smaller than that would reconnect every wave.
        engine = await connect(
            url,
            migrate=migrate,
            pool_size=max(settings.max_parallel_tasks + 4, 24),
            idle_in_transaction_s=settings.worker_stall_s,
        )
        bus = EventBus()

        async def sink(events: list[Event]) -> None:
            log_events(events)
            await bus.publish(events)

        runtime = Runtime(
            settings=settings,
            store=Store(engine, sink, lease_s=settings.worker_stall_s),
            bus=bus,
            database_url=url,
        )
        try:
            yield runtime
        finally:
            if runtime._llm is not None:
                await runtime._llm.aclose()
            await engine.dispose()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.release)
