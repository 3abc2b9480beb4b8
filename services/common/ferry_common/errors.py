"""Domain errors shared by every Ferry service and their mapping to gRPC status.

One root (`FerryError`); each subclass fixes the canonical gRPC code. The
mapping puts a `google.rpc.Status` with an `ErrorInfo` detail in the trailers so
clients in any language can read the machine-readable reason and metadata.
Bad input must never surface as UNKNOWN or INTERNAL.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "ferry.dev"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class FerryError(Exception):
    """Root of every domain error. Subclasses set `code`."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None,
                 metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        # Extra detail messages (e.g. per-host rejections), packed into Any.
        self.details: list = []

    def __str__(self) -> str:
        return self.message


class InvalidArgument(FerryError):
    """A request field is malformed; `field` names it."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str, *, reason: str | None = None) -> None:
        super().__init__(f"{field}: {message}", reason=reason, metadata={"field": field})
        self.field = field


class NotFound(FerryError):
    """A named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found", reason=f"{kind.upper()}_NOT_FOUND",
                         metadata={"resource": kind, "id": ident})
        self.kind = kind
        self.ident = ident


class AlreadyExists(FerryError):
    """A resource with that unique key exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} already exists", reason=f"{kind.upper()}_EXISTS",
                         metadata={"resource": kind, "id": ident})


class FailedPrecondition(FerryError):
    """The resource is in a state that forbids the operation; `state` names it."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, state: str = "", reason: str | None = None,
                 metadata: Mapping[str, str] | None = None) -> None:
        meta = dict(metadata or {})
        if state:
            meta["state"] = state
        super().__init__(message, reason=reason, metadata=meta)
        self.state = state


class Aborted(FerryError):
    """A concurrent operation holds the resource (e.g. a second task on a server)."""

    code = grpc.StatusCode.ABORTED
    reason = "CONCURRENT_OPERATION"


class ResourceExhausted(FerryError):
    """No capacity; `details` carry per-host reasons."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "NO_CAPACITY"


class Unavailable(FerryError):
    """A peer service cannot be reached; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "PEER_UNAVAILABLE"


class DeadlineExceeded(FerryError):
    """An operation did not finish in time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "TIMEOUT"


class Internal(FerryError):
    """A bug or an unexpected failure of a real part (QEMU, disk...)."""

    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


def to_status(err: FerryError) -> status_pb2.Status:
    """Build the rich google.rpc.Status for a domain error."""
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    details = [info, *err.details]
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    return status_pb2.Status(code=getattr(code_pb2, err.code.name), message=err.message,
                             details=packed)


def trailing_metadata(err: FerryError) -> tuple[tuple[str, bytes], ...]:
    return ((STATUS_DETAILS_KEY, to_status(err).SerializeToString()),)


def status_from_rpc_error(exc: grpc.RpcError) -> status_pb2.Status | None:
    """Read the rich status of a failed call, or None when the peer sent none."""
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY:
            st = status_pb2.Status()
            st.ParseFromString(value)
            return st
    return None


def error_info(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, if any."""
    st = status_from_rpc_error(exc)
    if st is None:
        return None
    for a in st.details:
        if a.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            a.Unpack(info)
            return info
    return None


def from_rpc_error(exc: grpc.aio.AioRpcError | grpc.RpcError, peer: str) -> FerryError:
    """Turn a failed call to another Ferry service into a domain error.

    The code is kept (a NOT_FOUND from a host agent stays NOT_FOUND), except that
    transport failures become Unavailable naming the peer. The RpcError is
    kept as `__cause__` by the caller (`raise from_rpc_error(e, p) from e`).
    """
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    info = error_info(exc)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED):
        err: FerryError = Unavailable(f"{peer}: {details}")
        err.metadata["peer"] = peer
        return err
    err = FerryError(f"{peer}: {details}", reason=info.reason if info else None,
                     metadata=dict(info.metadata) if info else None)
    err.code = code if code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK) \
        else grpc.StatusCode.INTERNAL
    return err
