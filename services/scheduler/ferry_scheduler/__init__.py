"""Ferry scheduler: chooses target hosts.

A host cache fed by the region's `HostService.WatchHosts` stream, filters that
give a reason for every rejected host, scoring, and reservations so that
concurrent placements never over-commit a host.
"""
