"""Optional mutual TLS on a service endpoint, from configuration.

The region runs in this process with a server certificate and a CA it uses
to verify client certificates; climc connects with its own certificate. A
client without a certificate, or with one from a foreign CA, is refused.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ferry_common.tls import TlsConfig
from ferry_region.app import start_region
from ferry_region.config import RegionConfig
from fixtures.pki import make_ca, make_leaf

CLIMC = str(Path(sys.executable).parent / "climc")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")
    make_leaf(d, "ca", "region", "serverAuth")
    make_leaf(d, "ca", "operator", "clientAuth")
    make_leaf(d, "rogue-ca", "intruder", "clientAuth")
    return d


async def climc(region: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FERRY_REGION": region}
    return await asyncio.to_thread(subprocess.run, [CLIMC, "--timeout", "5", *args], env=env,
                                   capture_output=True, text=True, timeout=60)


async def test_mutual_tls(tmp_path: Path, pki: Path) -> None:
    tls = TlsConfig(ca_file=pki / "ca.pem", cert_file=pki / "region.pem", key_file=pki / "region.key")
    region = await start_region(RegionConfig(listen="127.0.0.1:0", data_dir=tmp_path / "region",
                                             scheduler="127.0.0.1:1", etcd="", tls=tls))
    try:
        ok = await climc(region.address, "--tls-ca", str(pki / "ca.pem"),
                         "--tls-cert", str(pki / "operator.pem"),
                         "--tls-key", str(pki / "operator.key"), "host-list")
        assert ok.returncode == 0, ok.stderr

        plain = await climc(region.address, "host-list")
        assert plain.returncode == 1 and "Traceback" not in plain.stderr

        no_cert = await climc(region.address, "--tls-ca", str(pki / "ca.pem"), "host-list")
        assert no_cert.returncode == 1

        rogue = await climc(region.address, "--tls-ca", str(pki / "ca.pem"),
                            "--tls-cert", str(pki / "intruder.pem"),
                            "--tls-key", str(pki / "intruder.key"), "host-list")
        assert rogue.returncode == 1
    finally:
        await region.stop()


async def test_health_keeper_asks_a_tls_region(tmp_path: Path, pki: Path) -> None:
    """The keeper's "do you see etcd?" question reaches a region that requires mTLS when the
    keeper has --region-tls-*, and fails (so the keeper fences) when it has not."""
    from ferry_host.health.keeper import _guard_status

    tls = TlsConfig(ca_file=pki / "ca.pem", cert_file=pki / "region.pem", key_file=pki / "region.key")
    region = await start_region(RegionConfig(listen="127.0.0.1:0", data_dir=tmp_path / "region",
                                             scheduler="127.0.0.1:1", etcd="", tls=tls))
    try:
        keeper_tls = TlsConfig(ca_file=pki / "ca.pem", cert_file=pki / "operator.pem",
                               key_file=pki / "operator.key")
        answered = await _guard_status(region.address, 5.0, keeper_tls)
        assert answered not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), answered
        assert await _guard_status(region.address, 5.0) in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    finally:
        await region.stop()
