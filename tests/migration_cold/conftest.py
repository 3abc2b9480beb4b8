"""A private 3-host cluster for the cold migration tests (short etcd lease for rescue)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from fixtures.cluster import region_client, start_cluster
from helpers import climc, until  # noqa: F401 - used here and imported by the tests


@pytest.fixture(scope="session")
def ccluster(tmp_path_factory):
    path = tmp_path_factory.mktemp("coldcluster")
    c = start_cluster(path, hosts=3, lease_ttl=3, copy_stall_timeout=4)
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
