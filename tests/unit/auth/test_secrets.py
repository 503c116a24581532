"""Where the JWT signing keys come from: the provider, else a key file made once, private."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from qlp.auth.secrets import (
    EnvSecretProvider,
    KeyVaultSecretProvider,
    jwt_key_file,
    keyvault_secret_name,
    load_signing_keys,
)
from qlp.auth.tokens import TokenService
from qlp.config import Settings
from qlp.engine.wiring import make_secret_provider
from qlp.errors import ConfigError

SECRET = "s" * 48


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_env_value_is_used_and_no_file_is_written(tmp_path: Path) -> None:
    keys = load_signing_keys(EnvSecretProvider({"QLP_JWT_KEYS": f"prod={SECRET}"}), tmp_path)
    assert keys.current_kid == "prod"
    assert keys.secret("prod") == SECRET
    assert not (tmp_path / "keys").exists()


def test_blank_env_value_counts_as_absent() -> None:
    assert EnvSecretProvider({"QLP_JWT_KEYS": "  "}).get("QLP_JWT_KEYS") is None
    assert EnvSecretProvider({"QLP_JWT_KEYS": None}).get("QLP_JWT_KEYS") is None
    assert EnvSecretProvider({}).get("QLP_JWT_KEYS") is None


def test_key_file_is_created_once_private_and_survives_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"  # does not exist yet
    provider = EnvSecretProvider({})
    first = load_signing_keys(provider, home)
    path = jwt_key_file(home)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert _mode(home) == 0o700
    assert first.current_kid.startswith("k" + dt.datetime.now(dt.UTC).strftime("%Y"))
    secret = first.secret(first.current_kid)
    assert secret is not None
    assert len(secret) >= 64
    # A token issued before a "restart" verifies after it: the same key is read back.
    token, _ = TokenService(first, 60).issue_access("QLU-1", "member", "QLS-1")
    again = load_signing_keys(provider, home)
    assert again.kids == first.kids
    assert TokenService(again, 60).verify_access(token).user_id == "QLU-1"
    assert [p.name for p in path.parent.iterdir()] == ["jwt-keys"]  # no temp file left


def test_existing_folder_modes_are_never_loosened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "keys").mkdir()
    os.chmod(home, 0o755)
    os.chmod(home / "keys", 0o751)
    before = {p: p.lstat() for p in (tmp_path, home)}
    load_signing_keys(EnvSecretProvider({}), home)
    for path, info in before.items():  # the parents of the key folder: untouched
        after = path.lstat()
        assert stat.S_IMODE(after.st_mode) == stat.S_IMODE(info.st_mode), path
        assert after.st_uid == info.st_uid
    # QLP's own key folder, found open to others, is closed before a key goes in.
    assert _mode(home / "keys") == 0o700
    assert _mode(jwt_key_file(home)) == 0o600


def test_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    load_signing_keys(EnvSecretProvider({}), tmp_path)
    os.chmod(jwt_key_file(tmp_path), 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_signing_keys(EnvSecretProvider({}), tmp_path)


def test_key_file_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_text(f"evil={SECRET}\n")
    os.chmod(target, 0o600)
    jwt_key_file(tmp_path).symlink_to(target)
    with pytest.raises(ConfigError, match="cannot open"):
        load_signing_keys(EnvSecretProvider({}), tmp_path)


def test_key_file_can_be_edited_for_rotation(tmp_path: Path) -> None:
    load_signing_keys(EnvSecretProvider({}), tmp_path)
    path = jwt_key_file(tmp_path)
    old = path.read_text().strip()
    path.write_text(f"# rotated\nnew={SECRET}\n{old}\n")
    keys = load_signing_keys(EnvSecretProvider({}), tmp_path)
    assert keys.current_kid == "new"
    assert len(keys.kids) == 2


def test_bad_key_file_names_the_file(tmp_path: Path) -> None:
    load_signing_keys(EnvSecretProvider({}), tmp_path)
    jwt_key_file(tmp_path).write_text("k=short\n")
    with pytest.raises(ConfigError, match="jwt-keys"):
        load_signing_keys(EnvSecretProvider({}), tmp_path)


def test_make_secret_provider_from_settings(tmp_path: Path) -> None:
    env = make_secret_provider(Settings(home=tmp_path, jwt_keys=SecretStr(f"a={SECRET}")))
    assert isinstance(env, EnvSecretProvider)
    assert env.get("QLP_JWT_KEYS") == f"a={SECRET}"
    assert make_secret_provider(Settings(home=tmp_path)).get("QLP_JWT_KEYS") is None
    vault = make_secret_provider(
        Settings(home=tmp_path, secrets="keyvault:https://qlp.vault.azure.net/")
    )
    assert isinstance(vault, KeyVaultSecretProvider)
    assert vault.vault_url == "https://qlp.vault.azure.net"
    with pytest.raises(ConfigError, match="QLP_SECRETS"):
        make_secret_provider(Settings(home=tmp_path, secrets="vault"))
    with pytest.raises(ConfigError, match="QLP_SECRETS"):
        make_secret_provider(Settings(home=tmp_path, secrets="keyvault:http://plain"))


def test_keyvault_secret_names_use_dashes() -> None:
    assert keyvault_secret_name("QLP_JWT_KEYS") == "qlp-jwt-keys"


# -- Azure Key Vault, over real HTTPS on 127.0.0.1 --------------------------------------------
class _Vault(BaseHTTPRequestHandler):
    secrets: dict[str, str] = {}  # noqa: RUF012
    seen: list[str] = []  # noqa: RUF012

    def log_message(self, *args: Any) -> None:
        return None

    def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        name = self.path.split("?")[0].removeprefix("/secrets/").strip("/").split("/")[0]
        if self.headers.get("Authorization") != "Bearer test-token":
            self._send(
                401,
                {"error": {"code": "Unauthorized", "message": "no token"}},
                {
                    "WWW-Authenticate": 'Bearer authorization="https://login.example/tenant", '
                    'resource="https://vault.azure.net"'
                },
            )
            return
        self.seen.append(name)
        if name == "forbidden-secret":
            self._send(403, {"error": {"code": "Forbidden", "message": "access denied by policy"}})
        elif name in self.secrets:
            host = f"https://{self.headers['Host']}"
            self._send(
                200,
                {
                    "value": self.secrets[name],
                    "id": f"{host}/secrets/{name}/0123456789abcdef",
                    "attributes": {"enabled": True},
                },
            )
        else:
            self._send(404, {"error": {"code": "SecretNotFound", "message": f"{name} not found"}})


class _Credential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("test-token", int(time.time()) + 3600)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cert, key = _self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Vault)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    _Vault.secrets = {}
    _Vault.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


def _provider(url: str, cert: Path) -> KeyVaultSecretProvider:
    client = SecretClient(
        url,
        _Credential(),  # type: ignore[arg-type]
        verify_challenge_resource=False,
        connection_verify=str(cert),
        retry_total=0,
    )
    return KeyVaultSecretProvider(url, client=client)


def test_keyvault_reads_the_dashed_secret(vault: tuple[str, Path], tmp_path: Path) -> None:
    url, cert = vault
    _Vault.secrets["qlp-jwt-keys"] = f"kv={SECRET}"
    keys = load_signing_keys(_provider(url, cert), tmp_path / "home")
    assert keys.kids == ["kv"]
    assert _Vault.seen == ["qlp-jwt-keys"]
    assert not (tmp_path / "home").exists()  # no key file when the vault has the keys


def test_keyvault_missing_secret_falls_back_to_the_key_file(
    vault: tuple[str, Path], tmp_path: Path
) -> None:
    url, cert = vault
    provider = _provider(url, cert)
    assert provider.get("QLP_JWT_KEYS") is None
    load_signing_keys(provider, tmp_path)
    assert jwt_key_file(tmp_path).exists()


def test_keyvault_refusal_is_a_config_error_naming_vault_and_secret(
    vault: tuple[str, Path],
) -> None:
    url, cert = vault
    with pytest.raises(ConfigError) as info:
        _provider(url, cert).get("FORBIDDEN_SECRET")
    message = str(info.value)
    assert url in message
    assert "forbidden-secret" in message
    assert "access denied by policy" in message


def test_keyvault_unreachable_is_a_config_error(tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path)
    # A port nobody listens on (bound and closed at once).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"https://127.0.0.1:{port}"
    with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
        _provider(url, cert).get("QLP_JWT_KEYS")


def test_signing_keys_from_vault_must_still_be_strong(vault: tuple[str, Path]) -> None:
    url, cert = vault
    _Vault.secrets["qlp-jwt-keys"] = "kv=weak"
    with pytest.raises(ConfigError, match="QLP_JWT_KEYS"):
        load_signing_keys(_provider(url, cert), Path("/nonexistent"))
