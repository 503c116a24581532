"""Secret providers (environment, Azure Key Vault) and the JWT signing keys they hold.

Without QLP_JWT_KEYS from the provider, QLP keeps its own key in QLP_HOME/keys/jwt-keys,
created once (mode 0600, in a folder QLP creates 0700), so `qlp serve` needs no setup and
tokens stay valid across restarts. Folders that already exist are left exactly as they are.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from qlp.auth.base import SecretProvider
from qlp.auth.tokens import SigningKeys
from qlp.errors import ConfigError
from qlp.keyfiles import create_once, private_folder, read_private

if TYPE_CHECKING:
    from azure.keyvault.secrets import SecretClient

JWT_KEYS_NAME = "QLP_JWT_KEYS"
KEY_DIR = "keys"
JWT_KEY_FILE = "jwt-keys"


class EnvSecretProvider:
    """Secrets from given values (the settings, read from the environment or .env)."""

    def __init__(self, values: Mapping[str, str | None]) -> None:
        self._values = dict(values)

    def get(self, name: str) -> str | None:
        value = self._values.get(name)
        return value if value is not None and value.strip() else None


def keyvault_secret_name(name: str) -> str:
    """Key Vault secret names allow letters, digits and dashes: QLP_JWT_KEYS -> qlp-jwt-keys."""
    return name.lower().replace("_", "-")


class KeyVaultSecretProvider:
    """Secrets from Azure Key Vault, signed in with DefaultAzureCredential (managed identity
    in Azure, the Azure CLI's login on a workstation)."""

    def __init__(self, vault_url: str, *, client: SecretClient | None = None) -> None:
        if not vault_url.startswith("https://"):
            raise ConfigError(
                f"QLP_SECRETS: the Key Vault URL must start with https:// (got {vault_url!r})"
            )
        self.vault_url = vault_url.rstrip("/")
        self._client = client

    def _secret_client(self) -> SecretClient:
        if self._client is None:
            from azure.identity import DefaultAzureCredential
            from azure.keyvault.secrets import SecretClient

            self._client = SecretClient(self.vault_url, DefaultAzureCredential())
        return self._client

    def get(self, name: str) -> str | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        secret_name = keyvault_secret_name(name)
        try:
            value = self._secret_client().get_secret(secret_name).value
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            what = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"cannot read secret {secret_name!r} from Azure Key Vault {self.vault_url} "
                f"(QLP_SECRETS): {type(exc).__name__}: {what}"
            ) from None
        return value if value is not None and value.strip() else None


def load_signing_keys(provider: SecretProvider, home: Path) -> SigningKeys:
    """QLP_JWT_KEYS from the provider; else the key file under `home`, created on first use."""
    value = provider.get(JWT_KEYS_NAME)
    if value is not None:
        return SigningKeys.parse(value)
    path = jwt_key_file(home)
    if not os.path.lexists(path):
        private_folder(path.parent)
        kid = "k" + datetime.now(UTC).strftime("%Y%m%d")
        create_once(path, f"{kid}={secrets.token_urlsafe(48)}\n".encode("ascii"))
    return _read_key_file(path)


def jwt_key_file(home: Path) -> Path:
    return home / KEY_DIR / JWT_KEY_FILE


def _read_key_file(path: Path) -> SigningKeys:
    data = read_private(path, "the JWT key file")
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
    text = ",".join(line for line in lines if line and not line.startswith("#"))
    try:
        return SigningKeys.parse(text)
    except ConfigError as exc:
        raise ConfigError(f"the JWT key file {path}: {exc.message}") from None
