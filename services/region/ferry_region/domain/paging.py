"""Opaque page tokens for keyset paging.

A token is base64url(JSON) of the last row's sort key plus a fingerprint of
the filters it was issued for; a token that does not decode, or that was made
for other filters, is INVALID_ARGUMENT on `page_token`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence

from ferry_common.errors import InvalidArgument

MAX_TOKEN = 1024


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def encode(key: Sequence[str], fp: str) -> str:
    raw = json.dumps({"k": list(key), "f": fp}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, fp: str, key_len: int) -> list[str]:
    if len(token) > MAX_TOKEN:
        raise InvalidArgument("page_token", "is too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        obj = json.loads(raw)
        key = obj["k"]
        issued_for = obj["f"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token", "is not a token this service issued") from exc
    if (not isinstance(key, list) or len(key) != key_len
            or not all(isinstance(k, str) for k in key)):
        raise InvalidArgument("page_token", "is not a token this service issued")
    if issued_for != fp:
        raise InvalidArgument("page_token", "was issued for different filters")
    return key
