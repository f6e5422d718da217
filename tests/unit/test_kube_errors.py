"""The one mapping from Kubernetes API and transport errors to barge.errors."""

from __future__ import annotations

import json

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from barge import errors
from barge.kube.errors import status_error, translate


def api_error(status: int, message: str = "boom", reason: str = "Reason") -> ApiException:
    err = ApiException(status=status, reason=reason)
    err.body = json.dumps({"kind": "Status", "code": status, "message": message})
    return err


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, errors.TemporaryError),
        (400, errors.InvalidInput),
        (401, errors.Unauthenticated),
        (403, errors.PermissionDenied),
        (404, errors.NotFound),
        (408, errors.TemporaryError),
        (409, errors.Conflict),
        (410, errors.Expired),
        (422, errors.InvalidInput),
        (429, errors.TooManyRequests),
        (500, errors.TemporaryError),
        (503, errors.TemporaryError),
        (504, errors.TemporaryError),
        (405, errors.PermanentError),
    ],
)
def test_status_codes_map_to_the_hierarchy(status: int, expected: type[errors.BargeError]) -> None:
    translated = translate(api_error(status))
    assert type(translated) is expected


def test_conflict_and_expired_are_temporary_and_denials_permanent() -> None:
    assert isinstance(translate(api_error(409)), errors.TemporaryError)
    assert isinstance(translate(api_error(410)), errors.TemporaryError)
    assert isinstance(translate(api_error(401)), errors.PermanentError)
    assert isinstance(translate(api_error(403)), errors.PermanentError)


def test_the_message_is_the_servers_status_message_with_context() -> None:
    err = api_error(422, 'DataUpload.velero.io "x" is invalid: spec.sourcePVC: Required value')
    translated = translate(err, "create DataUpload velero/x")
    assert str(translated) == (
        'create DataUpload velero/x: DataUpload.velero.io "x" is invalid: '
        "spec.sourcePVC: Required value (HTTP 422)"
    )


def test_a_body_that_is_not_json_or_missing_still_gives_a_message() -> None:
    plain = ApiException(status=502, reason="Bad Gateway")
    plain.body = b"<html>upstream down</html>"
    assert "upstream down" in str(translate(plain))
    assert "Not Found" in str(translate(ApiException(status=404, reason="Not Found")))


@pytest.mark.parametrize(
    "transport",
    [
        urllib3.exceptions.ReadTimeoutError(None, "/api", "read timed out"),  # type: ignore[arg-type]
        urllib3.exceptions.ProtocolError("Connection broken"),
        urllib3.exceptions.MaxRetryError(None, "/api", ConnectionRefusedError()),  # type: ignore[arg-type]
        ConnectionResetError("reset by peer"),
        TimeoutError("timed out"),
    ],
)
def test_transport_failures_are_temporary(transport: Exception) -> None:
    translated = translate(transport, "get Pod a/b")
    assert type(translated) is errors.TemporaryError
    assert str(translated).startswith("get Pod a/b: cannot reach the Kubernetes API")


def test_barge_errors_pass_through_unchanged() -> None:
    original = errors.NotFound("already translated")
    assert translate(original) is original


def test_watch_error_events_use_the_same_mapping() -> None:
    assert type(status_error(410, "too old resource version")) is errors.Expired
    assert type(status_error(500, "etcd down")) is errors.TemporaryError
