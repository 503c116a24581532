"""What a validation run may use and what it must prove. Built from Settings by engine/wiring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qlp.errors import ConfigError
from qlp.sandbox.base import Limits

if TYPE_CHECKING:
    from qlp.config import Settings

MiB = 1024 * 1024

# Every check, in report order. A check's name is "<family>.<what>"; semgrep and docs stand alone.
CHECKS: tuple[str, ...] = (
    "python.compile",
    "python.ruff",
    "python.bandit",
    "python.pytest",
    "javascript.check",
    "javascript.test",
    "typescript.check",
    "shell.syntax",
    "shell.shellcheck",
    "data.json",
    "data.yaml",
    "data.toml",
    "terraform.parse",
    "terraform.checkov",
    "dockerfile.checkov",
    "semgrep",
    "docs",
)

# "Not run" of these blocks the gate. typescript.check is left out: its compiler comes from
# npm, which a machine may lack; docs has no external tool and always runs.
DEFAULT_REQUIRED_CHECKS: frozenset[str] = frozenset(CHECKS) - {"typescript.check", "docs"}


@dataclass(frozen=True)
class ValidationConfig:
    tool_timeout_s: float = 180.0  # one static tool run (ruff, bandit, semgrep, checkov, ...)
    test_timeout_s: float = 300.0  # the project's test run (pytest, node --test)
    memory_mb: int = 2048  # per command; semgrep and checkov need more than unit tests do
    pids: int = 256
    output_bytes: int = 16 * MiB  # tool JSON and JUnit XML come back on stdout
    open_files: int = 1024
    concurrency: int = 2  # sandboxed commands run at once
    coverage: bool = True  # pytest with coverage (pytest-cov) when the runtime has it
    required_checks: frozenset[str] = DEFAULT_REQUIRED_CHECKS
    required_docs: tuple[str, ...] = ("README.md",)
    max_files: int = 5000  # files considered per run; more are reported, not checked
    ruff_select: tuple[str, ...] = ("E4", "E7", "E9", "F", "B", "S", "PLE", "ASYNC")
    # S101 (assert) and S603 (subprocess without a shell) flag ordinary, safe code; B101 is
    # bandit's assert and B404 its "import subprocess".
    ruff_ignore: tuple[str, ...] = ("S101", "S603")
    bandit_skip: tuple[str, ...] = ("B101", "B404")
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.required_checks) - set(CHECKS))
        if unknown:
            raise ConfigError(
                f"unknown check name(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}"
            )
        if self.concurrency < 1:
            raise ConfigError("validation concurrency must be at least 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> ValidationConfig:
        """QLP_VALIDATION_* / QLP_REQUIRED_CHECKS / QLP_REQUIRED_DOCS -> a config."""
        try:
            required = parse_check_names(settings.required_checks)
        except ConfigError as exc:
            raise ConfigError(f"invalid setting QLP_REQUIRED_CHECKS: {exc}") from None
        docs = tuple(d.strip() for d in settings.required_docs.split(",") if d.strip())
        return cls(
            tool_timeout_s=settings.validation_timeout_s,
            test_timeout_s=settings.validation_test_timeout_s,
            memory_mb=settings.validation_memory_mb,
            concurrency=settings.validation_concurrency,
            coverage=settings.validation_coverage,
            required_checks=required,
            required_docs=docs,
        )

    def limits(self, timeout_s: float) -> Limits:
        return Limits(
            timeout_s=timeout_s,
            cpu_s=max(1, int(timeout_s * 2)),
            memory_bytes=self.memory_mb * MiB,
            pids=self.pids,
            file_size_bytes=64 * MiB,
            open_files=self.open_files,
            output_bytes=self.output_bytes,
            cpus=1.0,
        )


def parse_check_names(raw: str) -> frozenset[str]:
    """ "a,b, c" -> {"a","b","c"}; "" -> {}; "all" -> every check; unknown names are refused."""
    text = raw.strip()
    if text == "all":
        return frozenset(CHECKS)
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - set(CHECKS))
    if unknown:
        raise ConfigError(f"unknown check name(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    return names
