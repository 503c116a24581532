"""The `qlp` command as a user runs it: a separate process, real database, exit codes, JSON."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.fakes.llm_server import FakeLLMServer
from tests.support import dag_script

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "todo-cli"


def qlp_env(home: Path, db_url: str | None, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "QLP_HOME": str(home / "qlp"),
        "LANG": "C.UTF-8",
    }
    if db_url:
        env["QLP_DATABASE_URL"] = db_url
    env.update(extra)
    return env


def qlp(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qlp", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_qlp(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "qlp", *args],
        env=env,
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def db_rows(db_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    dsn = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except psycopg.errors.UndefinedTable:
            pass  # a fresh database: the process under test has not migrated it yet
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_scripted_demo_builds_a_project(tmp_path: Path, db_url: str) -> None:
    intent = (EXAMPLE / "intent.txt").read_text()
    res = qlp(
        "run",
        "--json",
        "--llm",
        f"scripted:{EXAMPLE / 'script.json'}",
        intent,
        env=qlp_env(tmp_path, db_url),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["status"] == "completed"
    assert [t["status"] for t in data["tasks"]] == ["succeeded"] * 5
    paths = {f["path"] for f in data["files"]}
    assert {"todo/store.py", "todo/cli.py", "tests/test_store.py", "README.md"} <= paths
    workspace = Path(data["workspace"])
    # The generated project is real: its own tests pass against its own code.
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert data["tokens"]["total"] > 0 and data["cost_usd"] == 0.0

    listed = qlp("intents", "list", "--json", env=qlp_env(tmp_path, db_url), cwd=tmp_path)
    assert data["intent_id"] in [i["intent_id"] for i in json.loads(listed.stdout)]
    shown = qlp(
        "intents",
        "show",
        data["intent_id"][:12],
        "--json",
        "--events",
        env=qlp_env(tmp_path, db_url),
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    events = json.loads(shown.stdout)["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "intent.queued" and events[-1]["type"] == "intent.completed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", ""], "the intent is empty"),
        (["run", "--llm", "gpt5", "x"], "unknown provider 'gpt5'"),
        (["run", "--llm", "scripted:/nonexistent/script.json", "x"], "/nonexistent/script.json"),
        (["run", "x"], "no LLM is configured"),
        (["intents", "show", "QLI-NOPE"], "no intent with id QLI-NOPE"),
        (["run", "--max-parallel", "0", "x"], "--max-parallel"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], message: str, tmp_path: Path, db_url: str
) -> None:
    res = qlp(*args, env=qlp_env(tmp_path, db_url), cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_invalid_setting_names_variable(tmp_path: Path, db_url: str) -> None:
    env = qlp_env(tmp_path, db_url, QLP_MAX_PARALLEL_TASKS="lots")
    res = qlp("intents", "list", env=env, cwd=tmp_path)
    assert res.returncode == 2
    assert "QLP_MAX_PARALLEL_TASKS" in res.stderr and "Traceback" not in res.stderr


def test_unreachable_database_is_one_line_exit_1(tmp_path: Path) -> None:
    env = qlp_env(tmp_path, "postgresql://nobody@127.0.0.1:1/nothing")
    res = qlp("intents", "list", env=env, cwd=tmp_path)
    assert res.returncode == 1
    assert "cannot use the database at" in res.stderr and "Traceback" not in res.stderr


def test_failed_run_exits_1_and_debug_shows_traceback(tmp_path: Path, db_url: str) -> None:
    script = tmp_path / "short.json"
    script.write_text(json.dumps({"responses": dag_script({"QL-DEV-001": []})[:1]}))
    res = qlp(
        "run",
        "--json",
        "--llm",
        f"scripted:{script}",
        "x",
        env=qlp_env(tmp_path, db_url),
        cwd=tmp_path,
    )
    assert res.returncode == 1
    data = json.loads(res.stdout)
    assert data["status"] == "failed"
    assert "script" in data["tasks"][0]["error"]
    dbg = qlp("--debug", "intents", "show", "QLI-NOPE", env=qlp_env(tmp_path, db_url), cwd=tmp_path)
    assert "Traceback" in dbg.stderr


def test_resume_continues_with_the_model_the_intent_was_started_with(
    tmp_path: Path, db_url: str
) -> None:
    """Every failure message suggests `qlp resume ID`; for an intent started with --llm it
    said "no LLM is configured". The intent remembers its model (never a key)."""
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"responses": dag_script({"QL-DEV-001": []})[:1]}))
    env = qlp_env(tmp_path, db_url, QLP_VALIDATE="false")  # no QLP_LLM_* at all
    first = qlp(
        "run", "--json", "--llm", f"scripted:{script}", "remember me", env=env, cwd=tmp_path
    )
    assert first.returncode == 1, first.stderr
    intent_id = json.loads(first.stdout)["intent_id"]
    (options,) = db_rows(db_url, "select options from intents where id = %s", intent_id)[0]
    assert options["qlp.llm"] == {"provider": "scripted", "script": str(script.resolve())}
    # The script now answers the task the first run could not finish.
    script.write_text(json.dumps({"responses": dag_script({"QL-DEV-001": []})}))
    again = qlp("resume", intent_id, "--json", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "completed"


def test_version_and_db_upgrade(tmp_path: Path, db_url: str) -> None:
    res = qlp("version", "--json", env=qlp_env(tmp_path, db_url), cwd=tmp_path)
    assert json.loads(res.stdout)["qlp"]
    up = qlp("db", "upgrade", env=qlp_env(tmp_path, db_url), cwd=tmp_path)
    assert up.returncode == 0
    assert re.search(r"at revision (\d+) \(latest \1\)", up.stdout), up.stdout


def _openai_env(tmp_path: Path, db_url: str, server: FakeLLMServer) -> dict[str, str]:
    return qlp_env(
        tmp_path,
        db_url,
        # These scenarios are about the engine (DAG, resume, cancel): their answers are
        # placeholder text files, which the validation gate would rightly stop.
        QLP_VALIDATE="false",
        QLP_LLM_PROVIDER="openai",
        QLP_LLM_MODEL="gpt-4o-mini",
        QLP_LLM_BASE_URL=server.base_url,
        OPENAI_API_KEY="test-key",
    )


CHAIN = {
    "QL-DEV-001": [],
    "QL-DEV-002": [],
    "QL-DEV-003": ["QL-DEV-001"],
    "QL-DOC-001": ["QL-DEV-003"],
}


def _statuses(db_url: str, intent_id: str) -> dict[str, str]:
    return dict(db_rows(db_url, "select id, status from tasks where intent_id = %s", intent_id))


def _intent_id(db_url: str, text: str) -> str | None:
    rows = db_rows(db_url, "select id from intents where text = %s", text)
    return rows[0][0] if rows else None


def test_resume_after_sigkill_does_not_rerun_succeeded_tasks(tmp_path: Path, db_url: str) -> None:
    first = dag_script(CHAIN)
    for entry in first:  # QL-DEV-003 hangs: the process is killed while it runs
        if "QL-DEV-003" in entry["when"]:
            entry["delay_s"] = 60
    text = f"resume me {tmp_path.name}"
    with FakeLLMServer(first) as server:
        proc = start_qlp("run", text, env=_openai_env(tmp_path, db_url, server), cwd=tmp_path)
        try:
            wait_for(
                lambda: (
                    (i := _intent_id(db_url, text)) is not None
                    and _statuses(db_url, i).get("QL-DEV-003") == "running"
                )
            )
            intent_id = _intent_id(db_url, text)
            assert intent_id is not None
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            proc.kill()
            proc.communicate()
    before = _statuses(db_url, intent_id)
    assert before["QL-DEV-001"] == before["QL-DEV-002"] == "succeeded"
    assert before["QL-DEV-003"] == "running"

    # The resumed run may only ask for the unfinished tasks: the script holds nothing else.
    rest = [e for e in dag_script(CHAIN) if "QL-DEV-003" in e["when"] or "QL-DOC-001" in e["when"]]
    with FakeLLMServer(rest) as server:
        res = qlp(
            "resume", intent_id, "--json", env=_openai_env(tmp_path, db_url, server), cwd=tmp_path
        )
        asked = [r.last_user_message for r in server.requests]
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["status"] == "completed"
    assert len(asked) == 2
    assert not any("Your task: QL-DEV-001 " in m or "Your task: QL-DEV-002 " in m for m in asked)
    attempts = dict(
        db_rows(db_url, "select id, attempts from tasks where intent_id = %s", intent_id)
    )
    assert attempts == {"QL-DEV-001": 1, "QL-DEV-002": 1, "QL-DEV-003": 2, "QL-DOC-001": 1}


def test_ctrl_c_cancels_then_resume_finishes(tmp_path: Path, db_url: str) -> None:
    script = dag_script(CHAIN, delay_s=30)
    text = f"interrupt me {tmp_path.name}"
    with FakeLLMServer(script[:1]) as server:
        proc = start_qlp("run", text, env=_openai_env(tmp_path, db_url, server), cwd=tmp_path)
        try:
            wait_for(
                lambda: (
                    (i := _intent_id(db_url, text)) is not None
                    and "running" in _statuses(db_url, i).values()
                )
            )
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 130, err
    assert "qlp resume" in err and "Traceback" not in err
    intent_id = _intent_id(db_url, text)
    assert intent_id is not None
    assert db_rows(db_url, "select status from intents where id = %s", intent_id) == [
        ("cancelled",)
    ]
    assert set(_statuses(db_url, intent_id).values()) == {"cancelled"}
    with FakeLLMServer(dag_script(CHAIN)[1:]) as server:
        res = qlp(
            "resume", intent_id, "--json", env=_openai_env(tmp_path, db_url, server), cwd=tmp_path
        )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["status"] == "completed"


def test_embedded_database_starts_and_stops_with_the_command(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    before = {p: (p.stat().st_mode, p.stat().st_uid) for p in [home, *home.parents]}
    env = qlp_env(home, None)
    res = qlp(
        "run",
        "--json",
        "--llm",
        f"scripted:{EXAMPLE / 'script.json'}",
        (EXAMPLE / "intent.txt").read_text(),
        env=env,
        cwd=tmp_path,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["status"] == "completed"
    # Started for the command, stopped when it ended; the data stays for the next one.
    pidfile = home / "qlp" / "postgres" / "data" / "postmaster.pid"
    assert not pidfile.exists()
    listed = qlp("intents", "list", "--json", env=env, cwd=tmp_path, timeout=120)
    assert len(json.loads(listed.stdout)) == 1
    after = {p: (p.stat().st_mode, p.stat().st_uid) for p in [home, *home.parents]}
    assert after == before


def test_json_logs_one_line_per_event_without_secrets(tmp_path: Path, db_url: str) -> None:
    with FakeLLMServer(dag_script({"QL-DEV-001": []})) as server:
        env = _openai_env(tmp_path, db_url, server)
        env.update(QLP_LOG_LEVEL="info", QLP_LOG_FORMAT="json", OPENAI_API_KEY="sk-secret-123456")
        res = qlp("run", "--json", "log me", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    intent_id = json.loads(res.stdout)["intent_id"]
    assert [x["event"] for x in lines][:2] == ["intent.queued", "intent.planning"]
    assert all(x["intent_id"] == intent_id for x in lines)
    assert any(x["event"] == "task.succeeded" and x["task_id"] == "QL-DEV-001" for x in lines)
    assert "sk-secret-123456" not in res.stderr + res.stdout


def test_demo_capsule_verifies_and_insecure_example_waits_for_review(
    tmp_path: Path, db_url: str
) -> None:
    env = qlp_env(tmp_path, db_url)
    demo = qlp(
        "run",
        "--json",
        "--llm",
        f"scripted:{EXAMPLE / 'script.json'}",
        (EXAMPLE / "intent.txt").read_text(),
        env=env,
        cwd=tmp_path,
    )
    assert demo.returncode == 0, demo.stderr
    data = json.loads(demo.stdout)
    assert data["review"]["decision"]["decision"] == "auto_approve"
    assert all(g["passed"] for g in data["review"]["gates"])
    capsule = Path(data["capsules"][0]["uri"].removeprefix("file://"))
    ok = qlp("capsule", "verify", str(capsule), env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The location QLP prints, and the capsule's id (fetched through the configured store).
    for ref in (data["capsules"][0]["uri"], data["capsules"][0]["id"]):
        again = qlp("capsule", "verify", ref, env=env, cwd=tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.startswith("OK"), again.stdout
    unknown = qlp("capsule", "verify", "QL-CAP-0000000000000000", env=env, cwd=tmp_path)
    assert unknown.returncode == 2 and "no capsule QL-CAP-0000000000000000" in unknown.stderr
    assert list((tmp_path / "qlp").glob("**/qlp-capsule-*")) == []
    replayed = qlp("replay", "--json", str(capsule), env=env, cwd=tmp_path, timeout=300)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    result = json.loads(replayed.stdout)
    assert result["identical"] is True
    assert result["original_sha256"] == result["rebuilt_sha256"]
    assert result["differing_entries"] == []
    listed = json.loads(
        qlp(
            "capsule", "list", "--json", "--intent", data["intent_id"], env=env, cwd=tmp_path
        ).stdout
    )
    assert [c["id"] for c in listed] == [data["capsules"][0]["id"]]
    everything = json.loads(qlp("capsule", "list", "--json", env=env, cwd=tmp_path).stdout)
    assert data["capsules"][0]["id"] in [c["id"] for c in everything]
    tampered = tmp_path / "tampered.qlcapsule"
    raw = bytearray(capsule.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    tampered.write_bytes(bytes(raw))
    bad = qlp("capsule", "verify", str(tampered), env=env, cwd=tmp_path)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr + bad.stdout

    insecure = ROOT / "examples" / "insecure-notes"
    res = qlp(
        "run",
        "--json",
        "--llm",
        f"scripted:{insecure / 'script.json'}",
        (insecure / "intent.txt").read_text(),
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 3, res.stderr
    intent_id = json.loads(res.stdout)["intent_id"]
    shown = json.loads(qlp("review", "show", intent_id, "--json", env=env, cwd=tmp_path).stdout)
    high = [f for f in shown["findings"] if f["severity"] in ("high", "critical")]
    assert {f["path"] for f in high} == {"notes/store.py"}
    assert all(f["line"] for f in high)
    listed = json.loads(qlp("review", "list", "--json", env=env, cwd=tmp_path).stdout)
    assert intent_id in [i["intent_id"] for i in listed]
    no_reason = qlp("review", "reject", intent_id, env=env, cwd=tmp_path)
    assert no_reason.returncode == 2
    rejected = qlp(
        "review", "reject", intent_id, "--reason", "SQL injection", env=env, cwd=tmp_path
    )
    assert rejected.returncode == 1
    again = qlp("review", "approve", intent_id, env=env, cwd=tmp_path)
    assert again.returncode == 2
    assert "not waiting for review" in again.stderr
    # The decision is in the audit log (the refused ones changed nothing and are not).
    audit = json.loads(qlp("audit", "list", "--json", env=env, cwd=tmp_path).stdout)
    decisions = [r for r in audit if r["action"].startswith("review.")]
    assert [(r["action"], r["resource"]) for r in decisions] == [("review.reject", intent_id)]
    assert decisions[0]["actor"].startswith("cli:")


def test_sandbox_commands_from_the_qlp_entry_point(tmp_path: Path) -> None:
    env = qlp_env(tmp_path, None)
    check = qlp("sandbox", "check", "--json", env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    ran = qlp(
        "sandbox",
        "run",
        "--json",
        "--",
        "python",
        "-c",
        "import os; print(os.getuid())",
        env=env,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["backend"] == "bubblewrap"
    assert result["stdout"].strip() != "0"  # never root inside
    bad = qlp("sandbox", "run", "--backend", "nope", "--", "true", env=env, cwd=tmp_path)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
