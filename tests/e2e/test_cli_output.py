"""What `qlp` prints when the text it shows is hostile, and when its output is not a terminal.

Everything from users, the model, files or tools is data: markup is shown literally, control
characters and bidi overrides are shown as escapes (README "Output"), nothing is a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.test_cli import qlp, qlp_env
from tests.support import PLAN_WHEN, files_answer, plan_answer, plan_task, task_when

HOSTILE = (
    "make [/x] and [bold red]x[/] :smile: \x1b]0;pwned\x07 \x1b[2J \x9b31m \u202eevil\u202c "
    "\u2066iso\u2069 done"
)
# How the hostile parts must appear: literally, or as escapes.
SHOWN = (
    "[/x]",
    "[bold red]x[/]",
    ":smile:",
    "\\x1b]0;pwned\\x07",
    "\\x1b[2J",
    "\\x9b31m",
    "\\u202eevil\\u202c",
    "\\u2066iso\\u2069",
)
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\u202c", "\u2066", "\u2069")


def _assert_safe(out: str) -> None:
    for raw in RAW:
        assert raw not in out, (raw, out)
    assert "Traceback" not in out and "bug in QLP" not in out, out


def _assert_shown(out: str, parts: tuple[str, ...] = SHOWN) -> None:
    for part in parts:
        assert part in out, (part, out)


def _script(tmp_path: Path, entries: list[dict[str, object]]) -> Path:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"responses": entries}))
    return script


def test_hostile_intent_title_error_and_path_are_data(tmp_path: Path, db_url: str) -> None:
    """`[/x]` made `intents list`/`show` and the run log exit 1 with a traceback; escape
    sequences and bidi overrides went raw to the terminal."""
    plan = plan_answer(
        [
            plan_task("QL-DEV-001", title=HOSTILE),
            plan_task("QL-DEV-002", ["QL-DEV-001"], title="second"),
        ]
    )
    script = _script(
        tmp_path,
        [
            {"when": PLAN_WHEN, "content": plan},
            {
                "when": task_when("QL-DEV-001"),
                "content": files_answer({"docs/[/x]\u202e.md": "# notes\n"}),
            },
            # QL-DEV-002 has no answer: its error quotes the prompt, which holds the intent.
        ],
    )
    env = qlp_env(tmp_path, db_url, QLP_VALIDATE="false")
    ran = qlp("run", "--llm", f"scripted:{script}", HOSTILE, env=env, cwd=tmp_path)
    out = ran.stdout + ran.stderr
    assert ran.returncode == 1, out  # the second task fails; the output is still whole
    _assert_safe(out)
    assert "QL-DEV-002: script" in out  # the task's error, in the log line of its event
    intent_id = json.loads(qlp("intents", "list", "--json", env=env, cwd=tmp_path).stdout)[0][
        "intent_id"
    ]

    listed = qlp("intents", "list", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    _assert_safe(listed.stdout + listed.stderr)
    _assert_shown(listed.stdout)

    shown = qlp("intents", "show", intent_id, "--events", env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    _assert_safe(shown.stdout + shown.stderr)
    _assert_shown(shown.stdout)
    assert "docs/[/x]\\u202e.md" in shown.stdout
    assert "QL-DEV-002: script" in shown.stdout  # the task's error, with the intent in it

    # --json stays the exact text: escaping is for people, not for programs.
    data = json.loads(qlp("intents", "show", intent_id, "--json", env=env, cwd=tmp_path).stdout)
    assert data["text"] == HOSTILE
    assert data["tasks"][0]["title"] == HOSTILE

    # A hostile id typed by the user is data in the error line too.
    missing = qlp("intents", "show", "[/x]\x1b[2J", env=env, cwd=tmp_path)
    assert missing.returncode == 2, missing.stderr
    _assert_safe(missing.stderr)
    assert "[/x]\\x1b[2J" in missing.stderr


def test_review_of_hostile_text_and_gates_in_words(tmp_path: Path, db_url: str) -> None:
    """`review list` and `review show` crashed on `[/x]`; a failing gate looked the same as a
    passing one without colour."""
    script = _script(
        tmp_path,
        [
            {"when": PLAN_WHEN, "content": plan_answer([plan_task("QL-DEV-001", title=HOSTILE)])},
            {
                "when": task_when("QL-DEV-001"),
                # No README.md: the docs gate fails, so there is a FAILED gate to show.
                "content": files_answer({"notes/[/x]\u202e.py": "import os\n"}),
            },
        ],
    )
    env = qlp_env(tmp_path, db_url, QLP_REVIEW_POLICY="always", NO_COLOR="1")
    ran = qlp("run", "--llm", f"scripted:{script}", HOSTILE, env=env, cwd=tmp_path, timeout=300)
    assert ran.returncode == 3, ran.stdout + ran.stderr
    _assert_safe(ran.stdout + ran.stderr)
    intent_id = json.loads(qlp("review", "list", "--json", env=env, cwd=tmp_path).stdout)[0][
        "intent_id"
    ]

    listed = qlp("review", "list", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    _assert_safe(listed.stdout + listed.stderr)
    _assert_shown(listed.stdout)

    shown = qlp("review", "show", intent_id, env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    _assert_safe(shown.stdout + shown.stderr)
    gates = next(line for line in shown.stdout.splitlines() if line.startswith("gates"))
    assert "FAILED" in gates and "passed" in gates, gates
    assert "notes/[/x]\\u202e.py" in shown.stdout  # a finding's path (unused import)
    # The hint names whole commands, never broken across lines.
    assert f"`qlp review approve {intent_id}`" in ran.stderr, ran.stderr


def test_piped_output_is_not_wrapped(tmp_path: Path, db_url: str) -> None:
    """Without a terminal, rich wrapped at 80 columns: the intent one word per line, table
    cells cut with an ellipsis."""
    words = " ".join(f"word{i:03d}" for i in range(60))  # about 480 characters
    title = " ".join(f"title{i:03d}" for i in range(20))  # under the 200-character limit
    script = _script(
        tmp_path,
        [
            {"when": PLAN_WHEN, "content": plan_answer([plan_task("QL-DEV-001", title=title)])},
            {"when": task_when("QL-DEV-001"), "content": files_answer({"a.txt": "a\n"})},
        ],
    )
    env = qlp_env(tmp_path, db_url, QLP_VALIDATE="false")
    ran = qlp("run", "--llm", f"scripted:{script}", words, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    listed = qlp("intents", "list", env=env, cwd=tmp_path)
    assert words in listed.stdout, listed.stdout
    intent_id = json.loads(qlp("intents", "list", "--json", env=env, cwd=tmp_path).stdout)[0][
        "intent_id"
    ]
    shown = qlp("intents", "show", intent_id, env=env, cwd=tmp_path)
    lines = shown.stdout.splitlines()
    assert words in lines, shown.stdout  # the intent on one line of its own
    assert any(line.rstrip().endswith(title) for line in lines if "QL-DEV-001" in line)
    assert "…" not in shown.stdout
