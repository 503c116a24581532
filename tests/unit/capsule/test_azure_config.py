"""Configuring the Azure store needs no network (the round trip is in tests/integration)."""

from __future__ import annotations

import pytest

from qlp.capsule.azure_store import AzureCapsuleStore
from qlp.capsule.base import CapsuleInputError
from qlp.errors import ConfigError

CAPSULE = "QL-CAP-0123456789abcdef"


def test_default_credential_store_names_blobs_without_contacting_azure() -> None:
    store = AzureCapsuleStore.from_settings_values(
        "https://acct.blob.core.windows.net/capsules?sv=2024&sig=SECRET", None
    )
    uri = store.uri_for(CAPSULE, 2)
    assert uri == f"https://acct.blob.core.windows.net/capsules/{CAPSULE}/v2.qlcapsule"
    assert "SECRET" not in uri  # a SAS token never becomes part of a stored URI
    with pytest.raises(CapsuleInputError, match="not in the capsule container"):
        store.exists("https://other.blob.core.windows.net/capsules/x")


def test_connection_string_with_a_bare_container_name() -> None:
    conn = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    )
    store = AzureCapsuleStore.from_settings_values("capsules", conn)
    assert store.uri_for(CAPSULE, 1) == (
        f"http://127.0.0.1:9/devstoreaccount1/capsules/{CAPSULE}/v1.qlcapsule"
    )


def test_missing_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="QLP_STORAGE_URL"):
        AzureCapsuleStore.from_settings_values("", None)


def test_bad_connection_string_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a valid Azure Storage connection string") as err:
        AzureCapsuleStore.from_settings_values("capsules", "AccountKey=SECRET;garbage")
    assert "SECRET" not in str(err.value)
