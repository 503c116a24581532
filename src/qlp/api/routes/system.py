"""Liveness, readiness, metrics and the audit log."""

from __future__ import annotations

import asyncio
import shutil
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from qlp.api.context import Service, service
from qlp.api.inputs import Text
from qlp.api.metrics import CONTENT_TYPE
from qlp.api.schemas import AuditOut, HealthOut, ReadyOut
from qlp.api.security import admin
from qlp.auth.base import Principal

router = APIRouter(tags=["system"])
Svc = Annotated[Service, Depends(service)]


@router.get("/healthz", name="system.healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """The process is up and serving (nothing else is checked)."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    name="system.readyz",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "A dependency is not ready"}},
)
async def readyz(svc: Svc) -> JSONResponse:
    """Ready to do work: the database answers, capsule storage is reachable, the sandbox
    backend is usable, and the runner accepts intents. Each check says what failed."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(5):
            async with svc.runtime.store.autocommit.connect() as conn:
                await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"failed: {type(exc).__name__}"
    checks["storage"] = await _storage(svc)
    checks["sandbox"] = await _sandbox(svc)
    checks["llm"] = (
        "ok" if svc.settings.llm_provider else "not configured: set QLP_LLM_PROVIDER and its key"
    )
    checks["runner"] = "ok" if svc.runner.accepting else "stopped"
    ready = all(v == "ok" or v.startswith("off") for v in checks.values())
    body = ReadyOut(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


async def _storage(svc: Service) -> str:
    try:
        probe = svc.capsules.uri_for("QL-CAP-0000000000000000", 1)
        await asyncio.wait_for(asyncio.to_thread(svc.capsules.exists, probe), timeout=5)
    except Exception as exc:
        return f"failed: {type(exc).__name__}"
    if svc.capsules.kind == "local":
        free = await asyncio.to_thread(shutil.disk_usage, svc.settings.home)
        if free.free < 64 * 1024 * 1024:
            return "failed: less than 64 MiB free"
    return "ok"


async def _sandbox(svc: Service) -> str:
    quality = svc.runner.pipeline.quality
    if quality is None:
        return "off (QLP_VALIDATE=false)"
    try:
        await asyncio.to_thread(quality.config.sandbox.check)
    except Exception as exc:
        return f"failed: {exc}"
    return "ok"


@router.get(
    "/metrics",
    name="system.metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(svc: Svc) -> Response:
    m = svc.metrics
    for state, count in (await svc.queries.counts_by_status()).items():
        m.intents.labels(state).set(count)
    m.queue_depth.set(svc.runner.queue_depth)
    m.running.set(svc.runner.running)
    return Response(m.render(), media_type=CONTENT_TYPE)


@router.get("/audit", name="audit.list", response_model=list[AuditOut])
async def audit(
    svc: Svc,
    principal: Annotated[Principal, Depends(admin)],
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    actor: Annotated[Text | None, Query(max_length=200)] = None,
    action: Annotated[Text | None, Query(max_length=100)] = None,
) -> list[AuditOut]:
    rows = await svc.audit.list(after_seq=after, limit=limit, actor=actor, action=action)
    return [AuditOut.model_validate(r) for r in rows]
