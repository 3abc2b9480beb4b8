"""Guest drivers: the boundary between the host agent and the hypervisor."""

from ferry_host.driver.base import (
    Accel,
    DiskBus,
    DiskSpec,
    GuestDriver,
    GuestRuntime,
    GuestSpec,
    NicSpec,
)
from ferry_host.driver.link import LinkState, QmpLink
from ferry_host.driver.qmp import QmpDriver

__all__ = [
    "Accel",
    "DiskBus",
    "DiskSpec",
    "GuestDriver",
    "GuestRuntime",
    "GuestSpec",
    "LinkState",
    "NicSpec",
    "QmpDriver",
    "QmpLink",
]
