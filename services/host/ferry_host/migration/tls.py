"""Per-migration TLS credentials as QEMU `tls-creds-x509` objects.

The region sends each end a fresh certificate and key; they are written to a
private folder only for the migration (QEMU reads `ca-cert.pem` and
`<endpoint>-cert.pem`/`<endpoint>-key.pem` from it), loaded with `object-add`
(`verify-peer=true` on both ends), and removed with the object afterwards.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ferry_proto.host.v1 import migration_pb2 as pb

from ferry_host.driver.base import GuestDriver

log = logging.getLogger(__name__)

CREDS_ID = "ferry-mig-tls"


def folder(state_dir: Path, guest_id: str, endpoint: str) -> Path:
    return Path(state_dir).absolute() / "tls" / f"{guest_id}-{endpoint}"


def write(path: Path, material: pb.TlsMaterial, endpoint: str) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    files = {"ca-cert.pem": material.ca_cert_pem, f"{endpoint}-cert.pem": material.cert_pem,
             f"{endpoint}-key.pem": material.key_pem}
    for name, text in files.items():
        fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return path


async def add(driver: GuestDriver, guest_id: str, path: Path, endpoint: str) -> str:
    await remove_object(driver, guest_id)  # a leftover of an earlier try
    await driver.qmp(guest_id, "object-add", **{"qom-type": "tls-creds-x509", "id": CREDS_ID,
                                                "endpoint": endpoint, "dir": str(path),
                                                "verify-peer": True})
    return CREDS_ID


async def remove_object(driver: GuestDriver, guest_id: str) -> None:
    try:
        await driver.qmp(guest_id, "object-del", id=CREDS_ID)
    except Exception as exc:  # noqa: BLE001 - not there
        log.debug("guest %s: object-del %s: %s", guest_id, CREDS_ID, exc)


async def remove(driver: GuestDriver | None, guest_id: str, path: Path) -> None:
    """Drops the QEMU object (if a driver is given) and the files; idempotent."""
    if driver is not None:
        try:
            await driver.qmp(guest_id, "migrate-set-parameters", **{"tls-creds": ""})
        except Exception as exc:  # noqa: BLE001 - QEMU gone or migrating
            log.debug("guest %s: clearing tls-creds: %s", guest_id, exc)
        await remove_object(driver, guest_id)
    shutil.rmtree(path, ignore_errors=True)


def is_tls_error(text: str) -> bool:
    low = text.lower()
    return "tls" in low or "certificate" in low or "handshake" in low
