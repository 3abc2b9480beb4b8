"""The placement: filter every candidate host, score the survivors, reserve the best.

`Placer.select` is synchronous from the first read of the reservations to the
new reservation, so on the single event loop two placements can never both
take the last free slot of a host.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

from .cache import HostCache
from .clock import Clock
from .errors import HostViewNotReady, NoHostFits, UnknownHost
from .filters import REGISTRY, Filter, FilterContext, active_filters, run_filters
from .filters import storage as storage_filter
from .model import (
    Candidate,
    HostView,
    PlacementRequest,
    PlacementResult,
    RejectedHost,
    ReservationInfo,
)
from .reservations import ReservationBook
from .scoring import SCORERS, Scorer, rank

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 60.0
STALE_LOG_EVERY = 5.0
SPELL_OUT_HOSTS = 3         # an error message lists each host's reasons up to this many hosts


class Placer:
    def __init__(self, cache: HostCache, book: ReservationBook, *, clock: Clock | None = None,
                 default_ttl: float = DEFAULT_TTL_SECONDS,
                 filters: Sequence[Filter] = REGISTRY,
                 scorers: Sequence[Scorer] = SCORERS) -> None:
        self.cache = cache
        self.book = book
        self._clock = clock or Clock()
        self._default_ttl = default_ttl
        self._filters = filters
        self._scorers = scorers
        self._stale_logged_at = float("-inf")

    async def wait_for_view(self, timeout: float) -> None:
        """Gives a just-started scheduler up to `timeout` s to get the region's snapshot.

        Called before `select` (whose not-ready error stands if it times out);
        the await is before the atomic part, never inside it.
        """
        if self.cache.synced or timeout <= 0:
            return
        try:
            await self.cache.wait_for(lambda c: c.synced, timeout)
        except TimeoutError:
            pass

    def select(self, request: PlacementRequest) -> PlacementResult:
        """Chooses a host and reserves it; NoHostFits carries every rejected host."""
        if not self.cache.synced:
            raise HostViewNotReady(f"the scheduler has no host view yet: {self.cache.stale_reason}",
                                   metadata={"region_link": self.cache.stale_reason})
        self._note_stale(request)
        source = self._source(request)
        preferred = self._preferred(request)
        self.book.purge()
        previous = self.book.pending_for_server(request.server_id)
        if previous is not None:   # the region asks again: its earlier answer is void
            log.info("server %s placed again: releasing its pending reservation %s",
                     request.server_id, previous.id)
            self.book.release(previous.id)

        context = FilterContext(book=self.book, source=source)
        hosts: Iterable[HostView] = [preferred] if preferred is not None else self.cache.hosts()
        filters = active_filters(request, self._filters)
        survivors: list[HostView] = []
        rejected: list[RejectedHost] = []
        for host in hosts:
            reasons = run_filters(host, request, context, filters)
            if reasons:
                rejected.append(RejectedHost(host.id, host.name, tuple(reasons)))
            else:
                survivors.append(host)
        rejected.sort(key=lambda r: (r.host_name, r.host_id))

        ranked = rank(survivors, request, context, self._scorers)
        candidates = tuple(
            Candidate(h.id, h.name, s, tuple(storage_filter.plan(h, request, context).storage_ids))
            for s, h in ranked)
        stale = self.cache.stale
        if not candidates:
            raise self._no_host(request, preferred, rejected, stale)

        best = ranked[0][1]
        plan = storage_filter.plan(best, request, context)
        ttl = request.reservation_ttl_seconds or self._default_ttl
        r = self.book.reserve(host_id=best.id, server_id=request.server_id,
                              vcpu=request.vcpu_count, memory_mb=request.memory_mb,
                              storage_mb=plan.storage_mb, ttl=ttl)
        log.info("placed %s on %s (score %.2f, %d candidate(s), %d rejected%s)",
                 request.describe(), best.label, ranked[0][0], len(candidates), len(rejected),
                 ", STALE host view" if stale else "")
        return PlacementResult(candidates=candidates, rejected=tuple(rejected),
                               selected=candidates[0],
                               reservation=ReservationInfo(r.id, r.host_id, r.expires_at_wall),
                               stale_view=stale)

    def confirm(self, reservation_id: str) -> None:
        self.book.confirm(reservation_id)

    def release(self, reservation_id: str) -> None:
        self.book.release(reservation_id)

    # ---- helpers ----

    def _preferred(self, request: PlacementRequest) -> HostView | None:
        if not request.prefer_host:
            return None
        host = self.cache.find(request.prefer_host)
        if host is None:
            raise UnknownHost(request.prefer_host)
        return host

    def _source(self, request: PlacementRequest) -> HostView | None:
        if not request.source_host_id:
            return None
        host = self.cache.get(request.source_host_id)
        if host is None:
            raise UnknownHost(request.source_host_id)
        return host

    def _note_stale(self, request: PlacementRequest) -> None:
        if not self.cache.stale:
            return
        now = self._clock.monotonic()
        if now - self._stale_logged_at >= STALE_LOG_EVERY:
            self._stale_logged_at = now
            log.warning("placing %s from a host view stale for %.1fs: %s",
                        request.describe(), self.cache.stale_for(), self.cache.stale_reason)

    def _no_host(self, request: PlacementRequest, preferred: HostView | None,
                 rejected: list[RejectedHost], stale: bool) -> NoHostFits:
        result = PlacementResult(candidates=(), rejected=tuple(rejected), stale_view=stale)
        counts = Counter(x.reason for rh in rejected for x in rh.rejections)
        metadata = {
            "hosts_considered": str(len(rejected)),
            "hosts_rejected": str(len(rejected)),
            "reasons": ",".join(f"{k}={v}" for k, v in sorted(counts.items())),
            "host_view": "stale" if stale else "fresh",
        }
        if request.server_id:
            metadata["server_id"] = request.server_id
        if stale:
            metadata["host_view_stale_reason"] = self.cache.stale_reason
        if preferred is not None:
            metadata["prefer_host"] = preferred.id
            why = "; ".join(f"{x.reason}: {x.message}" for x in rejected[0].rejections)
            message = f"preferred host {preferred.label} cannot take {request.describe()}: {why}"
            reason = "PREFERRED_HOST_REJECTED"
        elif not rejected:
            message = f"no host can take {request.describe()}: the scheduler knows no host"
            reason = "NO_HOSTS"
        else:
            summary = ", ".join(f"{k} on {v}" for k, v in counts.most_common())
            message = (f"no host can take {request.describe()}: all {len(rejected)} host(s) "
                       f"rejected ({summary})")
            if len(rejected) <= SPELL_OUT_HOSTS:
                message += ": " + "; ".join(
                    f"{rh.host_name or rh.host_id}: "
                    + ", ".join(f"{x.reason}: {x.message}" for x in rh.rejections)
                    for rh in rejected)
            reason = "NO_HOST_FITS"
        if stale:
            message += f" [host view stale: {self.cache.stale_reason}]"
        log.info("%s", message)
        return NoHostFits(message, result, reason=reason, metadata=metadata)
