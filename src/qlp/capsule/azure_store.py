"""Capsules in an Azure Blob Storage container: blob <id>/v<version>.qlcapsule.

Credentials: a connection string when one is set (QLP_STORAGE_CONNECTION_STRING or
AZURE_STORAGE_CONNECTION_STRING), else DefaultAzureCredential (managed identity, the Azure
CLI login, workload identity...). URIs are the blob URLs without any query string, so a SAS
token never ends up in the database.

A block blob becomes visible only when its upload commits, so readers never see half a
capsule. Uploads send If-None-Match: * (never overwrite), carry the file's sha256 as blob
metadata, are checked per request with Content-MD5, and are read back (size and sha256
metadata) before put returns. Downloads are hashed while they stream and compared.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse, urlunparse

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobClient, ContainerClient, ContentSettings

from qlp.capsule.base import CapsuleInputError, CapsuleStorageError, object_name
from qlp.capsule.format import CHUNK
from qlp.errors import ConfigError, NotFoundError

SHA_METADATA = "sha256"


def _file_digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _short(exc: BaseException) -> str:
    """The first line of an SDK error (the rest is a long, header-laden dump)."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class AzureCapsuleStore:
    kind = "azure"

    def __init__(self, container: ContainerClient, *, max_concurrency: int = 4) -> None:
        self.container = container
        self.max_concurrency = max_concurrency
        parsed = urlparse(container.url)
        self._base = urlunparse(parsed._replace(query="", fragment="")).rstrip("/")

    @classmethod
    def from_settings_values(
        cls, url: str | None, connection_string: str | None, **kwargs: Any
    ) -> AzureCapsuleStore:
        """`url`: the container URL (QLP_STORAGE_URL), or just the container name when a
        connection string is given. Nothing is contacted until the first operation."""
        if not url:
            raise ConfigError(
                "QLP_STORAGE_URL is required for QLP_STORAGE=azure "
                "(the container URL, e.g. https://ACCOUNT.blob.core.windows.net/capsules)"
            )
        if connection_string:
            name = unquote(urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]) if "/" in url else url
            try:
                container = ContainerClient.from_connection_string(
                    connection_string, container_name=name
                )
            except ValueError:
                raise ConfigError(
                    "QLP_STORAGE_CONNECTION_STRING / AZURE_STORAGE_CONNECTION_STRING is not a "
                    "valid Azure Storage connection string"
                ) from None
        else:
            from azure.identity import DefaultAzureCredential

            try:
                container = ContainerClient.from_container_url(
                    url, credential=DefaultAzureCredential()
                )
            except ValueError as exc:
                raise ConfigError(f"QLP_STORAGE_URL {url!r}: {exc}") from None
        return cls(container, **kwargs)

    # -- names -----------------------------------------------------------------------------
    def uri_for(self, capsule_id: str, version: int) -> str:
        return f"{self._base}/{quote(object_name(capsule_id, version))}"

    def _blob(self, uri: str) -> BlobClient:
        parsed = urlparse(uri)
        bare = urlunparse(parsed._replace(query="", fragment=""))
        if not bare.startswith(self._base + "/"):
            raise CapsuleInputError(f"{bare} is not in the capsule container {self._base}")
        name = unquote(bare[len(self._base) + 1 :])
        if not name or ".." in name.split("/"):
            raise CapsuleInputError(f"{bare} does not name a capsule")
        return self.container.get_blob_client(name)

    # -- operations ------------------------------------------------------------------------
    def put(self, capsule_id: str, version: int, path: Path) -> str:
        name = object_name(capsule_id, version)
        uri = self.uri_for(capsule_id, version)
        source = Path(path)
        if not source.is_file():
            raise NotFoundError(f"{source}: no such capsule file")
        sha, size = _file_digest(source)
        blob = self.container.get_blob_client(name)
        try:
            try:
                self._upload(blob, source, sha, size, capsule_id, version)
            except ResourceNotFoundError as exc:
                if getattr(exc, "error_code", None) != "ContainerNotFound":
                    raise
                with contextlib.suppress(ResourceExistsError):  # created meanwhile
                    self.container.create_container()
                self._upload(blob, source, sha, size, capsule_id, version)
        except ResourceExistsError:
            self._check_stored(blob, sha, size, uri, existing=True)
            return uri
        except ClientAuthenticationError as exc:
            raise CapsuleStorageError(f"Azure refused the credentials: {_short(exc)}") from None
        except AzureError as exc:
            raise CapsuleStorageError(f"cannot upload {name}: {_short(exc)}") from None
        self._check_stored(blob, sha, size, uri, existing=False)
        return uri

    def _upload(
        self, blob: BlobClient, source: Path, sha: str, size: int, capsule_id: str, version: int
    ) -> None:
        with source.open("rb") as fh:
            blob.upload_blob(
                fh,
                length=size,
                overwrite=False,
                metadata={SHA_METADATA: sha, "capsule_id": capsule_id, "version": str(version)},
                content_settings=ContentSettings(content_type="application/zip"),
                validate_content=True,
                max_concurrency=self.max_concurrency,
            )

    def _check_stored(
        self, blob: BlobClient, sha: str, size: int, uri: str, *, existing: bool
    ) -> None:
        try:
            props = blob.get_blob_properties()
        except AzureError as exc:
            raise CapsuleStorageError(f"cannot read back {uri}: {_short(exc)}") from None
        stored_sha = (props.metadata or {}).get(SHA_METADATA)
        if props.size == size and stored_sha == sha:
            return
        if existing:
            raise CapsuleStorageError(f"{uri} already exists with other content; not overwritten")
        raise CapsuleStorageError(
            f"{uri} was stored with size {props.size} and sha256 {stored_sha}, "
            f"expected {size} and {sha}"
        )

    def get(self, uri: str, dest: Path) -> Path:
        blob = self._blob(uri)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.tmp"
        try:
            props = blob.get_blob_properties()
            expected = (props.metadata or {}).get(SHA_METADATA)
            digest = hashlib.sha256()
            size = 0
            downloader = blob.download_blob(
                max_concurrency=self.max_concurrency,
                etag=props.etag,
                match_condition=MatchConditions.IfNotModified,
            )
            with tmp.open("xb") as out:
                for block in downloader.chunks():
                    out.write(block)
                    digest.update(block)
                    size += len(block)
                out.flush()
                os.fsync(out.fileno())
            if size != props.size or (expected is not None and digest.hexdigest() != expected):
                raise CapsuleStorageError(
                    f"{uri}: downloaded {size} bytes with sha256 {digest.hexdigest()}, "
                    f"the store says {props.size} bytes and {expected}"
                )
            os.replace(tmp, dest)
        except ResourceNotFoundError:
            raise NotFoundError(f"{uri}: no such capsule in the container") from None
        except AzureError as exc:
            raise CapsuleStorageError(f"cannot download {uri}: {_short(exc)}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def exists(self, uri: str) -> bool:
        try:
            return bool(self._blob(uri).exists())
        except AzureError as exc:
            raise CapsuleStorageError(f"cannot check {uri}: {_short(exc)}") from None

    def delete(self, uri: str) -> None:
        try:
            self._blob(uri).delete_blob()
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise CapsuleStorageError(f"cannot delete {uri}: {_short(exc)}") from None
