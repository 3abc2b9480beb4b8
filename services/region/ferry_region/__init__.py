"""Ferry region: inventory database, persisted task engine, public API, etcd watcher."""

__version__ = "0.1.0"
