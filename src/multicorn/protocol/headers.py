"""Header rules shared by every HTTP version: what may be sent, what must be refused.

RFC 9110 5.5: field values are visible characters, spaces and tabs; CR, LF and NUL are never
allowed. A response header carrying CR/LF would let the application split the response, so it is
refused here rather than trusted to the encoder.
"""

from __future__ import annotations

import re
from itertools import chain

from multicorn.protocol.errors import LocalProtocolError

# RFC 9110 5.6.2: token = 1*tchar
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than HTAB (RFC 9110 5.5: field-vchar / SP / HTAB only; obs-text ok).
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


# Every field of a list at once, as `name NUL value NUL` pairs: RFC 9110 5.1 (a name is a token)
# and 5.5 (a value has no CTL but HTAB). NUL is valid in neither, so it separates them without
# ambiguity, and checking a whole list is one C-level join and one match: it runs per message.
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+\x00[\t\x20-\x7e\x80-\xff]*\x00)*").fullmatch


def fields_valid(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether every name is a token and no value has a control character (HTAB aside)."""
    return _FIELDS(b"\x00".join(chain.from_iterable(headers)) + b"\x00") is not None or not headers


def validate_response_headers(headers: list[tuple[bytes, bytes]]) -> None:
    """Raise LocalProtocolError naming the first header that cannot be sent as-is."""
    if fields_valid(headers):
        return
    for name, value in headers:
        if TOKEN.fullmatch(name) is None:
            raise LocalProtocolError(f"invalid response header name {name!r}")
        if _BAD_VALUE.search(value) is not None:
            raise LocalProtocolError(
                f"response header {name!r} has a control character (CR, LF or NUL) in its value"
            )
