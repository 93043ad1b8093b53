"""The request-head rules every HTTP version shares, checked in one place for all of them.

Each core parses its own wire format (h11 or llhttp lines, h2's HPACK blocks, later HTTP/3's
QPACK) and then hands the method, target and fields here before any event leaves protocol/.
What stays in a core is what only its version has: HTTP/1.1 framing (Host, Content-Length,
Transfer-Encoding), HTTP/2 and HTTP/3 pseudo-header structure.

Two verdicts, because the versions answer them differently:
- `MalformedHead`: the head breaks the message syntax (a method that is not a token, a control
  character in a field). RFC 9113 8.1.1 and RFC 9114 4.1.2 call such a request malformed: its
  stream is reset with PROTOCOL_ERROR. HTTP/1.1 has no streams: 400, then close.
- any other `RemoteProtocolError`: the head is well-formed but the request cannot be served
  (CONNECT to a server that is no proxy, `*` with a method other than OPTIONS). It gets a
  response with `error_status_hint`, on every version.
"""

from __future__ import annotations

import re

from multicorn.protocol.errors import RemoteProtocolError
from multicorn.protocol.events import Headers, StreamKind
from multicorn.protocol.headers import TOKEN, fields_valid

# RFC 9110 5.5: field-value = *field-content; CTLs other than HTAB are never valid, and
# CR, LF and NUL are named outright. obs-text (0x80-0xFF) passes through as bytes.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 3986 and RFC 9112 3.2: a request-target is visible US-ASCII with no spaces; "#" begins a
# fragment, which is never sent (RFC 9110 7.1).
_TARGET = re.compile(rb"[\x21-\x22\x24-\x7e]+").fullmatch
# RFC 9113 8.2.1: a field value must not start or end with whitespace (h1 parsers strip OWS).
_EDGE_SPACE = (b" ", b"\t")
# RFC 9110 9.1: method = token. The registered methods skip the regex (a set lookup is cheaper).
_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"}
)

# Extended CONNECT protocols (RFC 8441 4, RFC 9220 3) this server can carry.
_TUNNELS = {b"websocket": StreamKind.WEBSOCKET}
# Looking an enum member up through its class costs ~150 ns on CPython 3.11; this runs per request.
_REQUEST = StreamKind.REQUEST


class MalformedHead(RemoteProtocolError):
    """The request head is not valid HTTP syntax: reset the stream (HTTP/2, HTTP/3) or answer
    400 and close (HTTP/1.1)."""


def check_request_head(
    method: bytes,
    target: bytes,
    headers: Headers,
    *,
    multiplexed: bool,
    protocol: bytes | None = None,
) -> StreamKind:
    """Check a parsed head; return the kind of stream it opens, or raise.

    `multiplexed` is True for HTTP/2 and HTTP/3 (`target` is `:path`, fields have no
    pseudo-headers left in them); `protocol` is `:protocol` of an extended CONNECT there, or for
    HTTP/1.1 the upgrade token of a request its core found to be a valid WebSocket handshake.
    """
    if method not in _METHODS and TOKEN.fullmatch(method) is None:
        raise MalformedHead(f"invalid request method {method[:32]!r}")
    if not fields_valid(headers):
        _field_error(headers)
    if multiplexed:
        for name, value in headers:
            if value.startswith(_EDGE_SPACE) or value.endswith(_EDGE_SPACE):
                raise MalformedHead(f"header {name[:64]!r} has surrounding whitespace")
    if method == b"CONNECT":
        if protocol is None:
            # RFC 9110 9.3.6: CONNECT asks for a tunnel to another host, a proxy's job.
            raise RemoteProtocolError(
                "CONNECT is not supported: this server is not a proxy", error_status_hint=501
            )
        if not multiplexed:
            raise MalformedHead("CONNECT with a protocol exists only in HTTP/2 and HTTP/3")
    elif protocol is not None and multiplexed:
        # RFC 8441 4: `:protocol` belongs to CONNECT requests only (h2 enforces it too).
        raise MalformedHead(":protocol on a request that is not a CONNECT")
    if target[:1] != b"/" or _TARGET(target) is None:
        _check_target(method, target, multiplexed=multiplexed)  # all but a valid origin-form
    if protocol is None:
        return _REQUEST
    kind = _TUNNELS.get(protocol.lower() if not multiplexed else protocol)
    if kind is None:
        raise RemoteProtocolError(
            f"protocol {protocol[:32]!r} is not supported here", error_status_hint=501
        )
    return kind


def _field_error(headers: Headers) -> None:
    """Raise MalformedHead naming the first field the combined match refused."""
    for name, value in headers:
        if TOKEN.fullmatch(name) is None:
            raise MalformedHead(f"invalid header name {name[:64]!r}")
        if _BAD_VALUE.search(value) is not None:
            raise MalformedHead(f"control character in the value of header {name[:64]!r}")
    raise MalformedHead("invalid header section")  # unreachable: the match and this agree


def _check_target(method: bytes, target: bytes, *, multiplexed: bool) -> None:
    if _TARGET(target) is None:
        error = "empty request target" if not target else f"invalid request target {target[:64]!r}"
        if multiplexed:
            raise MalformedHead(error)  # RFC 9113 8.3.1: a bad :path makes the request malformed
        raise RemoteProtocolError(error)
    if target[0] == 0x2F:  # "/": origin-form, the common case
        return
    if target == b"*":
        # RFC 9112 3.2.4 / RFC 9113 8.3.1: asterisk-form is for a server-wide OPTIONS only.
        if method != b"OPTIONS":
            raise RemoteProtocolError("asterisk-form target is only valid for OPTIONS")
        return
    if multiplexed:
        raise MalformedHead(f":path {target[:64]!r} is not an absolute path or '*'")
    # RFC 9112 3.2.2: absolute-form, which a server must accept even though only proxies need it.
    if not target.startswith((b"http://", b"https://")):
        raise RemoteProtocolError("request target is not in origin-form or absolute-form")
