"""`ferry-host-health`: the host's etcd health lease, kept by a process of its own.

The keeper outlives agent restarts (an agent upgrade must not look like a dead
host), and fences the host's shared-storage guests when it cannot renew the
lease for longer than its fencing deadline (shorter than the lease TTL), so a
guest the region rescues elsewhere never runs twice. See `keeper` and `fence`.
"""
