"""Live migration: same CPU model and microcode as the source, unless skip_cpu_check."""

from __future__ import annotations

from ..model import HostView, PlacementKind, PlacementRequest, Rejection
from .context import FilterContext

NAME = "cpu_model"
CPU_MODEL_MISMATCH = "CPU_MODEL_MISMATCH"
CPU_MICROCODE_MISMATCH = "CPU_MICROCODE_MISMATCH"


def applies(request: PlacementRequest) -> bool:
    return (request.kind is PlacementKind.LIVE_MIGRATE and bool(request.source_host_id)
            and not request.skip_cpu_check)


def check(host: HostView, request: PlacementRequest, context: FilterContext) -> list[Rejection]:
    src = context.source
    if src is None:
        return []
    out: list[Rejection] = []
    if host.cpu_model != src.cpu_model:
        out.append(Rejection(NAME, CPU_MODEL_MISMATCH,
                             f"CPU model {host.cpu_model!r} differs from the source's "
                             f"{src.cpu_model!r} (skip_cpu_check to allow)"))
    elif host.cpu_microcode != src.cpu_microcode:
        out.append(Rejection(NAME, CPU_MICROCODE_MISMATCH,
                             f"CPU microcode {host.cpu_microcode!r} differs from the source's "
                             f"{src.cpu_microcode!r} (skip_cpu_check to allow)"))
    return out
