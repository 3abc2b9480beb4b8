"""Optional TLS / mutual TLS for every gRPC endpoint, from configuration.

A `TlsConfig` names PEM files. Server side: cert+key, and a CA to require and
verify client certificates (mTLS). Client side: the CA to verify the server,
and optionally a client cert+key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ssl

import grpc


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None or self.ca_file is not None

    def server_credentials(self) -> grpc.ServerCredentials:
        if self.cert_file is None or self.key_file is None:
            raise ValueError("TLS server needs both a certificate and a key")
        pair = [(self.key_file.read_bytes(), self.cert_file.read_bytes())]
        ca = self.ca_file.read_bytes() if self.ca_file else None
        return grpc.ssl_server_credentials(pair, root_certificates=ca,
                                           require_client_auth=ca is not None)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        ca = self.ca_file.read_bytes() if self.ca_file else None
        key = self.key_file.read_bytes() if self.key_file else None
        cert = self.cert_file.read_bytes() if self.cert_file else None
        return grpc.ssl_channel_credentials(ca, key, cert)

    def server_ssl_context(self) -> ssl.SSLContext:
        """The same policy for a raw TLS socket (the cold copy's data channel)."""
        if self.cert_file is None or self.key_file is None:
            raise ValueError("TLS server needs both a certificate and a key")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.ca_file is not None:
            ctx.load_verify_locations(self.ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca_file is not None:
            ctx.load_verify_locations(self.ca_file)
        else:
            ctx.load_default_certs()
        if self.cert_file is not None and self.key_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def add_tls_arguments(parser, prefix: str = "") -> None:
    """Adds --[prefix]tls-ca/--[prefix]tls-cert/--[prefix]tls-key to an argparse parser."""
    p = f"--{prefix}tls"
    parser.add_argument(f"{p}-ca", type=Path, default=None, help="CA bundle (PEM) to verify peers")
    parser.add_argument(f"{p}-cert", type=Path, default=None, help="own certificate (PEM)")
    parser.add_argument(f"{p}-key", type=Path, default=None, help="own private key (PEM)")


def tls_from_args(args, prefix: str = "") -> TlsConfig:
    p = f"{prefix.replace('-', '_')}tls"
    return TlsConfig(getattr(args, f"{p}_ca"), getattr(args, f"{p}_cert"), getattr(args, f"{p}_key"))
