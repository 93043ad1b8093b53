"""The request-head rules every HTTP version shares, checked in one place for all of them.

Each core parses its own wire format (h11 or llhttp lines, h2's HPACK blocks, later HTTP/3's
QPACK) and then hands the method, target and fields here before any event leaves protocol/.
What stays in a core is what only its version has: HTTP/1.1 framing (Host, Content-Length,
Transfer-Encoding). HTTP/2 and HTTP/3 share their pseudo-header structure (RFC 9113 8.3 and
RFC 9114 4.3 say the same things in the same words), so `split_pseudo_head` and
`check_pseudo_head` below serve both.

Two verdicts, because the versions answer them differently:
- `MalformedHead`: the head breaks the message syntax (a method that is not a token, a control
  character in a field). RFC 9113 8.1.1 and RFC 9114 4.1.2 call such a request malformed: its
  stream is reset (PROTOCOL_ERROR on HTTP/2, H3_MESSAGE_ERROR on HTTP/3). HTTP/1.1 has no
  streams: 400, then close.
- any other `RemoteProtocolError`: the head is well-formed but the request cannot be served
  (CONNECT to a server that is no proxy, `*` with a method other than OPTIONS). It gets a
  response with `error_status_hint`, on every version.

Two choices this module makes for every version:
- %-escapes (RFC 3986 2.1: pct-encoded = "%" HEXDIG HEXDIG): a "%" in the path not followed by
  two hex digits makes the target invalid, so the head is malformed (400 on HTTP/1.1, a stream
  reset on HTTP/2 and HTTP/3), as the strictest servers do. Only the path is checked: the query
  is the application's to decode (form data), and RFC 3986 gives it no other meaning.
- obs-text (bytes 0x80-0xFF) in field values passes through as bytes: RFC 9110 5.5 allows it
  ("a recipient SHOULD treat other allowed octets in field content (i.e., obs-text) as opaque
  data"), both HTTP/1.1 engines accept it, and applications still meet it in the wild (UTF-8
  file names in Content-Disposition). It is refused everywhere else: in field names, methods and
  targets.
"""

from __future__ import annotations

import ipaddress
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
# RFC 9110 9.1: method = token, and the set is open; "An origin server that receives a request
# method that is unrecognized or not implemented SHOULD respond with the 501 (Not Implemented)
# status code." The methods this server passes to applications are the ones llhttp parses
# (RFC 9110's, WebDAV's, PATCH, PURGE, QUERY and a few more): llhttp cannot be told others, and
# every engine and HTTP version must give one answer. Any other token gets 501.
KNOWN_METHODS = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH COPY LOCK MKCOL MOVE PROPFIND "
    b"PROPPATCH SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH "
    b"NOTIFY SUBSCRIBE UNSUBSCRIBE PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)

# RFC 3986 2.1: "%" not followed by two hex digits.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})").search
# RFC 3986 3.2.2 and RFC 9110 7.2: authority = uri-host [ ":" port ] (no userinfo in HTTP:
# RFC 9110 4.2.4). IP-literal = "[" ( IPv6address / IPvFuture ) "]" (the IPv6 address is
# checked by ipaddress), reg-name = *( unreserved / pct-encoded / sub-delims ).
_AUTHORITY = re.compile(
    rb"(?:\[([0-9A-Fa-f:.]+)\]|\[v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\]"
    rb"|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::([0-9]*))?"
).fullmatch

