"""/intents: submit, list, inspect, cancel, resume, review, files and events."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from qlp.api.context import Service, service
from qlp.api.inputs import EventSeq, Text
from qlp.api.schemas import (
    RESERVED_OPTION_PREFIX,
    EventOut,
    FileOut,
    IntentDetail,
    IntentIn,
    IntentPage,
    IntentSummary,
    ReviewIn,
    TaskOut,
)
from qlp.api.security import caller, owner_filter, require_act, require_read, writer
from qlp.auth.base import Principal
from qlp.domain.artifacts import PathRuleError, check_relative_path
from qlp.domain.decisions import parse_decision
from qlp.domain.ids import is_intent_id
from qlp.domain.states import IntentStatus
from qlp.engine.workspace import Workspace
from qlp.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    NotRegularFileError,
    UserInputError,
)
from qlp.store.base import IntentRecord
from qlp.store.intent_queries import IntentFilter, IntentListing

router = APIRouter(prefix="/intents", tags=["intents"])

IntentId = Annotated[str, PathParam(min_length=1, max_length=40, description="QLI-<ULID>")]
Caller = Annotated[Principal, Depends(caller)]
Writer = Annotated[Principal, Depends(writer)]
Svc = Annotated[Service, Depends(service)]

# Served files are shown, never rendered: a generated page must not run on the API's origin.
_FILE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


def summary(i: IntentRecord | IntentListing) -> IntentSummary:
    return IntentSummary(
        id=i.id,
        text=i.text,
        status=i.status.value,
        user_id=i.user_id,
        # The client's own options; QLP's (qlp.llm, qlp.queue) are its business.
        options={k: v for k, v in i.options.items() if not k.startswith(RESERVED_OPTION_PREFIX)},
        created_at=i.created_at,
        updated_at=i.updated_at,
        finished_at=i.finished_at,
        error=i.error,
        input_tokens=i.input_tokens,
        output_tokens=i.output_tokens,
        cost_usd=float(i.cost_usd),
        cost_complete=i.cost_known,
    )


async def visible_intent(svc: Service, principal: Principal, intent_id: str) -> IntentRecord:
    """The intent if this caller may see it; otherwise the same 404 as a missing one."""
    missing = f"no intent with id {intent_id}"
    if not is_intent_id(intent_id):
        raise NotFoundError(missing)
    intent = await svc.runtime.store.get_intent(intent_id)
    require_read(principal, intent.user_id, f"intent with id {intent_id}")
    return intent


async def actionable_intent(svc: Service, principal: Principal, intent_id: str) -> IntentRecord:
    intent = await visible_intent(svc, principal, intent_id)
    require_act(principal, intent.user_id, f"intent {intent_id}")
    return intent


def _note(request: Request, **details: Any) -> None:
    """Details for this request's audit row."""
    request.state.audit = {**getattr(request.state, "audit", {}), **details}


@router.post("", status_code=202, name="intent.create", response_model=IntentSummary)
async def submit(body: IntentIn, request: Request, principal: Writer, svc: Svc) -> JSONResponse:
    if not svc.settings.llm_provider:
        raise ConfigError(
            "no LLM is configured on this server: set QLP_LLM_PROVIDER (openai, azure, "
            "anthropic or scripted) and its key, then restart it"
        )
    await svc.limits.submit(principal.user_id)
    intent = await svc.runner.submit(body.text, options=body.options, user_id=principal.user_id)
    _note(request, intent_id=intent.id)
    return JSONResponse(
        summary(intent).model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"{request.url.path}/{intent.id}"},
    )


@router.get("", name="intent.list", response_model=IntentPage)
async def list_intents(
    principal: Caller,
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[Text | None, Query(max_length=200)] = None,
    status: IntentStatus | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    q: Annotated[Text | None, Query(max_length=200, description="text contains")] = None,
) -> Response:
    where = IntentFilter(
        owner=owner_filter(principal),
        status=status,
        since=_aware(since, "since"),
        until=_aware(until, "until"),
        text=q.replace("\x00", "") if q else None,
    )
    page = await svc.queries.intents(where, cursor=cursor, limit=limit)
    body = IntentPage(items=[summary(i) for i in page.items], next_cursor=page.next_cursor)
    # The bytes FastAPI would send for `response_model=IntentPage` (pydantic's dump_json),
    # without validating the page a second time on the way out.
    return Response(body.model_dump_json(), media_type="application/json")


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise UserInputError(f"{name}: give a time zone (e.g. 2026-01-31T12:00:00Z)")
    return value


