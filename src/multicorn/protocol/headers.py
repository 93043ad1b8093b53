"""Header rules shared by every HTTP version: what may be sent, what must be refused.

RFC 9110 5.5: field values are visible characters, spaces and tabs; CR, LF and NUL are never
allowed. A response header carrying CR/LF would let the application split the response, so it is
refused here rather than trusted to the encoder.
"""

from __future__ import annotations

import re

from multicorn.protocol.errors import LocalProtocolError

# RFC 9110 5.6.2: token = 1*tchar
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than HTAB (RFC 9110 5.5: field-vchar / SP / HTAB only; obs-text ok).
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def has_invalid_value_chars(value: bytes) -> bool:
    return _BAD_VALUE.search(value) is not None


def validate_response_headers(headers: list[tuple[bytes, bytes]]) -> None:
    """Raise LocalProtocolError naming the first header that cannot be sent as-is."""
    for name, value in headers:
        if TOKEN.fullmatch(name) is None:
            raise LocalProtocolError(f"invalid response header name {name!r}")
        if _BAD_VALUE.search(value) is not None:
            raise LocalProtocolError(
                f"response header {name!r} has a control character (CR, LF or NUL) in its value"
            )
