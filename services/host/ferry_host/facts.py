"""The host's real facts, measured when asked: CPU, kernel, memory, storages."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .storage import Storage, StorageKind, Storages

CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class StorageFacts:
    storage: Storage
    capacity_mb: int
    free_mb: int


@dataclass(frozen=True)
class HostFacts:
    host_id: str
    name: str
    access_address: str
    cpu_model: str
    cpu_microcode: str
    kernel_version: str
    accelerator: str  # "kvm" or "tcg"
    cpu_count: int
    mem_size_mb: int
    storages: tuple[StorageFacts, ...]
    wire: str
    networks: tuple[str, ...]
    agent_version: str = __version__


def cpu_info(text: str | None = None) -> tuple[str, str]:
    """(model name, microcode) of the first CPU; microcode is "" when absent (VMs)."""
    if text is None:
        text = CPUINFO.read_text(errors="replace")
    model = microcode = ""
    for line in text.splitlines():
        if not line.strip():
            if model:
                break  # end of the first processor's block
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "microcode" and not microcode:
            microcode = value.strip()
    return model, microcode


def mem_size_mb(text: str | None = None) -> int:
    if text is None:
        text = MEMINFO.read_text()
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            kib = int(parts[1])
            return kib // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def storage_facts(storages: Storages) -> tuple[StorageFacts, ...]:
    out = []
    for s in storages:
        usage = s.usage()
        out.append(StorageFacts(s, usage.capacity_mb, usage.free_mb))
    # Local first, then shared, each by id: a stable order for reports.
    order = {StorageKind.LOCAL: 0, StorageKind.SHARED: 1}
    return tuple(sorted(out, key=lambda f: (order[f.storage.kind], f.storage.id)))


def collect(*, host_id: str, name: str, access_address: str, accelerator: str,
            storages: Storages, wire: str, networks: tuple[str, ...]) -> HostFacts:
    model, microcode = cpu_info()
    return HostFacts(
        host_id=host_id,
        name=name,
        access_address=access_address,
        cpu_model=model,
        cpu_microcode=microcode,
        kernel_version=os.uname().release,
        accelerator=accelerator,
        cpu_count=cpu_count(),
        mem_size_mb=mem_size_mb(),
        storages=storage_facts(storages),
        wire=wire,
        networks=tuple(networks),
    )
