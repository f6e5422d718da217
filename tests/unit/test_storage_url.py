"""Repository URLs for the cloud backends: options, credentials files, clear errors (no server needed)."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from obstore import exceptions as obs_errors

from barge.errors import InvalidInput, PermanentError
from barge.storage import Credentials
from barge.storage.azure import AzureBlobStore, AzureOptions, read_credentials_file
from barge.storage.gcs import GCSStore
from barge.storage.s3 import S3Options
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


SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (f"aws_access_key_id=AKIA\naws_secret_access_key={SECRET}\n", r"line 1: expected a \[profile\]"),
        (f"[default]\naws_access_key_id=AKIA\n{SECRET}\n", "line 3: expected NAME = VALUE"),
        (f"[default]\naws_secret_access_key={SECRET}\naws_secret_access_key={SECRET}\n", "line 3: "),
        (f"[default]\n[default]\naws_secret_access_key={SECRET}\n", r"line 2: \[default\] appears twice"),
    ],
)
def test_a_malformed_s3_credentials_file_names_the_line_never_its_content(
    tmp_path: Path, content: str, line: str
) -> None:
    """configparser's messages quote the offending line, which may be the secret key itself; the
    message reaches a DataUpload's status, its Events and the logs."""
    creds = tmp_path / "cloud"
    creds.write_text(content)
    with pytest.raises(InvalidInput, match=line) as raised:
        open_store(f"s3://b/p?credentials_file={creds}")
    shown = "".join(traceback.format_exception(raised.value))
    assert str(creds) in str(raised.value)
    assert SECRET not in shown


def test_in_memory_credentials_are_parsed_where_messages_name_their_source() -> None:
    """The agent hands the Secret's value over in memory; a key with '%' is a key, not a template."""
    creds = Credentials(
        f"[default]\naws_access_key_id=AKIA\naws_secret_access_key={SECRET}%x\n".encode(),
        "Secret velero/cloud-credentials key cloud",
    )
    options = S3Options.from_query("b", "p", {}, creds)
    assert (options.access_key, options.secret_key) == ("AKIA", f"{SECRET}%x")
    assert SECRET not in repr(options)
    assert SECRET not in repr(creds)
    broken = Credentials(f"[default]\n{SECRET}\n".encode(), "Secret velero/cloud-credentials key cloud")
    with pytest.raises(InvalidInput, match=r"^Secret velero/cloud-credentials key cloud: line 2") as raised:
        open_store("s3://b/p", credentials=broken)
    assert SECRET not in str(raised.value)
    with pytest.raises(InvalidInput, match="both in memory and as credentials_file"):
        open_store("s3://b/p?credentials_file=/x", credentials=creds)
    with pytest.raises(InvalidInput, match="cloud-credentials key cloud: not UTF-8"):
        open_store("gs://b/p", credentials=Credentials(b"\xff" + SECRET.encode(), broken.source))
    azure = Credentials(f"AZURE_STORAGE_ACCOUNT=a\n{SECRET}\n".encode(), broken.source)
    with pytest.raises(InvalidInput, match="key cloud line 2: expected NAME=value") as raised:
        open_store("azure://c/p", credentials=azure)
    assert SECRET not in str(raised.value)


def test_a_gcs_key_that_is_not_json_is_reported_without_its_text(tmp_path: Path) -> None:
    key = tmp_path / "key.json"
    key.write_text('{"private_key": "' + SECRET + '" "client_email": "x@y"}')
    with pytest.raises(InvalidInput, match=r"not JSON \(Expecting ',' delimiter") as raised:
        open_store(f"gs://b?credentials_file={key}")
    assert SECRET not in "".join(traceback.format_exception(raised.value))


@pytest.mark.parametrize(
    "url",
    [
        f"s3://AKIA:{SECRET}@bucket/p",
        f"s3://bucket/p?endpoint=https://AKIA:{SECRET}@minio:9000",
    ],
)
def test_urls_with_a_password_are_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(InvalidInput, match="remove the user:password@ part") as raised:
        open_store(url)
    assert SECRET not in str(raised.value)


def test_a_service_that_echoes_a_key_has_it_scrubbed_from_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 answers some errors with the request's <AWSAccessKeyId>; any credential value in an
    answer is replaced before the message leaves the store, and the echoing error is no cause."""
    text = f"[default]\naws_access_key_id=AKIAECHOED\naws_secret_access_key={SECRET}\n"
    creds = Credentials(text.encode(), "s")
    store = open_store("s3://b/p?endpoint=http://127.0.0.1:1", credentials=creds)
    answer = f"<Error><AWSAccessKeyId>AKIAECHOED</AWSAccessKeyId><Hint>{SECRET}</Hint></Error>"

    def echo(*args: object, **kwargs: object) -> None:
        raise obs_errors.PermissionDeniedError(answer)

    monkeypatch.setattr("barge.storage.cloud.obstore.get", echo)
    with pytest.raises(PermanentError, match=r"access denied .*\[redacted\]") as raised:
        store.get("config")
    shown = "".join(traceback.format_exception(raised.value))
    assert "AKIAECHOED" not in shown
    assert SECRET not in shown
