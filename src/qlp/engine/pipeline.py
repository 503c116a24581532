"""The pipeline of one intent: plan, run the task DAG with agents, merge files, finish.

Every step is committed to the store before the next begins, so `run` can be called again
on an interrupted intent (after Ctrl-C, a crash or SIGKILL) and continues where it stopped
without re-running tasks that already succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from qlp.agents.agent import AgentSettings, run_agent
from qlp.agents.context import ContextFile, select_context
from qlp.domain import events as ev
from qlp.domain.artifacts import FileOut
from qlp.domain.decisions import Decision
from qlp.domain.ids import new_intent_id
from qlp.domain.plan import Plan, topological_order, transitive_dependencies
from qlp.domain.states import (
    DECIDABLE,
    RESUMABLE,
    STARTABLE,
    TASKS_CANCELLABLE,
    TASKS_REQUEUED_ON_RESUME,
    IntentStatus,
    TaskStatus,
    require_state,
)
from qlp.engine.decisions import Decided, record_decision
from qlp.engine.quality import Quality
from qlp.engine.scheduler import DagOutcome, DagScheduler
from qlp.engine.workspace import TreeLock, Workspace, WrittenFile
from qlp.errors import BudgetExceededError, QLPError, UserInputError
from qlp.llm.base import CallRecord, LLMClient, client_for_intent
from qlp.llm.recording import RecordingClient
from qlp.planning.planner import PlannerLimits, make_plan
from qlp.store.base import FileRecord, IntentRecord
from qlp.store.blobs import BlobStore
from qlp.store.repository import Store

MAX_INTENT_CHARS = 20_000

log = structlog.get_logger("qlp.engine")


@dataclass(frozen=True)
class EngineConfig:
    workspaces_dir: Path
    max_parallel_tasks: int
    task_timeout_s: float
    token_budget: int
    context_token_budget: int
    planner: PlannerLimits
    agent: AgentSettings


@asynccontextmanager
async def alongside(commit: Awaitable[Any] | None) -> AsyncIterator[asyncio.Future[Any]]:
    """Run a state commit (a task's or an intent's start) while the block already calls the
    model, instead of one round trip before it. The block gates everything that records or
    uses a result on the yielded future (the transcript record waits for it), so committed
    state has the same order as committing first. On leaving, the commit has landed; if the
    block failed, its error wins over the commit's."""
    landed: asyncio.Future[Any] = asyncio.ensure_future(commit) if commit is not None else _done()
    try:
        yield landed
    except BaseException:
        if not landed.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(landed)  # e.g. a cancellation is recorded after it
        raise
    await landed


def _done() -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


