"""Every knob QLP has, in one pydantic-settings class.

Variables use the `QLP_` prefix; provider keys are also read under their usual names
(`OPENAI_API_KEY`, `AZURE_OPENAI_API_KEY`, `AZURE_OPENAI_ENDPOINT`, `ANTHROPIC_API_KEY`).
A `.env` file in the current directory is read too. Only `engine/wiring.py` and the CLI
call `load_settings()`; everything else receives the values it needs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from qlp.errors import ConfigError

LLMProvider = Literal["openai", "azure", "anthropic", "scripted"]
SandboxBackend = Literal["bubblewrap", "docker", "gvisor"]


class ModelPrice(BaseModel):
    """US dollars per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


# Public list prices at the time of writing; override or extend with QLP_LLM_PRICES.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(input_per_mtok=2.50, output_per_mtok=10.00),
    "gpt-4o-mini": ModelPrice(input_per_mtok=0.15, output_per_mtok=0.60),
    "gpt-4.1": ModelPrice(input_per_mtok=2.00, output_per_mtok=8.00),
    "gpt-4.1-mini": ModelPrice(input_per_mtok=0.40, output_per_mtok=1.60),
    "claude-sonnet-4-5": ModelPrice(input_per_mtok=3.00, output_per_mtok=15.00),
    "claude-sonnet-4-6": ModelPrice(input_per_mtok=3.00, output_per_mtok=15.00),
    "claude-haiku-4-5": ModelPrice(input_per_mtok=1.00, output_per_mtok=5.00),
    # The scripted provider costs nothing, and that is known, not guessed.
    "scripted": ModelPrice(input_per_mtok=0.0, output_per_mtok=0.0),
}


