"""Enum values <-> the lower-case Cloudpods strings the CLI shows and accepts.

Every Ferry enum names its values `<ENUM_NAME_IN_SNAKE>_<VALUE>`; the string form
drops that prefix and lower-cases the rest:
`ServerStatus.SERVER_STATUS_LIVE_MIGRATING` -> `live_migrating`,
`TaskKind.TASK_KIND_SERVER_CREATE` -> `server_create`. The `_UNSPECIFIED` value
reads as the empty string.
"""

from __future__ import annotations

import re
from typing import Any

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _descriptor(enum_type: Any) -> Any:
    return getattr(enum_type, "DESCRIPTOR", enum_type)


def enum_prefix(enum_type: Any) -> str:
    """`ServerStatus` -> `SERVER_STATUS_`."""
    return _CAMEL.sub("_", _descriptor(enum_type).name).upper() + "_"


def enum_to_str(enum_type: Any, value: int) -> str:
    """The lower-case name of `value`; unknown numbers (a newer server) print as digits."""
    desc = _descriptor(enum_type)
    vdesc = desc.values_by_number.get(int(value))
    if vdesc is None:
        return str(int(value))
    name = vdesc.name
    prefix = enum_prefix(desc)
    if name.startswith(prefix):
        name = name[len(prefix):]
    if name == "UNSPECIFIED":
        return ""
    return str(name).lower()


def enum_choices(enum_type: Any) -> list[str]:
    """Every accepted string of an enum, in declaration order, without `unspecified`."""
    desc = _descriptor(enum_type)
    return [s for s in (enum_to_str(desc, v.number) for v in desc.values) if s]


def enum_from_str(enum_type: Any, text: str | int | None) -> int:
    """Parse `live_migrating`, `LIVE_MIGRATING`, `SERVER_STATUS_LIVE_MIGRATING` or a number.

    None and the empty string give 0 (unspecified). Raises ValueError naming the
    accepted values otherwise.
    """
    if text is None or text == "":
        return 0
    if isinstance(text, int):
        return text
    desc = _descriptor(enum_type)
    key = text.strip().upper().replace("-", "_")
    prefix = enum_prefix(desc)
    for candidate in (key, prefix + key):
        vdesc = desc.values_by_name.get(candidate)
        if vdesc is not None:
            return int(vdesc.number)
    raise ValueError(f"invalid {desc.name} {text!r}; choose from {', '.join(enum_choices(desc))}")
