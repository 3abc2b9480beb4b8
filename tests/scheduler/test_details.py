"""Cutting the per-host reasons to fit a gRPC trailer."""

from __future__ import annotations

from ferry_proto.scheduler.v1 import scheduler_pb2
from ferry_scheduler.details import fit_detail


def response(hosts: int, reasons_per_host=lambda i: 1) -> scheduler_pb2.SelectHostResponse:
    resp = scheduler_pb2.SelectHostResponse()
    for i in range(hosts):
        resp.rejected.add(host_id=f"id-{i:04d}", host_name=f"host-{i:04d}", rejections=[
            scheduler_pb2.Rejection(filter="memory", reason="INSUFFICIENT_MEMORY",
                                    message="needs 4096 MiB, 1024 MiB free of 8192 MiB " * 2)
            for _ in range(reasons_per_host(i))])
    return resp


def test_small_answers_are_untouched():
    resp = response(3)
    out, meta = fit_detail(resp, 4096)
    assert out is resp and meta == {}


def test_sentences_go_first():
    resp = response(30)
    out, meta = fit_detail(resp, 4096)
    assert meta == {"details_truncated": "messages", "hosts_in_details": "30"}
    assert len(out.rejected) == 30 and out.ByteSize() <= 4096
    assert all(r.reason and not r.message for rh in out.rejected for r in rh.rejections)
    assert resp.rejected[0].rejections[0].message      # the input is not modified


def test_then_hosts_nearest_misses_first():
    resp = response(500, reasons_per_host=lambda i: 1 if i % 50 == 7 else 3)
    out, meta = fit_detail(resp, 2048)
    assert meta["details_truncated"] == "hosts"
    assert out.ByteSize() <= 2048
    assert int(meta["hosts_in_details"]) == len(out.rejected)
    # the ten hosts with one reason come first
    assert [rh.host_id for rh in out.rejected[:10]] == [f"id-{i:04d}" for i in range(7, 500, 50)]
