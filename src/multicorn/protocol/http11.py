"""HTTP/1.1 server core over h11, behind the stream-event interface.

Theory of operation. h11 parses and frames; this module adds what h11 leaves to its user:
- strictness h11 does not enforce (request smuggling vectors, control characters, target forms,
  whole heads above the size limit arriving in one read),
- numbering requests as streams 1, 2, 3... so the layer above treats them like HTTP/2 streams,
- keep-alive and header deadlines, a cap on requests per connection, pipelining (h11 PAUSEs
  after each request; once our response completes, `send()` restarts the cycle and returns the
  pipelined request that was already buffered),
- read backpressure: `wants_read` turns False while the application has not consumed the body
  bytes already delivered, or while a pipelined request waits behind the current one.

The peer closing its sending side (EOF) mid-body resets the stream; EOF after a complete request
is a half-close: the response is still delivered, then the connection closes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from http import HTTPStatus

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
    PushPromise,
    RequestReceived,
    RequestRejected,
    ResetStream,
    SendData,
    SendInformational,
    SendResponse,
    SendTrailers,
    StreamEnded,
    StreamReset,
)
from multicorn.protocol.headers import TOKEN, has_invalid_value_chars, validate_response_headers
from multicorn.protocol.http2 import valid_upgrade_settings
from multicorn.protocol.http11_parsers import (
    DATA,
    END,
    ERROR,
    HEAD,
    UPGRADE,
    RequestHead,
    new_parser,
)

# Once the response is complete, at most this much of an unread request body is read and thrown
# away to keep the connection alive; past it, closing is cheaper than draining.
_MAX_DISCARD = 256 * 1024

_STATUS_LINES = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))
    for status in HTTPStatus
}


class _Mode(enum.Enum):
    """How the body of the response being written is framed."""

    IDLE = enum.auto()  # no response head written yet
    LENGTH = enum.auto()
    CHUNKED = enum.auto()
    UNTIL_CLOSE = enum.auto()  # HTTP/1.0 without Content-Length
    NO_BODY = enum.auto()  # HEAD, 204, 304


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTP11Limits:
    max_incomplete_size: int = 16 * 1024  # a request head, in bytes
    keep_alive_timeout: float = 5.0
    header_timeout: float = 10.0
    max_requests: int = 1000
    body_buffer_size: int = 64 * 1024  # unconsumed request body before reading pauses
    h2c_prior_knowledge: bool = False  # a connection opening with the HTTP/2 preface switches
    h2c_upgrade: bool = False  # `Upgrade: h2c` on the first request switches
    engine: str = "h11"  # request parser: "h11" or "httptools" (llhttp)


# Ours to answer only once the whole preface could be told apart from an HTTP/1.1 request line.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(slots=True)
class _PendingUpgrade:
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
        self._parser = new_parser(limits.engine, limits.max_incomplete_size)
        self._out: list[bytes] = []
        self._stream_id = 0  # id of the newest request
        self._in_request = False  # a request head was delivered and its response is not done
        self._body_done = True  # the current request's body has been fully received
        self._head_method = False
        self._http10 = False
        self._keep_alive = True
        self._unconsumed = 0
        self._discarded = 0
        self._discarding = False
        self._discard_since = 0.0
        self._client_waiting_100 = False
        self._sent_100 = False
        self._expects_100 = False
        self._parse_failed = False
        self._upgrade_offered = False
        self._client_keep_alive = True  # the current request allows another after it
        self._mode = _Mode.IDLE
        self._remaining = 0  # body bytes still owed under a Content-Length
        self._paused = False
        self._eof = False
        self._closed = False
        self._rejecting = False
        self._idle_since: float | None = now
        self._head_started: float | None = None
        self._sniffed: bytes | None = b"" if limits.h2c_prior_knowledge else None
        self._upgrade: _PendingUpgrade | None = None
        self._switched = False

    # ---- inbound --------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        if self._closed or self._eof or self._switched:
            return []
        if self._sniffed is not None and data:
            data = self._sniffed + data
            if len(data) < len(_H2_PREFACE) and _H2_PREFACE.startswith(data):
                self._sniffed = data
                return []
            self._sniffed = None
            if data.startswith(_H2_PREFACE):
                self._switched = True
                return [H2CPriorKnowledge(leftover=data)]
        if not data:
            return self._peer_closed(now)
        if not self._in_request and not self._parser.ops and self._head_started is None:
            self._head_started = now
        if not self._parse_failed:
            try:
                self._parser.feed(data)
            except RemoteProtocolError as exc:
                # Queued behind whatever parsed fine: earlier pipelined requests still get
                # their answers before this one is refused.
                self._parse_failed = True
                self._parser.ops.append((ERROR, exc))
        return self._next_events(now)

    def _peer_closed(self, now: float) -> list[Event]:
        """EOF: the client sends nothing more. A complete request still gets its answer
        (half-close); a request cut short is reset; an idle connection just closes."""
        self._eof = True
        if self._in_request and self._body_done and not self._discarding:
            return []
        events = self._close()
        if (self._in_request and not self._body_done) or self._parser.partial:
            events[-1] = ConnectionClosed(
                error=RemoteProtocolError("the client closed the connection mid-request")
            )
        return events

    def _next_events(self, now: float) -> list[Event]:
        """Turn parsed operations into events, holding back any request that arrives while
        the previous one is still being answered (pipelining)."""
        events: list[Event] = []
        ops = self._parser.ops
        while ops and not self._closed and not self._switched:
            kind, value = ops[0]
            if kind == ERROR:
                if (self._in_request and self._body_done) or self._discarding:
                    break  # a later request is broken: answer the current one first
                ops.popleft()
                events.extend(self._fail(str(value), value.error_status_hint))
                break
            if kind == HEAD:
                if self._in_request or self._discarding:
                    break  # its turn comes when the current response completes
                ops.popleft()
                error = self._check_head(value)
                if error is not None:
                    events.extend(self._fail(*error))
                    break
                received = self._start_request(value)
                settings = self._h2c_settings(value) if self._upgrade_offered else None
                if settings is None:
                    events.append(received)
                else:
                    self._upgrade = _PendingUpgrade(received, settings, [])
                continue
            ops.popleft()
            if kind == DATA:
                if self._upgrade is not None:
                    self._hold_upgrade_body(value, events)
                elif self._discarding:
                    self._discarded += len(value)
                    if self._discarded > _MAX_DISCARD:
                        events.extend(self._close())
                else:
                    self._expects_100 = False  # the client stopped waiting and sent the body
                    self._unconsumed += len(value)
                    events.append(DataReceived(stream_id=self._stream_id, data=value))
            elif kind == END:
                self._body_done = True
                if self._upgrade is None:
                    if self._discarding:
                        self._discarding = False
                        self._new_cycle(now)
                    else:
                        events.append(StreamEnded(stream_id=self._stream_id))
            elif kind == UPGRADE:
                if self._upgrade is not None:
                    events.append(self._switch_to_h2c(self._upgrade, value))
                    break
                # An Upgrade we do not take (websocket, say): carry on with HTTP/1.1.
                try:
                    self._parser.resume(value)
                except RemoteProtocolError as exc:
                    self._parse_failed = True
                    ops.append((ERROR, exc))
        self._paused = not self._closed and (
            bool(ops) or (self._in_request and self._body_done and self._parser.partial)
        )
        return events

    def _check_head(self, head: RequestHead) -> tuple[str, int] | None:
        """Strictness both engines share. Returns (message, status) for a request to refuse."""
        version = head.version
        if version == b"0.9":
            return "malformed request line (no HTTP version)", 400
        if version not in (b"1.1", b"1.0"):
            return f"HTTP version {version.decode()} is not supported", 505
        size = len(head.method) + len(head.target) + 12  # the request line
        has_length = has_chunked = False
        hosts = 0
        keep_alive = version == b"1.1"  # HTTP/1.0 keep-alive is not offered
        expects_100 = upgrade = False
        for name, value in head.headers:
            size += len(name) + len(value) + 4
            if has_invalid_value_chars(value):
                return f"control character in header {name.decode()!r}", 400
            if name == b"host":
                hosts += 1
            elif name == b"expect":
                expects_100 = value.lower() == b"100-continue"
            elif name == b"upgrade":
                upgrade = True
            elif name == b"content-length":
                has_length = True
            elif name == b"transfer-encoding":
                if has_chunked or value.strip().lower() != b"chunked":
                    # RFC 9112 6.1: only chunked is implemented here.
                    return "only Transfer-Encoding: chunked is supported", 501
                has_chunked = True
            elif name == b"connection" and b"close" in value.lower():
                keep_alive = keep_alive and b"close" not in {
                    token.strip() for token in value.lower().split(b",")
                }
        self._client_keep_alive = keep_alive
        # RFC 9110 10.1.1: only an HTTP/1.1 client waits for a 100 before sending its body.
        self._expects_100 = expects_100 and version == b"1.1"
        self._upgrade_offered = upgrade
        if size > self._limits.max_incomplete_size:
            return "request header section too large", 431
        # RFC 9112 3.2: exactly one Host in HTTP/1.1, at most one in 1.0.
        if hosts > 1 or (hosts == 0 and version == b"1.1"):
            return "a request needs exactly one Host header", 400
        # RFC 9112 6.1: a request with both is a smuggling vector; refuse it outright.
        if has_length and has_chunked:
            return "both Content-Length and Transfer-Encoding present", 400
        # RFC 9112 6.1: chunked framing does not exist in HTTP/1.0.
        if has_chunked and version == b"1.0":
            return "Transfer-Encoding in an HTTP/1.0 request", 400
        target = head.target
        method = head.method
        if method == b"CONNECT":
            return "CONNECT is not supported: this is not a proxy", 501
        # RFC 9112 3.2: origin-form, absolute-form, or "*" for OPTIONS only.
        if not target.startswith(b"/"):
            if target == b"*":
                if method != b"OPTIONS":
                    return "asterisk-form target is only valid for OPTIONS", 400
            elif not (target.startswith((b"http://", b"https://"))):
                return "request target is not in origin-form or absolute-form", 400
        return None

    def _start_request(self, head: RequestHead) -> RequestReceived:
        self._stream_id += 1
        self._in_request = True
        self._body_done = False
        self._idle_since = None
        self._head_started = None
        self._unconsumed = 0
        self._head_method = head.method == b"HEAD"
        self._http10 = head.version == b"1.0"
        if self._stream_id >= self._limits.max_requests:
            self._keep_alive = False
        headers = head.headers
        self._sent_100 = False
        return RequestReceived(
            stream_id=self._stream_id,
            method=head.method,
            target=head.target,
            http_version="1.1" if not self._http10 else "1.0",
            headers=headers,
            expects_continue=self._expects_100,
        )

    def _h2c_settings(self, head: RequestHead) -> bytes | None:
        """The HTTP2-Settings value of a valid `Upgrade: h2c` first request, else None."""
        if not self._limits.h2c_upgrade or self._stream_id != 1 or head.version != b"1.1":
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
        tokens = {token.strip() for token in connection.split(b",")}
        offered = {token.strip() for token in upgrade.split(b",")}
        if b"h2c" not in offered or not {b"upgrade", b"http2-settings"} <= tokens:
            return None
        if not valid_upgrade_settings(settings):
            return None  # not a usable offer: serve the request over HTTP/1.1
        return settings

    def _hold_upgrade_body(self, data: bytes, events: list[Event]) -> None:
        upgrade = self._upgrade
        assert upgrade is not None
        upgrade.body.append(data)
        upgrade.size += len(data)
        if upgrade.size > self._limits.body_buffer_size:
            # Too big to hold back: serve it over HTTP/1.1 and ignore the upgrade offer.
            self._upgrade = None
            events.append(upgrade.request)
            self._unconsumed += upgrade.size
            events.append(DataReceived(stream_id=self._stream_id, data=b"".join(upgrade.body)))

    def _switch_to_h2c(self, upgrade: _PendingUpgrade, leftover: bytes) -> H2CUpgrade:
        self._out.append(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
        )
        self._switched = True
        return H2CUpgrade(
            request=upgrade.request,
            body=b"".join(upgrade.body),
            settings=upgrade.settings,
            leftover=leftover,
        )

    def _fail(self, message: str, status: int) -> list[Event]:
        error = RemoteProtocolError(message, error_status_hint=status)
        events: list[Event] = []
        if self._in_request and not self._body_done:
            events.append(StreamReset(stream_id=self._stream_id))
        self._closed = True
        if self._eof:
            # The peer is gone; there is nobody to answer.
            events.append(ConnectionClosed(error=error))
        elif not self._in_request:
            self._stream_id += 1
            self._rejecting = True
            events.append(RequestRejected(error=error, stream_id=self._stream_id))
        else:
            events.append(ConnectionClosed(error=error))
        return events

    def _close(self) -> list[Event]:
        events: list[Event] = []
        if self._in_request and not self._body_done:
            events.append(StreamReset(stream_id=self._stream_id))
        self._closed = True
        events.append(ConnectionClosed())
        return events

    # ---- outbound -------------------------------------------------------------------------
    #
    # Responses are framed here rather than by h11: h11's writer validates and re-normalises
    # every header on every response, which cost more than the parsing. h11 keeps parsing
    # requests; since it never sees our responses, each request/response cycle gets a fresh h11
    # connection seeded with whatever the client has already pipelined.

    def send(self, command: Command, now: float) -> list[Event]:
        if isinstance(command, AcknowledgeData):
            if command.stream_id == self._stream_id:
                self._unconsumed = max(0, self._unconsumed - command.amount)
            return []
        if isinstance(command, CloseConnection):
            self._keep_alive = False
            if not self._in_request and not self._closed and not self._rejecting:
                return self._close()
            return []
        if isinstance(command, PushPromise):
            return []  # no push in HTTP/1.1
        rejecting = self._rejecting and command.stream_id == self._stream_id
        if not rejecting and (
            self._closed or command.stream_id != self._stream_id or not self._in_request
        ):
            return []  # the stream is already gone; the ASGI layer has been told
        if isinstance(command, SendData):
            self._write_body(command.data)
            if command.end_stream:
                return self._end_response(now, None)
        elif isinstance(command, SendResponse):
            if self._mode is not _Mode.IDLE:
                raise LocalProtocolError("a response was already started on this stream")
            self._write_head(command.status, command.headers)
            if command.end_stream:
                return self._end_response(now, None)
        elif isinstance(command, SendInformational):
            self._write_informational(command.status, command.headers)
        elif isinstance(command, SendTrailers):
            return self._end_response(now, command.headers)
        elif isinstance(command, ResetStream):
            return self._close()
        return []

    def _write_head(self, status: int, headers: Headers) -> None:
        if not 200 <= status <= 999:
            raise LocalProtocolError(f"final response status must be 200-999, got {status}")
        keep_alive = self._keep_alive and self._client_keep_alive and not self._rejecting
        length: bytes | None = None
        encoding: bytes | None = None
        for name, value in headers:
            # The check validate_response_headers() makes, inlined: this runs per response.
            if TOKEN.fullmatch(name) is None or has_invalid_value_chars(value):
                validate_response_headers([(name, value)])  # raises with the details
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                encoding = value
        if self._head_method or status in (204, 304):
            mode = _Mode.NO_BODY  # RFC 9110 6.4.1: these never carry content
        elif encoding is not None:
            if encoding.strip().lower() != b"chunked":
                raise LocalProtocolError("only Transfer-Encoding: chunked can be sent")
            if self._http10:
                # No chunked framing in HTTP/1.0: the end of the body is the end of the
                # connection.
                headers = [h for h in headers if h[0] != b"transfer-encoding"]
                mode, keep_alive = _Mode.UNTIL_CLOSE, False
            else:
                mode = _Mode.CHUNKED
        elif length is not None:
            if not length.isdigit():
                raise LocalProtocolError(f"invalid Content-Length {length!r}")
            mode = _Mode.LENGTH
            self._remaining = int(length)
        elif self._http10:
            mode, keep_alive = _Mode.UNTIL_CLOSE, False
        else:
            mode = _Mode.CHUNKED
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        if not keep_alive:
            self._keep_alive = False
            headers = [*headers, (b"connection", b"close")]
        # A client still waiting for its 100 will not send the body we would otherwise drain.
        self._client_waiting_100 = self._waiting_100()
        self._mode = mode
        status_line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
        self._out.append(
            b"".join([status_line, *[n + b": " + v + b"\r\n" for n, v in headers], b"\r\n"])
        )

    def _write_informational(self, status: int, headers: Headers) -> None:
        # RFC 9110 15.2: no 1xx to an HTTP/1.0 client, and none after the final response.
        if self._http10 or self._mode is not _Mode.IDLE or not 100 <= status <= 199:
            return
        if status == 100:
            # Pointless once the client has started sending the body, and sent at most once.
            if not self._waiting_100():
                return
            self._sent_100 = True
        validate_response_headers(headers)
        status_line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
        self._out.append(
            b"".join([status_line, *[n + b": " + v + b"\r\n" for n, v in headers], b"\r\n"])
        )

    def _waiting_100(self) -> bool:
        return self._expects_100 and not self._sent_100

    def _write_body(self, data: bytes) -> None:
        mode = self._mode
        if mode is _Mode.IDLE:
            raise LocalProtocolError("body data sent before the response head")
        if not data or mode is _Mode.NO_BODY:
            return
        if mode is _Mode.LENGTH:
            if len(data) > self._remaining:
                raise LocalProtocolError("more body than the declared Content-Length")
            self._remaining -= len(data)
            self._out.append(data)
        elif mode is _Mode.CHUNKED:
            self._out.append(b"%x\r\n" % len(data))
            self._out.append(data)
            self._out.append(b"\r\n")
        else:
            self._out.append(data)

    def _end_response(self, now: float, trailers: Headers | None) -> list[Event]:
        mode = self._mode
        if mode is _Mode.IDLE:
            raise LocalProtocolError("response ended before its head was sent")
        if mode is _Mode.CHUNKED:
            if trailers:
                validate_response_headers(trailers)
                lines = [n + b": " + v + b"\r\n" for n, v in trailers]
                self._out.append(b"".join([b"0\r\n", *lines, b"\r\n"]))
            else:
                self._out.append(b"0\r\n\r\n")
        elif mode is _Mode.LENGTH and self._remaining:
            # Shorter than declared: the client cannot find the next response, so end here.
            self._keep_alive = False
        elif mode is _Mode.UNTIL_CLOSE:
            self._keep_alive = False
        self._mode = _Mode.IDLE
        self._in_request = False
        if self._rejecting:
            self._rejecting = False
            return []
        if not self._keep_alive:
            return self._close()
        if self._body_done:
            self._new_cycle(now)
            if self._eof and not any(kind == END for kind, _ in self._parser.ops):
                return self._close()  # half-closed, and no complete request is waiting
            return self._next_events(now)
        if self._client_waiting_100 or self._eof:
            # The client never got its 100 and will not send the body: nothing to drain.
            return self._close()
        # The app answered without reading the whole body: read and drop the rest.
        self._discarding = True
        self._discard_since = now
        self._discarded = 0
        self._unconsumed = 0
        return self._next_events(now)

    def _new_cycle(self, now: float) -> None:
        """The exchange is over both ways: the connection waits for (or has) the next request."""
        self._paused = False
        self._idle_since = now
        waiting = bool(self._parser.ops) or self._parser.partial
        self._head_started = now if waiting else None

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
        if self._discarding and not self._closed:
            return self._discard_since + self._limits.keep_alive_timeout
        if self._closed or self._idle_since is None:
            return None
        if self._head_started is not None:
            return self._head_started + self._limits.header_timeout
        return self._idle_since + self._limits.keep_alive_timeout

    def handle_deadline(self, now: float) -> list[Event]:
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        if self._head_started is not None and not self._discarding:
            return self._fail("request head not received in time", 408)
        return self._close()

    @property
    def wants_read(self) -> bool:
        return (
            not self._closed
            and not self._eof
            and not self._paused
            and self._unconsumed < self._limits.body_buffer_size
        )

    @property
    def closed(self) -> bool:
        return self._closed and not self._rejecting
