"""The QMP link to one guest, as an explicit state machine.

    IDLE -> CONNECTING -> CONNECTED -> DISCONNECTING -> CLOSED
              |  (failed: back to IDLE, may retry)
    IDLE ----------------------------------------------> CLOSED

Every change goes through `_transition()`, which checks the table, logs and
wakes `wait_changed()` callers.  Operations called in a state that does not
allow them raise `LinkStateError` with both states.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, QMPError
from qemu.qmp.events import EventListener

from ferry_host.errors import LinkStateError, QmpCommandFailed, QmpError, QmpTimeout

log = logging.getLogger(__name__)


class LinkState(Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTING = "disconnecting"
    CLOSED = "closed"


_ALLOWED: dict[LinkState, frozenset[LinkState]] = {
    LinkState.IDLE: frozenset({LinkState.CONNECTING, LinkState.CLOSED}),
    LinkState.CONNECTING: frozenset({LinkState.CONNECTED, LinkState.IDLE}),
    LinkState.CONNECTED: frozenset({LinkState.DISCONNECTING}),
    LinkState.DISCONNECTING: frozenset({LinkState.CLOSED}),
    LinkState.CLOSED: frozenset(),
}


class QmpLink:
    def __init__(self, guest_id: str, socket_path: Path, command_timeout: float = 30.0) -> None:
        self.guest_id = guest_id
        self.socket_path = socket_path
        self.command_timeout = command_timeout
        self._state = LinkState.IDLE
        self._changed = asyncio.Event()
        self._client = QMPClient(f"guest-{guest_id}")

    @property
    def state(self) -> LinkState:
        return self._state

    def _transition(self, new: LinkState) -> None:
        allowed = _ALLOWED[self._state]
        if new not in allowed:
            required = "/".join(sorted(s.name for s in allowed)) or "no next state"
            raise LinkStateError(self.guest_id, f"transition to {new.name}", self._state.name, required)
        log.debug("guest %s: QMP link %s -> %s", self.guest_id, self._state.name, new.name)
        self._state = new
        # Wake every waiter once, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self) -> LinkState:
        await self._changed.wait()
        return self._state

    def _require(self, operation: str, state: LinkState) -> None:
        if self._state is not state:
            raise LinkStateError(self.guest_id, operation, self._state.name, state.name)

    async def connect(self, timeout: float) -> None:
        """Connect and negotiate.  On failure the link is IDLE again.

        The timeout matters: QEMU accepts one QMP client at a time, and a
        second client's connect() succeeds at the socket level but never
        receives the greeting.
        """
        self._require("connect", LinkState.IDLE)
        self._transition(LinkState.CONNECTING)
        try:
            await asyncio.wait_for(self._client.connect(str(self.socket_path)), timeout)
        except (ConnectError, OSError, TimeoutError) as exc:
            self._transition(LinkState.IDLE)
            if isinstance(exc, TimeoutError):
                raise QmpTimeout(self.guest_id, f"no QMP greeting within {timeout:.1f}s "
                                 "(is another client attached?)") from exc
            raise QmpError(self.guest_id, f"cannot connect to {self.socket_path}: {exc}") from exc
        except BaseException:
            self._transition(LinkState.IDLE)  # cancelled: leave a usable state
            raise
        self._transition(LinkState.CONNECTED)

    async def execute(self, cmd: str, args: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> Any:
        self._require(f"execute {cmd}", LinkState.CONNECTED)
        limit = self.command_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(self._client.execute(cmd, args or None), limit)
        except ExecuteError as exc:
            raise QmpCommandFailed(self.guest_id, cmd, exc.error_class,
                                   exc.error.error.desc) from exc
        except TimeoutError as exc:
            raise QmpTimeout(self.guest_id, f"{cmd}: no answer within {limit:.1f}s") from exc
        except ExecInterruptedError as exc:
            raise QmpError(self.guest_id, f"{cmd}: QMP connection lost") from exc
        except QMPError as exc:  # e.g. StateError after QEMU hung up
            raise QmpError(self.guest_id, f"{cmd}: {exc}") from exc

    @contextmanager
    def listener(self, names: tuple[str, ...] = ()) -> Iterator[EventListener]:
        self._require("listen", LinkState.CONNECTED)
        with self._client.listener(names) as listener:
            yield listener

    async def close(self, timeout: float = 5.0) -> None:
        """Disconnect.  Idempotent; never raises for a peer that went away.

        After `quit` (or QEMU dying) qemu.qmp's disconnect() re-raises the
        reader's EOFError: that is the normal end of a link here.
        """
        if self._state in (LinkState.IDLE, LinkState.CLOSED):
            if self._state is LinkState.IDLE:
                self._transition(LinkState.CLOSED)
            return
        self._require("close", LinkState.CONNECTED)
        self._transition(LinkState.DISCONNECTING)
        try:
            await asyncio.wait_for(self._client.disconnect(), timeout)
        except (EOFError, OSError, QMPError) as exc:
            log.debug("guest %s: QMP disconnect: %r (peer gone, normal)", self.guest_id, exc)
        except TimeoutError:
            log.warning("guest %s: QMP disconnect took over %.1fs, dropped", self.guest_id, timeout)
        finally:
            self._transition(LinkState.CLOSED)
