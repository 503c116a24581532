"""Identifiers. Intent ids are ULIDs (time-sortable, random tail), task ids are per intent."""

from __future__ import annotations

import re
from enum import StrEnum

from ulid import ULID


class TaskType(StrEnum):
    CODEGEN = "codegen"
    TEST = "test"
    DOC = "doc"
    INFRA = "infra"
    ANALYZE = "analyze"


TASK_PREFIX: dict[TaskType, str] = {
    TaskType.CODEGEN: "DEV",
    TaskType.TEST: "TST",
    TaskType.DOC: "DOC",
    TaskType.INFRA: "INF",
    TaskType.ANALYZE: "ANA",
}

INTENT_ID_RE = re.compile(r"^QLI-[0-9A-HJKMNP-TV-Z]{26}$")
TASK_ID_RE = re.compile(r"^QL-(DEV|TST|DOC|INF|ANA)-(\d{3})$")


def new_intent_id() -> str:
    return f"QLI-{ULID()}"


def is_intent_id(value: str) -> bool:
    return INTENT_ID_RE.match(value) is not None


def task_id(task_type: TaskType, number: int) -> str:
    return f"QL-{TASK_PREFIX[task_type]}-{number:03d}"


# -- identity (users, their sessions and API keys) -----------------------------------------
def new_user_id() -> str:
    return f"QLU-{ULID()}"


def new_session_id() -> str:
    return f"QLS-{ULID()}"


def new_api_key_id() -> str:
    return f"QLK-{ULID()}"
