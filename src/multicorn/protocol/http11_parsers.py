"""Request parsing engines for the HTTP/1.1 core: h11 (pure Python) and httptools (llhttp).

Both turn bytes into the same small operations, appended to `ops`:
(HEAD, RequestHead), (DATA, bytes), (END, None) and (UPGRADE, leftover) — the last when the
parser stopped after a request that asked to switch protocols, `leftover` being every byte after
it; `resume(leftover)` carries on parsing HTTP/1.1 if the switch is declined. Each engine parses
everything it is given, pipelined requests included; holding those back until their turn is the
protocol's job (http11.py), as are all strictness rules that both engines share.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

import h11

from multicorn.protocol.errors import RemoteProtocolError

HEAD: Final = 0
DATA: Final = 1
END: Final = 2
UPGRADE: Final = 3
ERROR: Final = 4  # appended by the protocol when feed() raised: (ERROR, RemoteProtocolError)

Op = tuple[int, Any]


class RequestHead:
    """A parsed request line and header section; header names lower-cased."""

    __slots__ = ("headers", "method", "target", "version")

    def __init__(
        self, method: bytes, target: bytes, version: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers


class H11Parser:
    """h11 as a parser only: our responses never pass through it, so every request cycle runs
    on a fresh h11 connection seeded with whatever the client had already pipelined."""

    __slots__ = ("_conn", "_max_size", "ops")

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_size)
        self.ops: deque[Op] = deque()

    @property
    def partial(self) -> bool:
        """Bytes of a request that is not complete yet are buffered."""
        return bool(self._conn.trailing_data[0]) or self._conn.their_state is h11.SEND_BODY

    def feed(self, data: bytes) -> None:
        self._conn.receive_data(data)
        self._drain()

    def resume(self, leftover: bytes) -> None:
        self._fresh(leftover)
        self._drain()

    def _fresh(self, leftover: bytes) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_size)
        if leftover:
            self._conn.receive_data(leftover)

    def _drain(self) -> None:
        conn = self._conn
        ops = self.ops
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise RemoteProtocolError(
                    str(exc), error_status_hint=exc.error_status_hint
                ) from None
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Data):
                ops.append((DATA, bytes(event.data)))
            elif isinstance(event, h11.Request):
                headers = [(bytes(name), bytes(value)) for name, value in event.headers]
                head = RequestHead(
                    bytes(event.method), bytes(event.target), bytes(event.http_version), headers
                )
                ops.append((HEAD, head))
            elif isinstance(event, h11.EndOfMessage):
                ops.append((END, None))
                leftover = bytes(conn.trailing_data[0])
                if conn.their_state is h11.MIGHT_SWITCH_PROTOCOL:  # type: ignore[attr-defined]
                    ops.append((UPGRADE, leftover))
                    return
                self._fresh(leftover)
                conn = self._conn
            else:  # PAUSED cannot happen (fresh cycles), ConnectionClosed needs no action
                return


class HttptoolsParser:
    """llhttp through httptools. One parser per connection; llhttp keeps going across
    pipelined requests by itself. It stops at an upgrade request before reading its body, so
    that body (Content-Length only) is counted out here."""

    __slots__ = (
        "_body_left",
        "_head_open",
        "_head_size",
        "_headers",
        "_max_size",
        "_parser",
        "_size_exact",
        "_upgrading",
        "_url",
        "ops",
    )

    def __init__(self, max_size: int) -> None:
        import httptools

        self._max_size = max_size
        self._parser = httptools.HttpRequestParser(self)
        self.ops: deque[Op] = deque()
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_open = False
        self._head_size = 0  # bytes of the head in progress seen so far (over-estimated)
        self._size_exact = 0  # bytes of the head in progress accounted by callbacks
        self._upgrading = False
        self._body_left = -1  # body bytes of an upgrade request still to count out, or -1

    @property
    def partial(self) -> bool:
        return self._head_open or self._body_left > 0

    def feed(self, data: bytes) -> None:
        import httptools

        if self._body_left >= 0:
            self._count_body(data)
            return
        began_open = self._head_open
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._start_upgrade_body(data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _TooLarge):
                raise RemoteProtocolError(
                    "request header section too large", error_status_hint=431
                ) from None
            message = str(exc) or "malformed request"
            # RFC 9112 6.1: an unknown transfer coding is "not implemented", not "bad".
            status = 501 if "Transfer-Encoding" in message and "Content" not in message else 400
            raise RemoteProtocolError(message, error_status_hint=status) from None
        if self._head_open:
            # llhttp holds an unfinished header line itself: bound it by what we have fed.
            self._head_size += len(data) if began_open else self._size_exact
            if self._head_size > self._max_size:
                raise RemoteProtocolError("request header section too large", error_status_hint=431)

    def resume(self, leftover: bytes) -> None:
        import httptools

        self._parser = httptools.HttpRequestParser(self)
        self._upgrading = False
        if leftover:
            self.feed(leftover)

    def _start_upgrade_body(self, leftover: bytes) -> None:
        length = 0
        for name, value in self._headers:
            if name == b"transfer-encoding":
                raise RemoteProtocolError("chunked body on an Upgrade request is not supported")
            if name == b"content-length":
                length = int(value)
        self._body_left = length
        self._count_body(leftover)

    def _count_body(self, data: bytes) -> None:
        take = min(self._body_left, len(data))
        if take:
            self.ops.append((DATA, data[:take]))
            self._body_left -= take
        if self._body_left == 0:
            self._body_left = -1
            self.ops.append((END, None))
            self.ops.append((UPGRADE, data[take:]))

    # ---- llhttp callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = []
        self._headers = []
        self._head_open = True
        self._head_size = 0
        self._size_exact = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._size_exact += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._size_exact += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._head_open = False
        method = parser.get_method()
        if self._size_exact + len(method) + 12 > self._max_size:
            raise _TooLarge()
        target = b"".join(self._url) if len(self._url) != 1 else self._url[0]
        version = parser.get_http_version().encode("ascii")
        self._upgrading = parser.should_upgrade()
        self.ops.append((HEAD, RequestHead(method, target, version, self._headers)))

    def on_body(self, body: bytes) -> None:
        self.ops.append((DATA, body))

    def on_message_complete(self) -> None:
        if not self._upgrading:  # an upgrade request's body is counted out after llhttp stops
            self.ops.append((END, None))


class _TooLarge(Exception):
    """Raised inside an llhttp callback; httptools wraps it in HttpParserCallbackError."""


def new_parser(engine: str, max_size: int) -> H11Parser | HttptoolsParser:
    if engine == "httptools":
        return HttptoolsParser(max_size)
    return H11Parser(max_size)


def httptools_available() -> bool:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True
