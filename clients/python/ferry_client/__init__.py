"""Ferry's Python SDK (`FerryClient`) and the `climc` command-line client.

The SDK is a thin synchronous layer over the region's generated gRPC stubs
(`ferry_proto.region.v1`); see `ferry_client.sdk`. `climc` (in
`ferry_client.climc`) is built on it.
"""

from .errors import (
    Aborted,
    AlreadyExists,
    ClientError,
    DeadlineExceeded,
    FailedPrecondition,
    HostRejection,
    InvalidArgument,
    NotFound,
    RegionUnreachable,
    Rejection,
    ResourceExhausted,
    TaskFailed,
    Unavailable,
    Unimplemented,
    WaitTimeout,
)
from .sdk import DEFAULT_ADDRESS, ENV_ADDRESS, FerryClient, resolve_address

__all__ = [
    "Aborted", "AlreadyExists", "ClientError", "DEFAULT_ADDRESS", "DeadlineExceeded", "ENV_ADDRESS",
    "FailedPrecondition", "FerryClient", "HostRejection", "InvalidArgument", "NotFound",
    "RegionUnreachable", "Rejection", "ResourceExhausted", "TaskFailed", "Unavailable",
    "Unimplemented", "WaitTimeout", "resolve_address",
]
