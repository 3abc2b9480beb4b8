"""The SDK's exceptions: one root, `ClientError`, built from a failed gRPC call.

A `ClientError` carries the canonical gRPC code, the message, the ErrorInfo
reason and metadata the region put in its `google.rpc.Status` details, and,
for RESOURCE_EXHAUSTED, every host the scheduler rejected with its reasons.
The `grpc.RpcError` it came from is kept as `__cause__`
(`raise translate(e, address) from e`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from ferry_common.errors import status_from_rpc_error
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from ferry_proto.region.v1 import resources_pb2
from ferry_proto.scheduler.v1 import scheduler_pb2

from .enums import enum_to_str


@dataclass(frozen=True)
class Rejection:
    """Why one scheduler filter refused one host."""

    filter: str
    reason: str
    message: str

    def __str__(self) -> str:
        head = "/".join(p for p in (self.filter, self.reason) if p)
        return f"{head}: {self.message}" if self.message else head


@dataclass(frozen=True)
class HostRejection:
    """A host the scheduler rejected, with every filter that failed."""

    host_id: str
    host_name: str
    rejections: tuple[Rejection, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        if self.host_name and self.host_id and self.host_name != self.host_id:
            return f"{self.host_name} ({self.host_id})"
        return self.host_name or self.host_id or "?"

    def __str__(self) -> str:
        return f"{self.label}: " + "; ".join(str(r) for r in self.rejections)


class ClientError(Exception):
    """Root of every SDK error.

    `code` is the `grpc.StatusCode` (None for errors that are not a call's
    status, such as `TaskFailed`); `code_name` is its printable name.
    """

    code: grpc.StatusCode | None = None
    default_code_name = "ERROR"

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, reason: str = "",
                 domain: str = "", metadata: dict[str, str] | None = None,
                 rejections: list[HostRejection] | None = None,
                 status: status_pb2.Status | None = None, address: str = "") -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.rejections: list[HostRejection] = list(rejections or [])
        self.status = status
        self.address = address

    @property
    def code_name(self) -> str:
        return self.code.name if self.code is not None else self.default_code_name

    @property
    def field(self) -> str:
        """The request field an INVALID_ARGUMENT names, or ''."""
        return self.metadata.get("field", "")

    def __str__(self) -> str:
        return f"{self.code_name}: {self.message}"


class InvalidArgument(ClientError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ClientError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ClientError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ClientError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ClientError):
    """Another operation holds the resource (e.g. a task already runs on the server)."""

    code = grpc.StatusCode.ABORTED


class ResourceExhausted(ClientError):
    """No capacity; `rejections` lists every rejected host and why."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ClientError):
    code = grpc.StatusCode.UNAVAILABLE


class RegionUnreachable(Unavailable):
    """The region at `address` could not be reached at all."""


class DeadlineExceeded(ClientError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(ClientError):
    code = grpc.StatusCode.UNIMPLEMENTED


class WaitTimeout(DeadlineExceeded):
    """`wait_task` gave up before the task ended; `task` is the last state seen."""

    def __init__(self, message: str, *, task: resources_pb2.Task | None = None) -> None:
        super().__init__(message)
        self.task = task


class TaskFailed(ClientError):
    """A task ended in state failed; `task` holds its stage, error and reason."""

    default_code_name = "TASK_FAILED"

    def __init__(self, task: resources_pb2.Task) -> None:
        kind = enum_to_str(resources_pb2.TaskKind, task.kind) or "task"
        text = f"task {task.id} ({kind}) failed"
        if task.stage:
            text += f" at stage {task.stage}"
        text += f": {task.error or 'no error recorded'}"
        if task.error_reason:
            text += f" [{task.error_reason}]"
        super().__init__(text, reason=task.error_reason)
        self.task = task
        self.task_id = task.id
        self.stage = task.stage
        self.error = task.error


_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    c.code: c for c in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Aborted,
                        ResourceExhausted, Unavailable, DeadlineExceeded, Unimplemented)
    if c.code is not None
}


def _rejections_from(detail: any_pb2.Any) -> list[HostRejection]:
    hosts: list[scheduler_pb2.RejectedHost] = []
    if detail.Is(scheduler_pb2.SelectHostResponse.DESCRIPTOR):
        resp = scheduler_pb2.SelectHostResponse()
        detail.Unpack(resp)
        hosts.extend(resp.rejected)
    elif detail.Is(scheduler_pb2.RejectedHost.DESCRIPTOR):
        one = scheduler_pb2.RejectedHost()
        detail.Unpack(one)
        hosts.append(one)
    return [HostRejection(h.host_id, h.host_name,
                          tuple(Rejection(r.filter, r.reason, r.message) for r in h.rejections))
            for h in hosts]


def _transport_reason(message: str) -> str:
    """The useful tail of gRPC's connection-failure text (e.g. `Connection refused`)."""
    for marker in ("Failed to connect to remote host: ", "last error: "):
        if marker in message:
            return message.rsplit(marker, 1)[1]
    return message


def translate(exc: grpc.RpcError, address: str = "") -> ClientError:
    """Build the typed `ClientError` of a failed call (the caller raises it `from exc`)."""
    code: grpc.StatusCode = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    message: str = (exc.details() if hasattr(exc, "details") else None) or str(exc) or code.name
    status = None
    try:
        status = status_from_rpc_error(exc)
    except Exception:  # noqa: BLE001 - a malformed trailer must not hide the real error
        status = None
    reason, domain, metadata = "", "", {}
    rejections: list[HostRejection] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        else:
            rejections.extend(_rejections_from(detail))
    if code == grpc.StatusCode.UNAVAILABLE and status is None:
        return RegionUnreachable(f"cannot reach the region at {address}: {_transport_reason(message)}",
                                 address=address)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and status is None and message == "Deadline Exceeded":
        message = f"no answer from the region at {address} before the deadline"
    cls = _BY_CODE.get(code, ClientError)
    return cls(message, code=code, reason=reason, domain=domain, metadata=metadata,
               rejections=rejections, status=status, address=address)


def describe(err: BaseException) -> list[str]:
    """One line for the error, then one line per rejected host (the CLI prints these)."""
    if not isinstance(err, ClientError):
        return [f"{type(err).__name__}: {err}"]
    text = err.message
    if err.field and err.field not in text:
        text += f" (field {err.field})"
    lines = [f"{err.code_name}: {text}"]
    for host in err.rejections:
        lines.append(f"  rejected host {host}")
    return lines


