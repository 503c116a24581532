"""/capsules: list, show, download (streamed), verify an uploaded capsule, the public key."""

from __future__ import annotations

import asyncio
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from qlp.api.context import Service, service
from qlp.api.inputs import Text
from qlp.api.problems import ApiProblem
from qlp.api.schemas import CapsuleOut, CapsulePage, PublicKeyOut
from qlp.api.security import caller, owner_filter, require_read
from qlp.auth.base import Principal
from qlp.capsule.base import CapsuleInvalidError, CapsuleStorageError, VerifyReport
from qlp.capsule.format import CAPSULE_ID_RE, MANIFEST, SUFFIX
from qlp.capsule.keys import parse_public_key_text
from qlp.capsule.verify import verify_capsule
from qlp.errors import NotFoundError, UserInputError
from qlp.store.reviews import CapsuleRecord

router = APIRouter(tags=["capsules"])
log = structlog.get_logger("qlp.api")

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
    try:
        fh = await asyncio.to_thread(_fetch, svc, record.uri)
    except NotFoundError:
        log.error("capsule.missing", capsule_id=record.id, uri=record.uri)
        raise NotFoundError(f"capsule {record.id}: its file is missing from storage") from None
    except CapsuleStorageError as exc:
        log.error("capsule.unreadable", capsule_id=record.id, error=exc.message)
        raise CapsuleStorageError(
            f"capsule {record.id} could not be read from storage; the request id identifies "
            "it in the server's log"
        ) from None
    filename = f"{record.id}-v{record.version}{SUFFIX}"
    return _FileStream(
        fh,
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Length": str(record.size),
            "ETag": f'"{record.sha256}"',
            "X-Content-Type-Options": "nosniff",
        },
    )


def _fetch(svc: Service, uri: str) -> BinaryIO:
    """The stored capsule, copied to scratch space and opened; its name is removed before
    this returns, so nothing is left on disk whatever happens to the request (the open file
    is freed when it is closed, or with the process). Runs in a thread: if the request is
    cancelled meanwhile, the copy still finishes here and is removed here."""
    path = svc.scratch.new_file("download-", SUFFIX)
    try:
        svc.capsules.get(uri, path)
        return path.open("rb")
    finally:
        path.unlink(missing_ok=True)


class _FileStream(StreamingResponse):
    """Streams an open (already unlinked) file and closes it when the response ends, also
    when the client went away before or during the body (Starlette then never finishes,
    or never starts, the body iterator, so its cleanup cannot be left to the iterator)."""

    def __init__(self, fh: BinaryIO, **kwargs: Any) -> None:
        self._fh = fh
        super().__init__(self._chunks(), **kwargs)

    async def _chunks(self) -> AsyncIterator[bytes]:
        while chunk := await asyncio.to_thread(self._fh.read, _CHUNK):
            yield chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._fh.close()


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
    # Not in a thread: a request cancelled while it waited would leave the file unknown.
    path = svc.scratch.new_file("verify-", SUFFIX)
    try:
        size = 0
        with path.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                await asyncio.to_thread(out.write, chunk)
        if size == 0:
            raise UserInputError("body: send the capsule file as the request body")
        ours = parse_public_key_text(svc.public_key)
        try:
            report = await asyncio.to_thread(_verify_upload, path, ours)
        except CapsuleInvalidError as exc:
            # Not a capsule at all: the request is wrong, there is nothing to report on.
            raise ApiProblem(422, "not_a_capsule", exc.message) from None
        body = report.to_dict()
        body.pop("path", None)
        body["signed_by_this_server"] = bool(report.signature_valid)
        body["size"] = size
        return body
    finally:
        # Not awaited: a cancelled request (client gone) must still remove its upload.
        path.unlink(missing_ok=True)


_UPLOAD = "the request body"


def _verify_upload(path: Path, key: Ed25519PublicKey) -> VerifyReport:
    """The report on an uploaded capsule, whose messages call it "the request body" (never
    the server's temporary path). CapsuleInvalidError when it is not a capsule: not a zip, or
    a zip without a manifest."""
    report = verify_capsule(path, key, name=_UPLOAD)
    if report.manifest is None:
        with zipfile.ZipFile(path) as zf:
            if MANIFEST not in zf.NameToInfo:
                raise CapsuleInvalidError(f"{_UPLOAD} is not a capsule (a zip without {MANIFEST})")
    return report


@router.get("/keys/capsule", name="keys.capsule", response_model=PublicKeyOut)
async def public_key(svc: Svc, principal: Caller) -> PublicKeyOut:
    return PublicKeyOut(key=svc.public_key, pem=svc.public_key_pem)
