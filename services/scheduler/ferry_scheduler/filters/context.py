"""What a filter may consult besides the host and the request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..model import HostView
from ..reservations import ReservationBook

if TYPE_CHECKING:
    from .storage import StoragePlan


@dataclass(slots=True)
class FilterContext:
    """Per-placement state shared by the filters.

    `book` gives the resources held by reservations; `source` is the server's
    current host for migrations (None for a creation); `storage_plans` memoises
    the storage filter's choice of a storage per disk, reused for the answer.
    """

    book: ReservationBook
    source: HostView | None = None
    storage_plans: dict[str, StoragePlan] = field(default_factory=dict)
