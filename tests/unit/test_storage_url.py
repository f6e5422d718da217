"""Repository URLs for the cloud backends: options, credentials files, clear errors (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from barge.errors import InvalidInput
from barge.storage.azure import AzureBlobStore, AzureOptions, read_credentials_file
from barge.storage.gcs import GCSStore
from barge.storage.url import open_store


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCOUNT_KEY", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)


def test_velero_azure_credentials_file_is_parsed(tmp_path: Path) -> None:
    creds = tmp_path / "cloud"
    creds.write_text(
        "# written by velero install\n\nAZURE_STORAGE_ACCOUNT=acct\n"
        'AZURE_STORAGE_ACCOUNT_ACCESS_KEY="a2V5"\nAZURE_CLOUD_NAME=AzurePublicCloud\n'
    )
    assert read_credentials_file(creds)["AZURE_STORAGE_ACCOUNT_ACCESS_KEY"] == "a2V5"
    options = AzureOptions.from_query("c", "p", {"credentials_file": str(creds)})
    assert (options.account, options.account_key, options.prefix) == ("acct", "a2V5", "p")
    store = open_store(f"azure://c/p?credentials_file={creds}")
    assert isinstance(store, AzureBlobStore)
    assert store.describe() == "azure://c/p at https://acct.blob.core.windows.net"


def test_the_url_account_wins_over_the_files(tmp_path: Path) -> None:
    creds = tmp_path / "cloud"
    creds.write_text("AZURE_STORAGE_ACCOUNT=fromfile\nAZURE_STORAGE_ACCOUNT_ACCESS_KEY=a2V5\n")
    query = {"credentials_file": str(creds), "account": "url"}
    assert AzureOptions.from_query("c", "", query).account == "url"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("AZURE_STORAGE_ACCOUNT=a\n", "lacks AZURE_STORAGE_ACCOUNT_ACCESS_KEY"),
        ("AZURE_STORAGE_ACCOUNT=a\njust a line\n", "line 2: expected NAME=value"),
        ("AZURE_STORAGE_ACCOUNT_ACCESS_KEY=not base64!\nAZURE_STORAGE_ACCOUNT=a\n", "invalid Azure config"),
    ],
)
def test_bad_azure_credentials_files_say_what_to_fix(tmp_path: Path, content: str, message: str) -> None:
    creds = tmp_path / "cloud"
    creds.write_text(content)
    with pytest.raises(InvalidInput, match=message) as raised:
        open_store(f"azure://c?credentials_file={creds}")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("azure://c/p", "add \\?account=NAME"),
        ("azure://c?account=a&colour=blue", "unknown Azure option"),
        ("azure:///p?account=a", "missing bucket or container"),
        ("gs://b?colour=blue", "unknown GCS option"),
        ("gs://b?credentials_file=/nonexistent/key.json", "cannot read GCS credentials file"),
        ("azure://c?credentials_file=/nonexistent/cloud", "cannot read Azure credentials file"),
        ("gopher://x", "supported: file://, s3://, gs://, azure://"),
    ],
)
def test_bad_urls_say_what_to_fix(url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        open_store(url)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read GCS credentials file"),
        ("[1]", "not a JSON object"),
        ('{"type": "service_account", "client_email": "x@y"}', "lacks private_key"),
    ],
)
def test_bad_gcs_key_files_say_what_to_fix(tmp_path: Path, content: str, message: str) -> None:
    key = tmp_path / "key.json"
    key.write_text(content)
    with pytest.raises(InvalidInput, match=message):
        open_store(f"gs://b?credentials_file={key}")


def test_gcs_key_from_the_environment_as_veleros_gcp_plugin_gets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "key.json"
    key.write_text('{"client_email": "x@y"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    with pytest.raises(InvalidInput, match="lacks private_key"):
        open_store("gs://b/p")
    key.write_text('{"disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}')
    store = open_store("gs://b/p?endpoint=http://127.0.0.1:1")
    assert isinstance(store, GCSStore)
    assert store.describe() == "gs://b/p at http://127.0.0.1:1"
