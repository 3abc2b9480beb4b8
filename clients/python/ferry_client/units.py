"""Sizes as people write them (`512M`, `2G`, `1.5g`, `1024`) to whole MiB, and back."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_FACTORS = {
    "": 1, "m": 1, "mb": 1, "mib": 1,
    "g": 1024, "gb": 1024, "gib": 1024,
    "t": 1024 * 1024, "tb": 1024 * 1024, "tib": 1024 * 1024,
}


def parse_size_mb(text: str) -> int:
    """`512M` -> 512, `2G` -> 2048; a bare number is MiB. Raises ValueError."""
    m = _SIZE.match(text or "")
    if not m or m.group(2).lower() not in _FACTORS:
        raise ValueError(f"invalid size {text!r}: use a number with an optional unit M, G or T, e.g. 512M or 2G")
    mib = float(m.group(1)) * _FACTORS[m.group(2).lower()]
    if mib != int(mib):
        raise ValueError(f"invalid size {text!r}: not a whole number of MiB")
    if mib <= 0:
        raise ValueError(f"invalid size {text!r}: must be positive")
    return int(mib)


def format_mb(mb: int) -> str:
    """2048 -> `2G`, 1536 -> `1536M`, 0 -> `0`."""
    if mb and mb % (1024 * 1024) == 0:
        return f"{mb // (1024 * 1024)}T"
    if mb and mb % 1024 == 0:
        return f"{mb // 1024}G"
    return f"{mb}M" if mb else "0"


def format_bytes(n: int) -> str:
    """Bytes for humans, binary units: 1048576 -> `1.0MiB`."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"  # pragma: no cover
