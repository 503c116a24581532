"""The real pipeline (planner, scheduler, agents, workspace, PostgreSQL) against a fake LLM
server on 127.0.0.1 that speaks the OpenAI wire protocol."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from qlp.domain.states import IntentStatus, TaskStatus
from tests.support import (
    PLAN_WHEN,
    dag_script,
    files_answer,
    outcome,
    plan_answer,
    plan_task,
    run_intent,
    scenario,
    task_when,
)

DIAMOND = {
    "QL-DEV-001": [],
    "QL-DEV-002": ["QL-DEV-001"],
    "QL-DEV-003": ["QL-DEV-001"],
    "QL-DOC-001": ["QL-DEV-002", "QL-DEV-003"],
}


def _prompt_of(server: object, task_id: str) -> str:
    for r in server.requests:  # type: ignore[attr-defined]
        if f"Your task: {task_id} " in r.last_user_message:
            return str(r.last_user_message)
    raise AssertionError(f"no request for {task_id}")


async def test_diamond_runs_in_dependency_order(qlp_home: Path, db_url: str) -> None:
    async with scenario(qlp_home, db_url, dag_script(DIAMOND, delay_s=0.05)) as (rt, _server):
        out = await run_intent(rt)
        calls = await rt.store.list_llm_calls(out.intent.id)
        files = await rt.store.get_files(out.intent.id)
    assert out.intent.status == IntentStatus.COMPLETED, out.intent.error
    assert all(t.status == TaskStatus.SUCCEEDED for t in out.tasks.values())
    task_tokens = sum(t.input_tokens + t.output_tokens for t in out.tasks.values())
    assert all(t.input_tokens > 0 and t.output_tokens > 0 for t in out.tasks.values())
    assert task_tokens == sum(c.input_tokens + c.output_tokens for c in calls if c.task_id)
    seqs = {(e.type, e.payload.get("task_id")): e.seq for e in out.events}
    for task_id, deps in DIAMOND.items():
        for dep in deps:
            assert seqs[("task.succeeded", dep)] < seqs[("task.started", task_id)]
    # B and C are independent: with delays both run at once.
    assert out.max_running() == 2
    # Every file is on disk and in the files table with its producer.
    for task_id in DIAMOND:
        path = f"out/{task_id}.txt"
        assert files[path].task_id == task_id
        assert (Path(out.intent.workspace) / path).read_text() == f"content of {task_id}\n"


async def test_dependency_files_appear_in_dependent_prompt(qlp_home: Path, db_url: str) -> None:
    async with scenario(qlp_home, db_url, dag_script(DIAMOND)) as (rt, server):
        out = await run_intent(rt)
    assert out.intent.status == IntentStatus.COMPLETED
    doc_prompt = _prompt_of(server, "QL-DOC-001")
    # Direct and transitive dependencies' files, with their content.
    for dep in ("QL-DEV-001", "QL-DEV-002", "QL-DEV-003"):
        assert f"=== out/{dep}.txt (from {dep}) ===" in doc_prompt
        assert f"content of {dep}" in doc_prompt
    root_prompt = _prompt_of(server, "QL-DEV-001")
    assert "no dependencies" in root_prompt
    assert "out/QL-DEV-002.txt" not in _prompt_of(server, "QL-DEV-003")


async def test_context_budget_says_what_was_cut(qlp_home: Path, db_url: str) -> None:
    big = "x" * 8000
    script = [
        {
            "when": PLAN_WHEN,
            "content": plan_answer(
                [plan_task("QL-DEV-001"), plan_task("QL-TST-001", ["QL-DEV-001"])]
            ),
        },
        {
            "when": task_when("QL-DEV-001"),
            "content": files_answer({"small.py": "A = 1\n", "big.py": big}),
        },
        {"when": task_when("QL-TST-001"), "content": files_answer({"test_a.py": "pass\n"})},
    ]
    async with scenario(qlp_home, db_url, script, context_token_budget=500) as (rt, server):
        out = await run_intent(rt)
    assert out.intent.status == IntentStatus.COMPLETED
    prompt = _prompt_of(server, "QL-TST-001")
    assert "=== small.py (from QL-DEV-001) ===" in prompt
    assert big not in prompt
    assert "left out to stay within the context budget: big.py (QL-DEV-001)" in prompt
    trimmed = [e for e in out.events if e.type == "context.trimmed"]
    assert trimmed[0].payload == {"task_id": "QL-TST-001", "omitted": ["big.py"]}


async def test_wide_dag_respects_concurrency_bound(qlp_home: Path, db_url: str) -> None:
    wide = {f"QL-DEV-{i:03d}": [] for i in range(1, 9)}
    async with scenario(qlp_home, db_url, dag_script(wide, delay_s=0.1), max_parallel_tasks=3) as (
        rt,
        _,
    ):
        out = await run_intent(rt)
    assert out.intent.status == IntentStatus.COMPLETED
    assert out.max_running() == 3


BAD_PLANS = {
    "cycle": (
        [plan_task("QL-DEV-001", ["QL-DEV-002"]), plan_task("QL-DEV-002", ["QL-DEV-001"])],
        "the dependencies form a cycle: QL-DEV-001 -> QL-DEV-002 -> QL-DEV-001",
    ),
    "unknown dependency": (
        [plan_task("QL-DEV-001", ["QL-DEV-009"])],
        "task QL-DEV-001 depends on unknown task QL-DEV-009",
    ),
    "duplicate id": (
        [plan_task("QL-DEV-001"), plan_task("QL-DEV-001")],
        "task id QL-DEV-001 is used more than once",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
async def test_invalid_plan_is_reasked_with_the_precise_problem(
    case: str, qlp_home: Path, db_url: str
) -> None:
    tasks, problem = BAD_PLANS[case]
    script = [
        {"when": PLAN_WHEN, "content": plan_answer(tasks)},
        {"when": problem, "content": plan_answer([plan_task("QL-DEV-001")])},
        {"when": task_when("QL-DEV-001"), "content": files_answer({"a.py": "A = 1\n"})},
    ]
    async with scenario(qlp_home, db_url, script) as (rt, server):
        out = await run_intent(rt)
    assert out.intent.status == IntentStatus.COMPLETED, out.intent.error
    rejected = [e for e in out.events if e.type == "plan.rejected"]
    assert [e.payload["problem"] for e in rejected] == [problem]
    # The second planner call carried the first answer and the exact problem.
    second = server.requests[1].body["messages"]
    assert second[-2]["role"] == "assistant"
    assert problem in second[-1]["content"]


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
async def test_plan_still_invalid_fails_the_intent_with_the_reason(
    case: str, qlp_home: Path, db_url: str
) -> None:
    tasks, problem = BAD_PLANS[case]
    script = [{"when": PLAN_WHEN, "content": plan_answer(tasks)}, {"content": plan_answer(tasks)}]
    async with scenario(qlp_home, db_url, script, llm_max_reasks=1) as (rt, server):
        out = await run_intent(rt)
    assert out.intent.status == IntentStatus.FAILED
    assert out.intent.error is not None
    assert problem in out.intent.error
    assert out.tasks == {}
    assert len(server.requests) == 2


async def test_too_many_tasks_is_refused(qlp_home: Path, db_url: str) -> None:
    many = [plan_task(f"QL-DEV-{i:03d}") for i in range(1, 6)]
    script = [{"when": PLAN_WHEN, "content": plan_answer(many)}]
    async with scenario(qlp_home, db_url, script, max_tasks_per_plan=4, llm_max_reasks=0) as (
        rt,
        _,
    ):
        out = await run_intent(rt)
    assert out.intent.status == IntentStatus.FAILED
    assert "the plan has 5 tasks but at most 4 are allowed" in (out.intent.error or "")


async def test_malformed_json_answer_is_reasked(qlp_home: Path, db_url: str) -> None:
    script = [
        {"when": PLAN_WHEN, "content": plan_answer([plan_task("QL-DEV-001")])},
        {"when": task_when("QL-DEV-001"), "content": '{"files": [{"path": "a.py", '},
        {"when": "not valid JSON", "content": files_answer({"a.py": "A = 1\n"})},
    ]
    async with scenario(qlp_home, db_url, script) as (rt, _):
        out = await run_intent(rt)
    assert out.intent.status == IntentStatus.COMPLETED, out.intent.error
    retries = [e for e in out.events if e.type == "task.answer_rejected"]
    assert len(retries) == 1
    assert "not valid JSON" in retries[0].payload["problem"]


async def test_rate_limit_with_retry_after_then_success(qlp_home: Path, db_url: str) -> None:
    script = [
        {"when": PLAN_WHEN, "content": plan_answer([plan_task("QL-DEV-001")])},
        {"when": task_when("QL-DEV-001"), "status": 429, "headers": {"Retry-After": "1"}},
        {"when": task_when("QL-DEV-001"), "content": files_answer({"a.py": "A = 1\n"})},
    ]
    async with scenario(qlp_home, db_url, script) as (rt, server):
        out = await run_intent(rt)
        calls = await rt.store.list_llm_calls(out.intent.id)
    assert out.intent.status == IntentStatus.COMPLETED, out.intent.error
    task_calls = [c for c in calls if c.task_id == "QL-DEV-001"]
    assert len(task_calls) == 1
    assert task_calls[0].attempts == 2
    times = [
        r.received_at for r in server.requests if task_when("QL-DEV-001") in r.last_user_message
    ]
    assert times[1] - times[0] >= 0.9  # the server's Retry-After was honoured


async def test_server_errors_exhausted_fail_task_and_skip_dependents(
    qlp_home: Path, db_url: str
) -> None:
    plan = [
        plan_task("QL-DEV-001"),
        plan_task("QL-DEV-002", ["QL-DEV-001"]),
        plan_task("QL-DOC-001", ["QL-DEV-002"]),
        plan_task("QL-DEV-003"),
    ]
    script = [
        {"when": PLAN_WHEN, "content": plan_answer(plan)},
        *[{"when": task_when("QL-DEV-001"), "status": 500} for _ in range(3)],
        {"when": task_when("QL-DEV-003"), "content": files_answer({"c.py": "C = 3\n"})},
    ]
    async with scenario(qlp_home, db_url, script, llm_max_retries=2) as (rt, _):
        out = await run_intent(rt)
        calls = await rt.store.list_llm_calls(out.intent.id)
    assert out.intent.status == IntentStatus.FAILED
    assert out.tasks["QL-DEV-001"].status == TaskStatus.FAILED
    assert "500" in (out.tasks["QL-DEV-001"].error or "")
    assert out.tasks["QL-DEV-002"].status == TaskStatus.SKIPPED
    assert out.tasks["QL-DOC-001"].status == TaskStatus.SKIPPED
    assert out.tasks["QL-DEV-002"].error == "dependency QL-DEV-001 failed"
    assert out.tasks["QL-DEV-003"].status == TaskStatus.SUCCEEDED
    assert "1 task(s) failed, 2 skipped: QL-DEV-001" in (out.intent.error or "")
    failed_calls = [c for c in calls if c.error]
    assert len(failed_calls) == 1  # one logical call, three HTTP attempts, recorded once


@pytest.mark.parametrize(
    ("bad_path", "reason"),
    [
        ("../outside.txt", "leaves the project"),
        ("/etc/qlp-owned", "is absolute"),
        ("src/../../x", "leaves the project"),
        ("a/\x00b", "forbidden character"),
        ("CON.txt", "reserved device name"),
    ],
)
async def test_unsafe_paths_are_refused_and_nothing_written(
    bad_path: str, reason: str, qlp_home: Path, db_url: str, tmp_path: Path
) -> None:
    answer = files_answer({"ok.py": "OK = 1\n", bad_path: "owned"})
    script = [
        {"when": PLAN_WHEN, "content": plan_answer([plan_task("QL-DEV-001")])},
        {"when": task_when("QL-DEV-001"), "content": answer},
        {"when": reason, "content": answer},
    ]
    async with scenario(qlp_home, db_url, script, llm_max_reasks=1) as (rt, _):
        out = await run_intent(rt)
        files = await rt.store.get_files(out.intent.id)
    assert out.intent.status == IntentStatus.FAILED
    assert reason in (out.tasks["QL-DEV-001"].error or "")
    assert files == {}
    workspace = Path(out.intent.workspace)
    assert list(workspace.iterdir()) == []
    assert not (workspace.parent / "outside.txt").exists()
    assert not Path("/etc/qlp-owned").exists()


async def test_oversize_and_too_many_files_are_refused(qlp_home: Path, db_url: str) -> None:
    script = [
        {
            "when": PLAN_WHEN,
            "content": plan_answer([plan_task("QL-DEV-001"), plan_task("QL-DEV-002")]),
        },
        {"when": task_when("QL-DEV-001"), "content": files_answer({"big.txt": "x" * 2000})},
        {
            "when": task_when("QL-DEV-002"),
            "content": files_answer({f"f{i}.txt": "x" for i in range(4)}),
        },
    ]
    async with scenario(
        qlp_home, db_url, script, llm_max_reasks=0, max_file_bytes=1000, max_files_per_task=3
    ) as (rt, _):
        out = await run_intent(rt)
    assert "big.txt is 2000 bytes; the limit is 1000 bytes" in (out.tasks["QL-DEV-001"].error or "")
    assert "4 files but at most 3" in (out.tasks["QL-DEV-002"].error or "")
    assert list(Path(out.intent.workspace).iterdir()) == []


async def test_same_path_from_two_tasks_later_in_order_wins(qlp_home: Path, db_url: str) -> None:
    plan = [plan_task("QL-DEV-001", priority=1), plan_task("QL-DEV-002", priority=2)]
    script = [
        {"when": PLAN_WHEN, "content": plan_answer(plan)},
        # The task that comes first in dependency order finishes last.
        {
            "when": task_when("QL-DEV-001"),
            "delay_s": 0.3,
            "content": files_answer({"shared.py": "FROM = 1\n"}),
        },
        {"when": task_when("QL-DEV-002"), "content": files_answer({"shared.py": "FROM = 2\n"})},
    ]
    async with scenario(qlp_home, db_url, script) as (rt, _):
        out = await run_intent(rt)
        files = await rt.store.get_files(out.intent.id)
    assert out.intent.status == IntentStatus.COMPLETED
    assert (Path(out.intent.workspace) / "shared.py").read_text() == "FROM = 2\n"
    assert files["shared.py"].task_id == "QL-DEV-002"
    conflicts = [e.payload for e in out.events if e.type == "file.conflict"]
    assert conflicts == [{"path": "shared.py", "kept": "QL-DEV-002", "discarded": "QL-DEV-001"}]


async def test_task_timeout_fails_the_task(qlp_home: Path, db_url: str) -> None:
    script = [
        {"when": PLAN_WHEN, "content": plan_answer([plan_task("QL-DEV-001")])},
        {"when": task_when("QL-DEV-001"), "delay_s": 3, "content": files_answer({"a": "1"})},
    ]
    async with scenario(qlp_home, db_url, script, task_timeout_s=0.5) as (rt, _):
        out = await run_intent(rt)
    assert out.tasks["QL-DEV-001"].status == TaskStatus.FAILED
    assert out.tasks["QL-DEV-001"].error == "timed out after 0.5 s"


async def test_token_budget_stops_the_run(qlp_home: Path, db_url: str) -> None:
    chain = {"QL-DEV-001": [], "QL-DEV-002": [], "QL-DEV-003": ["QL-DEV-001"]}
    async with scenario(
        qlp_home, db_url, dag_script(chain), token_budget_per_intent=900, max_parallel_tasks=1
    ) as (rt, _):
        out = await run_intent(rt)
    assert out.intent.status == IntentStatus.FAILED
    assert "token budget of 900" in (out.intent.error or "")
    statuses = {t.status for t in out.tasks.values()}
    assert TaskStatus.SKIPPED in statuses
    assert out.intent.total_tokens > 900


async def test_an_oversized_plan_is_named_before_the_budget_it_used_up(
    qlp_home: Path, db_url: str
) -> None:
    """A plan past the task limit whose answer alone spends the budget: the error says the
    plan was too big, not only "token budget exceeded" (that cause was only in the events)."""
    tasks = [plan_task(f"QL-DEV-{i:03d}") for i in range(1, 301)]
    script = [{"when": PLAN_WHEN, "content": plan_answer(tasks)}]
    async with scenario(qlp_home, db_url, script, token_budget_per_intent=3000) as (rt, _):
        out = await run_intent(rt)
    assert out.intent.status == IntentStatus.FAILED
    error = out.intent.error or ""
    assert "300 tasks" in error and "40" in error, error
    assert "token budget of 3000" in error
    assert error.index("300 tasks") < error.index("token budget")


async def test_an_oversized_file_is_named_before_the_budget_it_used_up(
    qlp_home: Path, db_url: str
) -> None:
    script = [
        {"when": PLAN_WHEN, "content": plan_answer([plan_task("QL-DEV-001")])},
        {
            "when": task_when("QL-DEV-001"),
            "content": files_answer({"big.txt": "x" * (600 * 1024)}),
        },
    ]
    async with scenario(qlp_home, db_url, script, token_budget_per_intent=20_000) as (rt, _):
        out = await run_intent(rt)
    error = out.tasks["QL-DEV-001"].error or ""
    assert "big.txt" in error and "token budget of 20000" in error, error
    assert error.index("big.txt") < error.index("token budget")


async def test_cancellation_marks_intent_and_unfinished_tasks(qlp_home: Path, db_url: str) -> None:
    chain = {"QL-DEV-001": [], "QL-DEV-002": [], "QL-DEV-003": ["QL-DEV-001"]}
    async with scenario(qlp_home, db_url, dag_script(chain, delay_s=5)) as (rt, _):
        pipeline = rt.pipeline()
        intent = await pipeline.submit("cancel me")
        queue = rt.bus.subscribe()
        work = asyncio.create_task(pipeline.run(intent.id))
        while (await asyncio.wait_for(queue.get(), 10)).type != "task.started":
            pass
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work
        final = await rt.store.get_intent(intent.id)
        tasks = {t.id: t.status for t in await rt.store.get_tasks(intent.id)}
    assert final.status == IntentStatus.CANCELLED
    assert tasks == dict.fromkeys(chain, TaskStatus.CANCELLED)


async def test_anthropic_adapter_runs_the_pipeline(qlp_home: Path, db_url: str) -> None:
    async with scenario(
        qlp_home,
        db_url,
        dag_script({"QL-DEV-001": [], "QL-TST-001": ["QL-DEV-001"]}),
        llm_provider="anthropic",
        llm_model="claude-haiku-4-5",
    ) as (rt, server):
        out = await run_intent(rt)
    assert out.intent.status == IntentStatus.COMPLETED, out.intent.error
    assert {r.protocol for r in server.requests} == {"anthropic"}
    assert out.intent.cost_known and out.intent.cost_usd > 0


async def test_unknown_model_price_is_recorded_as_unknown(qlp_home: Path, db_url: str) -> None:
    async with scenario(
        qlp_home, db_url, dag_script({"QL-DEV-001": []}), llm_model="my-local-llama"
    ) as (rt, _):
        out = await run_intent(rt)
        calls = await rt.store.list_llm_calls(out.intent.id)
    assert out.intent.status == IntentStatus.COMPLETED
    assert all(c.cost_usd is None for c in calls)
    assert not out.intent.cost_known
    assert json.dumps(calls[0].request)  # the request is kept whole
    assert calls[0].response is not None


async def test_statements_arriving_together_commit_together_a_bad_one_fails_alone(
    qlp_home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qlp.domain import events as ev
    from qlp.domain.plan import Plan
    from qlp.store import repository

    batches: list[int] = []
    real = repository._in_one_transaction

    async def spy(pg: Any, batch: list[Any]) -> list[Any]:
        batches.append(len(batch))
        return await real(pg, batch)

    monkeypatch.setattr(repository, "_in_one_transaction", spy)
    ids = [f"QL-DEV-{n:03d}" for n in range(1, 9)]
    plan = Plan.model_validate({"tasks": [plan_task(t) for t in ids]})
    async with scenario(qlp_home, db_url, []) as (rt, _):
        store = rt.store
        intent = await rt.pipeline().submit("group commit")
        await store.set_intent_status(
            intent.id, IntentStatus.PLANNING, event_type=ev.INTENT_PLANNING
        )
        await store.save_plan(intent.id, plan, ids)
        results = await asyncio.gather(
            *(
                store.set_task_status(intent.id, t, TaskStatus.RUNNING, event_type="task.started")
                for t in ids[:4]
            ),
            # An event type longer than its column (60) makes this statement fail.
            store.set_task_status(intent.id, ids[0], TaskStatus.RUNNING, event_type="x" * 61),
            *(
                store.set_task_status(intent.id, t, TaskStatus.RUNNING, event_type="task.started")
                for t in ids[4:]
            ),
            return_exceptions=True,
        )
        out = await outcome(rt, intent.id)
    # All nine were queued together and tried as one transaction; the bad one failed it,
    # so each was run alone: only the bad one raised, the eight moves committed.
    assert batches == [9]
    assert isinstance(results[4], Exception) and "too long" in str(results[4])
    started = [r for r in results if not isinstance(r, BaseException)]
    assert len(started) == 8
    assert all(t.status == TaskStatus.RUNNING for t in out.tasks.values())
    assert [e.seq for e in out.events] == list(range(1, len(out.events) + 1))
    assert sorted(e.seq for e in started) == [e.seq for e in out.events if e.type == "task.started"]


async def test_batched_statements_each_get_their_own_result(qlp_home: Path, db_url: str) -> None:
    from qlp.domain import events as ev
    from qlp.domain.plan import Plan

    ids = [f"QL-DEV-{n:03d}" for n in range(1, 7)]
    plan = Plan.model_validate({"tasks": [plan_task(t) for t in ids]})
    async with scenario(qlp_home, db_url, []) as (rt, _):
        store = rt.store
        intent = await rt.pipeline().submit("group commit")
        await store.set_intent_status(
            intent.id, IntentStatus.PLANNING, event_type=ev.INTENT_PLANNING
        )
        await store.save_plan(intent.id, plan, ids)
        # One move is refused (a pending task cannot succeed): it fails alone, with the reason.
        results = await asyncio.gather(
            *(
                store.set_task_status(intent.id, t, TaskStatus.RUNNING, event_type="task.started")
                for t in ids[:5]
            ),
            store.set_task_status(intent.id, ids[5], TaskStatus.SUCCEEDED, event_type="x"),
            return_exceptions=True,
        )
        out = await outcome(rt, intent.id)
    assert all(not isinstance(r, BaseException) for r in results[:5])
    assert isinstance(results[5], Exception)
    assert "pending" in str(results[5])
    assert [out.tasks[t].status for t in ids] == [TaskStatus.RUNNING] * 5 + [TaskStatus.PENDING]
    assert [e.seq for e in out.events] == list(range(1, len(out.events) + 1))


async def test_saving_a_plan_again_replaces_its_tasks_and_a_refused_one_says_why(
    qlp_home: Path, db_url: str
) -> None:
    from qlp.domain import events as ev
    from qlp.domain.plan import Plan
    from qlp.domain.states import TransitionError

    first = Plan.model_validate({"tasks": [plan_task("QL-DEV-001"), plan_task("QL-DEV-002")]})
    second = Plan.model_validate({"tasks": [plan_task("QL-DOC-001")]})
    async with scenario(qlp_home, db_url, []) as (rt, _):
        store = rt.store
        intent = await rt.pipeline().submit("plans")
        await store.set_intent_status(
            intent.id, IntentStatus.PLANNING, event_type=ev.INTENT_PLANNING
        )
        await store.save_plan(intent.id, first, ["QL-DEV-001", "QL-DEV-002"])
        assert [t.id for t in await store.get_tasks(intent.id)] == ["QL-DEV-001", "QL-DEV-002"]
        # Tasks already there: the plan and its tasks are replaced (the transaction path).
        await store.save_plan(intent.id, second, ["QL-DOC-001"])
        assert [t.id for t in await store.get_tasks(intent.id)] == ["QL-DOC-001"]
        await store.set_intent_status(
            intent.id, IntentStatus.COMPLETED, event_type=ev.INTENT_COMPLETED
        )
        with pytest.raises(TransitionError, match="from completed to executing"):
            await store.save_plan(intent.id, first, ["QL-DEV-001", "QL-DEV-002"])
        out = await outcome(rt, intent.id)
    assert out.intent.plan == second.model_dump(mode="json")
    assert [e.type for e in out.events].count("intent.planned") == 2
    assert [e.seq for e in out.events] == list(range(1, len(out.events) + 1))


async def test_a_start_committed_alongside_its_call_still_comes_first(
    qlp_home: Path, db_url: str
) -> None:
    """The start commits (the intent's planning, each task's running) run while the model
    call is already out; here they are made slower than the (instant) model, and every
    call must still be recorded after the start it belongs to."""
    async with scenario(qlp_home, db_url, dag_script(DIAMOND)) as (rt, _server):
        real_task_status = rt.store.set_task_status
        real_intent_status = rt.store.set_intent_status

        async def set_task_status(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.2)
            return await real_task_status(*args, **kwargs)

        async def set_intent_status(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.2)
            return await real_intent_status(*args, **kwargs)

        rt.store.set_task_status = set_task_status  # type: ignore[method-assign]
        rt.store.set_intent_status = set_intent_status  # type: ignore[method-assign]
        out = await run_intent(rt)
    assert out.intent.status == IntentStatus.COMPLETED, out.intent.error
    seq = {(e.type, e.payload.get("task_id")): e.seq for e in out.events}
    usage = {e.payload.get("task_id"): e.seq for e in out.events if e.type == "llm.usage"}
    planning = next(e.seq for e in out.events if e.type == "intent.planning")
    assert planning < usage[None]  # the planner's call
    for task_id in DIAMOND:
        assert seq[("task.started", task_id)] < usage[task_id], task_id
