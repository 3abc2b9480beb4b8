"""The placement: filter every candidate host, score the survivors, reserve the best.

`Placer.select` is synchronous from the first read of the reservations to the
new reservation, so on the single event loop two placements can never both
take the last free slot of a host. `Placer.forecast` asks the same question
without reserving and answers with every candidate and every rejected host.

Two ways to run the filters give the same answer:

- the fast index (`fastindex.HostIndex`, numpy): masks over every host in a
  few vector operations, the Python filters only on hosts whose storage needs
  them and on rejected hosts whose reasons are reported; SelectHost ranks only
  the best `SELECT_CANDIDATES` and reports the first `SELECT_REJECTED` rejected
  hosts by name when it places (every rejected host when it cannot);
- the plain scan: every filter on every host, used for a preferred host (one
  host), custom filters or scorers, or when numpy is missing.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .cache import HostCache
from .clock import Clock
from .errors import HostViewNotReady, NoHostFits, UnknownHost
from .filters import REGISTRY, Filter, FilterContext, active_filters, run_filters
from .filters import storage as storage_filter
from .model import (
    MIGRATION_KINDS,
    Candidate,
    HostView,
    PlacementRequest,
    PlacementResult,
    RejectedHost,
    Rejection,
    ReservationInfo,
)
from .reservations import ReservationBook
from .scoring import SCORERS, Scorer, rank

try:
    import numpy as np

    from .fastindex import HostIndex
except ImportError:          # pragma: no cover - numpy is a dependency; the plain scan still works
    np = None  # type: ignore[assignment]
    HostIndex = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 60.0
STALE_LOG_EVERY = 5.0
SELECT_CANDIDATES = 8      # SelectHost answers with the best this many candidates
SELECT_REJECTED = 16       # ... and this many rejected hosts (by name) when it places
FORECAST_PLANS = 32        # a forecast names the storages of this many best candidates
_STORAGE = object()         # memo marker: the storage filter's key adds the holds
REASON_MEMO_MAX = 200_000  # remembered (host version, filter, request part) -> reasons
SPELL_OUT_HOSTS = 3         # an error message lists each host's reasons up to this many hosts


@contextlib.contextmanager
def gc_paused():
    """No cyclic garbage collection while a placement or forecast runs.

    A forecast over 10,000 hosts makes tens of thousands of short-lived tuples
    (candidates, rejections); collections started in the middle promote them
    and trigger full collections over the whole host view (tens of ms, the p99
    of the benchmark). They hold no cycles and are freed by reference counting
    as soon as the answer is sent, so pausing the collector loses nothing. The
    work is synchronous on the event loop: nothing else runs meanwhile.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(slots=True)
class _Scan:
    ranked: list[tuple[float, HostView]]      # best first; maybe only the best few
    passing: int                              # hosts that passed, in all
    rejected: list[RejectedHost]              # by name; maybe only the first few
    rejected_count: int                       # hosts rejected, in all