class Pipeline:
    def __init__(
        self,
        store: Store,
        llm: LLMClient,
        config: EngineConfig,
        quality: Quality | None = None,
    ) -> None:
        self.store = store
        self.blobs = BlobStore(store)  # file contents, for a workspace on any host
        self.llm = llm
        self.config = config
        # Validation, review and packaging; None runs the agents only (engine benchmarks).
        self.quality = quality
        # Tokens spent so far per running intent, kept current by every recorded call.
        self._spent: dict[str, int] = {}

    # -- entry points --------------------------------------------------------------------
    async def submit(
        self, text: str, *, options: dict[str, Any] | None = None, user_id: str | None = None
    ) -> IntentRecord:
        text = text.strip()
        if not text:
            raise UserInputError("the intent is empty; say what you want built")
        if len(text) > MAX_INTENT_CHARS:
            raise UserInputError(
                f"the intent is {len(text)} characters; the limit is {MAX_INTENT_CHARS}"
            )
        intent_id = new_intent_id()
        workspace = self.config.workspaces_dir / intent_id
        Workspace(workspace).ensure()
        return await self.store.create_intent(
            intent_id, text, options=options or {}, user_id=user_id, workspace=str(workspace)
        )

    async def local(self, intent: IntentRecord) -> IntentRecord:
        """The intent with its workspace on this host (QLP_HOME/workspaces/ID), every file its
        tasks wrote there as recorded: what is missing or differs is written from the blob
        store, so an intent continues on any host. The stored path says where it was worked
        on last (updated here), never the truth."""
        local = replace(intent, workspace=str(self.config.workspaces_dir / intent.id))
        if local.workspace != intent.workspace:
            await self.store.move_workspace(intent.id, local.workspace)
        files = await self.store.get_files(intent.id)
        workspace = Workspace(Path(local.workspace))
        await asyncio.to_thread(workspace.ensure)
        stale = await asyncio.to_thread(
            workspace.stale, {path: f.sha256 for path, f in files.items()}
        )
        if not stale:
            return local
        found = await self.blobs.get([files[path].sha256 for path in stale])
        lost = [path for path in stale if files[path].sha256 not in found]
        if lost:
            raise UserInputError(
                f"intent {intent.id}: the content of {', '.join(lost[:5])}"
                f"{' ...' if len(lost) > 5 else ''} is neither in this host's workspace nor in "
                "the database (an intent from before file contents were stored, continued on "
                "another host or with another QLP_HOME): continue it where it was started"
            )
        await asyncio.to_thread(
            workspace.write_all_bytes, [(path, found[files[path].sha256]) for path in stale]
        )
        log.info("workspace.restored", intent_id=intent.id, files=len(stale))
        return local

    async def run(
        self, intent_id: str, *, by_user: Callable[[], bool] = lambda: True
    ) -> IntentRecord:
        """Drive the intent to a final state (or until cancelled) and return it.

        A cancellation of the run is the user's (the intent is marked cancelled, as after a
        CLI Ctrl-C) when `by_user()` says so at that moment; otherwise it is an interruption
        (a worker stopping or failing) and the intent keeps its state (planning, executing,
        packaging) for whoever runs it next."""
        # Claimed for the whole run (IntentBusyError if another process holds it); every
        # write below is fenced by it, and a lost lease ends the run with LeaseLostError.
        async with self.store.leases.hold(intent_id) as lease:
            intent = await self.local(await self.store.get_intent(intent_id))
            require_state(
                intent_id,
                intent.status,
                STARTABLE,
                f"decide with `qlp review approve|reject|changes {intent_id}`"
                if intent.status in DECIDABLE
                else "nothing to run",
            )
            try:
                if intent.status in RESUMABLE:
                    await self.store.append_event(
                        intent_id, ev.INTENT_RESUMED, {"from": intent.status.value}
                    )
                self._spent[intent_id] = intent.total_tokens
                if intent.status == IntentStatus.PACKAGING and self.quality is not None:
                    # Stopped while packaging: the decision stands; build the capsule again.
                    await self.quality.resume_packaging(intent)
                    return await self.store.get_intent(intent_id)
                planned = await self._ensure_plan(intent)
                if planned is not None:
                    outcome = await self._execute(intent, *planned)
                    await self._finish(intent, outcome)
            except asyncio.CancelledError:
                if by_user() and not lease.lost:
                    await asyncio.shield(self._cancel(intent_id))
                raise
            finally:
                self._spent.pop(intent_id, None)
            return await self.store.get_intent(intent_id)

    async def decide(self, intent_id: str, decision: Decision, *, actor: str) -> Decided:
        """Record a person's decision on an intent waiting for review (engine/decisions.py)
        and return what runs next; running it (`run`) is the caller's job."""
        return await record_decision(
            self.store, self.quality, intent_id, decision, actor=actor, local=self.local
        )

    # -- steps ---------------------------------------------------------------------------
    async def _ensure_plan(self, intent: IntentRecord) -> tuple[Plan, list[str] | None] | None:
        """The intent's plan, made now if it has none (None: planning failed). With a plan
        made now comes its task order: its tasks are all pending and no file exists yet."""
        if intent.plan is not None:
            if intent.status != IntentStatus.EXECUTING:
                await self.store.set_intent_status(
                    intent.id, IntentStatus.EXECUTING, event_type=ev.INTENT_EXECUTING
                )
            return Plan.model_validate(intent.plan), None
        planning = (
            self.store.set_intent_status(
                intent.id, IntentStatus.PLANNING, event_type=ev.INTENT_PLANNING
            )
            if intent.status != IntentStatus.PLANNING
            else None
        )

        async def rejected(attempt: int, problem: str) -> None:
            await self.store.append_event(
                intent.id, ev.PLAN_REJECTED, {"attempt": attempt, "problem": problem}
            )

        try:
            async with alongside(planning) as planned_state:
                client = self._client(intent.id, None, after=planned_state)
                planned = await make_plan(client, intent.text, self.config.planner, rejected)
        except QLPError as exc:  # no valid plan, the model unreachable, budget spent
            await self.store.set_intent_status(
                intent.id, IntentStatus.FAILED, event_type=ev.INTENT_FAILED, error=exc.message
            )
            return None
        await self.store.save_plan(intent.id, planned.plan, planned.order)
        return planned.plan, list(planned.order)

    async def _execute(
        self, intent: IntentRecord, plan: Plan, fresh_order: list[str] | None
    ) -> DagOutcome:
        if fresh_order is not None:  # just planned: nothing to read back or requeue
            deps = {t.id: t.dependencies for t in plan.tasks}
            return await self._schedule(intent, plan, deps, fresh_order, {}, set())
        tasks, files = await asyncio.gather(
            self.store.get_tasks(intent.id), self.store.get_files(intent.id)
        )
        done = {t.id for t in tasks if t.status == TaskStatus.SUCCEEDED}
        # Anything unfinished (running when the process died, failed, skipped, cancelled)
        # goes back to pending; succeeded work is kept.
        for status in TASKS_REQUEUED_ON_RESUME:
            again = [t.id for t in tasks if t.status == status]
            await self.store.set_tasks_status(
                intent.id, again, TaskStatus.PENDING, event_type="task.requeued"
            )
        deps = {t.id: t.dependencies for t in tasks}
        return await self._schedule(intent, plan, deps, [t.id for t in tasks], files, done)

    async def _schedule(
        self,
        intent: IntentRecord,
        plan: Plan,
        deps: dict[str, list[str]],
        order: list[str],
        files: dict[str, FileRecord],
        done: set[str],
    ) -> DagOutcome:
        run = _IntentRun(self, intent, plan, files)
        if self.quality is not None:
            run.feedback = await self.quality.pending_feedback(intent.id, plan)
        scheduler = DagScheduler(
            deps,
            order,
            run,
            max_parallel=self.config.max_parallel_tasks,
            task_timeout_s=self.config.task_timeout_s,
        )
        return await scheduler.run(done)

    async def _finish(self, intent: IntentRecord, outcome: DagOutcome) -> None:
        intent_id = intent.id
        if not outcome.failed and not outcome.skipped and self.quality is not None:
            await self.quality.after_tasks(intent)
            return
        if not outcome.failed and not outcome.skipped:
            await self.store.set_intent_status(
                intent_id,
                IntentStatus.COMPLETED,
                event_type=ev.INTENT_COMPLETED,
                payload={"tasks": len(outcome.succeeded)},
            )
            return
        first = sorted(outcome.failed.items())
        reasons = "; ".join(f"{tid}: {why}" for tid, why in first[:3])
        more = f" (and {len(first) - 3} more)" if len(first) > 3 else ""
        skipped = f", {len(outcome.skipped)} skipped" if outcome.skipped else ""
        error = f"{len(outcome.failed)} task(s) failed{skipped}: {reasons}{more}"
        if outcome.stop_reason:
            error = f"stopped: {outcome.stop_reason}. {error}"
        await self.store.set_intent_status(
            intent_id, IntentStatus.FAILED, event_type=ev.INTENT_FAILED, error=error
        )

    async def _cancel(self, intent_id: str) -> None:
        intent = await self.store.get_intent(intent_id)
        if not intent.status.is_terminal:
            await self.store.set_intent_status(
                intent_id,
                IntentStatus.CANCELLED,
                event_type=ev.INTENT_CANCELLED,
                error="cancelled by the user",
            )

    # -- LLM with transcript and budget ----------------------------------------------------
    def _client(
        self, intent_id: str, task_id: str | None, after: Awaitable[object] | None = None
    ) -> LLMClient:
        """A client whose calls are recorded in the transcript and counted against the
        budget. `after`: a commit that must land before any call is recorded (the task's
        start, committed while its first call is already on its way)."""
        budget = self.config.token_budget

        async def observe(record: CallRecord) -> None:
            if after is not None:
                await after
            totals = await self.store.record_llm_call(intent_id, task_id, record)
            self._spent[intent_id] = totals.total_tokens
            if totals.total_tokens > budget:
                raise BudgetExceededError(
                    f"token budget of {budget} exceeded ({totals.total_tokens} tokens used); "
                    "raise QLP_TOKEN_BUDGET_PER_INTENT or narrow the request"
                )

        # A scripted model answers each intent from the start of its script.
        return RecordingClient(client_for_intent(self.llm, intent_id), observe)


