"""States of a host-down incident (one per vanished health key), and their transitions."""

from __future__ import annotations

import enum
from collections.abc import Mapping


class IncidentState(str, enum.Enum):
    #: The key vanished; the confirmation window runs (the host may come back).
    WAITING = "waiting"
    #: Too many hosts expired at once: auto-rescue paused (see the reason).
    PAUSED = "paused"
    #: Confirmed down and marked offline; rescues requested / in flight.
    RESCUING = "rescuing"
    #: Every guest was rescued or reported (see `results`).
    DONE = "done"
    #: The host came back, or its agent answered: nothing was done.
    CANCELLED = "cancelled"


I = IncidentState

INCIDENT_TRANSITIONS: Mapping[IncidentState, frozenset[IncidentState]] = {
    I.WAITING: frozenset({I.PAUSED, I.RESCUING, I.DONE, I.CANCELLED}),
    I.PAUSED: frozenset({I.WAITING, I.CANCELLED}),
    I.RESCUING: frozenset({I.DONE}),
    I.DONE: frozenset(),
    I.CANCELLED: frozenset(),
}

OPEN_STATES = frozenset({I.WAITING, I.PAUSED, I.RESCUING})
