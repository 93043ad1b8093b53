"""HTTP/1.1 server core over h11 or llhttp, behind the stream-event interface.

Theory of operation. A parser engine (http11_parsers.py) turns bytes into operations: a head,
body pieces, the end of a body, a stop at an upgrade request, an error. This module adds what the
parsers leave to their user:
- strictness they do not enforce (request smuggling vectors, the Host rule, whole heads above
  the size limit arriving in one read), and the request-head rules every HTTP version shares
  (request_head.py),
- numbering requests as streams 1, 2, 3... so the layer above treats them like HTTP/2 streams,
- keep-alive and header deadlines, a cap on requests per connection, pipelining (a request that
  arrives while the previous one is being answered waits in `ops`, as h11 PAUSEs; once our
  response completes, `send()` releases it),
- read backpressure: `wants_read` turns False while the application has not consumed the body
  bytes already delivered, or while a pipelined request waits behind the current one,
- protocol switches: h2c by prior knowledge or `Upgrade: h2c` (events for negotiate.py), and
  WebSocket (RFC 6455, with `HTTP11Limits.websocket`): a valid handshake becomes a WEBSOCKET
  stream and nothing after it is parsed while the application decides. A 2xx accepts it (we
  write the 101) and the connection becomes a byte tunnel for that stream; any other status is
  an ordinary response, after which the connection closes (the bytes behind the handshake may
  be frames sent in hope, never to be read as HTTP).

The connection is in one `_State` at a time and moves only along `_TRANSITIONS`; a move not in
the table is a bug of ours and raises LocalProtocolError. One request/response cycle:

```mermaid
stateDiagram-v2
    IDLE --> RECEIVING: REQUEST (head checked and delivered)
    RECEIVING --> RESPONDING: BODY_END
    RECEIVING --> DRAINING: RESPONSE_END (the body was not read)
    RECEIVING --> REJECTING: REJECT (a malformed body before any response)
    RESPONDING --> IDLE: RESPONSE_END (keep-alive)
    DRAINING --> IDLE: BODY_END
    IDLE --> REJECTING: REJECT (head refused, bad input, header timeout)
    REJECTING --> CLOSED: RESPONSE_END
    IDLE --> WS_PENDING: OFFER_WEBSOCKET
    WS_PENDING --> TUNNEL: ACCEPT (a 2xx, written as 101)
    WS_PENDING --> DECLINING: DECLINE (any other final status)
    IDLE --> H2C_PENDING: OFFER_H2C
    H2C_PENDING --> SWITCHED: SWITCH
    H2C_PENDING --> RECEIVING: DECLINE (body too big to hold)
    H2C_PENDING --> REJECTING: REJECT (its body turned out malformed)
    IDLE --> SWITCHED: SWITCH (prior knowledge)
```
and CLOSE from any live state to CLOSED. The framing of the response being written (`_Mode`)
and the client's 100-continue wait (`_Continue`) are kept beside the state: they vary
independently of it. The peer closing its sending side (`_eof`) is a flag for the same reason:
EOF mid-body resets the stream; EOF after a complete request is a half-close (the response is
still delivered, then the connection closes).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Final

from multicorn.protocol.errors import LocalProtocolError, RemoteProtocolError
from multicorn.protocol.events import (
    AcknowledgeData,
    CloseConnection,
    Command,
    ConnectionClosed,
    DataReceived,
    Event,
    H2CPriorKnowledge,
    H2CUpgrade,
    Headers,
    RequestReceived,
    RequestRejected,
    ResetStream,
    SendData,
    SendInformational,
    SendResponse,
    SendTrailers,
    StreamEnded,
    StreamKind,
    StreamReset,
)
from multicorn.protocol.headers import fields_valid, validate_response_headers
from multicorn.protocol.http2 import PREFACE, valid_upgrade_settings
from multicorn.protocol.http11_parsers import (
    DataOp,
    EndOp,
    ErrorOp,
    H11Parser,
    HeadOp,
    HttptoolsParser,
    SpentParser,
    UpgradeOp,
    new_parser,
    refuse_transfer_coding,
)
from multicorn.protocol.request_head import check_host, check_request_head

# Once the response is complete, at most this much of an unread request body is read and thrown
# away to keep the connection alive; past it, closing is cheaper than draining.
_MAX_DISCARD = 256 * 1024

_STATUS_LINES = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))
    for status in HTTPStatus
}

# The request line of the HTTP/2 connection preface (RFC 9113 3.4): no HTTP/1.1 request has it.
_PREFACE_LINE: Final = PREFACE[:16]

# RFC 6455 1.3: the GUID the server appends to Sec-WebSocket-Key before hashing.
_WEBSOCKET_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Headers of the application's accepting response that the 101 sets itself or that would frame
# a body the tunnel does not have.
_NOT_IN_101: Final = frozenset(
    {b"connection", b"upgrade", b"sec-websocket-accept", b"content-length", b"transfer-encoding"}
)


class _State(enum.IntEnum):
    """Where the connection is in its request/response cycle (see the module docstring)."""

    IDLE = enum.auto()  # no request in flight: waiting for, or parsing, the next head
    RECEIVING = enum.auto()  # a request was delivered and its body is still arriving
    RESPONDING = enum.auto()  # the request is complete and its response is not
    DRAINING = enum.auto()  # the response is complete; the unread rest of the body is dropped
    H2C_PENDING = enum.auto()  # an `Upgrade: h2c` request, held back until its body is complete
    WS_PENDING = enum.auto()  # a WebSocket handshake was delivered; the app has not answered
    TUNNEL = enum.auto()  # the app accepted the WebSocket: raw bytes both ways
    REJECTING = enum.auto()  # a refused request is being answered, then the connection closes
    DECLINING = enum.auto()  # the app declined an upgrade: its response, then the close
    SWITCHED = enum.auto()  # handed over to HTTP/2: nothing here is read or written any more
    CLOSED = enum.auto()


# Enum members looked up through their class cost ~150 ns each on CPython 3.11: the hot path
# uses module-level names instead (S_ states, E_ transitions, M_ framing modes, C_ 100-continue,
# K_ stream kinds).
S_IDLE: Final = _State.IDLE
S_RECEIVING: Final = _State.RECEIVING
S_RESPONDING: Final = _State.RESPONDING
S_DRAINING: Final = _State.DRAINING
S_H2C_PENDING: Final = _State.H2C_PENDING
S_WS_PENDING: Final = _State.WS_PENDING
S_TUNNEL: Final = _State.TUNNEL
S_REJECTING: Final = _State.REJECTING
S_DECLINING: Final = _State.DECLINING
S_SWITCHED: Final = _State.SWITCHED
S_CLOSED: Final = _State.CLOSED


class _Ev(enum.IntEnum):
    """Named transitions."""

    REQUEST = enum.auto()
    OFFER_H2C = enum.auto()
    OFFER_WEBSOCKET = enum.auto()
    REJECT = enum.auto()
    BODY_END = enum.auto()
    RESPONSE_END = enum.auto()
    ACCEPT = enum.auto()
    DECLINE = enum.auto()
    SWITCH = enum.auto()
    CLOSE = enum.auto()


E_REQUEST: Final = _Ev.REQUEST
E_OFFER_H2C: Final = _Ev.OFFER_H2C
E_OFFER_WEBSOCKET: Final = _Ev.OFFER_WEBSOCKET
E_REJECT: Final = _Ev.REJECT
E_BODY_END: Final = _Ev.BODY_END
E_RESPONSE_END: Final = _Ev.RESPONSE_END
E_ACCEPT: Final = _Ev.ACCEPT
E_DECLINE: Final = _Ev.DECLINE
E_SWITCH: Final = _Ev.SWITCH
E_CLOSE: Final = _Ev.CLOSE

K_REQUEST: Final = StreamKind.REQUEST
K_WEBSOCKET: Final = StreamKind.WEBSOCKET


class _Table(dict[tuple[_State, _Ev], _State]):
    """The transition table. A move that is not in it is a bug of ours, never the peer's: the
    peer's input is checked before any transition is taken."""

    def __missing__(self, key: tuple[_State, _Ev]) -> _State:
        state, event = key
        raise LocalProtocolError(f"HTTP/1.1 core: no transition {event.name} from {state.name}")


