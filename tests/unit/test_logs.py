from __future__ import annotations

import json

import pytest
import structlog

from qlp.logs import REDACTED, configure


def test_secret_fields_are_redacted_at_any_depth(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "json")
    structlog.contextvars.bind_contextvars(request_id="r-1")
    try:
        structlog.get_logger("t").info(
            "login",
            username="ann",
            password="hunter2-hunter2",
            headers={"Authorization": "Bearer abc.def.ghi", "accept": "json"},
            refresh_token="qlr_secret",
            items=[{"api_key": "qlk_secret"}],
            input_tokens=12,
        )
    finally:
        structlog.contextvars.clear_contextvars()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    for secret in ("hunter2", "abc.def.ghi", "qlr_secret", "qlk_secret"):
        assert secret not in line
    record = json.loads(line)
    assert record["password"] == REDACTED and record["headers"]["Authorization"] == REDACTED
    assert record["headers"]["accept"] == "json" and record["username"] == "ann"
    assert record["request_id"] == "r-1" and record["input_tokens"] == 12
