"""A disabled host takes no migration (the scheduler names the reason) until it is enabled."""

from __future__ import annotations

import re

import grpc
import pytest
from ferry_client import ClientError
from ferry_proto.region.v1 import resources_pb2 as rpb

from .conftest import climc, until

pytestmark = [pytest.mark.qemu, pytest.mark.etcd]


def test_disabled_host_takes_no_migration_until_enabled(ccluster, cclient, cimage) -> None:
    climc(ccluster, "server-create", "--image", cimage, "--mem", "64", "--wait", "cm-dis")
    s = cclient.servers.get("cm-dis")
    target = next(h for h in ccluster.hosts if h.host_id != s.host_id)
    out = climc(ccluster, "host-disable", target.name)
    assert re.search(r"\| enabled\s+\| false", out.stdout), out.stdout
    try:
        assert not cclient.hosts.get(target.name).enabled

        def rejected() -> list[str]:
            f = cclient.migrations.forecast("cm-dis")
            return [x.message for r in f.rejected if r.host_id == target.host_id
                    for x in r.rejections]

        until(lambda: any("disabled" in m for m in rejected()), 20,
              "the scheduler to reject the disabled host")
        with pytest.raises(ClientError) as e:
            cclient.migrations.migrate("cm-dis", prefer_host=target.host_id)
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "disabled" in str(e.value)
        assert cclient.servers.get("cm-dis").host_id == s.host_id
    finally:
        climc(ccluster, "host-enable", target.name)
    assert cclient.hosts.get(target.name).enabled
    until(lambda: any(c.host_id == target.host_id
                      for c in cclient.migrations.forecast("cm-dis").candidates), 20,
          "the enabled host to be a candidate again")
    resp = cclient.migrations.migrate("cm-dis", prefer_host=target.host_id)
    cclient.wait_task(resp.task_id, timeout=120)
    t = cclient.servers.get("cm-dis")
    assert t.status == rpb.SERVER_STATUS_READY and t.host_id == target.host_id
    bad = climc(ccluster, "host-disable", "no-such-host", check=False)
    assert bad.returncode != 0 and "no-such-host" in bad.stderr
    climc(ccluster, "server-delete", "--wait", "cm-dis")
