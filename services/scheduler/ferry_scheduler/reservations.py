"""Reservations: resources held on a host between a placement and the region's books.

A placement takes a PENDING reservation (vCPU, memory, and MiB per storage id)
on the chosen host. The region then confirms it (the server is placed) or
releases it (the placement was abandoned); a PENDING reservation nobody
confirms EXPIRES after its TTL. A reservation stays counted until the region's
own host usage includes the server, which the book learns from the host
cache: when an update for a host shows `cpu_used` and `mem_used_mb` grown
(since the previous view), the growth SETTLES that host's reservations,
pending or confirmed: first one that matches the growth exactly, else the
oldest ones that fit inside it, so no more is un-counted than the region
added. (The region commits the server's host right after SelectHost and
confirms later, so the growth usually arrives before the confirmation.) A
confirmed reservation the growth never explains settles after
`confirmed_grace` seconds. Storage holds go with their reservation: the
agents' reported free space is what counts afterwards.

Every method is synchronous: callers on the event loop check capacity and
reserve without an `await` in between, which makes a placement atomic with
respect to concurrent placements.

Storage is held per storage id, not per host, because a shared storage's free
space is seen by every host that mounts it.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from .clock import Clock
from .errors import ReservationEnded, UnknownReservation
from .model import HostView

log = logging.getLogger(__name__)


class ReservationState(enum.Enum):
    PENDING = "pending"        # held, waiting for the region's confirm or release
    CONFIRMED = "confirmed"    # placed; held until the region's usage shows it
    RELEASED = "released"      # given back by the region
    EXPIRED = "expired"        # nobody confirmed it within its TTL
    SETTLED = "settled"        # the region's host usage now includes it


TRANSITIONS: Mapping[ReservationState, frozenset[ReservationState]] = {
    ReservationState.PENDING: frozenset({ReservationState.CONFIRMED, ReservationState.RELEASED,
                                         ReservationState.EXPIRED, ReservationState.SETTLED}),
    ReservationState.CONFIRMED: frozenset({ReservationState.RELEASED, ReservationState.SETTLED}),
    ReservationState.RELEASED: frozenset(),
    ReservationState.EXPIRED: frozenset(),
    ReservationState.SETTLED: frozenset(),
}
COUNTED = frozenset({ReservationState.PENDING, ReservationState.CONFIRMED})


class ReservationStateError(Exception):
    """A transition the table does not allow (a bug in this module)."""


@dataclass(slots=True)
class Reservation:
    id: str
    server_id: str
    host_id: str
    vcpu: int
    memory_mb: int
    storage_mb: dict[str, int]
    expires_at: float          # monotonic
    expires_at_wall: float     # epoch seconds, for clients
    state: ReservationState = ReservationState.PENDING
    confirmed_at: float | None = None
    seq: int = field(default=0)


class ReservationBook:
    """All live reservations and the totals they hold per host and per storage."""

    def __init__(self, clock: Clock | None = None, *, confirmed_grace: float = 120.0,
                 remember_ended: int = 10_000) -> None:
        self._clock = clock or Clock()
        self._grace = confirmed_grace
        self._live: dict[str, Reservation] = {}
        self._by_server: dict[str, str] = {}
        self._by_host: dict[str, dict[str, Reservation]] = defaultdict(dict)   # creation order
        self._host_vcpu: dict[str, int] = defaultdict(int)
        self._host_mem: dict[str, int] = defaultdict(int)
        self._storage_mb: dict[str, int] = defaultdict(int)
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._ended: OrderedDict[str, ReservationState] = OrderedDict()
        self._remember_ended = remember_ended
        #: Called with (host_id, storage_ids) whenever what is held there changes (the fast index).
        self._hold_listeners: list[Callable[[str, Iterable[str]], None]] = []

    # ---- queries (used by filters and scoring; O(1)) ----

    def held_vcpu(self, host_id: str) -> int:
        return self._host_vcpu.get(host_id, 0)

    def held_memory(self, host_id: str) -> int:
        return self._host_mem.get(host_id, 0)

    def held_storage(self, storage_id: str) -> int:
        return self._storage_mb.get(storage_id, 0)

    def in_flight(self, host_id: str) -> int:
        """Guests on their way to `host_id`: live (pending or confirmed, unsettled) reservations."""
        held = self._by_host.get(host_id)
        return len(held) if held else 0

    def add_hold_listener(self, fn: Callable[[str, Iterable[str]], None]) -> None:
        self._hold_listeners.append(fn)

    def get(self, reservation_id: str) -> Reservation | None:
        return self._live.get(reservation_id)

    def pending_for_server(self, server_id: str) -> Reservation | None:
        rid = self._by_server.get(server_id) if server_id else None
        r = self._live.get(rid) if rid else None
        return r if r is not None and r.state is ReservationState.PENDING else None

    def live(self) -> Iterator[Reservation]:
        return iter(list(self._live.values()))

    def __len__(self) -> int:
        return len(self._live)

    # ---- commands ----

    def reserve(self, *, host_id: str, server_id: str, vcpu: int, memory_mb: int,
                storage_mb: Mapping[str, int], ttl: float) -> Reservation:
        now = self._clock.monotonic()
        r = Reservation(id=f"rsv-{uuid.uuid4().hex}", server_id=server_id, host_id=host_id,
                        vcpu=vcpu, memory_mb=memory_mb,
                        storage_mb={k: v for k, v in storage_mb.items() if v > 0},
                        expires_at=now + ttl, expires_at_wall=self._clock.wall() + ttl,
                        seq=next(self._seq))
        self._live[r.id] = r
        self._by_host[host_id][r.id] = r
        if server_id:
            self._by_server[server_id] = r.id
        self._count(r, +1)
        heapq.heappush(self._deadlines, (r.expires_at, r.seq, r.id))
        self._notify(r)
        log.debug("reservation %s: %d vCPU, %d MiB, storage %s on host %s for server %s, ttl %.0fs",
                 r.id, vcpu, memory_mb, r.storage_mb or "-", host_id, server_id or "-", ttl)
        return r

    def confirm(self, reservation_id: str) -> Reservation | None:
        """PENDING -> CONFIRMED; confirming twice (or after settling) is fine."""
        self.purge()
        r = self._live.get(reservation_id)
        if r is None:
            ended = self._ended.get(reservation_id)
            if ended is ReservationState.SETTLED:
                return None
            if ended is not None:
                raise ReservationEnded(f"reservation {reservation_id} is {ended.value}",
                                       state=ended.name, reason="RESERVATION_" + ended.name,
                                       metadata={"id": reservation_id})
            raise UnknownReservation(reservation_id)
        if r.state is ReservationState.CONFIRMED:
            return r
        self._transition(r, ReservationState.CONFIRMED)
        r.confirmed_at = self._clock.monotonic()
        heapq.heappush(self._deadlines, (r.confirmed_at + self._grace, next(self._seq), r.id))
        return r

    def release(self, reservation_id: str) -> None:
        """Gives the resources back; releasing an ended reservation is fine."""
        self.purge()
        r = self._live.get(reservation_id)
        if r is None:
            if reservation_id in self._ended:
                return
            raise UnknownReservation(reservation_id)
        self._transition(r, ReservationState.RELEASED)

    def purge(self) -> None:
        """Ends PENDING reservations past their TTL and CONFIRMED ones past the grace."""
        now = self._clock.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, rid = heapq.heappop(self._deadlines)
            r = self._live.get(rid)
            if r is None:
                continue
            if r.state is ReservationState.PENDING and r.expires_at <= now:
                self._transition(r, ReservationState.EXPIRED)
            elif (r.state is ReservationState.CONFIRMED and r.confirmed_at is not None
                  and r.confirmed_at + self._grace <= now):
                log.info("reservation %s settled after the %.0fs grace", r.id, self._grace)
                self._transition(r, ReservationState.SETTLED)

    def on_host_update(self, old: HostView | None, new: HostView) -> None:
        """Settles the reservations that the growth of the region's usage explains."""
        if old is None:
            return
        held = self._by_host.get(new.id)
        if not held:
            return
        cpu = new.cpu_used - old.cpu_used
        mem = new.mem_used_mb - old.mem_used_mb
        if cpu <= 0 or mem <= 0:
            return
        exact = next((r for r in held.values() if r.vcpu == cpu and r.memory_mb == mem), None)
        explained = [exact] if exact is not None else []
        if exact is None:
            for r in held.values():                 # oldest first
                if r.vcpu <= cpu and r.memory_mb <= mem:
                    cpu -= r.vcpu
                    mem -= r.memory_mb
                    explained.append(r)
        for r in explained:
            log.debug("reservation %s settled: host %s usage now includes it", r.id, new.id)
            self._transition(r, ReservationState.SETTLED)

    def on_host_removed(self, host_id: str) -> None:
        """A host left the inventory: whatever was held there is moot."""
        for r in list(self._by_host.get(host_id, {}).values()):
            log.warning("reservation %s released: host %s was removed", r.id, host_id)
            self._transition(r, ReservationState.RELEASED)

    # ---- internals ----

    def _transition(self, r: Reservation, new: ReservationState) -> None:
        if new not in TRANSITIONS[r.state]:
            raise ReservationStateError(f"reservation {r.id}: {r.state.name} -> {new.name} not allowed")
        log.debug("reservation %s: %s -> %s", r.id, r.state.name, new.name)
        was_counted = r.state in COUNTED
        r.state = new
        if was_counted and new not in COUNTED:
            self._count(r, -1)
        if new not in COUNTED:
            del self._live[r.id]
            if r.server_id and self._by_server.get(r.server_id) == r.id:
                del self._by_server[r.server_id]
            on_host = self._by_host.get(r.host_id)
            if on_host is not None:
                on_host.pop(r.id, None)
                if not on_host:
                    del self._by_host[r.host_id]
            self._ended[r.id] = new
            while len(self._ended) > self._remember_ended:
                self._ended.popitem(last=False)
            if new is ReservationState.EXPIRED:
                log.warning("reservation %s on host %s expired unconfirmed", r.id, r.host_id)
            elif new is ReservationState.RELEASED:
                log.info("reservation %s on host %s released", r.id, r.host_id)
        if was_counted:
            self._notify(r)

    def _notify(self, r: Reservation) -> None:
        for fn in self._hold_listeners:
            fn(r.host_id, r.storage_mb.keys())

    def _count(self, r: Reservation, sign: int) -> None:
        self._host_vcpu[r.host_id] += sign * r.vcpu
        self._host_mem[r.host_id] += sign * r.memory_mb
        for sid, mb in r.storage_mb.items():
            self._storage_mb[sid] += sign * mb
        if sign < 0:
            for d, k in ((self._host_vcpu, r.host_id), (self._host_mem, r.host_id)):
                if d.get(k) == 0:
                    del d[k]
            for sid in r.storage_mb:
                if self._storage_mb.get(sid) == 0:
                    del self._storage_mb[sid]
