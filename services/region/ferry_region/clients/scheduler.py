"""Client of the scheduler: SelectHost, ConfirmReservation, ReleaseReservation, Forecast.

A RESOURCE_EXHAUSTED answer keeps every detail the scheduler packed into its
`google.rpc.Status` (per-host rejections) and is re-raised as
`ResourceExhausted` carrying them, so the region's own status has them too.
"""

from __future__ import annotations

import logging

import grpc
from ferry_common.channels import open_channel
from ferry_common.errors import (
    FerryError,
    ResourceExhausted,
    from_rpc_error,
    status_from_rpc_error,
)
from ferry_common.tls import TlsConfig
from ferry_proto.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from google.protobuf import descriptor_pool, message_factory
from google.rpc import error_details_pb2

log = logging.getLogger(__name__)


def _unpack_details(exc: grpc.aio.AioRpcError) -> tuple[list, error_details_pb2.ErrorInfo | None]:
    """Every detail of the rich status as concrete messages (ErrorInfo apart)."""
    st = status_from_rpc_error(exc)
    if st is None:
        return [], None
    out, info = [], None
    pool = descriptor_pool.Default()
    for any_msg in st.details:
        name = any_msg.TypeName()
        if any_msg.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_msg.Unpack(info)
            continue
        try:
            cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
        except KeyError:
            log.debug("dropping unknown status detail %s", name)
            continue
        msg = cls()
        any_msg.Unpack(msg)
        out.append(msg)
    return out, info


def rejection_summary(details: list) -> str:
    """One line per rejected host: 'host1: memory (INSUFFICIENT_MEMORY: ...)'."""
    parts = []
    for d in details:
        if isinstance(d, scheduler_pb2.RejectedHost):
            reasons = "; ".join(f"{r.filter}: {r.reason}" + (f" ({r.message})" if r.message else "")
                                for r in d.rejections)
            parts.append(f"{d.host_name or d.host_id}: {reasons}")
        elif isinstance(d, scheduler_pb2.SelectHostResponse):
            parts.extend(rejection_summary(list(d.rejected)).split("\n") if d.rejected else [])
    return "\n".join(p for p in parts if p)


class SchedulerClient:
    def __init__(self, address: str, tls: TlsConfig | None = None, *,
                 timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = open_channel(address, tls)
        self._stub = scheduler_pb2_grpc.SchedulerServiceStub(self._channel)

    def _peer(self) -> str:
        return f"scheduler {self.address}"

    async def select_host(self, request: scheduler_pb2.SelectHostRequest, *,
                          timeout: float | None = None) -> scheduler_pb2.SelectHostResponse:
        try:
            return await self._stub.SelectHost(request, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                details, info = _unpack_details(exc)
                summary = rejection_summary(details)
                message = exc.details() or "no host can take the server"
                if summary and summary not in message:
                    message = f"{message}:\n{summary}"
                err = ResourceExhausted(message,
                                        reason=info.reason if info and info.reason else None,
                                        metadata=dict(info.metadata) if info else None)
                err.details = details
                raise err from exc
            raise from_rpc_error(exc, self._peer()) from exc

    async def forecast(self, request: scheduler_pb2.ForecastRequest, *,
                       timeout: float | None = None) -> scheduler_pb2.ForecastResponse:
        """Every candidate and every rejected host with reasons; nothing is reserved."""
        try:
            return await self._stub.Forecast(request, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self._peer()) from exc

    async def confirm(self, reservation_id: str, *, timeout: float | None = None) -> None:
        await self._simple("ConfirmReservation",
                           scheduler_pb2.ConfirmReservationRequest(id=reservation_id), timeout)

    async def release(self, reservation_id: str, *, timeout: float | None = None) -> None:
        await self._simple("ReleaseReservation",
                           scheduler_pb2.ReleaseReservationRequest(id=reservation_id), timeout)

    async def _simple(self, method: str, request, timeout: float | None) -> None:
        try:
            await getattr(self._stub, method)(request, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self._peer()) from exc

    async def close(self) -> None:
        await self._channel.close()


def is_not_found(err: FerryError) -> bool:
    return err.code == grpc.StatusCode.NOT_FOUND
