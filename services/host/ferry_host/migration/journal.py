"""The target's record of what it has verified and made durable, per disk.

`<storage>/migrating/<guest_id>/<disk_id>.part` is the overlay being filled and
`<disk_id>.journal` says up to which guest offset (in the source's send order)
every chunk arrived, matched its SHA-256 and was flushed, and for which source
layer (fingerprint). A resumed copy asks the source to start there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..storage import Storage

PART_DIR = "migrating"


@dataclass
class JournalState:
    fingerprint: str = ""
    next_offset: int = 0
    verified_bytes: int = 0


def work_dir(storage: Storage, guest_id: str) -> Path:
    return storage.path / PART_DIR / guest_id


class Journal:
    def __init__(self, storage: Storage, guest_id: str, disk_id: str) -> None:
        self.dir = work_dir(storage, guest_id)
        self.part = self.dir / f"{disk_id}.part"
        self.file = self.dir / f"{disk_id}.journal"
        #: The verified copy, kept here until every disk of the guest is done.
        self.done = self.dir / f"{disk_id}.done"
        # Unix socket paths are limited to 107 bytes: a short name in the temp folder.
        digest = hashlib.sha256(str(self.part).encode()).hexdigest()[:16]
        self.sock = Path(tempfile.gettempdir()) / f"ferry-nbd-{digest}.sock"

    def load(self) -> JournalState:
        try:
            return JournalState(**json.loads(self.file.read_text()))
        except (OSError, ValueError, TypeError):
            return JournalState()

    def save(self, state: JournalState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file)

    def discard(self) -> None:
        for p in (self.part, self.file, self.sock, self.file.with_suffix(".tmp")):
            p.unlink(missing_ok=True)


def remove_work(storage: Storage, guest_id: str) -> None:
    shutil.rmtree(work_dir(storage, guest_id), ignore_errors=True)