@router.get("/{intent_id}", name="intent.get", response_model=IntentDetail)
async def get_intent(intent_id: IntentId, principal: Caller, svc: Svc) -> IntentDetail:
    intent = await visible_intent(svc, principal, intent_id)
    tasks = await svc.runtime.store.get_tasks(intent_id)
    rounds = await svc.reviews.rounds(intent_id)
    capsules = await svc.reviews.capsules(intent_id)
    last = rounds[-1] if rounds else None
    review: dict[str, Any] | None = None
    if last is not None:
        review = {
            "round": last.round,
            "verdict": last.verdict,
            "gates": last.gates,
            "decision": last.decision.as_dict() if last.decision else None,
        }
    return IntentDetail(
        **summary(intent).model_dump(),
        started_at=intent.started_at,
        llm_calls=intent.llm_calls,
        plan_summary=(intent.plan or {}).get("summary"),
        tasks=[
            TaskOut(
                id=t.id,
                type=t.type.value,
                title=t.title,
                status=t.status.value,
                dependencies=t.dependencies,
                attempts=t.attempts,
                started_at=t.started_at,
                finished_at=t.finished_at,
                error=t.error,
                input_tokens=t.input_tokens,
                output_tokens=t.output_tokens,
            )
            for t in tasks
        ],
        scores=last.scores if last else None,
        review=review,
        capsules=[c.id for c in sorted(capsules, key=lambda c: c.version)],
    )


@router.post("/{intent_id}/cancel", name="intent.cancel", response_model=IntentSummary)
async def cancel(
    intent_id: IntentId, request: Request, principal: Caller, svc: Svc
) -> IntentSummary:
    await actionable_intent(svc, principal, intent_id)
    _note(request, intent_id=intent_id)
    return summary(await svc.runner.cancel(intent_id))


@router.post("/{intent_id}/resume", name="intent.resume", response_model=IntentSummary)
async def resume(
    intent_id: IntentId, request: Request, principal: Caller, svc: Svc
) -> IntentSummary:
    await actionable_intent(svc, principal, intent_id)
    _note(request, intent_id=intent_id)
    return summary(await svc.runner.resume(intent_id))


@router.post("/{intent_id}/review", name="review.decide", response_model=IntentSummary)
async def review(
    intent_id: IntentId, body: ReviewIn, request: Request, principal: Caller, svc: Svc
) -> IntentSummary:
    await actionable_intent(svc, principal, intent_id)
    _note(request, intent_id=intent_id, decision=body.decision, tasks=body.tasks)
    decision = parse_decision(body.decision, reason=body.reason, tasks=body.tasks)
    return summary(await svc.runner.decide(intent_id, decision, actor=principal.username))


@router.get("/{intent_id}/files", name="intent.files", response_model=list[FileOut])
async def files(intent_id: IntentId, principal: Caller, svc: Svc) -> list[FileOut]:
    await visible_intent(svc, principal, intent_id)
    found = await svc.runtime.store.get_files(intent_id)
    return [FileOut.model_validate(f) for _, f in sorted(found.items())]


@router.get(
    "/{intent_id}/files/{path:path}",
    name="intent.file",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "The file's text"}},
)
async def file(intent_id: IntentId, path: str, principal: Caller, svc: Svc) -> Response:
    """Only a path the intent's tasks wrote (as recorded in the database) is served, with the
    content the task wrote (from the blob store; the workspace on disk is not read, so
    nothing code run in the sandbox left there, a FIFO or a symlink, is opened). For an
    intent from before contents were stored, the file is read from this host's workspace
    without following links, and a FIFO, socket, device, symlink or folder at that path
    answers 409 naming it."""
    intent = await visible_intent(svc, principal, intent_id)
    missing = NotFoundError(f"intent {intent_id} has no file {path[:200]!r}")
    try:
        rel = check_relative_path(path, max_length=svc.settings.max_path_length)
    except PathRuleError:
        raise missing from None
    record = (await svc.runtime.store.get_files(intent_id)).get(rel)
    if record is None:
        raise missing
    # What the task wrote, from the blob store: the same on every API process and host,
    # whatever code run in the sandbox did to the workspace since.
    stored = (await svc.blobs.get([record.sha256])).get(record.sha256)
    if stored is not None:
        text = stored.decode("utf-8", errors="replace")
        return Response(text, media_type="text/plain; charset=utf-8", headers=_FILE_HEADERS)
    try:  # an intent from before file contents were stored: its workspace on this host
        text = await asyncio.to_thread(Workspace(Path(intent.workspace)).read, rel)
    except NotRegularFileError as exc:
        raise ConflictError(
            f"intent {intent_id}'s file {rel} cannot be served: {exc.message} (the workspace "
            "changed after its task wrote it)"
        ) from None
    except (OSError, ValueError):
        raise missing from None
    return Response(text, media_type="text/plain; charset=utf-8", headers=_FILE_HEADERS)


@router.get("/{intent_id}/events", name="intent.events", response_model=list[EventOut])
async def events(
    intent_id: IntentId,
    principal: Caller,
    svc: Svc,
    after: Annotated[EventSeq, Query(description="Events after this seq (0: all).")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> list[EventOut]:
    await visible_intent(svc, principal, intent_id)
    found = await svc.runtime.store.list_events(intent_id, after, limit)
    return [EventOut(**e.as_dict()) for e in found]
