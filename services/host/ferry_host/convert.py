"""Protobuf <-> domain conversions for the host agent (no logic beyond mapping)."""

from __future__ import annotations

from ferry_proto.host.v1 import agent_pb2 as pb
from ferry_proto.region.v1 import registry_service_pb2 as reg_pb2
from ferry_proto.region.v1 import resources_pb2 as res_pb2

from .facts import HostFacts
from .model import DiskDef, GuestDef, GuestState, GuestView, NicDef
from .storage import StorageKind

_ACCEL = {"kvm": pb.ACCELERATOR_KVM, "tcg": pb.ACCELERATOR_TCG}
_REGION_ACCEL = {"kvm": res_pb2.ACCELERATOR_KVM, "tcg": res_pb2.ACCELERATOR_TCG}
_KIND = {StorageKind.LOCAL: pb.STORAGE_KIND_LOCAL, StorageKind.SHARED: pb.STORAGE_KIND_SHARED}
_REGION_KIND = {StorageKind.LOCAL: res_pb2.STORAGE_KIND_LOCAL,
                StorageKind.SHARED: res_pb2.STORAGE_KIND_SHARED}
_STATE = {GuestState.STOPPED: pb.GUEST_STATE_STOPPED, GuestState.RUNNING: pb.GUEST_STATE_RUNNING,
          GuestState.PAUSED: pb.GUEST_STATE_PAUSED, GuestState.INCOMING: pb.GUEST_STATE_INCOMING}


def guest_def(spec: pb.GuestSpec) -> GuestDef:
    return GuestDef(
        guest_id=spec.guest_id,
        name=spec.name,
        vcpu_count=spec.vcpu_count,
        memory_mb=spec.memory_mb,
        disks=tuple(DiskDef(disk_id=d.disk_id, index=d.index, storage_id=d.storage_id,
                            size_mb=d.size_mb, image_id=d.image_id,
                            image_checksum_sha256=d.image_checksum_sha256.strip().lower(),
                            image_format=d.image_format.strip().lower())
                    for d in spec.disks),
        nics=tuple(NicDef(network=n.network, mac=n.mac.strip().lower(), index=n.index)
                   for n in spec.nics),
    )


def guest(view: GuestView) -> pb.Guest:
    return pb.Guest(
        guest_id=view.guest_id,
        state=_STATE[view.state],
        run_state=view.run_state,
        pid=view.pid,
        disks=[pb.DiskInfo(disk_id=d.disk_id, storage_id=d.storage_id, path=str(d.path),
                           size_mb=d.size_mb, allocated_bytes=d.allocated_bytes)
               for d in view.disks],
        accelerator=_ACCEL.get(view.accelerator, pb.ACCELERATOR_UNSPECIFIED),
    )


def host_facts(f: HostFacts) -> pb.GetHostFactsResponse:
    return pb.GetHostFactsResponse(
        host_id=f.host_id,
        name=f.name,
        access_address=f.access_address,
        cpu_model=f.cpu_model,
        cpu_microcode=f.cpu_microcode,
        kernel_version=f.kernel_version,
        accelerator=_ACCEL.get(f.accelerator, pb.ACCELERATOR_UNSPECIFIED),
        cpu_count=f.cpu_count,
        mem_size_mb=f.mem_size_mb,
        storages=[pb.Storage(id=s.storage.id, name=s.storage.name, kind=_KIND[s.storage.kind],
                             path=str(s.storage.path), capacity_mb=s.capacity_mb, free_mb=s.free_mb)
                  for s in f.storages],
        wire=f.wire,
        networks=list(f.networks),
        agent_version=f.agent_version,
    )


def register_request(f: HostFacts, guests: list[GuestView]) -> reg_pb2.RegisterHostRequest:
    return reg_pb2.RegisterHostRequest(
        host_id=f.host_id,
        name=f.name,
        access_address=f.access_address,
        cpu_model=f.cpu_model,
        cpu_microcode=f.cpu_microcode,
        kernel_version=f.kernel_version,
        accelerator=_REGION_ACCEL.get(f.accelerator, res_pb2.ACCELERATOR_UNSPECIFIED),
        cpu_count=f.cpu_count,
        mem_size_mb=f.mem_size_mb,
        storages=[res_pb2.HostStorage(storage_id=s.storage.id, name=s.storage.name,
                                      kind=_REGION_KIND[s.storage.kind], path=str(s.storage.path),
                                      capacity_mb=s.capacity_mb, free_mb=s.free_mb)
                  for s in f.storages],
        wire=f.wire,
        networks=list(f.networks),
        guests=[reg_pb2.GuestReport(server_id=g.guest_id,
                                    running=g.state is not GuestState.STOPPED,
                                    run_state=g.run_state)
                for g in guests],
        agent_version=f.agent_version,
    )
