"""A writable qcow2 through `qemu-nbd` on a unix socket, and a minimal NBD client.

The target writes the received ranges into its new overlay through QEMU's own
block layer (so the qcow2 stays valid and zero ranges become zero clusters).
Fixed-newstyle handshake with NBD_OPT_EXPORT_NAME, simple replies only.
"""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

from ferry_common.errors import Internal

from ..errors import HostError

QEMU_NBD = os.environ.get("FERRY_QEMU_NBD", "qemu-nbd")

_IHAVEOPT = 0x49484156454F5054
_REQ_MAGIC = 0x25609513
_REPLY_MAGIC = 0x67446698
_CMD_WRITE, _CMD_DISC, _CMD_FLUSH, _CMD_WRITE_ZEROES = 1, 2, 3, 6
_MAX_ZERO = 1 << 30


class NbdError(Internal, HostError):
    reason = "NBD_FAILED"


class NbdWriter:
    """qemu-nbd serving `path` (qcow2) on `sock`, with one client connection."""

    def __init__(self, path: Path, sock: Path, depth: int = 4) -> None:
        self.path, self.sock = path, sock
        self.depth = depth
        self._pending: dict[int, tuple[int, int, int]] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None
        self._handle = 0

    async def open(self) -> None:
        self.sock.unlink(missing_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            QEMU_NBD, "-f", "qcow2", "--cache=writeback", "--aio=threads", "-k", str(self.sock),
            "-x", "disk", str(self.path), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        for _ in range(200):
            if self.sock.exists():
                try:
                    self._r, self._w = await asyncio.open_unix_connection(str(self.sock))
                    break
                except OSError:
                    pass
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.025)
        if self._r is None:
            err = b""
            if self.proc.returncode is not None and self.proc.stderr:
                err = await self.proc.stderr.read()
            await self.close()
            raise NbdError(f"qemu-nbd did not start on {self.path}: {err.decode(errors='replace')}")
        await self._handshake()

    async def _handshake(self) -> None:
        r, w = self._r, self._w
        assert r is not None and w is not None
        head = await r.readexactly(18)
        if head[:8] != b"NBDMAGIC" or struct.unpack(">Q", head[8:16])[0] != _IHAVEOPT:
            raise NbdError("not a newstyle NBD server")
        server_flags = struct.unpack(">H", head[16:18])[0]
        no_zeroes = bool(server_flags & 2)
        w.write(struct.pack(">I", 1 | (2 if no_zeroes else 0)))
        name = b"disk"
        w.write(struct.pack(">QII", _IHAVEOPT, 1, len(name)) + name)
        await w.drain()
        self.size, self.flags = struct.unpack(">QH", await r.readexactly(10))
        if not no_zeroes:
            await r.readexactly(124)

    def _send(self, cmd: int, offset: int, length: int, data: bytes = b"") -> int:
        assert self._w is not None
        self._handle += 1
        self._w.write(struct.pack(">IHHQQI", _REQ_MAGIC, 0, cmd, self._handle, offset, length))
        if data:
            self._w.write(data)
        self._pending[self._handle] = (cmd, offset, length)
        return self._handle

    async def _reply(self) -> None:
        assert self._r is not None
        magic, error, handle = struct.unpack(">IIQ", await self._r.readexactly(16))
        if magic != _REPLY_MAGIC or handle not in self._pending:
            raise NbdError("NBD protocol error (bad reply)")
        cmd, offset, length = self._pending.pop(handle)
        if error == 28:  # ENOSPC
            from ..storage import StorageFull
            raise StorageFull(f"no space left writing {self.path}")
        if error:
            raise NbdError(f"NBD command {cmd} at {offset}+{length} failed: errno {error}")

    async def _submit(self, cmd: int, offset: int, length: int, data: bytes = b"") -> None:
        """Sends a request; waits for replies only while `depth` requests are in flight."""
        assert self._w is not None
        self._send(cmd, offset, length, data)
        await self._w.drain()
        while len(self._pending) >= self.depth:
            await self._reply()

    async def write(self, offset: int, data: bytes) -> None:
        await self._submit(_CMD_WRITE, offset, len(data), data)

    async def write_zeroes(self, offset: int, length: int) -> None:
        pos, end = offset, offset + length
        while pos < end:
            n = min(_MAX_ZERO, end - pos)
            await self._submit(_CMD_WRITE_ZEROES, pos, n)
            pos += n

    async def flush(self) -> None:
        """Waits for every write in flight (raising the first failure), then flushes."""
        while self._pending:
            await self._reply()
        await self._submit(_CMD_FLUSH, 0, 0)
        while self._pending:
            await self._reply()

    async def close(self) -> None:
        """Disconnects and waits for qemu-nbd to exit (it flushes on exit). Idempotent."""
        if self._w is not None:
            try:
                self._w.write(struct.pack(">IHHQQI", _REQ_MAGIC, 0, _CMD_DISC, 0, 0, 0))
                await self._w.drain()
                self._w.close()
            except (OSError, ConnectionError):
                pass
            self._w = self._r = None
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.sock.unlink(missing_ok=True)
