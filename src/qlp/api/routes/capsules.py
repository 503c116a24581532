"""/capsules: list, show, download (streamed), verify an uploaded capsule, the public key."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from qlp.api.context import Service, service
from qlp.api.inputs import Text
from qlp.api.schemas import CapsuleOut, CapsulePage, PublicKeyOut
from qlp.api.security import caller, owner_filter, require_read
from qlp.auth.base import Principal
from qlp.capsule.base import CapsuleError
from qlp.capsule.format import CAPSULE_ID_RE, SUFFIX
from qlp.capsule.keys import parse_public_key_text
from qlp.capsule.verify import verify_capsule
from qlp.errors import NotFoundError, UserInputError
from qlp.store.reviews import CapsuleRecord

router = APIRouter(tags=["capsules"])

Caller = Annotated[Principal, Depends(caller)]
Svc = Annotated[Service, Depends(service)]
_CHUNK = 256 * 1024


async def _visible(svc: Service, principal: Principal, capsule_id: str) -> CapsuleRecord:
    missing = f"no capsule with id {capsule_id}"
    if not CAPSULE_ID_RE.match(capsule_id):
        raise NotFoundError(missing)
    found = await svc.queries.capsule(capsule_id)
    if found is None:
        raise NotFoundError(missing)
    record, owner = found
    require_read(principal, owner, f"capsule with id {capsule_id}")
    return record


@router.get("/capsules", name="capsule.list", response_model=CapsulePage)
async def list_capsules(
    principal: Caller,
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[Text | None, Query(max_length=200)] = None,
    intent_id: Annotated[Text | None, Query(max_length=40)] = None,
) -> CapsulePage:
    page = await svc.queries.capsules(
        owner=owner_filter(principal), cursor=cursor, limit=limit, intent_id=intent_id
    )
    return CapsulePage(
        items=[CapsuleOut.model_validate(c) for c in page.items], next_cursor=page.next_cursor
    )


@router.get("/capsules/{capsule_id}", name="capsule.get", response_model=CapsuleOut)
async def get_capsule(capsule_id: str, principal: Caller, svc: Svc) -> CapsuleOut:
    return CapsuleOut.model_validate(await _visible(svc, principal, capsule_id))


@router.get(
    "/capsules/{capsule_id}/download",
    name="capsule.download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "The capsule file"}},
)
async def download(capsule_id: str, principal: Caller, svc: Svc) -> StreamingResponse:
    """The capsule as stored, checked against the size and sha256 recorded when it was
    built (the store refuses a changed object), streamed in chunks."""
    record = await _visible(svc, principal, capsule_id)
    fd, path = await _scratch_file(svc, "download-")
    os.close(fd)
    try:
        await asyncio.to_thread(svc.capsules.get, record.uri, path)
    except BaseException:
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    filename = f"{record.id}-v{record.version}{SUFFIX}"
    return StreamingResponse(
        _chunks(path),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Length": str(record.size),
            "ETag": f'"{record.sha256}"',
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _scratch_file(svc: Service, prefix: str) -> tuple[int, Path]:
    """A new private file (0600, open) under QLP_HOME/tmp for a capsule passing through."""
    folder = svc.settings.home / "tmp"
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=SUFFIX, dir=folder)
    return fd, Path(name)


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    try:
        fh = await asyncio.to_thread(path.open, "rb")
        try:
            while chunk := await asyncio.to_thread(fh.read, _CHUNK):
                yield chunk
        finally:
            fh.close()
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)


@router.post(
    "/capsules/verify",
    name="capsule.verify",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def verify(request: Request, principal: Caller, svc: Svc) -> dict[str, Any]:
    """Upload a capsule as the raw request body (`curl --data-binary @x.qlcapsule`) and get
    the verification report: every entry's hash and the signature against THIS server's
    signing key (`signed_by_this_server`) as well as against the key the manifest names."""
    fd, path = await _scratch_file(svc, "verify-")
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                await asyncio.to_thread(out.write, chunk)
        if size == 0:
            raise UserInputError("body: send the capsule file as the request body")
        ours = parse_public_key_text(svc.public_key)
        try:
            report = await asyncio.to_thread(verify_capsule, path, ours)
        except CapsuleError as exc:
            return {
                "ok": False,
                "signed_by_this_server": False,
                "problems": [{"entry": None, "message": exc.message}],
            }
        body = report.to_dict()
        body.pop("path", None)
        body["signed_by_this_server"] = bool(report.signature_valid)
        body["size"] = size
        return body
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)


@router.get("/keys/capsule", name="keys.capsule", response_model=PublicKeyOut)
async def public_key(svc: Svc, principal: Caller) -> PublicKeyOut:
    return PublicKeyOut(key=svc.public_key, pem=svc.public_key_pem)
