"""The host cache as arrays, so a placement over 10,000 hosts costs a few vector operations.

`HostIndex` listens to the host cache (one slot per host, written when the
region reports the host) and to the reservation book (what is held on a host,
its guests in flight, and the free space of its local storages after holds),
so nothing is recomputed per request that did not change.

`screen(request, source)` splits the hosts in one pass of numpy operations:

- `sure`: hosts that pass every filter of `filters/` for that request. Each
  mask is the exact condition of one filter (status, exclude, source host,
  vCPU, memory, networks, CPU model and microcode, kernel, rescue, shared
  storage reachable), and local disks are sure to fit when the local storage
  with the most room (after holds) holds all of them: then the storage
  filter's greedy choice always succeeds.
- `unsure`: hosts that pass the exact masks but whose storage needs the
  storage filter itself (local disks that might spill onto shared storage, a
  creation's shared or pinned disks). The placer runs the Python filters on
  those only.
- every other live host is rejected by at least one filter; the placer runs
  the Python filters on the ones whose reasons it reports.

`scores(slots, request)` is `scoring.score` with the default scorers, computed
with the same floating-point operations in the same order, so scores and the
ranking are identical to the Python path (the tests compare both on random
clusters).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import numpy as np

from .model import MIGRATION_KINDS, HostView, PlacementKind, PlacementRequest
from .reservations import ReservationBook
from .scoring import SCORERS

_INT = np.int64


@dataclass(slots=True)
class Screen:
    """One request screened over every slot (boolean arrays)."""

    ok: np.ndarray               # alive and no filter surely rejects it
    sure: np.ndarray             # ok, and the storage surely fits: passes every filter
    unsure: np.ndarray           # ok, but the storage filter must decide
    fails: dict[str, np.ndarray]  # per filter name: the slots it surely rejects
    storage_unsure: np.ndarray   # slots where the storage filter must run to know

    def filters_to_run(self, slot: int) -> set[str]:
        """The filters that reject `slot` or may: the others surely pass it."""
        out = {name for name, m in self.fails.items() if m[slot]}
        if self.storage_unsure[slot]:
            out.add("storage")
        return out


class HostIndex:
    def __init__(self, book: ReservationBook, hosts: Iterable[HostView] = (),
                 capacity: int = 1024) -> None:
        self._book = book
        self._cap = 0
        self._slot: dict[str, int] = {}
        self._hosts: list[HostView | None] = []
        self._free: list[int] = []
        self._codes: dict[str, int] = {}
        self._nets: dict[str, np.ndarray] = {}
        self._shared: dict[str, np.ndarray] = {}       # storage id -> mounted as SHARED
        self._local_of: dict[str, int] = {}           # local storage id -> slot
        self._name_rank: np.ndarray | None = None
        self._zero_totals = False
        self._version = 0
        self.versions: list[int] = []        # per slot: bumped on every update of its host
        self._grow(capacity)
        book.add_hold_listener(self.on_hold_change)
        for h in hosts:
            self.on_host_update(None, h)

    # ---- arrays ----

    def _grow(self, cap: int) -> None:
        old = self._cap

        def grown(a: np.ndarray | None, dtype: type, fill: object) -> np.ndarray:
            out: np.ndarray = np.full(cap, fill, dtype=dtype)
            if a is not None and old:
                out[:old] = a
            return out

        get = self.__dict__.get
        self.alive = grown(get("alive"), bool, False)
        self.status_ok = grown(get("status_ok"), bool, False)
        self.cpu_avail = grown(get("cpu_avail"), _INT, 0)
        self.mem_avail = grown(get("mem_avail"), _INT, 0)
        self.cpu_total = grown(get("cpu_total"), _INT, 0)
        self.mem_total = grown(get("mem_total"), _INT, 0)
        self._mem_div = grown(get("_mem_div"), float, 1.0)    # totals as divisors (0 -> 1)
        self._cpu_div = grown(get("_cpu_div"), float, 1.0)
        self.held_cpu = grown(get("held_cpu"), _INT, 0)
        self.held_mem = grown(get("held_mem"), _INT, 0)
        self.in_flight = grown(get("in_flight"), _INT, 0)
        self.servers = grown(get("servers"), _INT, 0)
        self._flight_rate = grown(get("_flight_rate"), float, 1.0)   # scoring.fewer_in_flight
        self._spread_rate = grown(get("_spread_rate"), float, 1.0)   # scoring.spread
        self.local_free = grown(get("local_free"), _INT, -1)
        self.has_shared = grown(get("has_shared"), bool, False)
        self.model = grown(get("model"), _INT, -1)
        self.micro = grown(get("micro"), _INT, -1)
        self.kernel = grown(get("kernel"), _INT, -1)
        for d in (self._nets, self._shared):
            for k, a in d.items():
                d[k] = grown(a, bool, False)
        self._hosts.extend([None] * (cap - old))
        self.versions.extend([0] * (cap - old))
        self._free.extend(range(cap - 1, old - 1, -1))
        self._cap = cap

    def _scratch(self) -> tuple[np.ndarray, np.ndarray]:
        """Work arrays reused by every request (no page faults on fresh temporaries)."""
        bufs = self.__dict__.get("_bufs")
        if bufs is None or len(bufs[0]) != self._cap:
            bufs = self._bufs = (np.empty(self._cap), np.empty(self._cap, dtype=_INT))
        return bufs

    def _code(self, text: str) -> int:
        c = self._codes.get(text)
        if c is None:
            c = self._codes[text] = len(self._codes)
        return c

    def _flag(self, table: dict[str, np.ndarray], key: str) -> np.ndarray:
        a = table.get(key)
        if a is None:
            a = table[key] = np.zeros(self._cap, dtype=bool)
        return a

    # ---- listener of the cache and of the book ----

    def on_host_update(self, old: HostView | None, new: HostView) -> None:
        slot = self._slot.get(new.id)
        if slot is None:
            if not self._free:
                self._grow(self._cap * 2)
            slot = self._free.pop()
            self._slot[new.id] = slot
            self._name_rank = None
        else:
            prev = self._hosts[slot]
            if prev is None or prev.name != new.name:
                self._name_rank = None
        self._hosts[slot] = new
        self._version += 1
        self.versions[slot] = self._version
        self.alive[slot] = True
        self.status_ok[slot] = new.enabled and new.running and new.online
        self.cpu_avail[slot] = new.cpu_total - new.cpu_used
        self.mem_avail[slot] = new.mem_total_mb - new.mem_used_mb
        self.cpu_total[slot] = new.cpu_total
        self.mem_total[slot] = new.mem_total_mb
        self._mem_div[slot] = max(new.mem_total_mb, 1)
        self._cpu_div[slot] = max(new.cpu_total, 1)
        if new.cpu_total <= 0 or new.mem_total_mb <= 0:
            self._zero_totals = True       # never reset: only costs two masked writes
        self.servers[slot] = max(new.server_count, 0)
        self._spread_rate[slot] = 1.0 / (1.0 + max(new.server_count, 0))
        self.model[slot] = self._code(new.cpu_model)
        self.micro[slot] = self._code(new.cpu_microcode)
        self.kernel[slot] = self._code(new.kernel_version)
        for net, a in self._nets.items():
            a[slot] = net in new.networks
        for net in new.networks:
            self._flag(self._nets, net)[slot] = True
        shared_ids = {s.id for s in new.storages if s.shared}
        for sid, a in self._shared.items():
            a[slot] = sid in shared_ids
        for sid in shared_ids:
            self._flag(self._shared, sid)[slot] = True
        self.has_shared[slot] = bool(shared_ids)
        for s in new.storages:
            if not s.shared:
                self._local_of[s.id] = slot
        self._refresh_holds(slot)

    def on_host_removed(self, host_id: str) -> None:
        slot = self._slot.pop(host_id, None)
        if slot is None:
            return
        host = self._hosts[slot]
        if host is not None:
            for s in host.storages:
                if self._local_of.get(s.id) == slot:
                    del self._local_of[s.id]
        self._hosts[slot] = None
        self.alive[slot] = False
        self.status_ok[slot] = False
        for table in (self._nets, self._shared):
            for a in table.values():
                a[slot] = False
        self._free.append(slot)
        self._name_rank = None

    def on_hold_change(self, host_id: str, storage_ids: Iterable[str]) -> None:
        slot = self._slot.get(host_id)
        if slot is not None:
            self._refresh_holds(slot)
        for sid in storage_ids:
            other = self._local_of.get(sid)
            if other is not None and other != slot:
                self._refresh_holds(other)

    def _refresh_holds(self, slot: int) -> None:
        host = self._hosts[slot]
        if host is None:
            return
        book = self._book
        self.held_cpu[slot] = book.held_vcpu(host.id)
        self.held_mem[slot] = book.held_memory(host.id)
        self.in_flight[slot] = book.in_flight(host.id)
        self._flight_rate[slot] = 1.0 / (1.0 + int(self.in_flight[slot]))
        best = -1
        for s in host.storages:
            if not s.shared:
                best = max(best, s.free_mb - book.held_storage(s.id))
        self.local_free[slot] = best

    # ---- reads ----

    def __len__(self) -> int:
        return len(self._slot)

    @property
    def views(self) -> list[HostView]:
        """The host of each slot; index only with slots of live hosts (free slots hold None)."""
        return cast("list[HostView]", self._hosts)

    def host(self, slot: int) -> HostView:
        h = self._hosts[slot]
        assert h is not None
        return h

    @property
    def name_rank(self) -> np.ndarray:
        """Position of each slot in (name, id) order; dead slots last."""
        if self._name_rank is None:
            live = [i for i, h in enumerate(self._hosts) if h is not None]
            live.sort(key=lambda i: (self._hosts[i].name, self._hosts[i].id))  # type: ignore[union-attr]
            rank = np.full(self._cap, self._cap, dtype=_INT)
            rank[np.asarray(live, dtype=_INT)] = np.arange(len(live), dtype=_INT)
            self._name_rank = rank
        return self._name_rank

    def screen(self, request: PlacementRequest, source: HostView | None) -> Screen:
        """Which live hosts each filter surely rejects, and which pass; see the module's docstring."""
        cap = self._cap
        fails: dict[str, np.ndarray] = {}

        def fail(name: str, mask: np.ndarray) -> None:
            prev = fails.get(name)
            fails[name] = mask if prev is None else (prev | mask)

        fail("status", ~self.status_ok)
        if request.exclude_host_ids:
            m = np.zeros(cap, dtype=bool)
            for hid in request.exclude_host_ids:
                slot = self._slot.get(hid)
                if slot is not None and hid != request.source_host_id:
                    m[slot] = True
            fail("exclude", m)
        if request.source_host_id:
            m = np.zeros(cap, dtype=bool)
            slot = self._slot.get(request.source_host_id)
            if slot is not None:
                m[slot] = True
            fail("source_host", m)
        fail("cpu", (self.cpu_avail - self.held_cpu) < request.vcpu_count)
        fail("memory", (self.mem_avail - self.held_mem) < request.memory_mb)
        migration = request.kind in MIGRATION_KINDS
        local_need, local_disks, complex_storage = 0, 0, False
        reach = np.ones(cap, dtype=bool)
        for d in request.disks:
            if d.shared and migration:
                if d.storage_id:
                    a = self._shared.get(d.storage_id)
                    if a is None:
                        reach[:] = False
                    else:
                        reach &= a
                else:
                    reach &= self.has_shared
            elif d.shared or d.storage_id:
                complex_storage = True
            else:
                local_disks += 1
                local_need += d.size_mb
        if complex_storage:
            storage_unsure = np.ones(cap, dtype=bool)
        elif local_disks:
            storage_unsure = self.local_free < local_need
        else:
            storage_unsure = np.zeros(cap, dtype=bool)
        if request.disks:
            fail("storage", ~reach)
        if request.networks:
            m = np.zeros(cap, dtype=bool)
            for net in request.networks:
                a = self._nets.get(net)
                m |= True if a is None else ~a
            fail("network", m)
        if (request.kind is PlacementKind.LIVE_MIGRATE and request.source_host_id
                and source is not None):
            if not request.skip_cpu_check:
                fail("cpu_model", (self.model != self._codes.get(source.cpu_model, -2))
                     | (self.micro != self._codes.get(source.cpu_microcode, -2)))
            if not request.skip_kernel_check:
                fail("kernel", self.kernel != self._codes.get(source.kernel_version, -2))
        if request.kind is PlacementKind.RESCUE and any(not d.shared for d in request.disks):
            fail("rescue", np.ones(cap, dtype=bool))
        ok = self.alive.copy()
        for m in fails.values():
            ok &= ~m
        sure = ok & ~storage_unsure
        return Screen(ok=ok, sure=sure, unsure=ok & storage_unsure, fails=fails,
                      storage_unsure=storage_unsure)

    def scores(self, slots: np.ndarray, request: PlacementRequest) -> np.ndarray:
        """`scoring.score` of each slot (default scorers), bit for bit.

        Computed over every slot with contiguous array operations, then picked:
        cheaper than gathering each input array for a subset.
        """
        f1, i1 = self._scratch()
        mem_total, cpu_total = self.mem_total, self.cpu_total
        value = np.zeros(self._cap)
        for sc in SCORERS:
            if sc.name == "memory":
                np.subtract(self.mem_avail, self.held_mem, out=i1)
                np.subtract(i1, request.memory_mb, out=i1)
                np.divide(i1, self._mem_div, out=f1)
                np.minimum(np.maximum(f1, 0.0, out=f1), 1.0, out=f1)
                if self._zero_totals:
                    f1[mem_total <= 0] = 0.0
            elif sc.name == "cpu":
                np.subtract(self.cpu_avail, self.held_cpu, out=i1)
                np.subtract(i1, request.vcpu_count, out=i1)
                np.divide(i1, self._cpu_div, out=f1)
                np.minimum(np.maximum(f1, 0.0, out=f1), 1.0, out=f1)
                if self._zero_totals:
                    f1[cpu_total <= 0] = 0.0
            elif sc.name == "in_flight":
                f1[:] = self._flight_rate
            elif sc.name == "spread":
                f1[:] = self._spread_rate
            else:   # pragma: no cover - the placer only uses the index with SCORERS
                raise ValueError(f"no array form for scorer {sc.name}")
            np.multiply(f1, sc.weight, out=f1)
            np.add(value, f1, out=value)
        total = 0.0
        for sc in SCORERS:
            total += sc.weight
        np.multiply(value, 100.0, out=value)
        np.divide(value, total, out=value)
        np.multiply(value, 1e6, out=value)
        np.add(value, 0.5, out=value)
        np.floor(value, out=value)
        np.divide(value, 1e6, out=value)
        out = value
        return out[slots]