# Extended CONNECT protocols (RFC 8441 4, RFC 9220 3) this server can carry.
_TUNNELS = {b"websocket": StreamKind.WEBSOCKET}
# Pseudo-header fields a request may carry (RFC 9113 8.3.1, RFC 9114 4.3.1; `:protocol` from
# RFC 8441 4 and RFC 9220 3).
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*")  # RFC 3986 3.1
_UPPERCASE = re.compile(rb"[A-Z]")
# HTTP/1.1 connection-specific fields that HTTP/2 and HTTP/3 forbid (RFC 9113 8.2.2, RFC 9114
# 4.2). A core drops them from responses rather than failing an application written for
# HTTP/1.1.
CONNECTION_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)

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
    if method not in KNOWN_METHODS:
        if TOKEN.fullmatch(method) is None:
            raise MalformedHead(f"invalid request method {method[:32]!r}")
        raise RemoteProtocolError(
            f"method {method[:32]!r} is not implemented", error_status_hint=501
        )
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
    if b"%" in target and _BAD_ESCAPE(target.partition(b"?")[0]) is not None:
        raise MalformedHead(f"malformed %-escape in the request target {target[:64]!r}")
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


def valid_authority(authority: bytes) -> bool:
    """Whether `authority` is `host[:port]` as RFC 3986 3.2.2 and 3.2.3 spell it."""
    match = _AUTHORITY(authority)
    if match is None:
        return False
    literal, port = match[1], match[2]
    if port and (len(port) > 5 or int(port) > 65535):
        return False  # RFC 3986 allows any digits; no TCP port is above 65535
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            return False
    return True


def check_host(host: bytes | None, target: bytes) -> None:
    """An HTTP/1.1 request's Host value and its absolute-form target's authority; raise 400
    when either is malformed or they disagree."""
    # RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status code to any
    # HTTP/1.1 request message that [...] contains [...] a Host header field with an invalid
    # field value."
    if host is not None and not valid_authority(host):
        raise RemoteProtocolError(f"invalid Host {host[:64]!r}")
    if not target.startswith((b"http://", b"https://")):
        return  # origin-form, asterisk-form, or a form check_request_head refuses
    rest = target.partition(b"://")[2]
    end = len(rest)
    for stop in (b"/", b"?"):
        index = rest.find(stop)
        if 0 <= index < end:
            end = index
    authority = rest[:end]
    # RFC 9110 4.2.1: "A sender MUST NOT generate an "http" URI with an empty host identifier.
    # A recipient that processes such a URI reference MUST reject it as invalid." 4.2.4: "A
    # recipient SHOULD parse for userinfo and treat its presence as an error".
    if not authority or authority[:1] == b":" or not valid_authority(authority):
        raise RemoteProtocolError(f"invalid authority in the request target {target[:64]!r}")
    # RFC 9112 3.2.2 makes the target's authority win over Host; a front end that reads Host
    # instead would route the request elsewhere, so a disagreement is refused outright.
    if host is not None and host.lower() != authority.lower():
        raise RemoteProtocolError("the request target's authority and Host differ")


def split_pseudo_head(raw: Headers) -> tuple[dict[bytes, bytes], Headers, bytes | None, int]:
    """Pseudo-header fields, regular fields (with :authority as the first `host`), the
    Priority field and the number of Host fields of an HTTP/2 or HTTP/3 request header block;
    MalformedHead for what RFC 9113 8 and RFC 9114 4 forbid."""
    pseudo: dict[bytes, bytes] = {}
    headers: Headers = []
    priority = None
    hosts = 0
    regular = False
    for name, value in raw:
        if name[:1] == b":":
            # RFC 9113 8.3: "Endpoints MUST treat a request or response that contains undefined
            # or invalid pseudo-header fields as malformed" and "All pseudo-header fields MUST
            # appear in a field block before all regular field lines"; 8.3.1: "exactly one
            # valid value" of each. RFC 9114 4.3 says the same for HTTP/3.
            if regular or name in pseudo or name not in _REQUEST_PSEUDO:
                raise MalformedHead(f"misplaced, repeated or unknown {name[:32]!r}")
            pseudo[name] = value
            continue
        regular = True
        if name in CONNECTION_HEADERS or (name == b"te" and value.lower() != b"trailers"):
            # RFC 9113 8.2.2: "An endpoint MUST NOT generate an HTTP/2 message containing
            # connection-specific header fields. [...] Any message containing
            # connection-specific header fields MUST be treated as malformed." TE may only
            # say "trailers". RFC 9114 4.2 has the same rule for HTTP/3.
            raise MalformedHead(f"connection-specific field {name[:32]!r}")
        if name == b"host":
            hosts += 1
            authority = pseudo.get(b":authority")
            if authority is not None:
                # RFC 9113 8.3.1: "A server SHOULD treat a request as malformed if it contains
                # a Host header field that identifies an entity that differs from the entity
                # in the :authority pseudo-header field." (RFC 9114 4.3.1: "MUST NOT differ")
                if value != authority:
                    raise MalformedHead("Host differs from :authority")
                continue  # the :authority copy goes first, below
        elif name == b"priority":
            priority = value
        headers.append((name, value))
    # RFC 9113 8.2.1: "A request or response containing uppercase characters in field names
    # MUST be treated as malformed." (RFC 9114 4.2: "MUST be treated as malformed" too.) One
    # search over all names: this runs for every request.
    if _UPPERCASE.search(b"".join(name for name, _ in headers)) is not None:
        raise MalformedHead("uppercase characters in a field name")
    authority = pseudo.get(b":authority")
    if authority is not None:
        # ASGI: :authority becomes the host header, first, replacing any other.
        headers.insert(0, (b"host", authority))
    return pseudo, headers, priority, hosts


