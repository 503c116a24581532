from __future__ import annotations

from pathlib import Path

import pytest

from qlp.config import load_settings
from qlp.errors import ConfigError


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    s = load_settings()
    assert s.home == tmp_path / ".local/share/qlp"
    assert s.max_parallel_tasks == 4
    assert s.database_url is None
    assert s.llm_provider is None


def test_usual_key_names_are_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-usual")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "ak-usual")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://example.invalid")
    s = load_settings()
    assert s.openai_api_key is not None and s.openai_api_key.get_secret_value() == "sk-usual"
    assert s.anthropic_api_key is not None
    assert s.azure_openai_endpoint == "https://example.invalid"
    assert "sk-usual" not in repr(s)


def test_dotenv_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("QLP_MAX_PARALLEL_TASKS=7\n")
    assert load_settings().max_parallel_tasks == 7


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("QLP_MAX_PARALLEL_TASKS", "many", "QLP_MAX_PARALLEL_TASKS"),
        ("QLP_MAX_PARALLEL_TASKS", "0", "QLP_MAX_PARALLEL_TASKS"),
        ("QLP_LLM_PROVIDER", "gpt", "QLP_LLM_PROVIDER"),
        ("QLP_TASK_TIMEOUT_S", "-1", "QLP_TASK_TIMEOUT_S"),
        ("QLP_LLM_PRICES", "{not json", "QLP_LLM_PRICES"),
    ],
)
def test_invalid_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, var: str, value: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert expected in info.value.message
    assert "\n" not in info.value.message
