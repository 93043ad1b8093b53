"""WebSocket over HTTP/1.1 (RFC 6455): the connection is handed over only when the app accepts.

The client side is a real h11 client: it writes the opening handshake and parses the 101 (or
the ordinary response of a refusal) independently of the server under test. Every test runs on
both request-parsing engines (conftest.py).
"""

from __future__ import annotations

import base64
import hashlib

import h11
import pytest

from multicorn.protocol.errors import LocalProtocolError, RemoteProtocolError
from multicorn.protocol.events import (
    AcknowledgeData,
    CloseConnection,
    ConnectionClosed,
    DataReceived,
    Event,
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
from multicorn.protocol.http11 import HTTP11Protocol

from .helpers import answer_rejection, make_server, parse_one, request_bytes, respond

# RFC 6455 1.3's worked example.
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def handshake_headers(**overrides: bytes | None) -> Headers:
    fields: dict[str, bytes | None] = {
        "upgrade": b"websocket",
        "connection": b"Upgrade",
        "sec-websocket-key": KEY,
        "sec-websocket-version": b"13",
    }
    fields.update({name.replace("_", "-"): value for name, value in overrides.items()})
    return [(name.encode(), value) for name, value in fields.items() if value is not None]


def handshake(method: bytes = b"GET", target: bytes = b"/chat", **overrides: bytes | None) -> bytes:
    return request_bytes(method, target, handshake_headers(**overrides))


def ws_server(**limits: object) -> HTTP11Protocol:
    return make_server(websocket=True, **limits)


def pending(server: HTTP11Protocol, wire: bytes | None = None) -> RequestReceived:
    events = server.receive_data(wire if wire is not None else handshake(), 0.0)
    assert len(events) == 1, events
    request = events[0]
    assert isinstance(request, RequestReceived)
    assert request.kind is StreamKind.WEBSOCKET
    return request


class Client:
    """An h11 client that proposed the upgrade; after a 101 it speaks raw bytes."""

    def __init__(self, target: bytes = b"/chat", headers: Headers | None = None) -> None:
        self.conn = h11.Connection(h11.CLIENT)
        all_headers: Headers = [(b"host", b"example.com"), *(headers or handshake_headers())]
        self.wire = self.conn.send(h11.Request(method="GET", target=target, headers=all_headers))
        self.wire = (self.wire or b"") + (self.conn.send(h11.EndOfMessage()) or b"")

    def switch(self, data: bytes) -> tuple[h11.InformationalResponse, bytes]:
        """Parse the server's 101; returns it and the raw bytes that followed it."""
        self.conn.receive_data(data)
        event = self.conn.next_event()
        assert isinstance(event, h11.InformationalResponse), event
        assert event.status_code == 101
        assert self.conn.our_state is h11.SWITCHED_PROTOCOL
        return event, bytes(self.conn.trailing_data[0])


def accept(
    server: HTTP11Protocol, stream_id: int = 1, headers: Headers | None = None
) -> list[Event]:
    return server.send(SendResponse(stream_id=stream_id, status=200, headers=headers or []), 0.0)


# ---- accepting ----------------------------------------------------------------------------


def test_accept_writes_101_with_the_accept_key_and_tunnels_bytes_both_ways() -> None:
    server = ws_server()
    client = Client()
    request = pending(server, client.wire)
    assert (request.stream_id, request.method, request.target) == (1, b"GET", b"/chat")
    assert request.http_version == "1.1"
    assert (b"sec-websocket-key", KEY) in request.headers
    # Nothing is written, and no deadline runs, while the application decides.
    assert server.data_to_send() == b""
    assert server.next_deadline() is None
    events = accept(
        server,
        headers=[
            (b"sec-websocket-protocol", b"chat"),
            (b"content-length", b"0"),  # framing headers never reach a 101
            (b"transfer-encoding", b"chunked"),
            (b"x-extra", b"yes"),
        ],
    )
    assert events == []
    switched, after = client.switch(server.data_to_send())
    headers = dict(switched.headers)
    assert headers[b"upgrade"].lower() == b"websocket"
    assert headers[b"connection"].lower() == b"upgrade"
    assert headers[b"sec-websocket-accept"] == ACCEPT
    assert headers[b"sec-websocket-protocol"] == b"chat"
    assert headers[b"x-extra"] == b"yes"
    assert b"content-length" not in headers
    assert b"transfer-encoding" not in headers
    assert after == b""
    # Raw bytes both ways: whatever it is, nothing is parsed as HTTP any more.
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # RFC 6455 5.7: masked "Hello"
    assert server.receive_data(frame, 1.0) == [DataReceived(stream_id=1, data=frame)]
    assert server.receive_data(b"GET / HTTP/1.1\r\n\r\n", 1.0) == [
        DataReceived(stream_id=1, data=b"GET / HTTP/1.1\r\n\r\n")
    ]
    assert server.send(SendData(stream_id=1, data=b"\x81\x02hi"), 1.0) == []
    assert server.data_to_send() == b"\x81\x02hi"
    assert server.next_deadline() is None
    assert not server.closed


def test_accept_key_is_computed_per_rfc6455() -> None:
    key = base64.b64encode(bytes(range(16)))
    server = ws_server()
    client = Client(headers=handshake_headers(sec_websocket_key=key))
    pending(server, client.wire)
    accept(server)
    switched, _ = client.switch(server.data_to_send())
    expected = base64.b64encode(
        hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    )
    assert dict(switched.headers)[b"sec-websocket-accept"] == expected


@pytest.mark.parametrize("status", [200, 204, 299])
def test_any_2xx_accepts(status: int) -> None:
    server = ws_server()
    pending(server)
    assert server.send(SendResponse(stream_id=1, status=status, headers=[]), 0.0) == []
    assert server.data_to_send().startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


def test_bytes_pipelined_behind_the_handshake_are_held_then_tunnelled() -> None:
    server = ws_server()
    client = Client()
    early = b"\x81\x85early"
    pending(server, client.wire + early)
    assert server.receive_data(b"more", 0.0) == []  # held, not parsed, while pending
    events = accept(server)
    assert events == [DataReceived(stream_id=1, data=early + b"more")]
    client.switch(server.data_to_send())


def test_backpressure_while_pending_and_in_the_tunnel() -> None:
    server = ws_server(body_buffer_size=100)
    pending(server, handshake() + b"a" * 60)
    assert server.wants_read
    assert server.receive_data(b"b" * 50, 0.0) == []
    assert not server.wants_read  # 110 bytes held for an app that has not answered
    events = accept(server)
    assert events == [DataReceived(stream_id=1, data=b"a" * 60 + b"b" * 50)]
    assert not server.wants_read  # delivered, not yet consumed
    server.send(AcknowledgeData(stream_id=1, amount=60), 0.0)
    assert server.wants_read
    assert server.receive_data(b"c" * 60, 0.0) == [DataReceived(stream_id=1, data=b"c" * 60)]
    assert not server.wants_read
    server.send(AcknowledgeData(stream_id=1, amount=110), 0.0)
    assert server.wants_read
    server.send(AcknowledgeData(stream_id=2, amount=1000), 0.0)  # not this stream: ignored
    assert server.wants_read


def test_eof_in_the_tunnel_ends_the_stream_and_the_app_closes() -> None:
    server = ws_server()
    pending(server)
    accept(server)
    server.data_to_send()
    assert server.receive_data(b"", 1.0) == [StreamEnded(stream_id=1)]
    assert not server.wants_read
    assert not server.closed  # the app may still send (a close frame, say)
    assert server.send(SendData(stream_id=1, data=b"bye"), 1.0) == []
    assert server.send(SendData(stream_id=1, data=b"!", end_stream=True), 1.0) == [
        ConnectionClosed(error=None)
    ]
    assert server.data_to_send() == b"bye!"
    assert server.closed


def test_eof_while_pending_is_reported_after_the_accept() -> None:
    server = ws_server()
    pending(server, handshake() + b"last words")
    assert server.receive_data(b"", 0.0) == []
    assert not server.closed
    events = accept(server)
    assert events == [DataReceived(stream_id=1, data=b"last words"), StreamEnded(stream_id=1)]


def test_app_ending_its_side_closes_after_flushing() -> None:
    server = ws_server()
    pending(server)
    accept(server)
    events = server.send(SendData(stream_id=1, data=b"\x88\x00", end_stream=True), 0.0)
    assert events == [ConnectionClosed(error=None)]
    assert server.data_to_send().endswith(b"\r\n\r\n\x88\x00")
    assert server.closed
    assert server.receive_data(b"late", 0.0) == []


def test_accept_with_end_stream_closes_after_the_101() -> None:
    server = ws_server()
    pending(server)
    events = server.send(SendResponse(stream_id=1, status=200, headers=[], end_stream=True), 0)
    assert events == [ConnectionClosed(error=None)]
    assert server.data_to_send().startswith(b"HTTP/1.1 101 ")
    assert server.closed


@pytest.mark.parametrize(
    "command", [ResetStream(stream_id=1), SendTrailers(stream_id=1, headers=[])]
)
def test_reset_or_trailers_in_the_tunnel_close(command: ResetStream | SendTrailers) -> None:
    server = ws_server()
    pending(server)
    accept(server)
    server.send(SendData(stream_id=1, data=b"partial"), 0.0)
    assert server.send(command, 0.0) == [ConnectionClosed(error=None)]
    assert server.data_to_send().endswith(b"partial")
    assert server.closed


def test_tunnel_refuses_a_second_response_and_ignores_1xx_and_graceful_close() -> None:
    server = ws_server()
    pending(server)
    accept(server)
    server.data_to_send()
    with pytest.raises(LocalProtocolError):
        accept(server)
    assert server.send(SendInformational(stream_id=1, status=103), 0.0) == []
    assert server.send(CloseConnection(), 0.0) == []  # the WebSocket layer closes it
    assert server.data_to_send() == b""
    assert not server.closed
    assert server.receive_data(b"x", 0.0) == [DataReceived(stream_id=1, data=b"x")]


def test_app_cannot_send_101_itself() -> None:
    server = ws_server()
    pending(server)
    with pytest.raises(LocalProtocolError):
        server.send(SendInformational(stream_id=1, status=101), 0.0)


def test_websocket_on_a_later_request_of_a_keep_alive_connection() -> None:
    server = ws_server()
    events = server.receive_data(request_bytes(), 0.0)
    assert events[0].kind is StreamKind.REQUEST
    respond(server, 1)
    assert parse_one(server.data_to_send()).status == 200
    request = pending(server)
    assert request.stream_id == 2
    accept(server, stream_id=2)
    assert server.data_to_send().startswith(b"HTTP/1.1 101 ")


def test_handshake_pipelined_behind_a_plain_request_waits_its_turn() -> None:
    server = ws_server()
    events = server.receive_data(request_bytes() + handshake() + b"frames", 0.0)
    assert [type(event) for event in events] == [RequestReceived, StreamEnded]
    released = respond(server, 1)
    assert len(released) == 1
    assert isinstance(released[0], RequestReceived)
    assert released[0].kind is StreamKind.WEBSOCKET
    assert accept(server, stream_id=2) == [DataReceived(stream_id=2, data=b"frames")]


# ---- declining ----------------------------------------------------------------------------


def test_deny_is_an_ordinary_response_then_the_connection_closes() -> None:
    server = ws_server()
    client = Client()
    pending(server, client.wire + b"GET /sneaky HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (
        server.send(SendResponse(stream_id=1, status=403, headers=[(b"content-length", b"6")]), 0.0)
        == []
    )
    closing = server.send(SendData(stream_id=1, data=b"denied", end_stream=True), 0.0)
    assert closing == [ConnectionClosed(error=None)]
    assert server.closed
    data = server.data_to_send()
    assert b"101" not in data.split(b"\r\n")[0]
    client.conn.receive_data(data)
    client.conn.receive_data(b"")
    response = client.conn.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == 403
    assert (b"connection", b"close") in [(k, v.lower()) for k, v in response.headers]
    assert client.conn.next_event() == h11.Data(data=b"denied")
    assert isinstance(client.conn.next_event(), h11.EndOfMessage)
    # The bytes after the handshake were never parsed as a request.
    assert server.receive_data(b"more", 0.0) == []


def test_deny_with_a_streamed_chunked_body() -> None:
    server = ws_server()
    pending(server)
    server.send(SendResponse(stream_id=1, status=404, headers=[]), 0.0)
    server.send(SendData(stream_id=1, data=b"not "), 0.0)
    assert server.receive_data(b"ignored", 0.0) == []
    assert not server.wants_read
    closing = server.send(SendData(stream_id=1, data=b"here", end_stream=True), 0.0)
    assert closing == [ConnectionClosed(error=None)]
    response = parse_one(server.data_to_send(), eof=True)
    assert (response.status, response.body) == (404, b"not here")


def test_deny_after_eof_still_answers() -> None:
    server = ws_server()
    pending(server)
    assert server.receive_data(b"", 0.0) == []
    closing = respond(server, 1, b"no", status=401)
    assert closing == [ConnectionClosed(error=None)]
    assert parse_one(server.data_to_send(), eof=True).status == 401


# ---- refused handshakes -------------------------------------------------------------------


BAD_HANDSHAKES = {
    "POST": (handshake(method=b"POST"), 400),
    "no key": (handshake(sec_websocket_key=None), 400),
    "short key": (handshake(sec_websocket_key=base64.b64encode(b"x" * 15)), 400),
    "key not base64": (handshake(sec_websocket_key=b"!!!!!!!!!!!!!!!!!!!!!!=="), 400),
    "two keys": (
        request_bytes(b"GET", b"/", [*handshake_headers(), (b"sec-websocket-key", KEY)]),
        400,
    ),
    "no Connection: upgrade": (handshake(connection=b"keep-alive"), 400),
    "a body": (
        request_bytes(b"GET", b"/", handshake_headers(), body=b"body"),
        400,
    ),
    "version 8": (handshake(sec_websocket_version=b"8"), 426),
    "no version": (handshake(sec_websocket_version=None), 426),
}


@pytest.mark.parametrize(("wire", "status"), BAD_HANDSHAKES.values(), ids=BAD_HANDSHAKES.keys())
def test_bad_handshakes_are_refused(wire: bytes, status: int) -> None:
    server = ws_server()
    events = server.receive_data(wire, 0.0)
    assert len(events) == 1, events
    rejected = events[0]
    assert isinstance(rejected, RequestRejected)
    assert rejected.stream_id == 1
    assert isinstance(rejected.error, RemoteProtocolError)
    assert rejected.error.error_status_hint == status
    assert answer_rejection(server, rejected) == []
    response = parse_one(server.data_to_send())
    assert response.status == status
    if status == 426:
        # RFC 6455 4.4: the answer names the versions the server speaks.
        assert response.header(b"sec-websocket-version") == b"13"
    assert server.closed


def test_handshake_over_http10_is_refused() -> None:
    server = ws_server()
    wire = (
        b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    events = server.receive_data(wire, 0.0)
    assert isinstance(events[-1], RequestRejected)
    assert events[-1].error.error_status_hint == 400


def test_other_upgrade_tokens_are_plain_requests() -> None:
    server = ws_server()
    events = server.receive_data(handshake(upgrade=b"foo/2"), 0.0)
    assert [type(event) for event in events] == [RequestReceived, StreamEnded]
    assert events[0].kind is StreamKind.REQUEST


# ---- off by default -----------------------------------------------------------------------


def test_websocket_off_serves_the_handshake_as_plain_http() -> None:
    server = make_server()
    events = server.receive_data(handshake() + request_bytes(b"GET", b"/next"), 0.0)
    assert [type(event) for event in events] == [RequestReceived, StreamEnded]
    assert events[0].kind is StreamKind.REQUEST
    released = respond(server, 1, b"no websocket here", status=426)
    assert isinstance(released[0], RequestReceived)
    assert released[0].target == b"/next"
    response = parse_one(server.data_to_send())
    assert (response.status, response.body) == (426, b"no websocket here")


def test_no_stream_reset_for_a_stream_the_app_never_saw() -> None:
    """EOF while a pending handshake's app runs is a half-close, never a reset."""
    server = ws_server()
    pending(server)
    events = server.receive_data(b"", 0.0)
    assert not any(isinstance(event, StreamReset) for event in events)


def test_bytes_arriving_while_a_pipelined_handshake_waits_are_kept() -> None:
    """The parser has stopped at the handshake; what comes next must not be parsed as HTTP nor
    lost while the request before it is answered."""
    server = ws_server()
    events = server.receive_data(request_bytes() + handshake() + b"one,", 0.0)
    assert [type(event) for event in events] == [RequestReceived, StreamEnded]
    assert server.receive_data(b"two,", 0.0) == []
    assert server.receive_data(b"GET / HTTP/1.1\r\n\r\n", 0.0) == []
    released = respond(server, 1)
    assert [type(event) for event in released] == [RequestReceived]
    assert accept(server, stream_id=2) == [
        DataReceived(stream_id=2, data=b"one,two,GET / HTTP/1.1\r\n\r\n")
    ]


def test_bytes_arriving_behind_a_declined_upgrade_are_parsed_in_turn() -> None:
    server = make_server()
    other = request_bytes(b"GET", b"/u", [(b"connection", b"Upgrade"), (b"upgrade", b"foo")])
    events = server.receive_data(request_bytes() + other, 0.0)
    assert [type(event) for event in events] == [RequestReceived, StreamEnded]
    assert server.receive_data(request_bytes(b"GET", b"/third"), 0.0) == []
    released = respond(server, 1)
    assert [(type(e), e.stream_id) for e in released] == [(RequestReceived, 2), (StreamEnded, 2)]
    released = respond(server, 2)
    assert isinstance(released[0], RequestReceived)
    assert released[0].target == b"/third"


def test_handshake_and_early_bytes_split_at_every_offset() -> None:
    wire = handshake() + b"\x81\x05early"
    for offset in range(1, len(wire)):
        server = ws_server()
        events = server.receive_data(wire[:offset], 0.0)
        events += server.receive_data(wire[offset:], 0.0)
        assert len(events) == 1, offset
        assert isinstance(events[0], RequestReceived)
        assert events[0].kind is StreamKind.WEBSOCKET
        assert accept(server) == [DataReceived(stream_id=1, data=b"\x81\x05early")], offset
        assert server.data_to_send().startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


@pytest.mark.parametrize(
    ("connection", "upgrade"),
    [
        (b"keep-alive, Upgrade", b"websocket"),
        (b"UPGRADE", b"WebSocket"),
        (b"Upgrade", b"foo/1, websocket"),
    ],
)
def test_handshake_header_forms(connection: bytes, upgrade: bytes) -> None:
    """RFC 6455 4.1: tokens in lists, compared case-insensitively."""
    server = ws_server()
    pending(server, handshake(connection=connection, upgrade=upgrade) + b"\x81\x00")
    assert accept(server) == [DataReceived(stream_id=1, data=b"\x81\x00")]
