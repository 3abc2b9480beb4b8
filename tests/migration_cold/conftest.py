"""A private 3-host cluster for the cold migration tests (short etcd lease for rescue)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.cluster import region_client, start_cluster

CLIMC = str(Path(sys.executable).parent / "climc")


@pytest.fixture(scope="session")
def ccluster(tmp_path_factory):
    path = tmp_path_factory.mktemp("coldcluster")
    c = start_cluster(path, hosts=3, lease_ttl=3)
    try:
        yield c
    finally:
        c.down()
        c.remove_links()
        if not os.environ.get("FERRY_TEST_KEEP_CLUSTER"):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def cclient(ccluster):
    client = region_client(ccluster)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def cimage(ccluster, tmp_path_factory) -> str:
    from ferry_host.testguest.build import build_image

    path = build_image(tmp_path_factory.mktemp("img") / "guest.img", dirty_mb=2)
    climc(ccluster, "image-create", "--file", str(path), "cold-guest")
    return "cold-guest"


def climc(cluster, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "FERRY_REGION": cluster.region_address}
    proc = subprocess.run([CLIMC, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"climc {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def qemu_io(path: str, *cmds: str) -> None:
    argv = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        argv += ["-c", c]
    subprocess.run([*argv, path], check=True, capture_output=True)


def info(path: str) -> dict:
    return json.loads(qemu_img("info", "--output=json", "-U", path))


def host_of(cluster, host_id: str):
    return next(h for h in cluster.hosts if h.host_id == host_id)
