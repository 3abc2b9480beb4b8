"""climc host-auto-migrate-on-host-down, exactly as the seed describes it."""

from __future__ import annotations

import json

import pytest

from ferry_client import InvalidArgument, NotFound

from .test_lifecycle import climc

pytestmark = [pytest.mark.etcd]


def flags(cluster, host: str) -> tuple[bool, bool]:
    h = json.loads(climc(cluster, "--output", "json", "host-show", host).stdout)
    return bool(h.get("auto_migrate_on_host_down")), bool(h.get("auto_migrate_on_host_shutdown"))


def test_usage_line_is_the_seeds(cluster) -> None:
    out = climc(cluster, "host-auto-migrate-on-host-down", "--help").stdout
    assert ("climc host-auto-migrate-on-host-down [--auto-migrate-on-host-shutdown {enable,disable}] "
            "[--help] [--auto-migrate-on-host-down {enable,disable}] <ID>") in " ".join(out.split())


def test_enable_and_disable(cluster, cluster_client) -> None:
    host = cluster.hosts[0].name
    try:
        climc(cluster, "host-auto-migrate-on-host-down", "--auto-migrate-on-host-down", "enable", host)
        assert flags(cluster, host) == (True, False)
        climc(cluster, "host-auto-migrate-on-host-down", "--auto-migrate-on-host-down", "enable",
              "--auto-migrate-on-host-shutdown", "enable", host)
        assert flags(cluster, host) == (True, True)
        listing = climc(cluster, "host-list").stdout
        assert "Auto_migrate_on_host_down" in listing and "Auto_migrate_on_host_shutdown" in listing

        # Turning host-down off while shutdown is on would break the rule: refused, unchanged.
        proc = climc(cluster, "host-auto-migrate-on-host-down", "--auto-migrate-on-host-down",
                     "disable", host, check=False)
        assert proc.returncode == 1 and "INVALID_ARGUMENT" in proc.stderr
        assert "requires auto-migrate on host down" in proc.stderr
        assert flags(cluster, host) == (True, True)
    finally:
        cluster_client.hosts.set_auto_migrate(host, on_host_down=False, on_host_shutdown=False)
    assert flags(cluster, host) == (False, False)


def test_shutdown_alone_is_refused(cluster, cluster_client) -> None:
    host = cluster.hosts[1].name
    with pytest.raises(InvalidArgument) as e:
        cluster_client.hosts.set_auto_migrate(host, on_host_shutdown=True)
    assert e.value.field == "auto_migrate_on_host_shutdown"
    assert flags(cluster, host) == (False, False)
    with pytest.raises(InvalidArgument):
        cluster_client.hosts.set_auto_migrate(host)
    with pytest.raises(NotFound):
        cluster_client.hosts.set_auto_migrate("no-such-host", on_host_down=True)