_MOVES: dict[tuple[_State, _Ev], _State] = {
    (S_IDLE, E_REQUEST): S_RECEIVING,
    (S_IDLE, E_OFFER_H2C): S_H2C_PENDING,
    (S_IDLE, E_OFFER_WEBSOCKET): S_WS_PENDING,
    (S_IDLE, E_REJECT): S_REJECTING,
    (S_IDLE, E_SWITCH): S_SWITCHED,
    (S_RECEIVING, E_BODY_END): S_RESPONDING,
    (S_RECEIVING, E_REJECT): S_REJECTING,
    (S_RECEIVING, E_RESPONSE_END): S_DRAINING,
    (S_RESPONDING, E_RESPONSE_END): S_IDLE,
    (S_DRAINING, E_BODY_END): S_IDLE,
    (S_H2C_PENDING, E_SWITCH): S_SWITCHED,
    (S_H2C_PENDING, E_DECLINE): S_RECEIVING,
    (S_H2C_PENDING, E_REJECT): S_REJECTING,
    (S_WS_PENDING, E_ACCEPT): S_TUNNEL,
    (S_WS_PENDING, E_DECLINE): S_DECLINING,
    (S_REJECTING, E_RESPONSE_END): S_CLOSED,
    **{(state, E_CLOSE): S_CLOSED for state in _State if state not in (S_SWITCHED, S_CLOSED)},
}
_TRANSITIONS: Final = _Table(_MOVES)

# States whose input goes through the parser.
_PARSING: Final = frozenset(
    {
        S_IDLE,
        S_RECEIVING,
        S_RESPONDING,
        S_DRAINING,
        S_H2C_PENDING,
        S_WS_PENDING,  # only until the parser hands over the bytes after the head
    }
)
# States in which the current stream takes commands from the application.
_ANSWERING: Final = frozenset(
    {
        S_RECEIVING,
        S_RESPONDING,
        S_WS_PENDING,
        S_TUNNEL,
        S_REJECTING,
        S_DECLINING,
    }
)
# States that read input at all (backpressure aside).
_READING: Final = frozenset(_PARSING | {S_TUNNEL})


class _Mode(enum.Enum):
    """How the body of the response being written is framed."""

    IDLE = enum.auto()  # no response head written yet
    LENGTH = enum.auto()
    CHUNKED = enum.auto()
    UNTIL_CLOSE = enum.auto()  # HTTP/1.0 without Content-Length
    NO_BODY = enum.auto()  # HEAD, 204, 304
    TUNNEL = enum.auto()  # after a 101: raw bytes


M_IDLE: Final = _Mode.IDLE
M_LENGTH: Final = _Mode.LENGTH
M_CHUNKED: Final = _Mode.CHUNKED
M_UNTIL_CLOSE: Final = _Mode.UNTIL_CLOSE
M_NO_BODY: Final = _Mode.NO_BODY
M_TUNNEL: Final = _Mode.TUNNEL