class Placer:
    def __init__(self, cache: HostCache, book: ReservationBook, *, clock: Clock | None = None,
                 default_ttl: float = DEFAULT_TTL_SECONDS,
                 filters: Sequence[Filter] = REGISTRY,
                 scorers: Sequence[Scorer] = SCORERS, fast: bool = True) -> None:
        self.cache = cache
        self.book = book
        self._clock = clock or Clock()
        self._default_ttl = default_ttl
        self._filters = filters
        self._scorers = scorers
        self._stale_logged_at = float("-inf")
        self.index: HostIndex | None = None
        self._reason_memo: dict[tuple, tuple[Rejection, ...]] = {}
        self._disk_keys: dict[tuple, int] = {}
        if fast and HostIndex is not None and filters is REGISTRY and scorers is SCORERS:
            self.index = HostIndex(book, cache.hosts())
            cache.add_listener(self.index)

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
        with gc_paused():
            return self._select(request)

    def _select(self, request: PlacementRequest) -> PlacementResult:
        source, preferred = self._begin(request)
        previous = self.book.pending_for_server(request.server_id)
        if previous is not None:   # the region asks again: its earlier answer is void
            log.info("server %s placed again: releasing its pending reservation %s",
                     request.server_id, previous.id)
            self.book.release(previous.id)

        context = FilterContext(book=self.book, source=source)
        scan = self._scan(request, context, preferred, SELECT_CANDIDATES, SELECT_REJECTED)
        stale = self.cache.stale
        if not scan.ranked:
            raise self._no_host(request, preferred, scan.rejected, stale)
        candidates = tuple(
            Candidate(h.id, h.name, s, tuple(storage_filter.plan(h, request, context).storage_ids))
            for s, h in scan.ranked)

        best = scan.ranked[0][1]
        plan = storage_filter.plan(best, request, context)
        ttl = request.reservation_ttl_seconds or self._default_ttl
        r = self.book.reserve(host_id=best.id, server_id=request.server_id,
                              vcpu=request.vcpu_count, memory_mb=request.memory_mb,
                              storage_mb=plan.storage_mb, ttl=ttl)
        if log.isEnabledFor(logging.INFO):
            log.info("placed %s on %s (score %.2f, %d candidate(s), %d rejected%s)",
                     request.describe(), best.label, scan.ranked[0][0], scan.passing,
                     scan.rejected_count, ", STALE host view" if stale else "")
        return PlacementResult(candidates=candidates, rejected=tuple(scan.rejected),
                               selected=candidates[0],
                               reservation=ReservationInfo(r.id, r.host_id, r.expires_at_wall),
                               stale_view=stale)

    def forecast(self, request: PlacementRequest) -> PlacementResult:
        """What `select` would answer, reserving nothing: every candidate (best first, the
        first `FORECAST_PLANS` with their storage choice) and every rejected host."""
        with gc_paused():
            return self._forecast(request)

    def _forecast(self, request: PlacementRequest) -> PlacementResult:
        source, preferred = self._begin(request)
        context = FilterContext(book=self.book, source=source)
        scan = self._scan(request, context, preferred, None, None)
        planned = FORECAST_PLANS if request.disks else 0
        candidates = tuple(
            Candidate(h.id, h.name, s, tuple(storage_filter.plan(h, request, context).storage_ids))
            for s, h in scan.ranked[:planned])
        candidates += tuple(Candidate(h.id, h.name, s, ()) for s, h in scan.ranked[planned:])
        return PlacementResult(candidates=candidates, rejected=tuple(scan.rejected),
                               stale_view=self.cache.stale)

    # ---- the two scans ----

    def _begin(self, request: PlacementRequest) -> tuple[HostView | None, HostView | None]:
        if not self.cache.synced:
            raise HostViewNotReady(f"the scheduler has no host view yet: {self.cache.stale_reason}",
                                   metadata={"region_link": self.cache.stale_reason})
        self._note_stale(request)
        source = self._source(request)
        preferred = self._preferred(request)
        self.book.purge()
        return source, preferred

    def _scan(self, request: PlacementRequest, context: FilterContext,
              preferred: HostView | None, max_candidates: int | None,
              max_rejected: int | None) -> _Scan:
        filters = active_filters(request, self._filters)
        if self.index is None or preferred is not None:
            hosts: Iterable[HostView] = [preferred] if preferred is not None else self.cache.hosts()
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
            n_rejected = len(rejected)
            if ranked and max_rejected is not None:
                rejected = rejected[:max_rejected]
            if max_candidates is not None:
                ranked = ranked[:max_candidates]
            return _Scan(ranked, len(survivors), rejected, n_rejected)
        return self._scan_index(self.index, request, context, filters, max_candidates,
                                max_rejected)

    def _scan_index(self, index: HostIndex, request: PlacementRequest, context: FilterContext,
                    filters: list[Filter], max_candidates: int | None,
                    max_rejected: int | None) -> _Scan:
        screen = index.screen(request, context.source)
        sure, unsure = screen.sure, screen.unsure
        failed_unsure: list[int] = []
        if unsure.any():
            storage_check = next(f.check for f in filters if f.name == "storage")
            for slot in np.flatnonzero(unsure).tolist():
                # every other filter passed it by the exact masks
                if storage_check(index.host(slot), request, context):
                    failed_unsure.append(slot)
                else:
                    sure[slot] = True
        passing = np.flatnonzero(sure)
        scores = index.scores(passing, request)
        names = index.name_rank
        if max_candidates is not None and len(passing) > max_candidates:
            k = max_candidates
            kth = np.partition(scores, len(scores) - k)[len(scores) - k]
            above = np.flatnonzero(scores > kth)
            tied = np.flatnonzero(scores == kth)
            need = k - len(above)
            if len(tied) > need:
                tied = tied[np.argpartition(names[passing[tied]], need - 1)[:need]]
            pos = np.concatenate([above, tied])
            top, top_scores = passing[pos], scores[pos]
        else:
            top, top_scores = passing, scores
        order = np.lexsort((names[top], -top_scores))
        views = index.views
        ranked = [(s, views[slot])
                  for s, slot in zip(top_scores[order].tolist(), top[order].tolist(), strict=True)]

        rej = screen.ok ^ index.alive        # alive and not ok: rejected by a mask
        if failed_unsure:
            rej[np.asarray(failed_unsure)] = True
        rej_slots = np.flatnonzero(rej)
        n_rejected = len(rej_slots)
        if ranked and max_rejected is not None and n_rejected > max_rejected:
            rej_slots = rej_slots[np.argpartition(names[rej_slots], max_rejected - 1)[:max_rejected]]
        rej_slots = rej_slots[np.argsort(names[rej_slots], kind="stable")]
        # only the filters that reject a host (or may) run on it: the masks are exact
        none = np.zeros(len(rej_slots), dtype=bool)
        columns = []
        for f in filters:
            m = screen.fails.get(f.name)
            col = m[rej_slots] if m is not None else none
            if f.name == "storage":
                col = col | screen.storage_unsure[rej_slots]
            columns.append(col)
        rejected: list[RejectedHost] = []
        # the reasons of filters that read only the host and the request's fixed
        # parts (not capacity or holds) are kept per host version: a forecast over
        # 10,000 hosts mostly repeats the same sentences
        memo, versions = self._reason_memo, index.versions
        if len(memo) > REASON_MEMO_MAX:
            memo.clear()
            self._disk_keys.clear()
        src = context.source
        memo_keys: dict[str, object] = {"status": (), "network": request.networks,
                                        "storage": _STORAGE}
        disks_key = self._disk_keys.setdefault((request.disks, request.kind in MIGRATION_KINDS),
                                               len(self._disk_keys))
        held = self.book.held_storage
        if src is not None:
            memo_keys["cpu_model"] = (src.cpu_model, src.cpu_microcode)
            memo_keys["kernel"] = src.kernel_version
        if len(rej_slots):
            # (host, filter) pairs to run, host by host, filters in registry order
            pairs = np.nonzero(np.stack(columns, axis=1))
            slots = rej_slots.tolist()
            current: int = -1
            reasons: list[Rejection] = []
            for row, fi in zip(pairs[0].tolist(), pairs[1].tolist(), strict=True):
                if row != current:
                    if current >= 0:
                        h = views[slots[current]]
                        rejected.append(RejectedHost(h.id, h.name, tuple(reasons)))
                    current, reasons = row, []
                f = filters[fi]
                memo_key = memo_keys.get(f.name)
                if memo_key is None:
                    reasons.extend(f.check(views[slots[row]], request, context))
                    continue
                slot = slots[row]
                if memo_key is _STORAGE:     # and what is held on the host's storages
                    key = (f.name, slot, versions[slot], disks_key,
                           tuple([held(st.id) for st in views[slot].storages]))
                else:
                    key = (f.name, slot, versions[slot], memo_key)
                found = memo.get(key)
                if found is None:
                    found = memo[key] = tuple(f.check(views[slot], request, context))
                reasons.extend(found)
            h = views[slots[current]]
            rejected.append(RejectedHost(h.id, h.name, tuple(reasons)))
        return _Scan(ranked, len(passing), rejected, n_rejected)

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
            err = UnknownHost(request.prefer_host)
            err.message = (f"preferred host {request.prefer_host!r} not found: the scheduler "
                           f"knows no host with that id or name")
            err.metadata["field"] = "prefer_host"
            raise err
        return host

    def _source(self, request: PlacementRequest) -> HostView | None:
        if not request.source_host_id:
            return None
        host = self.cache.get(request.source_host_id)
        if host is None:
            err = UnknownHost(request.source_host_id)
            err.message = (f"source host {request.source_host_id!r} not found: the scheduler "
                           f"knows no host with that id")
            err.metadata["field"] = "source_host_id"
            raise err
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
