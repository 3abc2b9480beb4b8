"""The region's inventory as typed SQLAlchemy 2 ORM models.

The Alembic migrations in `migrations/versions` must describe exactly these
tables (a test runs autogenerate against a migrated database and expects no
difference). Enums are stored as their string values in VARCHAR columns
(`native_enum=False`) so SQLite and PostgreSQL hold the same schema.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ..states import (
    Accelerator,
    DiskFormat,
    HostHealth,
    HostStatus,
    ImageStatus,
    ServerStatus,
    StorageKind,
    TaskKind,
    TaskState,
)

ID = 64        # generated ids (uuid4) and names
HOST_ID = 128  # host and storage ids come from agent configuration

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timestamps stored as naive UTC, returned as aware UTC (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


def str_enum(enum_type: type[enum.Enum], length: int = 32) -> SAEnum:
    return SAEnum(enum_type, native_enum=False, create_constraint=False, length=length,
                  values_callable=lambda e: [m.value for m in e], validate_strings=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[str] = mapped_column(String(HOST_ID), primary_key=True)
    name: Mapped[str] = mapped_column(String(ID), unique=True)
    access_address: Mapped[str] = mapped_column(String(256), default="")
    status: Mapped[HostStatus] = mapped_column(str_enum(HostStatus), default=HostStatus.READY)
    host_status: Mapped[HostHealth] = mapped_column(str_enum(HostHealth),
                                                    default=HostHealth.OFFLINE)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    hypervisor: Mapped[str] = mapped_column(String(32), default="kvm")
    cpu_model: Mapped[str] = mapped_column(String(256), default="")
    cpu_microcode: Mapped[str] = mapped_column(String(64), default="")
    kernel_version: Mapped[str] = mapped_column(String(128), default="")
    accelerator: Mapped[Accelerator] = mapped_column(str_enum(Accelerator),
                                                     default=Accelerator.UNSPECIFIED)
    cpu_count: Mapped[int] = mapped_column(Integer, default=0)
    cpu_cmtbound: Mapped[float] = mapped_column(Float, default=8.0)
    mem_size_mb: Mapped[int] = mapped_column(BigInteger, default=0)
    mem_cmtbound: Mapped[float] = mapped_column(Float, default=1.0)
    mem_reserved_mb: Mapped[int] = mapped_column(BigInteger, default=0)
    wire: Mapped[str] = mapped_column(String(ID), default="")
    auto_migrate_on_host_down: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_migrate_on_host_shutdown: Mapped[bool] = mapped_column(Boolean, default=False)
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    registered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    # Collections load only when a query asks (db.queries.HOST_FULL): listing
    # servers joins their host and must not drag every host's storages along.
    storages: Mapped[list[HostStorage]] = relationship(
        back_populates="host", cascade="all, delete-orphan", order_by="HostStorage.storage_id")
    networks: Mapped[list[HostNetwork]] = relationship(
        back_populates="host", cascade="all, delete-orphan", order_by="HostNetwork.network")


class Storage(Base):
    __tablename__ = "storages"

    id: Mapped[str] = mapped_column(String(HOST_ID), primary_key=True)
    name: Mapped[str] = mapped_column(String(ID), default="")
    kind: Mapped[StorageKind] = mapped_column(str_enum(StorageKind))
    capacity_mb: Mapped[int] = mapped_column(BigInteger, default=0)
    free_mb: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class HostStorage(Base):
    """A storage as mounted on one host (shared storages have one row per host)."""

    __tablename__ = "host_storages"

    host_id: Mapped[str] = mapped_column(String(HOST_ID),
                                         ForeignKey("hosts.id", ondelete="CASCADE"),
                                         primary_key=True)
    storage_id: Mapped[str] = mapped_column(String(HOST_ID),
                                            ForeignKey("storages.id", ondelete="CASCADE"),
                                            primary_key=True, index=True)
    path: Mapped[str] = mapped_column(String(1024), default="")

    host: Mapped[Host] = relationship(back_populates="storages")
    storage: Mapped[Storage] = relationship(lazy="joined")


class Network(Base):
    __tablename__ = "networks"

    name: Mapped[str] = mapped_column(String(ID), primary_key=True)
    wire: Mapped[str] = mapped_column(String(ID), default="")


class HostNetwork(Base):
    __tablename__ = "host_networks"

    host_id: Mapped[str] = mapped_column(String(HOST_ID),
                                         ForeignKey("hosts.id", ondelete="CASCADE"),
                                         primary_key=True)
    network: Mapped[str] = mapped_column(String(ID),
                                         ForeignKey("networks.name", ondelete="CASCADE"),
                                         primary_key=True, index=True)

    host: Mapped[Host] = relationship(back_populates="networks")


class Image(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    name: Mapped[str] = mapped_column(String(ID), unique=True)
    format: Mapped[DiskFormat] = mapped_column(str_enum(DiskFormat))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    virtual_size_mb: Mapped[int] = mapped_column(BigInteger, default=0)
    checksum_sha256: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[ImageStatus] = mapped_column(str_enum(ImageStatus),
                                                default=ImageStatus.ACTIVE)
    min_memory_mb: Mapped[int] = mapped_column(BigInteger, default=0)
    file_name: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Server(Base):
    __tablename__ = "servers"
    __table_args__ = (Index("ix_servers_project_name", "project", "name"),)

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    name: Mapped[str] = mapped_column(String(ID), unique=True)
    project: Mapped[str] = mapped_column(String(ID), default="default")
    status: Mapped[ServerStatus] = mapped_column(str_enum(ServerStatus), index=True)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    host_id: Mapped[str | None] = mapped_column(String(HOST_ID),
                                                ForeignKey("hosts.id", ondelete="RESTRICT"),
                                                nullable=True, index=True)
    vcpu_count: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(BigInteger)
    image_id: Mapped[str | None] = mapped_column(String(ID),
                                                 ForeignKey("images.id", ondelete="RESTRICT"),
                                                 nullable=True, index=True)
    task_id: Mapped[str | None] = mapped_column(String(ID), nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    host: Mapped[Host | None] = relationship(lazy="joined")
    # Loaded on request (db.queries.SERVER_FULL), not for plain listings.
    disks: Mapped[list[Disk]] = relationship(
        back_populates="server", cascade="all, delete-orphan", order_by="Disk.index",
        passive_deletes=True)
    nics: Mapped[list[ServerNetwork]] = relationship(
        back_populates="server", cascade="all, delete-orphan", order_by="ServerNetwork.index",
        passive_deletes=True)


class Disk(Base):
    __tablename__ = "disks"

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    server_id: Mapped[str] = mapped_column(String(ID),
                                           ForeignKey("servers.id", ondelete="CASCADE"),
                                           index=True)
    index: Mapped[int] = mapped_column(Integer)
    #: What the user asked for: "local", "shared" or a storage id.
    storage_request: Mapped[str] = mapped_column(String(HOST_ID), default="local")
    storage_id: Mapped[str | None] = mapped_column(String(HOST_ID),
                                                   ForeignKey("storages.id",
                                                              ondelete="RESTRICT"),
                                                   nullable=True, index=True)
    size_mb: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[DiskFormat] = mapped_column(str_enum(DiskFormat), default=DiskFormat.QCOW2)
    path: Mapped[str] = mapped_column(String(1024), default="")
    image_id: Mapped[str | None] = mapped_column(String(ID), nullable=True)

    server: Mapped[Server] = relationship(back_populates="disks")
    storage: Mapped[Storage | None] = relationship(lazy="joined")


class ServerNetwork(Base):
    __tablename__ = "server_networks"

    server_id: Mapped[str] = mapped_column(String(ID),
                                           ForeignKey("servers.id", ondelete="CASCADE"),
                                           primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    network: Mapped[str] = mapped_column(String(ID))
    mac: Mapped[str] = mapped_column(String(32), unique=True)

    server: Mapped[Server] = relationship(back_populates="nics")


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_state_created", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    kind: Mapped[TaskKind] = mapped_column(str_enum(TaskKind))
    state: Mapped[TaskState] = mapped_column(str_enum(TaskState))
    #: Stage name, an Enum value of the task kind's own stage Enum.
    stage: Mapped[str] = mapped_column(String(ID))
    server_id: Mapped[str] = mapped_column(String(ID), index=True)
    #: Inputs, fixed at creation.
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: What stages found out (reservation, host, paths), persisted with each stage change.
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str] = mapped_column(Text, default="")
    error_reason: Mapped[str] = mapped_column(String(ID), default="")
    history: Mapped[list[str]] = mapped_column(JSON, default=list)
    resume_count: Mapped[int] = mapped_column(Integer, default=0)
    #: An operator asked to cancel (a migration); kept so a restarted region honours it.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


# ---- host down (issue 6): the etcd watch cursor, the health keys seen, incidents ----

from ..hostdown_states import IncidentState


class HealthCursor(Base):
    """The last etcd revision the health watcher processed (one row per watcher)."""

    __tablename__ = "health_cursor"

    name: Mapped[str] = mapped_column(String(ID), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class HealthKey(Base):
    """A host's health key as last seen: its create revision names one lease period."""

    __tablename__ = "health_keys"

    host_id: Mapped[str] = mapped_column(String(HOST_ID), primary_key=True)
    create_revision: Mapped[int] = mapped_column(BigInteger, default=0)
    present: Mapped[bool] = mapped_column(Boolean, default=True)
    #: The key's last value announced a shutdown on purpose (the keeper's clean stop).
    shutdown: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class HostDownIncident(Base):
    """One vanished health key, acted on exactly once (unique host + key revision)."""

    __tablename__ = "host_down_incidents"
    __table_args__ = (UniqueConstraint("host_id", "key_revision"),
                      Index("ix_host_down_incidents_state_detected", "state", "detected_at"))

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    host_id: Mapped[str] = mapped_column(String(HOST_ID))
    #: Create revision of the key that vanished (or the delete revision if never seen).
    key_revision: Mapped[int] = mapped_column(BigInteger)
    #: etcd revision at which the region saw it gone.
    seen_revision: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[IncidentState] = mapped_column(str_enum(IncidentState))
    #: "down" (the key expired or vanished) or "shutdown" (announced before it went).
    kind: Mapped[str] = mapped_column(String(16), default="down")
    reason: Mapped[str] = mapped_column(Text, default="")
    #: server id -> {"action": rescue|lost|skipped, "task_id", "outcome"}.
    results: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    detected_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
