"""Ferry deployment: the one-machine launcher (`ferry-cluster`) and its Python API.

    from ferry_compose import Cluster, ClusterSpec
    cluster = Cluster(ClusterSpec(dir=Path(".cluster"), hosts=3, accel="tcg", base_port=0))
    cluster.up()
    ...
    cluster.down()
"""

from .cluster import Cluster
from .errors import ComposeError, ProcessFailed, StartupTimeout
from .spec import ClusterSpec, HostSpec

__all__ = ["Cluster", "ClusterSpec", "HostSpec", "ComposeError", "ProcessFailed", "StartupTimeout"]
