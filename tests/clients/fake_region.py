"""A tiny in-process fake of the region's public services, for client unit tests.

A real grpc server on 127.0.0.1 (ephemeral port) that records every request,
serves canned resources, and raises rich-status errors on demand exactly as the
real region's ErrorMappingInterceptor does (google.rpc.Status in the trailers).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent import futures
from typing import Any

import grpc
from ferry_common.errors import FerryError, trailing_metadata

from ferry_proto.region.v1 import (
    host_service_pb2 as hpb,
    host_service_pb2_grpc,
    image_service_pb2 as ipb,
    image_service_pb2_grpc,
    resources_pb2 as r,
    server_service_pb2 as spb,
    server_service_pb2_grpc,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)


def make_task(task_id: str, stage: str, state: int = r.TASK_STATE_RUNNING, *, history=(),
              kind: int = r.TASK_KIND_SERVER_CREATE, server_id: str = "srv-1", error: str = "",
              error_reason: str = "") -> r.Task:
    return r.Task(id=task_id, kind=kind, state=state, stage=stage, server_id=server_id,
                  history=list(history), error=error, error_reason=error_reason)


def create_script(task_id: str, server_id: str, *, fail: bool = False) -> list[r.Task]:
    t = [make_task(task_id, "schedule", server_id=server_id),
         make_task(task_id, "prepare_disks", history=["schedule"], server_id=server_id)]
    if fail:
        t.append(make_task(task_id, "prepare_disks", r.TASK_STATE_ROLLING_BACK,
                           history=["schedule"], server_id=server_id))
        t.append(make_task(task_id, "prepare_disks", r.TASK_STATE_FAILED, history=["schedule"],
                           server_id=server_id, error="disk image copy failed on host1",
                           error_reason="DISK_PREPARE_FAILED"))
    else:
        t.append(make_task(task_id, "done", r.TASK_STATE_SUCCEEDED,
                           history=["schedule", "prepare_disks"], server_id=server_id))
    return t


class FakeRegion:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests: dict[str, list[Any]] = defaultdict(list)
        self.errors: dict[str, FerryError] = {}
        self.servers: dict[str, r.Server] = {}
        self.hosts: list[r.Host] = []
        self.images: dict[str, r.Image] = {}
        self.tasks: dict[str, list[r.Task]] = {}   # task id -> script of states
        self.task_polls: dict[str, int] = defaultdict(int)
        self.watch_mode = "normal"   # normal | unimplemented | stall | break
        self.serial_lines: list[str] = []
        self.serial_follow: list[list[str]] = []
        self.serial_stall = False
        self.uploads: list[list[ipb.CreateImageRequest]] = []
        self.fail_next_create_task = False
        self._n = 0

    # -- helpers --------------------------------------------------------------

    def next_id(self, prefix: str) -> str:
        with self.lock:
            self._n += 1
            return f"{prefix}{self._n:04d}"

    def fail(self, method: str, err: FerryError) -> None:
        self.errors[method] = err

    def enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        self.requests[method].append(request)
        err = self.errors.get(method)
        if err is not None:
            context.set_trailing_metadata(trailing_metadata(err))
            context.abort(err.code, err.message)

    def add_server(self, name: str, **kw: Any) -> r.Server:
        s = r.Server(id=kw.pop("id", None) or self.next_id("srv"), name=name, **kw)
        self.servers[s.id] = s
        return s

    def find_server(self, ident: str, context: grpc.ServicerContext) -> r.Server:
        for s in self.servers.values():
            if ident in (s.id, s.name):
                return s
        from ferry_common.errors import NotFound
        err = NotFound("server", ident)
        context.set_trailing_metadata(trailing_metadata(err))
        context.abort(err.code, err.message)
        raise AssertionError  # unreachable


def _servers(fake: FakeRegion) -> server_service_pb2_grpc.ServerServiceServicer:
    class Servicer(server_service_pb2_grpc.ServerServiceServicer):
        def _action(self, method: str, req: Any, context: Any, resp_cls: Any, kind: int) -> Any:
            fake.enter(method, req, context)
            s = fake.find_server(req.id, context)
            task_id = fake.next_id("task")
            fake.tasks[task_id] = [make_task(task_id, "run", kind=kind, server_id=s.id),
                                   make_task(task_id, "done", r.TASK_STATE_SUCCEEDED, kind=kind,
                                             history=["run"], server_id=s.id)]
            return resp_cls(server=s, task_id=task_id)

        def CreateServer(self, req, context):  # noqa: N802
            fake.enter("CreateServer", req, context)
            s = fake.add_server(req.name, status=r.SERVER_STATUS_INIT, vcpu_count=req.vcpu_count,
                                memory_mb=req.memory_mb, project=req.project or "default")
            task_id = fake.next_id("task")
            fake.tasks[task_id] = create_script(task_id, s.id, fail=fake.fail_next_create_task)
            if not fake.fail_next_create_task:
                s.status = r.SERVER_STATUS_RUNNING if req.auto_start else r.SERVER_STATUS_READY
            return spb.CreateServerResponse(server=s, task_id=task_id)

        def StartServer(self, req, context):  # noqa: N802
            return self._action("StartServer", req, context, spb.StartServerResponse,
                                r.TASK_KIND_SERVER_START)

        def StopServer(self, req, context):  # noqa: N802
            return self._action("StopServer", req, context, spb.StopServerResponse,
                                r.TASK_KIND_SERVER_STOP)

        def DeleteServer(self, req, context):  # noqa: N802
            return self._action("DeleteServer", req, context, spb.DeleteServerResponse,
                                r.TASK_KIND_SERVER_DELETE)

        def GetServer(self, req, context):  # noqa: N802
            fake.enter("GetServer", req, context)
            return spb.GetServerResponse(server=fake.find_server(req.id, context))

        def ListServers(self, req, context):  # noqa: N802
            fake.enter("ListServers", req, context)
            items = sorted(fake.servers.values(), key=lambda s: (s.name, s.id))
            if req.search:
                items = [s for s in items if req.search.lower() in s.name.lower() or s.id == req.search]
            if req.status:
                items = [s for s in items if s.status == req.status]
            size = req.page_size or 100
            start = int(req.page_token or 0)
            page = items[start:start + size]
            nxt = str(start + size) if start + size < len(items) else ""
            return spb.ListServersResponse(servers=page, next_page_token=nxt, total_size=len(items))

        def GetServerSerialLog(self, req, context):  # noqa: N802
            fake.enter("GetServerSerialLog", req, context)
            fake.find_server(req.id, context)
            n = req.tail_lines or 100
            return spb.GetServerSerialLogResponse(lines=fake.serial_lines[-n:], next_offset=123)

        def WatchServerSerialLog(self, req, context):  # noqa: N802
            fake.enter("WatchServerSerialLog", req, context)
            fake.find_server(req.id, context)
            if req.tail_lines:
                yield spb.WatchServerSerialLogResponse(lines=fake.serial_lines[-req.tail_lines:],
                                                       host_id="host-1")
            for chunk in fake.serial_follow:
                yield spb.WatchServerSerialLogResponse(lines=chunk, host_id="host-1")
            while fake.serial_stall and context.is_active():
                time.sleep(0.02)

    return Servicer()


def _hosts(fake: FakeRegion) -> host_service_pb2_grpc.HostServiceServicer:
    class Servicer(host_service_pb2_grpc.HostServiceServicer):
        def ListHosts(self, req, context):  # noqa: N802
            fake.enter("ListHosts", req, context)
            hosts = [h for h in fake.hosts if not req.hypervisor or h.hypervisor == req.hypervisor]
            return hpb.ListHostsResponse(hosts=hosts)

        def GetHost(self, req, context):  # noqa: N802
            fake.enter("GetHost", req, context)
            for h in fake.hosts:
                if req.id in (h.id, h.name):
                    return hpb.GetHostResponse(host=h)
            from ferry_common.errors import NotFound
            err = NotFound("host", req.id)
            context.set_trailing_metadata(trailing_metadata(err))
            context.abort(err.code, err.message)

    return Servicer()


def _images(fake: FakeRegion) -> image_service_pb2_grpc.ImageServiceServicer:
    class Servicer(image_service_pb2_grpc.ImageServiceServicer):
        def CreateImage(self, request_iterator, context):  # noqa: N802
            msgs = list(request_iterator)
            fake.uploads.append(msgs)
            fake.enter("CreateImage", msgs[0] if msgs else None, context)
            meta = msgs[0].metadata
            data = b"".join(m.chunk for m in msgs[1:])
            img = r.Image(id=fake.next_id("img"), name=meta.name, format=meta.format,
                          size_bytes=len(data), status=r.IMAGE_STATUS_ACTIVE,
                          min_memory_mb=meta.min_memory_mb, virtual_size_mb=(len(data) + 2**20 - 1) // 2**20)
            fake.images[img.id] = img
            return ipb.CreateImageResponse(image=img)

        def ListImages(self, req, context):  # noqa: N802
            fake.enter("ListImages", req, context)
            return ipb.ListImagesResponse(images=[i for i in fake.images.values()
                                                  if req.search.lower() in i.name.lower()])

        def GetImage(self, req, context):  # noqa: N802
            fake.enter("GetImage", req, context)
            for i in fake.images.values():
                if req.id in (i.id, i.name):
                    return ipb.GetImageResponse(image=i)
            from ferry_common.errors import NotFound
            err = NotFound("image", req.id)
            context.set_trailing_metadata(trailing_metadata(err))
            context.abort(err.code, err.message)

        def DeleteImage(self, req, context):  # noqa: N802
            fake.enter("DeleteImage", req, context)
            for i in list(fake.images.values()):
                if req.id in (i.id, i.name):
                    del fake.images[i.id]
                    return ipb.DeleteImageResponse(image=i)
            context.abort(grpc.StatusCode.NOT_FOUND, f"image {req.id!r} not found")

    return Servicer()


def _tasks(fake: FakeRegion) -> task_service_pb2_grpc.TaskServiceServicer:
    class Servicer(task_service_pb2_grpc.TaskServiceServicer):
        def ListTasks(self, req, context):  # noqa: N802
            fake.enter("ListTasks", req, context)
            tasks = [script[-1] for script in fake.tasks.values()]
            if req.state:
                tasks = [t for t in tasks if t.state == req.state]
            return tpb.ListTasksResponse(tasks=tasks[: req.limit or 50])

        def GetTask(self, req, context):  # noqa: N802
            fake.enter("GetTask", req, context)
            script = fake.tasks.get(req.id)
            if script is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"task {req.id!r} not found")
            if fake.watch_mode in ("unimplemented", "break"):  # polling walks the script
                i = min(fake.task_polls[req.id], len(script) - 1)
                fake.task_polls[req.id] += 1
                return tpb.GetTaskResponse(task=script[i])
            return tpb.GetTaskResponse(task=script[-1])

        def WatchTask(self, req, context):  # noqa: N802
            fake.enter("WatchTask", req, context)
            if fake.watch_mode == "unimplemented":
                context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            script = fake.tasks.get(req.id)
            if script is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"task {req.id!r} not found")
            if fake.watch_mode == "break":
                yield tpb.WatchTaskResponse(task=script[0])
                return  # stream ends early: the client must fall back to polling
            if fake.watch_mode == "stall":
                yield tpb.WatchTaskResponse(task=script[0])
                while context.is_active():
                    time.sleep(0.02)
                return
            for t in script:
                yield tpb.WatchTaskResponse(task=t)

    return Servicer()


class FakeRegionServer:
    def __init__(self) -> None:
        self.fake = FakeRegion()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        server_service_pb2_grpc.add_ServerServiceServicer_to_server(_servers(self.fake), self.server)
        host_service_pb2_grpc.add_HostServiceServicer_to_server(_hosts(self.fake), self.server)
        image_service_pb2_grpc.add_ImageServiceServicer_to_server(_images(self.fake), self.server)
        task_service_pb2_grpc.add_TaskServiceServicer_to_server(_tasks(self.fake), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"

    def start(self) -> FakeRegionServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(0).wait(5)
