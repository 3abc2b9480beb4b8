"""Fixtures for the client tests: one fake region per module, reset for each test."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ferry_client import FerryClient
from ferry_client.climc.main import main

from .fake_region import FakeRegion, FakeRegionServer


@pytest.fixture(scope="module")
def region_server() -> Iterator[FakeRegionServer]:
    srv = FakeRegionServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def fake(region_server: FakeRegionServer) -> FakeRegion:
    region_server.fake.reset()
    return region_server.fake


@pytest.fixture
def address(region_server: FakeRegionServer, fake: FakeRegion) -> str:
    return region_server.address


@pytest.fixture
def client(address: str) -> Iterator[FerryClient]:
    with FerryClient(address, timeout=5) as c:
        yield c


class Run:
    """Runs `climc` in-process against the fake and captures what it prints."""

    def __init__(self, address: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.address = address
        self.capsys = capsys

    def __call__(self, *argv: str, region: bool = True) -> tuple[int, str, str]:
        self.capsys.readouterr()
        args = (["--region", self.address] if region else []) + list(argv)
        rc = main(args)
        out, err = self.capsys.readouterr()
        return rc, out, err


@pytest.fixture
def climc(address: str, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(address, capsys)


@pytest.fixture
def closed_address() -> str:
    """A loopback port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"
