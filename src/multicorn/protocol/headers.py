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


# Every field of a list at once: RFC 9110 5.1 (a name is a token) and 5.5 (a value has no CTL but
# HTAB). The names are joined and searched for a byte that is not a token character, the values
# joined and searched for a control character: a few C-level calls per list, whatever its length,
# since this runs twice per request. Joining without separators loses nothing: each check is about
# single bytes, and an empty name (which a join would hide) is looked for on its own.
_NOT_TCHAR = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]").search
_CONTROL = _BAD_VALUE.search


def fields_valid(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether every name is a token and no value has a control character (HTAB aside)."""
    if not headers:
        return True
    # Each item is a pair, so zip(*) gives the names and the values. No `strict=`: any keyword
    # argument to zip() (even strict=False) costs more than the rest of this function.
    names, values = zip(*headers)  # noqa: B905
    return (
        b"" not in names
        and _NOT_TCHAR(b"".join(names)) is None
        and _CONTROL(b"".join(values)) is None
    )


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
