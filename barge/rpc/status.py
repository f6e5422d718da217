"""The one mapping between Barge's error classes and gRPC status codes, in both directions.

Retry-vs-fail is decided on the class alone (``barge.errors``), so a status code crossing the wire
must come back as the same kind of error it left as.
"""

from __future__ import annotations

import grpc

from barge.errors import (
    BargeError,
    Canceled,
    InvalidInput,
    NotFound,
    PermanentError,
    PermissionDenied,
    TemporaryError,
    Unauthenticated,
)

# Most specific first: the first class an error is an instance of decides its code.
_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (PermanentError, grpc.StatusCode.FAILED_PRECONDITION),
    (TemporaryError, grpc.StatusCode.UNAVAILABLE),
    (Canceled, grpc.StatusCode.CANCELLED),
)
_ERRORS: dict[grpc.StatusCode, type[BargeError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: PermanentError,
    grpc.StatusCode.UNAVAILABLE: TemporaryError,
    grpc.StatusCode.DEADLINE_EXCEEDED: TemporaryError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: TemporaryError,
    grpc.StatusCode.ABORTED: TemporaryError,
    grpc.StatusCode.CANCELLED: Canceled,
}


# What a replica that does not lead answers a new stream (UNAVAILABLE); the client retries soon.
STANDBY_REFUSAL = "this coordinator is not serving (not the leader); retry"


def code_for(error: BaseException) -> grpc.StatusCode:
    """The status code an error ends an RPC with; INTERNAL for anything Barge did not raise on purpose."""
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def error_for(code: grpc.StatusCode, details: str) -> BargeError:
    """The Barge error a failed RPC means to its caller. Unknown codes are temporary: the peer may recover."""
    cls = _ERRORS.get(code, TemporaryError)
    return cls(f"{details} (gRPC {code.name})")


def error_from_rpc(error: grpc.RpcError) -> BargeError:
    """``error_for`` applied to a failed call (a ``grpc.Call`` carries code and details)."""
    if isinstance(error, grpc.Call):
        return error_for(error.code(), error.details() or "")
    return TemporaryError(f"gRPC call failed: {error}")