def check_pseudo_head(
    pseudo: dict[bytes, bytes], headers: Headers, hosts: int, *, extended_connect: bool
) -> StreamKind:
    """The pseudo-header structure of an HTTP/2 or HTTP/3 request (from `split_pseudo_head`),
    then `check_request_head`; returns the stream's kind, or raises.

    `extended_connect`: whether the server advertised SETTINGS_ENABLE_CONNECT_PROTOCOL
    (RFC 8441 3 for HTTP/2, RFC 9220 3 for HTTP/3).
    """
    method = pseudo.get(b":method")
    scheme = pseudo.get(b":scheme")
    path = pseudo.get(b":path")
    authority = pseudo.get(b":authority")
    protocol = pseudo.get(b":protocol")
    # RFC 9113 8.3.1: "All HTTP/2 requests MUST include exactly one valid value for the
    # ':method', ':scheme', and ':path' pseudo-header fields, unless they are CONNECT
    # requests (Section 8.5). An HTTP request that omits mandatory pseudo-header fields is
    # malformed." RFC 9114 4.3.1 words it the same way for HTTP/3.
    if method is None:
        raise MalformedHead("request without :method")
    if scheme is not None and _SCHEME.fullmatch(scheme) is None:
        raise MalformedHead(f"invalid :scheme {scheme[:32]!r}")  # RFC 3986 3.1
    if protocol is not None:
        # RFC 8441 3: a client uses :protocol only once the server has sent
        # SETTINGS_ENABLE_CONNECT_PROTOCOL = 1; without it the request is not one we know.
        if not extended_connect:
            raise MalformedHead(":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL")
        # RFC 8441 4: "On requests that contain the :protocol pseudo-header field, the
        # :scheme and :path pseudo-header fields of the target URI [...] MUST also be
        # included." :authority stays as required as for any CONNECT (RFC 9113 8.5), only
        # read as for other requests.
        if method == b"CONNECT" and (scheme is None or path is None or authority is None):
            raise MalformedHead("extended CONNECT without :scheme, :path or :authority")
    elif method == b"CONNECT":
        # RFC 9113 8.5: "The :scheme and :path pseudo-header fields MUST be omitted."
        if scheme is not None or path is not None:
            raise MalformedHead("CONNECT with :scheme or :path")
    elif scheme is None or path is None:
        raise MalformedHead("request without :scheme or :path")
    kind = check_request_head(method, path or b"", headers, multiplexed=True, protocol=protocol)
    if hosts > 1 or (authority is None and not hosts):
        # RFC 9113 8.3.1 lets a request carry its authority in :authority or Host. RFC 9112
        # 3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1
        # request message that lacks a Host header field and to any request message that
        # contains more than one Host header field line".
        raise RemoteProtocolError("request without one :authority or Host")
    return kind
