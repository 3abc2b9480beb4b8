"""Input checks shared by servicers; each failure names the field."""

from __future__ import annotations

import re

from .errors import InvalidArgument

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_ID_LEN = 128


def check_name(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if not NAME_RE.match(value):
        raise InvalidArgument(field, "must be 1-64 characters of letters, digits, '.', '_' or '-', "
                                     "starting with a letter or digit")
    return value


def check_ident(field: str, value: str) -> str:
    """An id-or-name reference: non-empty, bounded, printable."""
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > MAX_ID_LEN or not value.isprintable():
        raise InvalidArgument(field, f"must be at most {MAX_ID_LEN} printable characters")
    return value


def check_range(field: str, value: int, low: int, high: int) -> int:
    if value < low or value > high:
        raise InvalidArgument(field, f"must be between {low} and {high}, got {value}")
    return value


def check_enum(field: str, value: int, enum_type, *, allow_unspecified: bool = False) -> int:
    """Rejects numbers the enum does not define (proto3 keeps unknown values)."""
    valid = set(enum_type.values())
    if value not in valid or (value == 0 and not allow_unspecified):
        raise InvalidArgument(field, f"unknown value {value}; expected one of "
                                     f"{', '.join(n for n in enum_type.keys() if not n.endswith('_UNSPECIFIED'))}")
    return value
