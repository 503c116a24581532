"""Capsules in a local folder (default QLP_HOME/capsules): <id>/v<version>.qlcapsule.

URIs are file:// URIs. A capsule is written to a temporary file, fsynced, then hard-linked
to its name, which fails if the name exists: nothing is ever replaced. Folders are 0700 and
files 0600, since capsules hold the intent's code and transcript.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from qlp.capsule.base import CapsuleInputError, CapsuleStorageError, object_name
from qlp.capsule.format import CHUNK
from qlp.errors import NotFoundError


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalCapsuleStore:
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()

    def uri_for(self, capsule_id: str, version: int) -> str:
        return (self.root / object_name(capsule_id, version)).as_uri()

    def _path(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise CapsuleInputError(f"{uri} is not a local capsule URI (file://...)")
        path = Path(unquote(parsed.path))
        if ".." in path.parts or not path.is_relative_to(self.root):
            raise CapsuleInputError(f"{uri} is outside the capsule folder {self.root}")
        return path

    def put(self, capsule_id: str, version: int, path: Path) -> str:
        target = self.root / object_name(capsule_id, version)
        source = Path(path)
        if not source.is_file():
            raise NotFoundError(f"{source}: no such capsule file")
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            target.parent.mkdir(exist_ok=True, mode=0o700)
            if target.exists():
                return self._existing(target, source)
            tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                    shutil.copyfileobj(src, out, CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                if _sha256(tmp) != _sha256(source):
                    raise CapsuleStorageError(f"copying {source} to {target} corrupted it")
                try:
                    os.link(tmp, target)
                except FileExistsError:  # another writer got there first
                    return self._existing(target, source)
                _fsync_dir(target.parent)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise CapsuleStorageError(f"cannot store {capsule_id} in {self.root}: {exc}") from None
        return target.as_uri()

    def _existing(self, target: Path, source: Path) -> str:
        if target.stat().st_size == source.stat().st_size and _sha256(target) == _sha256(source):
            return target.as_uri()
        raise CapsuleStorageError(f"{target} already exists with other content; not overwritten")

    def get(self, uri: str, dest: Path) -> Path:
        source = self._path(uri)
        if not source.is_file():
            raise NotFoundError(f"{uri}: no such capsule in {self.root}")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.tmp"
        try:
            with source.open("rb") as src, tmp.open("xb") as out:
                shutil.copyfileobj(src, out, CHUNK)
            if _sha256(tmp) != _sha256(source):
                raise CapsuleStorageError(f"copying {uri} to {dest} corrupted it")
            os.replace(tmp, dest)
        except OSError as exc:
            raise CapsuleStorageError(f"cannot copy {uri} to {dest}: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def exists(self, uri: str) -> bool:
        return self._path(uri).is_file()

    def delete(self, uri: str) -> None:
        path = self._path(uri)
        try:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when it was the last version
        except OSError as exc:
            raise CapsuleStorageError(f"cannot delete {uri}: {exc}") from None
