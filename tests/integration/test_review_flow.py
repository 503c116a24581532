"""Validation, repair, gate, review and packaging through the real pipeline: scripted model
on 127.0.0.1, real sandbox (bubblewrap), real tools, real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qlp.api.problems import classify
from qlp.capsule.base import ReviewDecision
from qlp.capsule.verify import verify_capsule
from qlp.domain.decisions import Approve, Reject, RequestChanges
from qlp.domain.states import IntentStatus, TaskStatus
from qlp.engine.decisions import Continuation
from qlp.engine.quality import CapsuleIdentity
from qlp.engine.runner import IntentRunner
from qlp.engine.wiring import open_runtime
from qlp.errors import TransitionError, UserInputError
from qlp.store.base import IntentRecord
from qlp.store.reviews import ReviewStore
from tests.support import (
    PLAN_WHEN,
    files_answer,
    plan_answer,
    plan_task,
    run_intent,
    scenario,
    task_when,
)

ROOT = Path(__file__).resolve().parents[2]
FEEDBACK = "Feedback to address"
GOOD_CODE = "def add(a: int, b: int) -> int:\n    return a + b\n"
TEST_CODE = "from calc import add\n\n\ndef test_add() -> None:\n    assert add(2, 3) == 5\n"
README = "# calc\n\nAdds numbers.\n\n```sh\npython -m pytest\n```\n"
PLAN = plan_answer(
    [
        plan_task("QL-DEV-001"),
        plan_task("QL-TST-001", ["QL-DEV-001"]),
        plan_task("QL-DOC-001", ["QL-DEV-001"]),
    ]
)


def _script(dev: list[str], tst: list[str] | None = None) -> list[dict[str, str]]:
    """dev[0] answers the task; dev[1:] answer its repair prompts (same for tst)."""
    out = [{"when": PLAN_WHEN, "content": PLAN}]
    out.append({"when": task_when("QL-DEV-001"), "content": dev[0]})
    # Repair prompts are the task's prompt plus the failures: same marker, next answer.
    out += [{"when": task_when("QL-DEV-001"), "content": d} for d in dev[1:]]
    tests = tst or [files_answer({"test_calc.py": TEST_CODE})]
    out.append({"when": task_when("QL-TST-001"), "content": tests[0]})
    out += [{"when": task_when("QL-TST-001"), "content": t} for t in tests[1:]]
    out.append({"when": task_when("QL-DOC-001"), "content": files_answer({"README.md": README})})
    return out


def _on(**extra: object) -> dict[str, object]:
    return {"validation_enabled": True, "max_parallel_tasks": 1, **extra}


async def _attempts(rt: object, intent_id: str, task_id: str) -> list[bool]:
    reviews = ReviewStore(rt.store)  # type: ignore[attr-defined]
    return [v.ok for v in await reviews.validations(intent_id) if v.task_id == task_id]


async def test_syntax_error_fixed_on_repair(qlp_home: Path, db_url: str) -> None:
    broken = files_answer({"calc.py": "def add(a, b)\n    return a + b\n"})
    fixed = files_answer({"calc.py": GOOD_CODE})
    async with scenario(qlp_home, db_url, _script([broken, fixed]), **_on()) as (rt, server):
        out = await run_intent(rt)
        attempts = await _attempts(rt, out.intent.id, "QL-DEV-001")
        capsules = await ReviewStore(rt.store).capsules(out.intent.id)
    assert attempts == [False, True]
    repair_prompt = next(r for r in server.requests if FEEDBACK in r.last_user_message)
    assert "calc.py" in repair_prompt.last_user_message
    assert out.intent.status == IntentStatus.COMPLETED, out.intent.error
    assert len(capsules) == 1
    report = verify_capsule(Path(capsules[0].uri.removeprefix("file://")))
    assert report.ok, report.problems


async def test_failing_test_fixed_on_repair(qlp_home: Path, db_url: str) -> None:
    wrong = files_answer({"calc.py": "def add(a: int, b: int) -> int:\n    return a - b\n"})
    # The code is wrong; the test task's run exposes it, and the repair of the test task
    # (the only task that sees the failure) rewrites calc.py correctly.
    tst_fix = files_answer({"test_calc.py": TEST_CODE, "calc.py": GOOD_CODE})
    script = _script([wrong], [files_answer({"test_calc.py": TEST_CODE}), tst_fix])
    async with scenario(qlp_home, db_url, script, **_on()) as (rt, server):
        out = await run_intent(rt)
        attempts = await _attempts(rt, out.intent.id, "QL-TST-001")
    assert attempts == [False, True]
    repair = next(r for r in server.requests if FEEDBACK in r.last_user_message)
    assert "test_add" in repair.last_user_message
    assert out.intent.status == IntentStatus.COMPLETED, out.intent.error
    assert (Path(out.intent.workspace) / "calc.py").read_text() == GOOD_CODE


async def test_same_failure_twice_stops_the_repair_loop(qlp_home: Path, db_url: str) -> None:
    broken = files_answer({"calc.py": "def add(a, b)\n    return a + b\n"})
    test = files_answer({"test_calc.py": TEST_CODE})
    script = _script([broken, broken, broken], [test, test, test])
    async with scenario(qlp_home, db_url, script, **_on(max_repairs=2)) as (rt, _):
        out = await run_intent(rt)
        attempts = await _attempts(rt, out.intent.id, "QL-DEV-001")
    assert attempts == [False, False]  # stopped after one repair, not two
    assert any(e.type == "task.repair_loop" for e in out.events)
    assert out.intent.status == IntentStatus.REVIEWING
    gated = [e for e in out.events if e.type == "review.gated"][-1]
    failed = {g["name"] for g in gated.payload["gates"] if not g["passed"]}
    assert "syntax" in failed


async def test_insecure_example_is_stopped_by_the_gate(qlp_home: Path, db_url: str) -> None:
    script = json.loads((ROOT / "examples/insecure-notes/script.json").read_text())
    async with scenario(qlp_home, db_url, script["responses"], **_on()) as (rt, _):
        out = await run_intent(rt, (ROOT / "examples/insecure-notes/intent.txt").read_text())
        reviews = ReviewStore(rt.store)
        project = [v for v in await reviews.validations(out.intent.id) if v.task_id is None]
    assert out.intent.status == IntentStatus.REVIEWING
    high = {
        (f["tool"], f["rule_id"])
        for f in project[-1].report["findings"]
        if f["severity"] in ("high", "critical")
    }
    rules = " ".join(r for _, r in high)
    for expected in ("S602", "sql", "eval", "hardcoded-secret"):
        assert expected.lower() in rules.lower(), (expected, high)


async def test_changes_rerun_named_task_and_dependents_then_restart_and_approve(
    qlp_home: Path, db_url: str
) -> None:
    dev = files_answer({"calc.py": GOOD_CODE})
    script = _script([dev])
    # Round 2: only QL-DOC-001 (named; nothing depends on it) runs again.
    better_readme = README + "\nAdd two integers with `calc.add(a, b)`.\n"
    script.append(
        {"when": task_when("QL-DOC-001"), "content": files_answer({"README.md": better_readme})}
    )
    policy = _on(review_policy="always")
    async with scenario(qlp_home, db_url, script, **policy) as (rt, server):
        out = await run_intent(rt)
        assert out.intent.status == IntentStatus.REVIEWING  # policy always: a person decides
        before = {t.id: t.attempts for t in out.tasks.values()}
        pipeline = rt.pipeline()
        decided = await pipeline.decide(
            out.intent.id,
            RequestChanges("document calc.add in the README", ("QL-DOC-001",)),
            actor="alice",
        )
        # Recording the decision runs nothing: the caller runs what it says comes next.
        assert decided.next == Continuation.RERUN
        assert decided.intent.status == IntentStatus.EXECUTING
        assert {t.id: t.attempts for t in await rt.store.get_tasks(out.intent.id)} == before
        final = await pipeline.run(out.intent.id)
        tasks = {t.id: t for t in await rt.store.get_tasks(out.intent.id)}
        asked = [r.last_user_message for r in server.requests]
        settings = rt.settings
    assert final.status == IntentStatus.REVIEWING, (
        final.error,
        [(t.id, t.error) for t in tasks.values()],
    )
    assert {t: tasks[t].attempts - before[t] for t in tasks} == {
        "QL-DEV-001": 0,
        "QL-TST-001": 0,
        "QL-DOC-001": 1,
    }
    assert sum("document calc.add in the README" in m for m in asked) == 1
    assert "calc.add(a, b)" in (Path(out.intent.workspace) / "README.md").read_text()
    assert all(t.status == TaskStatus.SUCCEEDED for t in tasks.values())

    # A new process (restart) finds it still waiting, and approves it.
    async with open_runtime(settings) as rt2:
        waiting = await rt2.store.get_intent(out.intent.id)
        assert waiting.status == IntentStatus.REVIEWING
        pipeline2 = rt2.pipeline(need_llm=False)
        decided = await pipeline2.decide(out.intent.id, Approve("looks right"), actor="bob")
        assert (decided.next, decided.intent.status) == (
            Continuation.PACKAGE,
            IntentStatus.PACKAGING,
        )
        done = await pipeline2.run(out.intent.id)
        reviews = ReviewStore(rt2.store)
        capsules = sorted(await reviews.capsules(out.intent.id), key=lambda c: c.version)
        rounds = await reviews.rounds(out.intent.id)
    assert done.status == IntentStatus.COMPLETED
    assert [c.version for c in capsules] == [1, 2]
    assert capsules[1].parent == capsules[0].id
    assert [r.decision.decision for r in rounds if r.decision] == ["request_changes", "approve"]
    assert rounds[1].decision is not None
    assert rounds[1].decision.actor == "bob"
    for c in capsules:
        assert verify_capsule(Path(c.uri.removeprefix("file://"))).ok


async def test_failed_capsule_row_leaves_no_object_and_resume_packages(
    qlp_home: Path, db_url: str
) -> None:
    """A real database failure between storing the capsule and writing its row (a trigger
    that refuses the insert): the stored object is removed, no row exists, and a resumed run
    packages the intent."""
    dev = files_answer({"calc.py": GOOD_CODE})
    async with scenario(qlp_home, db_url, _script([dev]), **_on()) as (rt, _):
        async with rt.store.engine.begin() as conn:
            await conn.exec_driver_sql(
                "CREATE FUNCTION refuse_capsule() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk full (simulated by a trigger)'; END $$"
            )
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON capsules "
                "FOR EACH ROW EXECUTE FUNCTION refuse_capsule()"
            )
        pipeline = rt.pipeline()
        intent = await pipeline.submit("build calc")
        try:
            with pytest.raises(Exception, match="disk full"):
                await pipeline.run(intent.id)
            stuck = await rt.store.get_intent(intent.id)
            rows = await ReviewStore(rt.store).capsules(intent.id)
            stored = list((qlp_home / "capsules").rglob("*.qlcapsule"))
        finally:
            async with rt.store.engine.begin() as conn:
                await conn.exec_driver_sql("DROP TRIGGER refuse ON capsules")
                await conn.exec_driver_sql("DROP FUNCTION refuse_capsule()")
        assert stuck.status == IntentStatus.PACKAGING
        assert rows == []
        assert stored == []
        final = await rt.pipeline().run(intent.id)
        rows = await ReviewStore(rt.store).capsules(intent.id)
    assert final.status == IntentStatus.COMPLETED
    assert len(rows) == 1
    assert Path(rows[0].uri.removeprefix("file://")).exists()


async def test_approving_a_project_without_tests_packages_it(qlp_home: Path, db_url: str) -> None:
    """No test ran, so the tests score (and any dimension without a check) is n/a: stored
    and written to the manifest as null, which its schema allows, and the capsule is built."""
    plan = plan_answer([plan_task("QL-DEV-001"), plan_task("QL-DOC-001", ["QL-DEV-001"])])
    script = [
        {"when": PLAN_WHEN, "content": plan},
        {"when": task_when("QL-DEV-001"), "content": files_answer({"calc.py": GOOD_CODE})},
        {"when": task_when("QL-DOC-001"), "content": files_answer({"README.md": README})},
    ]
    async with scenario(qlp_home, db_url, script, **_on(review_policy="always")) as (rt, _):
        out = await run_intent(rt)
        assert out.intent.status == IntentStatus.REVIEWING, out.intent.error
        reviews = ReviewStore(rt.store)
        waiting = await reviews.current_round(out.intent.id)
        pipeline = rt.pipeline(need_llm=False)
        decided = await pipeline.decide(out.intent.id, Approve(), actor="bob")
        assert decided.next == Continuation.PACKAGE
        done = await pipeline.run(out.intent.id)
        capsules = await reviews.capsules(out.intent.id)
    assert waiting.scores["tests"] is None
    assert done.status == IntentStatus.COMPLETED, done.error
    assert len(capsules) == 1 and capsules[0].scores["tests"] is None
    report = verify_capsule(Path(capsules[0].uri.removeprefix("file://")))
    assert report.ok, report.problems
    assert report.manifest is not None and report.manifest["scores"]["tests"] is None


async def test_a_cancel_and_a_decision_racing_end_in_a_conflict_not_a_crash(
    qlp_home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests on one intent waiting for review, each landing between the other's read
    of the state and its write (forced by running the second inside the first, no clock):
    the one that loses is refused with TransitionError, the API's 409 `invalid_state`; the
    winner's state stands and nothing is queued. Both were a ValueError (a 500) before."""
    dev = files_answer({"calc.py": GOOD_CODE})
    script = _script([dev]) * 2  # two intents, one after the other
    async with scenario(qlp_home, db_url, script, **_on(review_policy="always")) as (rt, _):
        first = await run_intent(rt)
        second = await run_intent(rt)
        assert {first.intent.status, second.intent.status} == {IntentStatus.REVIEWING}
        runner = IntentRunner(
            rt.pipeline(need_llm=False), rt.database_url, max_running=1, max_active_per_user=9
        )
        await runner.jobs.open()  # no worker: nothing here runs a job
        quality = runner.pipeline.quality
        assert quality is not None

        # 1. An approval records its decision; a cancel lands before it moves the intent on.
        record = quality.reviews.decide
        cancelled: list[IntentRecord] = []

        async def decide_then_cancel(*args: Any, **kwargs: Any) -> Any:
            made = await record(*args, **kwargs)
            cancelled.append(await runner.cancel(first.intent.id))
            return made

        monkeypatch.setattr(quality.reviews, "decide", decide_then_cancel)
        with pytest.raises(TransitionError, match="cannot go from cancelled to packaging") as lost:
            await runner.decide(first.intent.id, Approve(), actor="bob")
        monkeypatch.setattr(quality.reviews, "decide", record)
        assert [c.status for c in cancelled] == [IntentStatus.CANCELLED]
        assert lost.value.current == "cancelled"
        assert classify(lost.value)[:2] == (409, "invalid_state")

        # 2. A cancel reads `reviewing`; a rejection lands before it writes `cancelled`.
        store = runner.store
        write = store.set_intent_status

        async def reject_first(intent_id: str, status: IntentStatus, **kwargs: Any) -> Any:
            if status == IntentStatus.CANCELLED:
                await runner.decide(intent_id, Reject("stores nothing useful"), actor="ann")
            return await write(intent_id, status, **kwargs)

        monkeypatch.setattr(store, "set_intent_status", reject_first)
        with pytest.raises(TransitionError, match="cannot go from rejected to cancelled") as late:
            await runner.cancel(second.intent.id)
        monkeypatch.setattr(store, "set_intent_status", write)
        assert classify(late.value)[:2] == (409, "invalid_state")

        ids = [first.intent.id, second.intent.id]
        assert await runner.jobs.without_job(ids) == ids  # neither continuation was queued
        await runner.jobs.close()
        ends = [(await rt.store.get_intent(o.intent.id)).status for o in (first, second)]
        capsules = await ReviewStore(rt.store).capsules(first.intent.id)
    assert ends == [IntentStatus.CANCELLED, IntentStatus.REJECTED]
    assert capsules == []


async def test_replay_is_chosen_when_the_pipeline_is_made(qlp_home: Path, db_url: str) -> None:
    """`qlp replay` asks the factory for a replaying pipeline; nothing is switched on a live
    object, so another pipeline of the same runtime builds ordinary capsules."""
    identity = CapsuleIdentity(
        intent_id="QLI-01J00000000000000000000000",
        version=1,
        parent=None,
        decision=ReviewDecision(decision="approve", by="bob", at="2026-01-01T00:00:00Z"),
        out_path=qlp_home / "replay.qlcapsule",
    )
    async with scenario(qlp_home, db_url, [], **_on()) as (rt, _):
        replaying = rt.pipeline(need_llm=False, replay=identity).quality
        ordinary = rt.pipeline(need_llm=False).quality
    assert replaying is not None and replaying.replay is identity
    assert ordinary is not None and ordinary.replay is None
    async with scenario(qlp_home, db_url, [], validation_enabled=False) as (rt, _):
        with pytest.raises(UserInputError, match="replay needs validation"):
            rt.pipeline(need_llm=False, replay=identity)
