"""What a command handler gets: the parsed globals, an output, and a lazily opened client."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from ferry_common.tls import TlsConfig

from ..sdk import DEFAULT_TIMEOUT, FerryClient, resolve_address
from .output import Output


class Context:
    def __init__(self, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> None:
        self.args = args
        self.out = Output(args.output, stdout, stderr)
        self.address = resolve_address(args.region)
        self._client: FerryClient | None = None

    @property
    def request_timeout(self) -> float:
        """Deadline of each request: --timeout, else 30 s."""
        return self.args.timeout or DEFAULT_TIMEOUT

    @property
    def wait_timeout(self) -> float | None:
        """Bound of a whole --wait, --follow or upload: --timeout, else none."""
        timeout: float | None = self.args.timeout
        return timeout

    def tls(self) -> TlsConfig | None:
        a = self.args
        if not (a.tls_ca or a.tls_cert or a.tls_key):
            return None
        return TlsConfig(Path(a.tls_ca) if a.tls_ca else None, Path(a.tls_cert) if a.tls_cert else None,
                         Path(a.tls_key) if a.tls_key else None)

    @property
    def client(self) -> FerryClient:
        if self._client is None:
            self._client = FerryClient(self.address, self.tls(), timeout=self.request_timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
