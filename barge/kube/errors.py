"""The one place where Kubernetes API and transport errors become ``barge.errors``.

Callers decide retry-vs-fail on the class alone, so the status-code mapping must not drift between
the informer, the status writer and the leader elector: they all call ``translate``.
"""

from __future__ import annotations

import json

import urllib3
from kubernetes.client.exceptions import ApiException

from barge.errors import (
    BargeError,
    Conflict,
    Expired,
    InvalidInput,
    NotFound,
    PermanentError,
    PermissionDenied,
    TemporaryError,
    TooManyRequests,
    Unauthenticated,
)

_BY_STATUS: dict[int, type[BargeError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    408: TemporaryError,
    409: Conflict,
    410: Expired,
    422: InvalidInput,
    429: TooManyRequests,
}


def translate(err: BaseException, what: str = "") -> BargeError:
    """The ``barge.errors`` class for ``err``; ``what`` names the request for the message."""
    prefix = f"{what}: " if what else ""
    if isinstance(err, BargeError):
        return err
    if isinstance(err, ApiException):
        return _from_api_exception(err, prefix)
    if isinstance(err, urllib3.exceptions.HTTPError | OSError):
        return TemporaryError(f"{prefix}cannot reach the Kubernetes API: {err}")
    return PermanentError(f"{prefix}unexpected {type(err).__name__}: {err}")


def status_error(status: int, message: str, what: str = "") -> BargeError:
    """The error for an HTTP status (also the ``code`` of a watch ERROR event)."""
    prefix = f"{what}: " if what else ""
    if status == 0 or status >= 500:  # 0: the client saw no HTTP response (TLS or connection)
        return TemporaryError(f"{prefix}Kubernetes API unavailable ({status}): {message}")
    return _BY_STATUS.get(status, PermanentError)(f"{prefix}{message} (HTTP {status})")


def _from_api_exception(err: ApiException, prefix: str) -> BargeError:
    status = int(err.status or 0)
    return status_error(status, _server_message(err), prefix.removesuffix(": "))


def _server_message(err: ApiException) -> str:
    """The API server's ``Status.message`` when the body carries one, else the HTTP reason."""
    body = err.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str) and body:
        try:
            decoded = json.loads(body)
        except ValueError:
            return body[:500]
        if isinstance(decoded, dict) and decoded.get("message"):
            return str(decoded["message"])
    return str(err.reason or "no reason given")