def _env(name: str) -> Any:
    return AliasChoices(name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="QLP_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # -- where things live -------------------------------------------------------------
    home: Path = Field(default=Path("~/.local/share/qlp"), description="QLP_HOME")
    database_url: str | None = Field(default=None, description="QLP_DATABASE_URL")

    # -- LLM ---------------------------------------------------------------------------
    llm_provider: LLMProvider | None = None
    llm_model: str | None = None
    llm_base_url: str | None = None
    llm_script: Path | None = None
    llm_timeout_s: float = Field(default=120.0, gt=0)
    llm_max_retries: int = Field(default=4, ge=0, le=20)
    llm_retry_base_s: float = Field(default=1.0, ge=0)
    llm_retry_max_s: float = Field(default=60.0, ge=0)
    llm_max_reasks: int = Field(default=2, ge=0, le=10)
    llm_max_output_tokens: int = Field(default=8192, gt=0)
    llm_temperature: float = Field(default=0.2, ge=0, le=2)
    llm_prices: dict[str, ModelPrice] = Field(default_factory=dict)

    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("QLP_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    azure_openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("QLP_AZURE_OPENAI_API_KEY", "AZURE_OPENAI_API_KEY"),
    )
    azure_openai_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("QLP_AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_ENDPOINT"),
    )
    azure_openai_api_version: str = Field(
        default="2024-10-21",
        validation_alias=AliasChoices("QLP_AZURE_OPENAI_API_VERSION", "OPENAI_API_VERSION"),
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("QLP_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"),
    )

    # -- engine ------------------------------------------------------------------------
    max_parallel_tasks: int = Field(default=4, ge=1, le=256)
    task_timeout_s: float = Field(default=600.0, gt=0)
    max_tasks_per_plan: int = Field(default=40, ge=1, le=500)
    token_budget_per_intent: int = Field(default=1_000_000, ge=1)
    context_token_budget: int = Field(default=12_000, ge=0)
    max_files_per_task: int = Field(default=60, ge=1)
    max_file_bytes: int = Field(default=512 * 1024, ge=1)
    max_path_length: int = Field(default=200, ge=8, le=4096)

    # -- sandbox -----------------------------------------------------------------------
    sandbox: SandboxBackend = "bubblewrap"
    # Interpreters and test tools the sandboxed code may use; default /opt/qlp-runtime when
    # present, else QLP_HOME/runtime (scripts/setup creates it).
    sandbox_runtime: Path | None = None
    sandbox_timeout_s: float = Field(default=120.0, gt=0)
    sandbox_cpu_s: int = Field(default=120, ge=1)
    sandbox_memory_mb: int = Field(default=1024, ge=16)
    sandbox_pids: int = Field(default=256, ge=8)
    sandbox_file_size_mb: int = Field(default=64, ge=1)
    sandbox_open_files: int = Field(default=256, ge=16)
    sandbox_output_bytes: int = Field(default=1024 * 1024, ge=1024)
    sandbox_cpus: float = Field(default=1.0, gt=0)
    # The unprivileged identity sandboxed code runs as when QLP itself runs as root.
    sandbox_uid: int = Field(default=65534, ge=1)
    sandbox_gid: int = Field(default=65534, ge=1)
    sandbox_cgroups: Literal["auto", "off"] = "auto"
    sandbox_docker_host: str | None = None
    sandbox_docker_images: dict[str, str] = Field(
        default_factory=lambda: {"python": "qlp-sandbox-python:local"}
    )
    sandbox_gvisor_platform: str | None = None

    # -- capsule -----------------------------------------------------------------------
    # Where built capsules are kept: a folder under QLP_HOME, or an Azure Blob container.
    storage: Literal["local", "azure"] = "local"
    # Azure container URL, e.g. https://ACCOUNT.blob.core.windows.net/capsules
    storage_url: str | None = None
    # Azure credentials; without it DefaultAzureCredential is used.
    storage_connection_string: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "QLP_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING"
        ),
    )
    # ed25519 signing key (base64 of the raw 32-byte seed, or PEM); without it QLP creates
    # QLP_HOME/keys/capsule-ed25519.key on first use.
    signing_key: SecretStr | None = None

    # -- validation --------------------------------------------------------------------
    # Checks run in the sandbox (docs/VALIDATION.md). Timeouts are per command.
    validation_timeout_s: float = Field(default=180.0, gt=0)
    validation_test_timeout_s: float = Field(default=300.0, gt=0)
    validation_memory_mb: int = Field(default=2048, ge=64)
    validation_concurrency: int = Field(default=2, ge=1, le=64)
    validation_coverage: bool = True
    # Comma-separated check names whose "not run" (or error) blocks the gate; "all" or "".
    required_checks: str = (
        "python.compile,python.ruff,python.bandit,python.pytest,javascript.check,"
        "javascript.test,shell.syntax,shell.shellcheck,data.json,data.yaml,data.toml,"
        "terraform.parse,terraform.checkov,dockerfile.checkov,semgrep"
    )
    # Comma-separated files every project must have, non-empty.
    required_docs: str = "README.md"

    # -- review ------------------------------------------------------------------------
    # false: agents only, no validation, review or capsule (engine benchmarks and tests).
    validation_enabled: bool = Field(default=True, validation_alias=AliasChoices("QLP_VALIDATE"))
    max_repairs: int = Field(default=2, ge=0, le=10)
    review_policy: Literal["auto", "always", "never_auto"] = "auto"
    approve_threshold: int = Field(default=80, ge=0, le=100)

    # -- service (qlp serve; docs/API.md) ----------------------------------------------
    server_host: str = "127.0.0.1"
    server_port: int = Field(default=8000, ge=1, le=65535)
    # Intents the server runs at once; more wait in the queue (state queued).
    server_max_running: int = Field(default=2, ge=1, le=256)
    # The job queue this deployment's servers and workers share (engine/jobs.py). Processes
    # on one database with different queues leave each other's intents alone.
    job_queue: str = Field(default="qlp-intents", pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    # A worker (or any process running an intent) silent this long is taken for dead: its
    # jobs are taken over and its leases on intents may be claimed (engine/jobs.py,
    # store/leases.py). It beats and renews every quarter of this.
    worker_stall_s: float = Field(default=20.0, ge=2, le=3600)
    # Intents one user may have unfinished (queued, planning, executing, packaging) at once.
    user_max_active_intents: int = Field(default=5, ge=1)
    # Largest JSON request body; a capsule upload to /capsules/verify has its own limit.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    # A request's head (request line and headers) and its header count; beyond them the
    # server answers 431 and closes the connection, before the request reaches the app.
    server_max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    server_max_headers: int = Field(default=100, ge=10, le=10_000)
    # Per minute: failed logins per client and per username (api/limits.py); submissions per user.
    login_rate_per_minute: int = Field(default=10, ge=1)
    submit_rate_per_minute: int = Field(default=30, ge=1)
    # Seconds between heartbeats on an idle event stream (WebSocket).
    stream_heartbeat_s: float = Field(default=15.0, gt=0)
    # Addresses of reverse proxies whose X-Forwarded-For is believed (comma-separated); empty:
    # the client address is the connection's own.
    server_forwarded_allow_ips: str = ""
    # Seconds open requests and streams get to finish when the server is asked to stop.
    server_shutdown_grace_s: float = Field(default=5.0, ge=0)
    access_token_ttl_s: int = Field(default=900, ge=30)
    refresh_token_ttl_s: int = Field(default=14 * 24 * 3600, ge=60)
    # Where secrets come from: "env" (QLP_JWT_KEYS from the environment or .env, else a key
    # file created under QLP_HOME) or "keyvault:https://NAME.vault.azure.net".
    secrets: str = "env"
    # JWT signing keys "kid=secret[,kid=secret...]": the first signs, all verify, so a new key
    # can be put first while tokens signed with the old one stay valid until they expire.
    jwt_keys: SecretStr | None = None
    # Tracing: "none", "console", "otlp" (OTEL_EXPORTER_OTLP_ENDPOINT) or "azure"; "auto"
    # picks azure when APPLICATIONINSIGHTS_CONNECTION_STRING is set, else none.
    tracing: Literal["auto", "none", "console", "otlp", "azure"] = "auto"
    applicationinsights_connection_string: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("APPLICATIONINSIGHTS_CONNECTION_STRING")
    )

    # -- logging -----------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    log_format: Literal["console", "json"] = "console"

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        home = value.expanduser().resolve()
        # Checked here, where every command gets its QLP_HOME, so a wrong one is a line that
        # says what to change (exit 2), not an OSError deep inside a command.
        existing = home
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f"{existing} is a file, not a folder; set QLP_HOME to a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(
                f"{existing} is not writable; set QLP_HOME to a folder you can write to"
            )
        return home

    @field_validator("llm_script", mode="after")
    @classmethod
    def _expand_script(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @field_validator("llm_prices", mode="before")
    @classmethod
    def _parse_prices(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    # -- derived -----------------------------------------------------------------------
    def price_table(self) -> dict[str, ModelPrice]:
        return {**DEFAULT_PRICES, **self.llm_prices}

    @property
    def workspaces_dir(self) -> Path:
        return self.home / "workspaces"


def _variable_name(loc: tuple[int | str, ...]) -> str:
    field = str(loc[0]) if loc else ""
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        names = [str(c) for c in info.validation_alias.choices]
        return " / ".join(names)
    if field in Settings.model_fields:
        return f"QLP_{field.upper()}"
    return field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, or raise ConfigError with one line naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = _variable_name(tuple(err.get("loc", ())))
            value = err.get("input")
            shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
            message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            problems.append(f"{name}: {message}{shown}")
        raise ConfigError("invalid setting " + "; ".join(problems)) from None
    except SettingsError as exc:  # a value that had to be JSON (e.g. QLP_LLM_PRICES) was not
        match = re.search(r'field "(\w+)"', str(exc))
        name = _variable_name((match.group(1),)) if match else "a setting"
        raise ConfigError(f"invalid setting {name}: the value is not valid JSON") from None
