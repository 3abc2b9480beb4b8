"""The per-host reasons a failed SelectHost carries, written and read.

A RESOURCE_EXHAUSTED from SelectHost carries, in its google.rpc.Status details
(trailer `grpc-status-details-bin`), an ErrorInfo and a SelectHostResponse whose
`rejected` lists the hosts with each filter's reason and figures.

Trailers are metadata, and gRPC refuses metadata over 16 KiB (and may refuse
it over 8 KiB), so the detail is cut to `DETAIL_BUDGET` serialized bytes: first
the sentences are dropped (filter and reason stay), then hosts, keeping those
with the fewest reasons (the nearest misses). ErrorInfo metadata then says
`details_truncated` and how many hosts the detail holds; the counts per reason
in ErrorInfo (`reasons`) always cover every host.
"""

from __future__ import annotations

import grpc
from ferry_common.errors import status_from_rpc_error
from ferry_proto.scheduler.v1 import scheduler_pb2

DETAIL_BUDGET = 4096     # serialized bytes; base64 in the trailer makes it about 5.5 KiB


def fit_detail(resp: scheduler_pb2.SelectHostResponse, budget: int = DETAIL_BUDGET
               ) -> tuple[scheduler_pb2.SelectHostResponse, dict[str, str]]:
    """`resp` cut to `budget` bytes, and the ErrorInfo metadata that says how."""
    if resp.ByteSize() <= budget:
        return resp, {}
    total = len(resp.rejected)
    terse = scheduler_pb2.SelectHostResponse()
    terse.CopyFrom(resp)
    for rh in terse.rejected:
        for r in rh.rejections:
            r.message = ""
    if terse.ByteSize() <= budget:
        return terse, {"details_truncated": "messages", "hosts_in_details": str(total)}
    ranked = sorted(terse.rejected, key=lambda rh: (len(rh.rejections), rh.host_name, rh.host_id))
    out = scheduler_pb2.SelectHostResponse()
    out.candidates.extend(terse.candidates)
    size = out.ByteSize()
    kept = 0
    for rh in ranked:
        # each repeated field element costs its size plus a tag and a length prefix (<= 4 bytes)
        cost = rh.ByteSize() + 4
        if size + cost > budget:
            break
        out.rejected.append(rh)
        size += cost
        kept += 1
    return out, {"details_truncated": "hosts", "hosts_in_details": str(kept)}


def placement_from_error(exc: grpc.RpcError) -> scheduler_pb2.SelectHostResponse | None:
    """The SelectHostResponse packed in a failed call's status, or None."""
    status = status_from_rpc_error(exc)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(scheduler_pb2.SelectHostResponse.DESCRIPTOR):
            resp = scheduler_pb2.SelectHostResponse()
            detail.Unpack(resp)
            return resp
    return None
