"""The guest registry: what guests this host holds, their disks and their state.

A guest's definition lives in `<state-dir>/guests/<id>/spec.json`; its state
always comes from the driver (the QEMU process), never from a cached flag.
Every mutating call is idempotent and calls on one guest never interleave.
Guests outlive the agent: `load()` re-reads the definitions and adopts the
running QEMU processes; nothing here stops a guest unless asked to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ferry_common.errors import FailedPrecondition, InvalidArgument, NotFound

from . import storage as disks
from .driver.base import (
    Accel,
    DiskBus,
    DiskSpec,
    GuestDriver,
    GuestRuntime,
    GuestSpec,
    NicSpec,
)
from .errmap import driver_errors
from .health.fence import FENCE_RECORD
from .errors import HostError
from .imagecache import ImageCache
from .model import (
    DiskDef,
    DiskView,
    GuestDef,
    GuestState,
    GuestView,
    HostLimits,
    check_id,
    validate,
)
from .storage import StorageKind, Storages

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
SERIAL_LOG = "serial.log"
STATUS_TIMEOUT = 5.0
DEFAULT_STOP_TIMEOUT = 10.0

_RUN_STATES = {"running": GuestState.RUNNING, "inmigrate": GuestState.INCOMING}


@dataclass
class _Record:
    definition: GuestDef
    accelerator: str = ""  # accelerator of the last start on this host


class Guests:
    def __init__(self, state_dir: Path, storages: Storages, images: ImageCache,
                 driver: GuestDriver, *, accelerator: str, networks: tuple[str, ...],
                 default_region: str | None) -> None:
        self.root = Path(state_dir).absolute() / "guests"
        self.root.mkdir(parents=True, exist_ok=True)
        self.storages = storages
        self.images = images
        self.driver = driver
        self.accelerator = accelerator
        self.limits = HostLimits(frozenset(s.id for s in storages), frozenset(networks))
        self.default_region = default_region
        self._records: dict[str, _Record] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # ---- files -------------------------------------------------------------

    def folder(self, guest_id: str) -> Path:
        return self.root / guest_id

    def serial_log(self, guest_id: str) -> Path:
        """The serial log of a known guest (NOT_FOUND otherwise)."""
        self._record(check_id("guest_id", guest_id))
        return self.folder(guest_id) / SERIAL_LOG

    def exists(self, guest_id: str) -> bool:
        return guest_id in self._records

    def _write_record(self, guest_id: str, record: _Record) -> None:
        folder = self.folder(guest_id)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{SPEC_FILE}.tmp"
        tmp.write_text(json.dumps({"version": 1, "spec": record.definition.to_dict(),
                                   "accelerator": record.accelerator}, indent=2))
        os.replace(tmp, folder / SPEC_FILE)
        self._records[guest_id] = record

    def _record(self, guest_id: str) -> _Record:
        check_id("guest_id", guest_id)
        try:
            return self._records[guest_id]
        except KeyError:
            raise NotFound("guest", guest_id) from None

    def disk_path(self, disk: DiskDef) -> Path:
        return self.storages.get(disk.storage_id).disk_path(disk.disk_id)

    # ---- start-up ----------------------------------------------------------

    async def load(self) -> list[str]:
        """Reads every spec.json and adopts running guests; returns the adopted ids."""
        adopted = []
        for folder in sorted(self.root.iterdir()):
            spec = folder / SPEC_FILE
            if not spec.is_file():
                continue
            try:
                raw = json.loads(spec.read_text())
                record = _Record(GuestDef.from_dict(raw["spec"]), raw.get("accelerator", ""))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("guest folder %s: unreadable %s (%s); ignored", folder, SPEC_FILE, exc)
                continue
            self._records[record.definition.guest_id] = record
            try:
                runtime = await self.driver.adopt(record.definition.guest_id)
            except HostError as exc:
                log.error("guest %s: cannot adopt its QEMU: %s", folder.name, exc)
                continue
            if runtime is not None:
                adopted.append(runtime.guest_id)
        log.info("guest registry: %d guests, adopted %d running: %s", len(self._records),
                 len(adopted), ", ".join(adopted) or "-")
        return adopted

    # ---- state -------------------------------------------------------------

    async def _runtime(self, guest_id: str) -> GuestRuntime | None:
        with driver_errors():
            runtime = await self.driver.status(guest_id)
            if runtime is None:
                # Not attached: a QEMU left by an earlier agent (or nothing).
                runtime = await self.driver.adopt(guest_id)
        return runtime

    async def _view(self, guest_id: str) -> GuestView:
        record = self._record(guest_id)
        try:
            runtime = await asyncio.wait_for(self._runtime(guest_id), STATUS_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - an unresponsive QEMU is reported, not raised
            log.warning("guest %s: no QMP answer (%s)", guest_id, exc)
            return self._make_view(record, GuestState.PAUSED, "unresponsive", 0)
        if runtime is None:
            return self._make_view(record, GuestState.STOPPED, "", 0)
        state = _RUN_STATES.get(runtime.run_state, GuestState.PAUSED)
        return self._make_view(record, state, runtime.run_state, runtime.pid)

    def _make_view(self, record: _Record, state: GuestState, run_state: str, pid: int) -> GuestView:
        views = []
        for disk in sorted(record.definition.disks, key=lambda d: d.index):
            storage = self.storages.find(disk.storage_id)
            path = storage.disk_path(disk.disk_id) if storage else Path()
            views.append(DiskView(disk.disk_id, disk.storage_id, path, disk.size_mb,
                                  disks.allocated_bytes(path) if storage else 0))
        return GuestView(guest_id=record.definition.guest_id, state=state, run_state=run_state,
                         pid=pid, disks=tuple(views), accelerator=record.accelerator,
                         name=record.definition.name)

    async def get(self, guest_id: str) -> GuestView:
        return await self._view(guest_id)

    async def views(self) -> list[GuestView]:
        """Every known guest with its state (also what RegisterHost reports)."""
        ids = sorted(self._records)
        views = await asyncio.gather(*(self._view(g) for g in ids), return_exceptions=True)
        return [v for v in views if isinstance(v, GuestView)]

    # ---- prepare -----------------------------------------------------------

    async def prepare(self, definition: GuestDef, region_address: str = "") -> GuestView:
        validate(definition, self.limits)
        guest_id = definition.guest_id
        async with self._locks[guest_id]:
            old = self._records.get(guest_id)
            if old is not None and old.definition != definition:
                await self._check_redefinition(old.definition, definition)
            created: list[Path] = []
            new_folder = not self.folder(guest_id).exists()
            try:
                for i, disk in enumerate(definition.disks):
                    path = self.disk_path(disk)
                    if path.exists():
                        continue  # idempotent: an existing disk is kept as it is
                    await self._create_disk(disk, path, i, region_address)
                    created.append(path)
                accel = old.accelerator if old else ""
                self._write_record(guest_id, _Record(definition, accel))
            except BaseException:
                for path in created:
                    disks.delete_disk(path)
                if new_folder:
                    shutil.rmtree(self.folder(guest_id), ignore_errors=True)
                raise
            log.info("guest %s: prepared (%d disks, %d created)", guest_id,
                     len(definition.disks), len(created))
        return await self._view(guest_id)

    async def _check_redefinition(self, old: GuestDef, new: GuestDef) -> None:
        view = await self._view(old.guest_id)
        if view.state is not GuestState.STOPPED:
            raise FailedPrecondition(
                f"guest {old.guest_id} is {view.state.name} with a different spec; "
                "stop it before preparing it again", state=view.state.name,
                reason="GUEST_RUNNING")
        before = {d.disk_id: d for d in old.disks}
        for i, disk in enumerate(new.disks):
            was = before.get(disk.disk_id)
            if was is None or was == disk or not self.disk_path(was).exists():
                continue
            for name in ("storage_id", "size_mb", "image_id"):
                if getattr(was, name) != getattr(disk, name):
                    raise FailedPrecondition(
                        f"disk {disk.disk_id} exists with {name}={getattr(was, name)!r}; "
                        f"the new spec asks for {getattr(disk, name)!r}",
                        state="PREPARED", reason="DISK_MISMATCH",
                        metadata={"field": f"spec.disks[{i}].{name}"})

    async def _create_disk(self, disk: DiskDef, path: Path, i: int, region_address: str) -> None:
        storage = self.storages.get(disk.storage_id, f"spec.disks[{i}].storage_id")
        if not disk.image_id:
            await disks.create_blank(path, disk.size_mb)
            return
        region = region_address or self.default_region
        if not region:
            raise InvalidArgument("region_address", f"needed to download image {disk.image_id}")
        image = await self.images.ensure(storage, disk.image_id, image_format=disk.image_format,
                                         checksum=disk.image_checksum_sha256,
                                         region_address=region)
        await disks.create_overlay(path, image, disk.image_format, disk.size_mb,
                                   field=f"spec.disks[{i}].size_mb")

    # ---- start / stop ------------------------------------------------------

    def _driver_spec(self, definition: GuestDef) -> GuestSpec:
        return GuestSpec(
            id=definition.guest_id,
            name=definition.name,
            vcpus=definition.vcpu_count,
            memory_mb=definition.memory_mb,
            disks=[DiskSpec(path=self.disk_path(d), format="qcow2", bus=DiskBus.VIRTIO,
                            index=d.index)
                   for d in sorted(definition.disks, key=lambda d: d.index)],
            nics=[NicSpec(mac=n.mac) for n in sorted(definition.nics, key=lambda n: n.index)],
            serial_log=self.folder(definition.guest_id) / SERIAL_LOG,
            accel=Accel(self.accelerator),
        )

    async def start(self, guest_id: str) -> GuestView:
        async with self._locks[guest_id]:
            record = self._record(guest_id)
            if await self._runtime(guest_id) is not None:
                return await self._view(guest_id)  # idempotent
            for i, disk in enumerate(record.definition.disks):
                if not self.disk_path(disk).exists():
                    raise FailedPrecondition(
                        f"guest {guest_id}: disk {disk.disk_id} is missing; prepare it again",
                        state="STOPPED", reason="DISK_MISSING",
                        metadata={"disk_id": disk.disk_id})
            spec = self._driver_spec(record.definition)
            with driver_errors():
                await self.driver.start(spec)
            if record.accelerator != self.accelerator:
                self._write_record(guest_id, _Record(record.definition, self.accelerator))
            fence = self.folder(guest_id) / FENCE_RECORD
            if fence.exists():
                # The region decided the guest runs here again: the fence is over.
                log.info("guest %s started by the region: its fence record is cleared", guest_id)
                fence.unlink(missing_ok=True)
        return await self._view(guest_id)

    async def start_incoming(self, guest_id: str) -> GuestView:
        """Starts a prepared guest's QEMU paused with `-incoming defer` (live migration target)."""
        async with self._locks[guest_id]:
            record = self._record(guest_id)
            with driver_errors():
                await self.driver.start(self._driver_spec(record.definition), incoming="defer")
            if record.accelerator != self.accelerator:
                self._write_record(guest_id, _Record(record.definition, self.accelerator))
        return await self._view(guest_id)

    async def stop(self, guest_id: str, *, force: bool = False,
                   timeout: float = DEFAULT_STOP_TIMEOUT) -> GuestView:
        async with self._locks[guest_id]:
            self._record(guest_id)
            with driver_errors():
                await self.driver.stop(guest_id, 0.0 if force else timeout)
        return await self._view(guest_id)

    async def delete(self, guest_id: str, *, delete_shared_disks: bool = False) -> None:
        check_id("guest_id", guest_id)  # it names a folder that is removed
        async with self._locks[guest_id]:
            record = self._records.get(guest_id)
            with driver_errors():
                await self.driver.stop(guest_id, DEFAULT_STOP_TIMEOUT)
            if record is not None:
                for disk in record.definition.disks:
                    storage = self.storages.find(disk.storage_id)
                    if storage is None:
                        continue
                    if storage.kind is StorageKind.SHARED and not delete_shared_disks:
                        log.info("guest %s: keeping shared disk %s", guest_id, disk.disk_id)
                        continue
                    disks.delete_disk(storage.disk_path(disk.disk_id))
            self._records.pop(guest_id, None)
            shutil.rmtree(self.folder(guest_id), ignore_errors=True)
            log.info("guest %s: deleted", guest_id)