class _IntentRun:
    """The scheduler's hooks for one intent: an agent per task, files into the workspace."""

    def __init__(
        self, pipeline: Pipeline, intent: IntentRecord, plan: Plan, files: dict[str, FileRecord]
    ) -> None:
        self.p = pipeline
        self.store = pipeline.store
        self.intent = intent
        self.plan = plan
        self.workspace = Workspace(Path(intent.workspace))
        self.deps = {t.id: t.dependencies for t in plan.tasks}
        self.position = {t: i for i, t in enumerate(topological_order(plan.tasks))}
        self._tree = TreeLock()
        # Which task wrote (or is writing) each path, loaded once and kept current (this run
        # is the only writer: the intent's lease keeps other processes out).
        self.owners = {path: f.task_id for path, f in files.items()}
        # The write in progress of each path: a later write of the same path waits for it.
        self._writing: dict[str, asyncio.Future[Any]] = {}
        # Review feedback for the tasks a person asked to change (empty on a first run).
        self.feedback: dict[str, str] = {}

    async def _context(self, task_id: str) -> list[ContextFile]:
        wanted = set(transitive_dependencies(self.deps, task_id))
        if not wanted:
            return []
        # Dependencies have finished writing; a synchronous look at `owners` is consistent.
        chosen = sorted((p, t) for p, t in self.owners.items() if t in wanted)

        def read() -> list[ContextFile]:
            return [
                ContextFile(path=path, task_id=owner, content=self.workspace.read(path))
                for path, owner in chosen
            ]

        # In a thread: file I/O never runs on the event loop. Sandboxed code may have left
        # anything at these paths; a FIFO or other non-regular file is refused at once
        # (NotRegularFileError names it) and the task fails with that reason.
        return await asyncio.to_thread(read)

    async def execute(self, task_id: str) -> None:
        intent_id = self.intent.id
        spent = self.p._spent.get(intent_id, 0)
        if spent > self.p.config.token_budget:
            raise BudgetExceededError(
                f"token budget of {self.p.config.token_budget} already spent ({spent} tokens)"
            )
        start = self.store.set_task_status(
            intent_id, task_id, TaskStatus.RUNNING, event_type=ev.TASK_STARTED
        )
        async with alongside(start) as started:
            await self._run_task(task_id, started)

    async def _run_task(self, task_id: str, started: asyncio.Future[Any]) -> None:
        intent_id = self.intent.id
        context = select_context(await self._context(task_id), self.p.config.context_token_budget)
        if context.omitted:
            await started
            await self.store.append_event(
                intent_id,
                ev.CONTEXT_TRIMMED,
                {"task_id": task_id, "omitted": [f.path for f in context.omitted]},
            )

        async def rejected(attempt: int, problem: str) -> None:
            await self.store.append_event(
                intent_id,
                ev.TASK_RETRY,
                {"task_id": task_id, "attempt": attempt, "problem": problem},
            )

        client = self.p._client(intent_id, task_id, after=started)
        task = self.plan.task(task_id)
        result = await run_agent(
            client,
            self.p.config.agent,
            self.intent.text,
            self.plan,
            task,
            context,
            feedback=self.feedback.get(task_id, ""),
            on_reject=rejected,
        )
        written: dict[str, tuple[str, int]] = {}
        conflicts: list[dict[str, Any]] = []
        notes = [result.notes]

        async def write(files: list[FileOut]) -> list[str]:
            async with self._tree.writing():
                return await self._write(task_id, files, written, conflicts)

        paths = await write(result.files)
        quality = self.p.quality
        if quality is not None:

            async def repair(brief: str) -> list[str]:
                fixed = await run_agent(
                    client,
                    self.p.config.agent,
                    self.intent.text,
                    self.plan,
                    task,
                    context,
                    feedback=brief,
                    on_reject=rejected,
                )
                notes.append(fixed.notes)
                return await write(fixed.files)

            await quality.check_task(
                intent_id, task_id, Path(self.intent.workspace), paths, repair, self._tree
            )
        await self.store.record_task_output(
            intent_id,
            task_id,
            [(p, sha, size) for p, (sha, size) in sorted(written.items())],
            conflicts,
            "\n".join(n for n in notes if n),
        )

    async def _write(
        self,
        task_id: str,
        files: list[FileOut],
        written: dict[str, tuple[str, int]],
        conflicts: list[dict[str, Any]],
    ) -> list[str]:
        """Write a task's files in one thread job, alongside other tasks' writes.

        Paths are claimed in `owners` before any await, so tasks writing at the same time
        see each other's claims; a path claimed by a task still writing it is written again
        only after that write has landed, so the task that keeps it is the last to write it."""
        keep: list[FileOut] = []
        previous: dict[str, str | None] = {}
        for f in files:
            prior = self.owners.get(f.path)
            if prior is not None and prior != task_id:
                # The later task in dependency order wins, whatever finished first.
                later = self.position[prior] > self.position[task_id]
                conflicts.append(
                    {
                        "path": f.path,
                        "kept": prior if later else task_id,
                        "discarded": task_id if later else prior,
                    }
                )
                if later:
                    continue
            previous.setdefault(f.path, prior)
            self.owners[f.path] = task_id
            keep.append(f)
        if not keep:
            return []
        before = {self._writing[f.path] for f in keep if f.path in self._writing}
        job = asyncio.ensure_future(self._write_after(before, keep))
        for f in keep:
            self._writing[f.path] = job

        def forget(_: object) -> None:
            for f in keep:
                if self._writing.get(f.path) is job:
                    del self._writing[f.path]

        job.add_done_callback(forget)
        # Shielded: a cancelled task's files still land before a later write of the same path.
        done, error = await asyncio.shield(job)
        for w in done:
            written[w.path] = (w.sha256, w.size)
        if error is not None:
            # Claims of files not written go back to whoever had them (unless taken since).
            ok = {w.path for w in done}
            for path, prior in previous.items():
                if path not in ok and self.owners.get(path) == task_id:
                    if prior is None:
                        del self.owners[path]
                    else:
                        self.owners[path] = prior
            raise error
        return [w.path for w in done]

    async def _write_after(
        self, before: set[asyncio.Future[Any]], files: list[FileOut]
    ) -> tuple[list[WrittenFile], BaseException | None]:
        if before:
            await asyncio.wait(before)
        done, error = await asyncio.to_thread(
            self.workspace.write_all, [(f.path, f.content) for f in files]
        )
        # The bytes go to the blob store before the task's files are recorded, so a recorded
        # file is always there for a host that rebuilds the workspace.
        content = {f.path: f.content for f in files}
        await self.p.blobs.put(content[w.path].encode("utf-8") for w in done)
        return done, error

    async def failed(self, task_id: str, reason: str) -> None:
        await self.store.set_task_status(
            self.intent.id, task_id, TaskStatus.FAILED, event_type=ev.TASK_FAILED, error=reason
        )

    async def skipped(self, task_ids: list[str], reason: str) -> None:
        await self.store.set_tasks_status(
            self.intent.id, task_ids, TaskStatus.SKIPPED, event_type=ev.TASK_SKIPPED, error=reason
        )

    async def cancelled(self, task_ids: list[str]) -> None:
        tasks = await self.store.get_tasks(self.intent.id)
        live = {t.id for t in tasks if t.status in TASKS_CANCELLABLE}
        await self.store.set_tasks_status(
            self.intent.id,
            [t for t in task_ids if t in live],
            TaskStatus.CANCELLED,
            event_type=ev.TASK_CANCELLED,
            error="cancelled",
        )
