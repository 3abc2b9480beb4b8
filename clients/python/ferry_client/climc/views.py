"""How each resource reads in a table: list columns and show fields.

Enums print as the lower-case Cloudpods strings (`live_migrating`).
"""

from __future__ import annotations

from typing import Any

from ferry_proto.region.v1 import resources_pb2 as r

from ..enums import enum_to_str
from ..units import format_bytes, format_mb
from .output import fmt_time


def status_str(server: r.Server) -> str:
    text = enum_to_str(r.ServerStatus, server.status)
    # Progress is the latest sample of the running operation; once the task has
    # ended it stays on the server as a record, but is not the current status.
    if server.task_id and server.HasField("progress") and server.progress.phase:
        text += f" ({server.progress.phase} {server.progress.percent:.0f}%)"
    return text


def host_label(name: str, id_: str) -> str:
    return name or id_


# -- servers ----------------------------------------------------------------

SERVER_COLUMNS = ("ID", "Name", "Status", "Vcpu_count", "Vmem_size_MB", "Project")
SERVER_DETAIL_COLUMNS = ("Host", "Disks", "Networks")


def disk_brief(d: r.Disk) -> str:
    return f"{d.index}:{format_mb(d.size_mb)}:{enum_to_str(r.StorageKind, d.storage_kind) or d.storage_id}"


def disk_line(d: r.Disk) -> str:
    parts = [f"disk{d.index}", d.id, format_mb(d.size_mb),
             enum_to_str(r.StorageKind, d.storage_kind), d.storage_id,
             enum_to_str(r.DiskFormat, d.format)]
    if d.image_id:
        parts.append(f"image={d.image_id}")
    if d.path:
        parts.append(d.path)
    return " ".join(p for p in parts if p)


def nic_brief(n: r.ServerNetwork) -> str:
    return f"{n.network}/{n.mac}" if n.mac else n.network


def server_row(s: r.Server, details: bool = False) -> list[Any]:
    row: list[Any] = [s.id, s.name, status_str(s), s.vcpu_count, s.memory_mb, s.project]
    if details:
        row += [host_label(s.host_name, s.host_id),
                ", ".join(disk_brief(d) for d in s.disks),
                ", ".join(nic_brief(n) for n in s.networks)]
    return row


def progress_line(p: r.MigrationProgress) -> str:
    parts = [f"{p.phase} {p.percent:.1f}%"]
    if p.disk_bytes_total:
        parts.append(f"disk {format_bytes(p.disk_bytes_done)}/{format_bytes(p.disk_bytes_total)}")
    if p.memory_bytes_total:
        parts.append(f"memory {format_bytes(p.memory_bytes_transferred)} sent, "
                     f"{format_bytes(p.memory_bytes_remaining)} left")
    if p.iteration:
        parts.append(f"iteration {p.iteration}")
    if p.dirty_pages_rate:
        parts.append(f"dirty {p.dirty_pages_rate} pages/s")
    if p.throughput_mbps:
        parts.append(f"{p.throughput_mbps:.0f} Mbit/s")
    if p.downtime_limit_ms:
        parts.append(f"downtime limit {p.downtime_limit_ms} ms")
    if p.expected_downtime_ms:
        parts.append(f"expected downtime {p.expected_downtime_ms} ms")
    if p.cpu_throttle_percent:
        parts.append(f"throttle {p.cpu_throttle_percent}%")
    if p.eta_seconds >= 0 and (p.eta_seconds or p.percent < 100):
        parts.append(f"eta {p.eta_seconds} s")
    if p.resumed_bytes:
        parts.append(f"{format_bytes(p.resumed_bytes)} resumed")
    if p.elapsed_ms:
        parts.append(f"elapsed {p.elapsed_ms / 1000:.1f} s")
    return ", ".join(parts)


def server_fields(s: r.Server, task_id: str = "") -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [
        ("id", s.id), ("name", s.name), ("status", enum_to_str(r.ServerStatus, s.status)),
    ]
    if s.status_reason:
        pairs.append(("status_reason", s.status_reason))
    pairs += [
        ("project", s.project),
        ("host", f"{s.host_name} ({s.host_id})" if s.host_name and s.host_name != s.host_id else s.host_id),
        ("vcpu_count", s.vcpu_count), ("vmem_size_mb", s.memory_mb), ("image_id", s.image_id),
        ("disks", "\n".join(disk_line(d) for d in s.disks)),
        ("networks", "\n".join(f"nic{n.index} {n.network} {n.mac}".rstrip() for n in s.networks)),
    ]
    if s.HasField("progress"):
        pairs.append(("progress" if s.task_id else "last_progress", progress_line(s.progress)))
    pairs += [("task_id", s.task_id or task_id), ("created_at", fmt_time(s.created_at)),
              ("updated_at", fmt_time(s.updated_at))]
    return pairs