class _Continue(enum.Enum):
    """RFC 9110 10.1.1 `Expect: 100-continue`, from the server's side."""

    NO = enum.auto()  # nobody waits: no Expect, HTTP/1.0, a 100 went out, or the body began
    WAITING = enum.auto()  # the client waits for a 100 before it sends the body
    # The final response began while the client still waited: it will not send the body, so
    # there is nothing to drain afterwards and the connection closes.
    REFUSED = enum.auto()


C_NO: Final = _Continue.NO
C_WAITING: Final = _Continue.WAITING
C_REFUSED: Final = _Continue.REFUSED


# What the head check found, as bit flags: cheaper than an object per request.
_KEEP_ALIVE: Final = 1  # the client allows another request after this one
_EXPECTS_100: Final = 2
_UPGRADE: Final = 4  # an Upgrade header is present
_HAS_BODY: Final = 8  # Content-Length other than 0, or Transfer-Encoding

# The usual Host value (a name or IPv4 address, a port up to 65535): one regex, and the full
# check (request_head.check_host) only for the rest.
_PLAIN_HOST: Final = re.compile(
    rb"[A-Za-z0-9\-.]+(?::(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
    rb"|655[0-2][0-9]|6553[0-5]))?"
).fullmatch

# The request headers the HTTP/1.1 head check looks at.
_FRAMING_NAMES: Final = frozenset(
    {b"host", b"expect", b"upgrade", b"content-length", b"transfer-encoding", b"connection"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTP11Limits:
    max_incomplete_size: int = 16 * 1024  # a request head, in bytes
    # The request target, in bytes (as nginx's and Apache's default request-line limits); a
    # longer one is answered 414, unless the whole head is over max_incomplete_size (431).
    max_target_size: int = 8 * 1024
    keep_alive_timeout: float = 5.0
    header_timeout: float = 10.0
    max_requests: int = 1000
    body_buffer_size: int = 64 * 1024  # unconsumed request body before reading pauses
    h2c_prior_knowledge: bool = False  # a connection opening with the HTTP/2 preface switches
    h2c_upgrade: bool = False  # `Upgrade: h2c` on the first request switches
    # `Upgrade: websocket` handshakes become WEBSOCKET streams (handed over on accept); when
    # False they are served as plain HTTP requests.
    websocket: bool = False
    engine: str = "h11"  # request parser: "h11" or "httptools" (llhttp)


class _UnsupportedWebSocketVersion(RemoteProtocolError):
    """RFC 6455 4.4: answered 426 with the versions we speak."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_status_hint=426)


@dataclass(slots=True)
class _PendingH2C:
    """An `Upgrade: h2c` request held back until its body is complete (RFC 7540 3.2)."""

    request: RequestReceived
    settings: bytes
    body: list[bytes]
    size: int = 0


class HTTP11Protocol:
    """One HTTP/1.x connection, server side. See the module docstring."""

    multiplexed = False

    def __init__(self, *, limits: HTTP11Limits, now: float) -> None:
        self._limits = limits
        self._parser: H11Parser | HttptoolsParser | SpentParser = new_parser(
            limits.engine, limits.max_incomplete_size
        )
        self._out: list[bytes] = []
        self._state = S_IDLE
        self._mode = M_IDLE
        self._continue = C_NO
        self._eof = False  # the peer closed its sending side
        self._keep_alive = True  # another request may follow the current one
        self._stream_id = 0  # id of the newest request
        self._head_method = False  # the current request is a HEAD
        self._http10 = False  # the current request is HTTP/1.0
        self._unconsumed = 0  # body bytes delivered and not yet acknowledged
        self._discarded = 0  # DRAINING: body bytes dropped so far
        self._remaining = 0  # body bytes still owed under the response's Content-Length
        self._since = now  # IDLE: when the connection went idle; DRAINING: since when
        self._head_started: float | None = None  # IDLE: first byte of the next head
        self._sniffed: bytes | None = b"" if limits.h2c_prior_knowledge else None
        self._h2c: _PendingH2C | None = None
        self._websocket_key = b""  # WS_PENDING: the handshake's Sec-WebSocket-Key
        self._held: list[bytes] = []  # WS_PENDING: input after the handshake, unparsed
        self._answer_headers: Headers = []  # added to the next response head (a 426's)

    # ---- inbound --------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        state = self._state
        if self._eof or state not in _READING:
            return []
        if state is S_TUNNEL or state is S_WS_PENDING:
            return self._receive_raw(data)
        if self._sniffed is not None and data:
            data = self._sniffed + data
            if len(data) < len(PREFACE) and PREFACE.startswith(data):
                self._sniffed = data
                return []
            self._sniffed = None
            if data.startswith(_PREFACE_LINE):
                # The preface, or input that begins like it and is not it: both are HTTP/2's.
                # RFC 9113 3.4: "Clients and servers MUST treat an invalid connection preface
                # as a connection error of type PROTOCOL_ERROR", so the HTTP/2 core answers
                # the second with a GOAWAY, not an HTTP/1.1 400.
                self._state = _TRANSITIONS[self._state, E_SWITCH]
                return [H2CPriorKnowledge(leftover=data)]
        if not data:
            return self._peer_closed()
        parser = self._parser
        ops = parser.ops
        if state is S_IDLE and not ops and self._head_started is None:
            self._head_started = now
        if not ops or type(ops[-1]) is not ErrorOp:  # nothing is parsed after an error
            try:
                parser.feed(data)
            except RemoteProtocolError as exc:
                # Queued behind whatever parsed fine: earlier pipelined requests still get
                # their answers before this one is refused.
                ops.append(ErrorOp(exc))
        return self._next_events(now)

    def _receive_raw(self, data: bytes) -> list[Event]:
        """Input of a WebSocket stream: held while the app decides, then tunnelled."""
        if not data:
            return self._peer_closed()
        self._unconsumed += len(data)
        if self._state is S_WS_PENDING:
            self._held.append(data)
            return []
        return [DataReceived(stream_id=self._stream_id, data=data)]

    def _peer_closed(self) -> list[Event]:
        """EOF: the client sends nothing more. A complete request still gets its answer
        (half-close); a request cut short is reset; an idle connection just closes."""
        self._eof = True
        state = self._state
        if state is S_TUNNEL:
            return [StreamEnded(stream_id=self._stream_id)]
        if state in (S_RESPONDING, S_WS_PENDING, S_DECLINING, S_REJECTING):
            return []
        error = None
        if state is S_RECEIVING or state is S_H2C_PENDING or self._parser.partial:
            error = RemoteProtocolError("the client closed the connection mid-request")
        return self._close(error)

    def _next_events(self, now: float) -> list[Event]:
        """Turn parsed operations into events, holding back any request that arrives while
        the previous one is still being answered (pipelining)."""
        events: list[Event] = []
        ops = self._parser.ops
        while ops:
            state = self._state
            if state not in _PARSING:
                break
            op = ops[0]
            if isinstance(op, HeadOp):
                if state is not S_IDLE:
                    break  # its turn comes when the current exchange is over
                del ops[0]
                self._on_head(op, events)
            elif isinstance(op, EndOp):
                del ops[0]
                if state is S_RECEIVING:  # the common case, inlined
                    self._state = _TRANSITIONS[state, E_BODY_END]
                    events.append(StreamEnded(stream_id=self._stream_id))
                else:
                    self._on_body_end(events, now)
            elif isinstance(op, DataOp):
                del ops[0]
                self._on_body(op.data, events)
            elif isinstance(op, UpgradeOp):
                del ops[0]
                if self._on_upgrade_stop(op.leftover, events):
                    break
            else:
                if state is S_RESPONDING:
                    break  # a later request is broken: answer the current one first
                del ops[0]
                events.extend(self._on_bad_input(op.error))
        return events

    def _on_head(self, head: HeadOp, events: list[Event]) -> None:
        try:
            flags = self._check_head(head)
            settings = websocket = None
            if flags & _UPGRADE:
                settings = self._h2c_settings(head)
                websocket = settings is None and self._websocket_offered(head, flags)
            kind = check_request_head(
                head.method,
                head.target,
                head.headers,
                multiplexed=False,
                protocol=b"websocket" if websocket else None,
            )
        except RemoteProtocolError as exc:
            # RFC 9112 and RFC 9110 leave a malformed head (MalformedHead) and a refused one
            # the same answer in HTTP/1.1, which has no stream to reset: a response, then close.
            events.extend(self._reject(exc))
            return
        if settings is not None:
            self._h2c = _PendingH2C(self._start_request(head, flags, E_OFFER_H2C), settings, [])
        elif kind is K_WEBSOCKET:
            events.append(self._start_request(head, flags, E_OFFER_WEBSOCKET, kind))
        else:
            request = self._start_request(head, flags, E_REQUEST)
            if flags & _UPGRADE:
                request = replace(request, upgrade_ignored=True)
            events.append(request)

    def _on_body(self, data: bytes, events: list[Event]) -> None:
        state = self._state
        if state is S_RECEIVING:
            if self._continue is C_WAITING:
                self._continue = C_NO  # the client stopped waiting and sent the body
            self._unconsumed += len(data)
            events.append(DataReceived(stream_id=self._stream_id, data=data))
        elif state is S_DRAINING:
            self._discarded += len(data)
            if self._discarded > _MAX_DISCARD:
                events.extend(self._close())
        elif state is S_H2C_PENDING:
            self._hold_h2c_body(data, events)
        else:
            raise LocalProtocolError(f"HTTP/1.1 core: request body data in {state.name}")

    def _on_body_end(self, events: list[Event], now: float) -> None:
        state = self._state
        if state is S_DRAINING:
            self._state = _TRANSITIONS[self._state, E_BODY_END]
            self._new_cycle(now)
        elif state is not S_H2C_PENDING and state is not S_WS_PENDING:
            # Those two wait for the parser's stop right behind this end.
            raise LocalProtocolError(f"HTTP/1.1 core: end of a request body in {state.name}")

    def _on_upgrade_stop(self, leftover: bytes, events: list[Event]) -> bool:
        """The parser stopped after a request that asked to switch protocols. True when the
        input is no longer HTTP/1.1 (the caller stops turning operations into events)."""
        state = self._state
        if state is S_H2C_PENDING:
            assert self._h2c is not None
            events.append(self._switch_to_h2c(self._h2c, leftover))
            return True
        if state is S_WS_PENDING:
            # RFC 6455 4.1: nothing after the handshake is HTTP any more. Held until the app
            # decides: frames for the tunnel, or dropped when it declines.
            if leftover:
                self._held.append(leftover)
                self._unconsumed += len(leftover)
            return True
        # An upgrade we do not take (h2c declined, or any other protocol): carry on with
        # HTTP/1.1.
        try:
            self._parser.resume(leftover)
        except RemoteProtocolError as exc:
            self._parser.ops.append(ErrorOp(exc))
        return False

    def _on_bad_input(self, error: RemoteProtocolError) -> list[Event]:
        state = self._state
        if state is S_IDLE or state is S_H2C_PENDING:
            return self._reject(error)
        if state is S_RECEIVING and self._mode is M_IDLE and not self._eof:
            # The head was fine, its body is not (a bad chunk) and no response has begun: the
            # application loses its request (the reset), and the client still learns why
            # (RFC 9112 6.3 and 7.1 ask for a 400 on invalid framing), then the close.
            return [StreamReset(stream_id=self._stream_id), *self._reject(error)]
        # In the body being drained after the response, or mid-body with the response under
        # way: nobody can be answered any more.
        return self._close(error)

    # ---- checks (they decide; the transitions above and below act) -------------------------

    def _check_head(self, head: HeadOp) -> int:
        """The rules only HTTP/1.x has. Returns `_KEEP_ALIVE | _EXPECTS_100 | ...` flags, or
        raises RemoteProtocolError with the status to refuse the request with."""
        version = head.version
        if version != "1.1" and version != "1.0":
            if version == "0.9":
                raise RemoteProtocolError("malformed request line (no HTTP version)")
            # RFC 9110 15.6.6: 505 for a major version we do not support.
            raise RemoteProtocolError(
                f"HTTP version {version} is not supported", error_status_hint=505
            )
        has_length = has_chunked = False
        hosts = 0
        host = b""
        # RFC 9112 9.3: HTTP/1.1 is persistent by default; HTTP/1.0 keep-alive is not offered.
        flags = _KEEP_ALIVE if version == "1.1" else 0
        headers = head.headers
        for name, value in headers:
            if name not in _FRAMING_NAMES:
                continue  # most headers: one set lookup instead of a chain of comparisons
            if name == b"host":
                hosts += 1
                host = value
            elif name == b"expect":
                # RFC 9110 10.1.1: only an HTTP/1.1 client waits for a 100 before the body.
                if value.lower() == b"100-continue" and version == "1.1":
                    flags |= _EXPECTS_100
            elif name == b"upgrade":
                flags |= _UPGRADE
            elif name == b"content-length":
                # RFC 9110 8.6: Content-Length = 1*DIGIT. RFC 9112 6.3: "If a message is
                # received without Transfer-Encoding and with an invalid Content-Length header
                # field, then the message framing is invalid and the recipient MUST treat it as
                # an unrecoverable error [...] the server MUST respond with a 400". A list
                # ("1, 1") or a repeated field is refused even when the values agree (RFC 9112
                # 6.3 allows either), as llhttp does; bytes.isdigit() is ASCII digits only.
                if has_length or not value.isdigit() or len(value) > 18:
                    raise RemoteProtocolError("invalid or repeated Content-Length")
                has_length = True
                if value != b"0":
                    flags |= _HAS_BODY
            elif name == b"transfer-encoding":
                if has_chunked or value.strip().lower() != b"chunked":
                    refuse_transfer_coding(value, has_chunked)
                has_chunked = True
                flags |= _HAS_BODY
            elif b"close" in value.lower() and b"close" in _tokens(value.lower()):
                # Connection. RFC 9112 9.6: "close" ends the connection after this response.
                flags &= ~_KEEP_ALIVE
        if not head.small:
            # Arrived whole in a read bigger than the limit: count it. The request line, and
            # each field line as "name: value\r\n".
            size = len(head.method) + len(head.target) + 12
            size += sum([len(name) + len(value) + 4 for name, value in headers])
            if size > self._limits.max_incomplete_size:
                # RFC 6585 5: 431 Request Header Fields Too Large.
                raise RemoteProtocolError("request header section too large", error_status_hint=431)
        if len(head.target) > self._limits.max_target_size:
            # RFC 9112 3: "A server that receives a request-target longer than any URI it
            # wishes to parse MUST respond with a 414 (URI Too Long) status code".
            raise RemoteProtocolError("request target too long", error_status_hint=414)
        # RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status code to any
        # HTTP/1.1 request message that lacks a Host header field and to any request message
        # that contains more than one Host header field line".
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise RemoteProtocolError("a request needs exactly one Host header")
        if (hosts and _PLAIN_HOST(host) is None) or head.target[:1] != b"/":
            # "... or a Host header field with an invalid field value" (the same sentence);
            # and an absolute-form target's authority must be valid and agree with Host.
            check_host(host if hosts else None, head.target)
        # RFC 9112 6.1: a request with both is a smuggling vector ("ought to be handled as an
        # error"); refuse it outright.
        if has_length and has_chunked:
            raise RemoteProtocolError("both Content-Length and Transfer-Encoding present")
        # RFC 9112 6.1: chunked framing does not exist in HTTP/1.0.
        if has_chunked and version == "1.0":
            raise RemoteProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        return flags

    def _h2c_settings(self, head: HeadOp) -> bytes | None:
        """The HTTP2-Settings value of a valid `Upgrade: h2c` first request, else None."""
        if not self._limits.h2c_upgrade or self._stream_id != 0 or head.version != "1.1":
            return None
        upgrade = connection = settings = None
        for name, value in head.headers:
            if name == b"upgrade":
                upgrade = value.lower()
            elif name == b"connection":
                connection = value.lower()
            elif name == b"http2-settings":
                if settings is not None:
                    return None  # RFC 7540 3.2.1: exactly one
                settings = value
        if upgrade is None or settings is None or connection is None:
            return None
        if b"h2c" not in _tokens(upgrade) or not {b"upgrade", b"http2-settings"} <= _tokens(
            connection
        ):
            return None
        if not valid_upgrade_settings(settings):
            # RFC 7540 3.2.1: HTTP2-Settings is the base64url of a valid SETTINGS payload; a
            # value that is not is a malformed field of the request, not an offer to ignore
            # (serving it over HTTP/1.1 would let two servers read one request two ways).
            raise RemoteProtocolError("malformed HTTP2-Settings in an h2c upgrade")
        return settings

    def _websocket_offered(self, head: HeadOp, flags: int) -> bool:
        """True for a valid RFC 6455 opening handshake, False when the request does not ask
        for a WebSocket (or WebSockets are off); raises for a handshake we must refuse."""
        if not self._limits.websocket:
            return False
        upgrade: list[bytes] = []
        connection: list[bytes] = []
        versions: list[bytes] = []
        keys: list[bytes] = []
        for name, value in head.headers:
            if name == b"upgrade":
                upgrade.append(value)
            elif name == b"connection":
                connection.append(value)
            elif name == b"sec-websocket-version":
                versions.append(value)
            elif name == b"sec-websocket-key":
                keys.append(value)
        # RFC 6455 4.1: 'An |Upgrade| header field containing the value "websocket", treated
        # as an ASCII case-insensitive value.'
        if b"websocket" not in _tokens(b",".join(upgrade).lower()):
            return False  # some other protocol: served as plain HTTP
        # RFC 6455 4.2.1: a server that finds the handshake not as described "MUST stop
        # processing the client's handshake and return an HTTP response with an appropriate
        # error code (such as 400 Bad Request)".
        # 4.1: "The method of the request MUST be GET, and the HTTP version MUST be at least 1.1."
        if head.method != b"GET" or head.version != "1.1":
            raise RemoteProtocolError("a WebSocket handshake must be an HTTP/1.1 GET")
        # 4.1: 'A |Connection| header field that includes the token "Upgrade"'.
        if b"upgrade" not in _tokens(b",".join(connection).lower()):
            raise RemoteProtocolError("a WebSocket handshake needs Connection: Upgrade")
        # 4.1: the handshake is a GET; a body would be read as WebSocket frames.
        if flags & _HAS_BODY:
            raise RemoteProtocolError("a WebSocket handshake has no body")
        # 4.1: 'a |Sec-WebSocket-Key| header field with a base64-encoded value that, when
        # decoded, is 16 bytes in length'.
        if len(keys) != 1 or _decoded_length(keys[0].strip()) != 16:
            raise RemoteProtocolError("a WebSocket handshake needs one 16-byte Sec-WebSocket-Key")
        # 4.1: "|Sec-WebSocket-Version| header field, with a value of 13"; 4.4: otherwise
        # answer with the versions the server understands (here, 426 and 13).
        if len(versions) != 1 or versions[0].strip() != b"13":
            raise _UnsupportedWebSocketVersion("only WebSocket version 13 is supported")
        return True

    # ---- transitions that start and refuse requests ----------------------------------------

    def _start_request(
        self, head: HeadOp, flags: int, event: _Ev, kind: StreamKind = K_REQUEST
    ) -> RequestReceived:
        self._state = _TRANSITIONS[self._state, event]
        self._stream_id += 1
        self._head_started = None  # no deadline while a request is in flight
        self._unconsumed = 0
        self._head_method = head.method == b"HEAD"
        version = head.version
        self._http10 = version == "1.0"
        if not flags & _KEEP_ALIVE or self._stream_id >= self._limits.max_requests:
            self._keep_alive = False
        expects_100 = bool(flags & _EXPECTS_100)
        self._continue = C_WAITING if expects_100 else C_NO
        if kind is K_WEBSOCKET:
            self._websocket_key = _header(head.headers, b"sec-websocket-key").strip()
        return RequestReceived(
            stream_id=self._stream_id,
            method=head.method,
            target=head.target,
            http_version=version,
            headers=head.headers,
            expects_continue=expects_100,
            kind=kind,
        )

    def _reject(self, error: RemoteProtocolError) -> list[Event]:
        """Refuse the request at hand before any application saw it: the layer above answers
        `error.error_status_hint` on its stream, then the connection closes."""
        if self._eof:
            return self._close(error)  # the peer is gone; there is nobody to answer
        if self._state is S_IDLE:
            self._stream_id += 1  # the refused request still takes its number
        self._state = _TRANSITIONS[self._state, E_REJECT]
        self._keep_alive = False
        # The answer frames as for a plain GET, whatever the previous request was (a HEAD's
        # would otherwise lose its body).
        self._head_method = self._http10 = False
        self._continue = C_NO
        self._h2c = None
        if isinstance(error, _UnsupportedWebSocketVersion):
            self._answer_headers = [(b"sec-websocket-version", b"13")]
        return [RequestRejected(stream_id=self._stream_id, error=error)]

    def _hold_h2c_body(self, data: bytes, events: list[Event]) -> None:
        pending = self._h2c
        assert pending is not None
        pending.body.append(data)
        pending.size += len(data)
        if pending.size > self._limits.body_buffer_size:
            # Too big to hold back: serve it over HTTP/1.1 and ignore the upgrade offer.
            self._state = _TRANSITIONS[self._state, E_DECLINE]
            self._h2c = None
            events.append(pending.request)
            self._unconsumed += pending.size
            events.append(DataReceived(stream_id=self._stream_id, data=b"".join(pending.body)))

    def _switch_to_h2c(self, pending: _PendingH2C, leftover: bytes) -> H2CUpgrade:
        self._state = _TRANSITIONS[self._state, E_SWITCH]
        self._h2c = None
        self._out.append(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
        )
        return H2CUpgrade(
            request=pending.request,
            body=b"".join(pending.body),
            settings=pending.settings,
            leftover=leftover,
        )

    def _close(
        self, error: RemoteProtocolError | None = None, *, reset: bool | None = None
    ) -> list[Event]:
        """CLOSE. The request in flight is reset if its body was still arriving (and its
        response is not complete: `reset` says so when the caller knows better)."""
        events: list[Event] = []
        if reset if reset is not None else self._state is S_RECEIVING:
            events.append(StreamReset(stream_id=self._stream_id))
        self._state = _TRANSITIONS[self._state, E_CLOSE]
        self._held.clear()
        self._h2c = None
        events.append(ConnectionClosed(error=error))
        return events

    # ---- outbound -------------------------------------------------------------------------
    #
    # Responses are framed here rather than by h11: h11's writer validates and re-normalises
    # every header on every response, which cost more than the parsing. The parser never sees
    # our responses.

    def send(self, command: Command, now: float) -> list[Event]:
        # The commands every request sees come first: this runs two or three times per request.
        if isinstance(command, CloseConnection):
            self._keep_alive = False
            if self._state is S_DRAINING or (self._state is S_IDLE and not command.idle_grace):
                return self._close()
            return []
        state = self._state
        if command.stream_id != self._stream_id or state not in _ANSWERING:
            return []  # the stream is already gone (the ASGI layer has been told) or not ours
        # By exact type (none of the commands has subclasses): cheaper than isinstance.
        if type(command) is SendData:
            if state is S_TUNNEL:
                if command.data:
                    self._out.append(command.data)
                return self._close() if command.end_stream else []
            self._write_body(command.data)
            if command.end_stream:
                return self._end_response(now, None)
        elif type(command) is SendResponse:
            if self._mode is not M_IDLE:
                raise LocalProtocolError("a response was already started on this stream")
            if state is S_WS_PENDING:
                return self._answer_websocket(command, now)
            self._write_head(command.status, command.headers)
            if command.end_stream:
                return self._end_response(now, None)
        elif type(command) is AcknowledgeData:
            self._unconsumed = max(0, self._unconsumed - command.amount)
        elif isinstance(command, SendInformational):
            self._write_informational(command.status, command.headers)
        elif isinstance(command, SendTrailers):
            if state is S_TUNNEL:
                return self._close()  # a tunnel has no trailers: its end is the close
            return self._end_response(now, command.headers)
        elif isinstance(command, ResetStream):
            return self._close()
        # PushPromise: no push in HTTP/1.1.
        return []

    def _answer_websocket(self, command: SendResponse, now: float) -> list[Event]:
        """The application's verdict on a WebSocket handshake: a 2xx accepts, anything else
        is an ordinary response and the connection closes after it."""
        if not 200 <= command.status <= 299:
            self._state = _TRANSITIONS[self._state, E_DECLINE]
            # The bytes after the handshake may be frames sent in hope: never parse them as
            # HTTP. Closing after the answer keeps that simple (RFC 6455 4.1 lets the client
            # handle a non-101 "per HTTP procedures"; it reconnects if it wants more).
            self._held.clear()
            self._unconsumed = 0
            self._keep_alive = False
            self._write_head(command.status, command.headers)
            if command.end_stream:
                return self._end_response(now, None)
            return []
        self._state = _TRANSITIONS[self._state, E_ACCEPT]
        self._write_switch(command.headers)
        self._mode = M_TUNNEL
        self._parser = SpentParser()  # what follows is the tunnel's, never HTTP
        events: list[Event] = []
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            events.append(DataReceived(stream_id=self._stream_id, data=data))
        if self._eof:
            events.append(StreamEnded(stream_id=self._stream_id))
        if command.end_stream:
            events.extend(self._close())
        return events

    def _write_switch(self, headers: Headers) -> None:
        # RFC 6455 4.2.2: "The server MUST ... respond with ... HTTP/1.1 101 Switching
        # Protocols", Upgrade: websocket, Connection: Upgrade, and Sec-WebSocket-Accept: the
        # base64 of the SHA-1 of the key concatenated with the GUID.
        digest = hashlib.sha1(self._websocket_key + _WEBSOCKET_GUID).digest()
        lines = [
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-accept: " + base64.b64encode(digest) + b"\r\n"
        ]
        validate_response_headers(headers)
        for name, value in headers:
            if name not in _NOT_IN_101:
                lines.append(name + b": " + value + b"\r\n")
        lines.append(b"\r\n")
        self._out.append(b"".join(lines))

    def _write_head(self, status: int, headers: Headers) -> None:
        if not 200 <= status <= 999:
            raise LocalProtocolError(f"final response status must be 200-999, got {status}")
        keep_alive = self._keep_alive
        length: bytes | None = None
        encoding: bytes | None = None
        if not fields_valid(headers):
            validate_response_headers(headers)  # raises, naming the header
        for name, value in headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                encoding = value
        if self._head_method or status in (204, 304):
            mode = M_NO_BODY  # RFC 9110 6.4.1: these never carry content
        elif encoding is not None:
            if encoding.strip().lower() != b"chunked":
                raise LocalProtocolError("only Transfer-Encoding: chunked can be sent")
            if self._http10:
                # No chunked framing in HTTP/1.0: the end of the body is the end of the
                # connection.
                headers = [h for h in headers if h[0] != b"transfer-encoding"]
                mode, keep_alive = M_UNTIL_CLOSE, False
            else:
                mode = M_CHUNKED
        elif length is not None:
            if not length.isdigit():
                raise LocalProtocolError(f"invalid Content-Length {length!r}")
            mode = M_LENGTH
            self._remaining = int(length)
        elif self._http10:
            mode, keep_alive = M_UNTIL_CLOSE, False
        else:
            mode = M_CHUNKED
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        if self._answer_headers:
            headers = [*headers, *self._answer_headers]
            self._answer_headers = []
        if not keep_alive:
            self._keep_alive = False
            headers = [*headers, (b"connection", b"close")]
        if self._continue is C_WAITING:
            # A client still waiting for its 100 will not send the body we would drain.
            self._continue = C_REFUSED
        self._mode = mode
        self._out.append(_head(status, headers))

    def _write_informational(self, status: int, headers: Headers) -> None:
        if status == 101:
            # A switch is this core's to make (h2c, an accepted WebSocket), never the app's.
            raise LocalProtocolError("101 cannot be sent as an informational response")
        # RFC 9110 15.2: no 1xx to an HTTP/1.0 client, and none after the final response.
        if self._http10 or self._mode is not M_IDLE or not 100 <= status <= 199:
            return
        if status == 100:
            # Pointless once the client has started sending the body, and sent at most once.
            if self._continue is not C_WAITING:
                return
            self._continue = C_NO
        validate_response_headers(headers)
        self._out.append(_head(status, headers))

    def _write_body(self, data: bytes) -> None:
        mode = self._mode
        if mode is M_IDLE:
            raise LocalProtocolError("body data sent before the response head")
        if not data or mode is M_NO_BODY:
            return
        if mode is M_LENGTH:
            if len(data) > self._remaining:
                raise LocalProtocolError("more body than the declared Content-Length")
            self._remaining -= len(data)
            self._out.append(data)
        elif mode is M_CHUNKED:
            self._out.append(b"%x\r\n" % len(data))
            self._out.append(data)
            self._out.append(b"\r\n")
        else:
            self._out.append(data)

    def _end_response(self, now: float, trailers: Headers | None) -> list[Event]:
        mode = self._mode
        if mode is M_IDLE:
            raise LocalProtocolError("response ended before its head was sent")
        if mode is M_CHUNKED:
            if trailers:
                validate_response_headers(trailers)
                lines = [n + b": " + v + b"\r\n" for n, v in trailers]
                self._out.append(b"".join([b"0\r\n", *lines, b"\r\n"]))
            else:
                self._out.append(b"0\r\n\r\n")
        elif mode is M_LENGTH and self._remaining:
            # Shorter than declared: the client cannot find the next response, so end here.
            self._keep_alive = False
        elif mode is M_UNTIL_CLOSE:
            self._keep_alive = False
        self._mode = M_IDLE
        state = self._state
        if state is S_REJECTING:
            self._state = _TRANSITIONS[
                self._state, E_RESPONSE_END
            ]  # closed: the layer above answered, and knows
            return []
        if not self._keep_alive:
            return self._close(reset=False)
        if state is S_RESPONDING:
            self._state = _TRANSITIONS[state, E_RESPONSE_END]
            # A new cycle (as _new_cycle(), inlined): the connection waits for, or has, the
            # next request.
            self._since = now
            self._unconsumed = 0
            parser = self._parser
            ops = parser.ops
            if not ops:
                self._head_started = now if parser.partial else None
                return self._close() if self._eof else []
            self._head_started = now
            if self._eof and not any(type(op) is EndOp for op in ops):
                return self._close()  # half-closed, and no complete request is waiting
            return self._next_events(now)
        # RECEIVING: the app answered without reading the whole body.
        if self._continue is C_REFUSED or self._eof:
            # The client never got its 100 and will not send the body: nothing to drain.
            return self._close(reset=False)
        # Read and drop the rest, so that the next request can be found.
        self._state = _TRANSITIONS[self._state, E_RESPONSE_END]
        self._since = now
        self._discarded = 0
        self._unconsumed = 0
        return self._next_events(now)

    def _new_cycle(self, now: float) -> None:
        """The exchange is over both ways: the connection waits for (or has) the next request."""
        self._since = now
        self._unconsumed = 0  # the finished request's body no longer holds up reading
        parser = self._parser
        self._head_started = now if parser.ops or parser.partial else None

    def pending_send(self, stream_id: int) -> int:
        return 0  # HTTP/1.1 frames everything at once; the transport's buffer is the backlog

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        return data

    # ---- time and flow --------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        state = self._state
        if state is S_IDLE:
            if self._head_started is not None:
                return self._head_started + self._limits.header_timeout
            return self._since + self._limits.keep_alive_timeout
        if state is S_DRAINING:
            return self._since + self._limits.keep_alive_timeout
        return None  # a request is in flight (or a tunnel, or nothing): the app sets the pace

    def handle_deadline(self, now: float) -> list[Event]:
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        if self._state is S_IDLE and self._head_started is not None:
            return self._reject(
                RemoteProtocolError("request head not received in time", error_status_hint=408)
            )
        return self._close()

    @property
    def wants_read(self) -> bool:
        state = self._state
        if self._eof or state not in _READING:
            return False
        if self._unconsumed >= self._limits.body_buffer_size:
            return False
        parser = self._parser
        if state is S_RESPONDING:
            # Whatever comes now is the next request: wait for our response to complete.
            return not (parser.ops or parser.partial)
        return not parser.ops

    @property
    def closed(self) -> bool:
        return self._state is S_CLOSED


def _head(status: int, headers: Headers) -> bytes:
    """A response head: status line, `name: value` lines (checked by the caller), blank line."""
    status_line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
    if not headers:
        return status_line + b"\r\n"
    # `b": ".join` of each (name, value) pair: the lines are built in C, with no Python loop.
    return b"".join([status_line, b"\r\n".join(map(b": ".join, headers)), b"\r\n\r\n"])


def _tokens(value: bytes) -> set[bytes]:
    """A lower-cased comma-separated list (RFC 9110 5.6.1) as a set of its elements."""
    return {token.strip() for token in value.split(b",")}


def _header(headers: Headers, name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""


def _decoded_length(value: bytes) -> int:
    try:
        return len(base64.b64decode(value, validate=True))
    except binascii.Error:
        return -1
