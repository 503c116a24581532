"""Azure Blob Storage capsule store against Azurite (npm `azurite`, installed by scripts/setup).

Azurite's blob service is started on 127.0.0.1 with a free port, in memory, without
telemetry, and stopped afterwards. Nothing but that loopback address is contacted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qlp.capsule.azure_store import AzureCapsuleStore
from qlp.capsule.base import (
    BuiltCapsule,
    CapsuleInputError,
    CapsuleStorageError,
    CapsuleStore,
)
from qlp.capsule.builder import build_capsule
from qlp.capsule.verify import verify_capsule
from qlp.errors import NotFoundError
from tests.unit.capsule.conftest import make_inputs, write_project

AZURITE = shutil.which("azurite-blob")
pytestmark = pytest.mark.skipif(
    AZURITE is None,
    reason="azurite is not installed (scripts/setup installs it: npm install -g azurite)",
)

# Azurite's well-known development account (public, documented; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"azurite exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"azurite did not listen on 127.0.0.1:{port} within {timeout}s")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running Azurite blob service; yields its blob endpoint."""
    assert AZURITE is not None
    port = _free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    log = (workdir / "azurite.log").open("wb")
    proc = subprocess.Popen(
        [
            AZURITE,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--silent",
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
        ],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            _wait_listening(port, proc)
        except RuntimeError as exc:
            output = (workdir / "azurite.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{exc}; azurite said: {output}") from None
        yield f"http://127.0.0.1:{port}/{ACCOUNT}"
    finally:
        log.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint={endpoint};"
    )


@pytest.fixture
def store(azurite: str, request: pytest.FixtureRequest) -> AzureCapsuleStore:
    container = "capsules-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:12]
    return AzureCapsuleStore.from_settings_values(
        f"{azurite}/{container}", _connection_string(azurite)
    )


@pytest.fixture
def built(tmp_path: Path) -> BuiltCapsule:
    project = write_project(tmp_path / "project")
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    return build_capsule(make_inputs(project), tmp_path / "c.qlcapsule", key)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip(store: AzureCapsuleStore, built: BuiltCapsule, tmp_path: Path) -> None:
    port: CapsuleStore = store
    uri = port.put(built.capsule_id, 1, built.path)  # the container is created on demand
    assert uri == port.uri_for(built.capsule_id, 1)
    assert uri.startswith("http://127.0.0.1:")
    assert uri.endswith(f"/{built.capsule_id}/v1.qlcapsule")
    assert "?" not in uri
    assert port.exists(uri)
    got = port.get(uri, tmp_path / "down" / "c.qlcapsule")
    assert _sha(got) == built.sha256
    assert verify_capsule(got).ok
    props = store.container.get_blob_client(
        f"{built.capsule_id}/v1.qlcapsule"
    ).get_blob_properties()
    assert props.metadata["sha256"] == built.sha256
    assert props.size == built.size
    port.delete(uri)
    assert not port.exists(uri)
    port.delete(uri)  # idempotent
    with pytest.raises(NotFoundError):
        port.get(uri, tmp_path / "gone.qlcapsule")


def test_never_overwrites(store: AzureCapsuleStore, built: BuiltCapsule, tmp_path: Path) -> None:
    uri = store.put(built.capsule_id, 1, built.path)
    assert store.put(built.capsule_id, 1, built.path) == uri  # same bytes: kept, same URI
    other = tmp_path / "other.qlcapsule"
    other.write_bytes(b"not the same capsule")
    with pytest.raises(CapsuleStorageError, match="already exists with other content"):
        store.put(built.capsule_id, 1, other)
    got = store.get(uri, tmp_path / "again.qlcapsule")
    assert _sha(got) == built.sha256


def test_large_capsule_uploads_in_blocks(store: AzureCapsuleStore, tmp_path: Path) -> None:
    """Above the single-request size the SDK uploads blocks; the checks still hold."""
    store.container.create_container()
    blob_path = tmp_path / "big.qlcapsule"
    with blob_path.open("wb") as fh:
        for i in range(70):
            fh.write(hashlib.sha256(str(i).encode()).digest() * 32768)  # 1 MiB each
    uri = store.put("QL-CAP-00000000000000aa", 3, blob_path)
    got = store.get(uri, tmp_path / "big-down.qlcapsule")
    assert _sha(got) == _sha(blob_path)


def test_uris_outside_the_container_are_refused(store: AzureCapsuleStore, tmp_path: Path) -> None:
    with pytest.raises(CapsuleInputError, match="not in the capsule container"):
        store.get("http://127.0.0.1:1/devstoreaccount1/other/x.qlcapsule", tmp_path / "x")
    with pytest.raises(CapsuleInputError):
        store.exists(store.uri_for("QL-CAP-0000000000000000", 1).rsplit("/", 2)[0] + "/../x")
