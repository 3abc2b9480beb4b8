"""Where could a server go: the scheduler's forecast for a migration of it.

The question is the one a migration asks (`placement.forecast_request`: the
server's vCPU, memory, disks and networks, its current host as the source and
the CPU/kernel reference), so a forecast and the migration that follows it
see the same filters. Nothing is reserved. Any placed server may be asked
about, whatever its status: a forecast prepares a migration, it does not start one.
"""

from __future__ import annotations

from ferry_common.errors import FailedPrecondition, InvalidArgument
from ferry_common.validation import check_ident
from ferry_proto.region.v1 import migration_service_pb2 as pb
from ferry_proto.scheduler.v1 import scheduler_pb2
from sqlalchemy.orm import Session

from ..db.queries import find_host, find_server
from ..tasks.deps import TaskDeps
from .placement import forecast_request


def validate(req: pb.ForecastMigrationRequest) -> str:
    """The placement kind the request asks about; INVALID_ARGUMENT naming a conflicting field."""
    check_ident("id", req.id)
    if req.prefer_host:
        check_ident("prefer_host", req.prefer_host)
    if req.live and req.rescue_mode:
        raise InvalidArgument("rescue_mode", "a rescue moves a server off a down host and is "
                                             "never live: set live or rescue_mode, not both")
    for field in ("skip_cpu_check", "skip_kernel_check"):
        if getattr(req, field) and not req.live:
            raise InvalidArgument(field, "only applies to a live migration forecast (live)")
    return "live" if req.live else "rescue" if req.rescue_mode else "migrate"


def build_request(session: Session, req: pb.ForecastMigrationRequest,
                  kind: str) -> scheduler_pb2.ForecastRequest:
    server = find_server(session, req.id)
    if not server.host_id:
        raise FailedPrecondition(f"server {server.name} is not placed on a host: nothing to "
                                 f"migrate from", state=server.status.value)
    prefer = find_host(session, req.prefer_host).id if req.prefer_host else ""
    return forecast_request(server, kind, prefer_host=prefer, skip_cpu_check=req.skip_cpu_check,
                            skip_kernel_check=req.skip_kernel_check)


def to_response(resp: scheduler_pb2.ForecastResponse) -> pb.ForecastMigrationResponse:
    out = pb.ForecastMigrationResponse(can_place=resp.can_place)
    add_candidate = out.candidates.add
    for c in resp.candidates:
        add_candidate(host_id=c.host_id, host_name=c.host_name, score=c.score)
    add_rejected = out.rejected.add
    for rh in resp.rejected:
        add = add_rejected(host_id=rh.host_id, host_name=rh.host_name).rejections.add
        for x in rh.rejections:
            add(filter=x.filter, reason=x.reason, message=x.message)
    return out


async def forecast_migration(deps: TaskDeps,
                             req: pb.ForecastMigrationRequest) -> pb.ForecastMigrationResponse:
    kind = validate(req)
    request = await deps.db.read(build_request, req, kind)
    return to_response(await deps.scheduler.forecast(request))
