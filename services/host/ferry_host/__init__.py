"""Ferry host agent: runs guests as QEMU processes and migrates them."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("ferry-vm")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
