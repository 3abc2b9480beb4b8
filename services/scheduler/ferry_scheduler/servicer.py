"""SchedulerService: proto in, placement call, proto out.

When nothing fits, the error is RESOURCE_EXHAUSTED; its google.rpc.Status
details hold an ErrorInfo (reason NO_HOST_FITS / PREFERRED_HOST_REJECTED /
NO_HOSTS, metadata with counts per reason) and a SelectHostResponse with the
rejected hosts, each filter's reason and figures, cut to fit a gRPC trailer
(see details.py).

Forecast runs the same filters and scoring without reserving and answers with
every candidate and every rejected host: a message has no trailer budget.
"""

from __future__ import annotations

import grpc
from ferry_proto.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from .convert import (
    forecast_from_proto,
    forecast_to_proto,
    request_from_proto,
    reservation_id_from_proto,
    result_to_proto,
)
from .details import DETAIL_BUDGET, fit_detail
from .errors import NoHostFits
from .placement import Placer, gc_paused

HOST_VIEW_METADATA_KEY = "ferry-host-view"


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, placer: Placer, *, detail_budget: int = DETAIL_BUDGET,
                 view_wait: float = 5.0) -> None:
        self._placer = placer
        self._detail_budget = detail_budget
        self._view_wait = view_wait

    async def SelectHost(self, request: scheduler_pb2.SelectHostRequest,
                         context: grpc.aio.ServicerContext) -> scheduler_pb2.SelectHostResponse:
        placement = request_from_proto(request)
        remaining = context.time_remaining()
        await self._placer.wait_for_view(
            self._view_wait if remaining is None else min(self._view_wait, remaining * 0.5))
        try:
            result = self._placer.select(placement)
        except NoHostFits as err:
            detail, truncation = fit_detail(result_to_proto(err.result), self._detail_budget)
            err.details.append(detail)
            if truncation:
                err.metadata.update(truncation)
                how = ("without sentences" if truncation["details_truncated"] == "messages"
                       else "reasons only, nearest misses first")
                err.message += (f" [status details: {truncation['hosts_in_details']} of "
                                f"{len(err.result.rejected)} host(s), {how}]")
            raise
        if result.stale_view:
            context.set_trailing_metadata(((HOST_VIEW_METADATA_KEY, "stale"),))
        return result_to_proto(result)

    async def Forecast(self, request: scheduler_pb2.ForecastRequest,
                       context: grpc.aio.ServicerContext) -> scheduler_pb2.ForecastResponse:
        placement = forecast_from_proto(request)
        remaining = context.time_remaining()
        await self._placer.wait_for_view(
            self._view_wait if remaining is None else min(self._view_wait, remaining * 0.5))
        with gc_paused():      # the answer's tuples die here, before any collection sees them
            result = self._placer.forecast(placement)
            stale = result.stale_view
            resp = forecast_to_proto(result)
            del result
        if stale:
            context.set_trailing_metadata(((HOST_VIEW_METADATA_KEY, "stale"),))
        return resp

    async def ConfirmReservation(self, request: scheduler_pb2.ConfirmReservationRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> scheduler_pb2.ConfirmReservationResponse:
        self._placer.confirm(reservation_id_from_proto("id", request.id))
        return scheduler_pb2.ConfirmReservationResponse()

    async def ReleaseReservation(self, request: scheduler_pb2.ReleaseReservationRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> scheduler_pb2.ReleaseReservationResponse:
        self._placer.release(reservation_id_from_proto("id", request.id))
        return scheduler_pb2.ReleaseReservationResponse()
