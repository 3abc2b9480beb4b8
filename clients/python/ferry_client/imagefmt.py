"""Image format sniffing without qemu-img: the qcow2 magic, else raw."""

from __future__ import annotations

import os

QCOW2_MAGIC = b"QFI\xfb"


def sniff_format(path: str | os.PathLike[str]) -> str:
    """`qcow2` when the file starts with the qcow2 magic, else `raw`.

    The region validates the upload against the declared format, so a wrong
    guess is reported there as INVALID_ARGUMENT.
    """
    with open(path, "rb") as f:
        head = f.read(len(QCOW2_MAGIC))
    return "qcow2" if head == QCOW2_MAGIC else "raw"