# -- hosts ------------------------------------------------------------------

HOST_COLUMNS = ("ID", "Name", "Access_address", "Status", "Host_status", "Enabled", "Hypervisor",
                "Cpu_used/count", "Mem_used/size_MB", "Servers", "Accel",
                "Auto_migrate_on_host_down", "Auto_migrate_on_host_shutdown")


def host_row(h: r.Host) -> list[Any]:
    return [h.id, h.name, h.access_address, enum_to_str(r.HostStatus, h.status),
            enum_to_str(r.HostHealth, h.host_status), h.enabled, h.hypervisor,
            f"{h.cpu_used}/{h.cpu_count}", f"{h.mem_used_mb}/{h.mem_size_mb}", h.server_count,
            enum_to_str(r.Accelerator, h.accelerator), h.auto_migrate_on_host_down,
            h.auto_migrate_on_host_shutdown]


def storage_line(s: r.HostStorage) -> str:
    return (f"{s.storage_id} {enum_to_str(r.StorageKind, s.kind)} {s.path} "
            f"free {format_mb(s.free_mb)} of {format_mb(s.capacity_mb)}")


def host_fields(h: r.Host) -> list[tuple[str, Any]]:
    return [
        ("id", h.id), ("name", h.name), ("access_address", h.access_address),
        ("status", enum_to_str(r.HostStatus, h.status)),
        ("host_status", enum_to_str(r.HostHealth, h.host_status)), ("enabled", h.enabled),
        ("hypervisor", h.hypervisor), ("accelerator", enum_to_str(r.Accelerator, h.accelerator)),
        ("cpu_model", h.cpu_model), ("cpu_microcode", h.cpu_microcode),
        ("kernel_version", h.kernel_version), ("cpu_count", h.cpu_count), ("cpu_used", h.cpu_used),
        ("cpu_cmtbound", h.cpu_cmtbound), ("mem_size_mb", h.mem_size_mb),
        ("mem_used_mb", h.mem_used_mb), ("mem_reserved_mb", h.mem_reserved_mb),
        ("mem_cmtbound", h.mem_cmtbound),
        ("storages", "\n".join(storage_line(s) for s in h.storages)),
        ("wire", h.wire), ("networks", ", ".join(h.networks)),
        ("auto_migrate_on_host_down", h.auto_migrate_on_host_down),
        ("auto_migrate_on_host_shutdown", h.auto_migrate_on_host_shutdown),
        ("server_count", h.server_count), ("registered_at", fmt_time(h.registered_at)),
        ("agent_version", h.agent_version),
    ]


# -- images -----------------------------------------------------------------

IMAGE_COLUMNS = ("ID", "Name", "Format", "Size", "Virtual_size", "Status", "Servers", "Created_at")


def image_row(i: r.Image) -> list[Any]:
    return [i.id, i.name, enum_to_str(r.DiskFormat, i.format), format_bytes(i.size_bytes),
            format_mb(i.virtual_size_mb), enum_to_str(r.ImageStatus, i.status), i.server_count,
            fmt_time(i.created_at)]


def image_fields(i: r.Image) -> list[tuple[str, Any]]:
    return [
        ("id", i.id), ("name", i.name), ("format", enum_to_str(r.DiskFormat, i.format)),
        ("size_bytes", i.size_bytes), ("virtual_size_mb", i.virtual_size_mb),
        ("min_memory_mb", i.min_memory_mb), ("checksum_sha256", i.checksum_sha256),
        ("status", enum_to_str(r.ImageStatus, i.status)), ("server_count", i.server_count),
        ("created_at", fmt_time(i.created_at)),
    ]


# -- tasks ------------------------------------------------------------------

TASK_COLUMNS = ("ID", "Kind", "State", "Stage", "Server_id", "Created_at", "Updated_at", "Error")


def task_row(t: r.Task) -> list[Any]:
    return [t.id, enum_to_str(r.TaskKind, t.kind), enum_to_str(r.TaskState, t.state), t.stage,
            t.server_id, fmt_time(t.created_at), fmt_time(t.updated_at), t.error]


def task_fields(t: r.Task) -> list[tuple[str, Any]]:
    return [
        ("id", t.id), ("kind", enum_to_str(r.TaskKind, t.kind)),
        ("state", enum_to_str(r.TaskState, t.state)), ("stage", t.stage),
        ("history", " -> ".join(t.history)), ("server_id", t.server_id), ("error", t.error),
        ("error_reason", t.error_reason), ("resume_count", t.resume_count),
        ("created_at", fmt_time(t.created_at)), ("updated_at", fmt_time(t.updated_at)),
    ]
