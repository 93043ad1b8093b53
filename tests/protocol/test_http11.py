"""Sans-IO tests of the HTTP/1.1 server core: bytes and commands in, events and bytes out."""

from __future__ import annotations

import itertools

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multicorn.protocol.errors import LocalProtocolError, RemoteProtocolError
from multicorn.protocol.events import (
    AcknowledgeData,
    CloseConnection,
    ConnectionClosed,
    DataReceived,
    Event,
    RequestReceived,
    RequestRejected,
    ResetStream,
    SendData,
    SendInformational,
    SendResponse,
    StreamEnded,
    StreamKind,
    StreamReset,
)
from multicorn.protocol.headers import validate_response_headers
from multicorn.protocol.http11 import HTTP11Protocol

from .helpers import (
    Pair,
    answer_rejection,
    make_server,
    normalize,
    parse_one,
    parse_responses,
    request_bytes,
    respond,
)

GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


def kinds(events: list[Event]) -> list[type]:
    return [type(event) for event in events]


def body_of(events: list[Event], stream_id: int) -> bytes:
    return b"".join(
        event.data
        for event in events
        if isinstance(event, DataReceived) and event.stream_id == stream_id
    )


# ---- simple exchanges ---------------------------------------------------------------------


def test_simple_get_events() -> None:
    pair = Pair()
    events = pair.client_send(
        h11.Request(
            method="GET",
            target="/path?q=1",
            headers=[("Host", "example.com"), ("User-Agent", "test"), ("X-Multi", "a")],
        ),
        h11.EndOfMessage(),
        now=1.0,
    )
    assert events == [
        RequestReceived(
            stream_id=1,
            method=b"GET",
            target=b"/path?q=1",
            http_version="1.1",
            headers=[(b"host", b"example.com"), (b"user-agent", b"test"), (b"x-multi", b"a")],
            expects_continue=False,
        ),
        StreamEnded(stream_id=1),
    ]
    assert pair.server.data_to_send() == b""
    assert not pair.server.closed


def test_response_with_content_length_parses_back() -> None:
    pair = Pair()
    pair.client_send(
        h11.Request(method="GET", target="/", headers=[("Host", "a")]), h11.EndOfMessage()
    )
    events = respond(pair.server, 1, b"hello world", headers=[(b"content-type", b"text/plain")])
    assert events == []
    data = pair.server.data_to_send()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding" not in data.lower()
    pair.client.receive_data(data)
    response = pair.client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == 200
    assert response.reason == b"OK"
    assert (b"content-length", b"11") in list(response.headers)
    assert (b"content-type", b"text/plain") in list(response.headers)
    assert pair.client.next_event() == h11.Data(data=b"hello world")
    assert type(pair.client.next_event()) is h11.EndOfMessage
    assert not pair.server.closed


def test_chunked_response_parses_back() -> None:
    pair = Pair()
    pair.client_send(
        h11.Request(method="GET", target="/", headers=[("Host", "a")]), h11.EndOfMessage()
    )
    server = pair.server
    assert server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0) == []
    assert server.send(SendData(stream_id=1, data=b"hello"), 0.0) == []
    assert server.send(SendData(stream_id=1, data=b""), 0.0) == []
    assert server.send(SendData(stream_id=1, data=b" world", end_stream=True), 0.0) == []
    data = server.data_to_send()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in data.lower()
    assert data.endswith(b"0\r\n\r\n")
    response = parse_one(data)
    assert response.status == 200
    assert response.body == b"hello world"
    assert response.header(b"content-length") is None


def test_response_with_end_stream_and_no_body() -> None:
    server = make_server()
    server.receive_data(GET, 0.0)
    events = server.send(SendResponse(stream_id=1, status=204, headers=[], end_stream=True), 2.0)
    assert events == []
    response = parse_one(server.data_to_send())
    assert response.status == 204
    assert response.reason == b"No Content"
    assert response.body == b""
    # The response is complete: the connection is idle again.
    assert server.next_deadline() == 2.0 + 5.0


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (200, b"HTTP/1.1 200 OK\r\n"),
        (404, b"HTTP/1.1 404 Not Found\r\n"),
        (418, b"HTTP/1.1 418 I'm a Teapot\r\n"),
        (503, b"HTTP/1.1 503 Service Unavailable\r\n"),
        (599, b"HTTP/1.1 599 \r\n"),
    ],
)
def test_status_line_reason_phrase(status: int, line: bytes) -> None:
    server = make_server()
    server.receive_data(GET, 0.0)
    respond(server, 1, b"", status=status)
    data = server.data_to_send()
    assert data.startswith(line)
    assert parse_one(data).status == status


# ---- request bodies -----------------------------------------------------------------------


def test_post_with_content_length_body() -> None:
    pair = Pair()
    body = bytes(range(256)) * 4
    events = pair.client_send(
        h11.Request(
            method="POST",
            target="/upload",
            headers=[("Host", "a"), ("Content-Length", str(len(body)))],
        ),
        h11.Data(data=body[:100]),
        h11.Data(data=body[100:]),
        h11.EndOfMessage(),
    )
    assert isinstance(events[0], RequestReceived)
    assert events[0].method == b"POST"
    assert (b"content-length", b"1024") in events[0].headers
    assert isinstance(events[-1], StreamEnded)
    assert events[-1].stream_id == 1
    assert all(isinstance(event, DataReceived) for event in events[1:-1])
    assert body_of(events, 1) == body


def test_post_with_chunked_body() -> None:
    pair = Pair()
    events = pair.client_send(
        h11.Request(
            method="POST",
            target="/",
            headers=[("Host", "a"), ("Transfer-Encoding", "chunked")],
        ),
        now=0.0,
    )
    assert kinds(events) == [RequestReceived]
    assert (b"transfer-encoding", b"chunked") in events[0].headers
    events = pair.client_send(h11.Data(data=b"first "))
    assert events == [DataReceived(stream_id=1, data=b"first ")]
    events = pair.client_send(h11.Data(data=b"\r\nsecond\x00"), h11.EndOfMessage())
    assert normalize(events) == [
        DataReceived(stream_id=1, data=b"\r\nsecond\x00"),
        StreamEnded(stream_id=1),
    ]


def test_chunked_body_with_extensions_and_trailers() -> None:
    server = make_server()
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    events = server.receive_data(data, 0.0)
    assert normalize(events)[1:] == [
        DataReceived(stream_id=1, data=b"hello!"),
        StreamEnded(stream_id=1),
    ]


# ---- arbitrary chunking -------------------------------------------------------------------


def drive(chunks: list[bytes], *, eof: bool = True) -> tuple[list[Event], bytes]:
    """Feed chunks; answer each request as soon as its body is complete."""
    server = make_server()
    log: list[Event] = []
    out = b""

    def handle(events: list[Event]) -> None:
        nonlocal out
        for event in events:
            log.append(event)
            if isinstance(event, DataReceived):
                server.send(AcknowledgeData(stream_id=event.stream_id, amount=len(event.data)), 0)
            if isinstance(event, StreamEnded):
                sid = event.stream_id
                reply = b"reply-%d" % sid
                handle(respond(server, sid, reply, now=0.0))
                out += server.data_to_send()

    for chunk in chunks:
        assert chunk, "an empty chunk would mean EOF"
        handle(server.receive_data(chunk, 0.0))
        out += server.data_to_send()
    if eof:
        handle(server.receive_data(b"", 0.0))
    out += server.data_to_send()
    return log, out


def split(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p for p in points if 0 < p < len(data)})
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


PIPELINED = b"".join(
    [
        request_bytes(b"GET", b"/one", [(b"x-a", b"1")]),
        request_bytes(b"POST", b"/two", body=b"0123456789" * 7),
        request_bytes(b"PUT", b"/three", body=[b"abc", b"", b"defgh", b"\r\n0\r\n"], chunked=True),
        request_bytes(b"HEAD", b"/four"),
        b"GET /five HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    ]
)


def expected_pipelined() -> list[Event]:
    events, _ = drive([PIPELINED])
    return normalize(events)


def test_pipelined_reference_sequence() -> None:
    events = expected_pipelined()
    received = [event for event in events if isinstance(event, RequestReceived)]
    assert [(e.stream_id, e.method, e.target) for e in received] == [
        (1, b"GET", b"/one"),
        (2, b"POST", b"/two"),
        (3, b"PUT", b"/three"),
        (4, b"HEAD", b"/four"),
        (5, b"GET", b"/five"),
    ]
    assert body_of(events, 2) == b"0123456789" * 7
    assert body_of(events, 3) == b"abcdefgh\r\n0\r\n"
    assert [e.stream_id for e in events if isinstance(e, StreamEnded)] == [1, 2, 3, 4, 5]
    assert events[-1] == ConnectionClosed(error=None)
    _, out = drive([PIPELINED])
    responses = parse_responses(out, [b"GET", b"POST", b"PUT", b"HEAD", b"GET"])
    assert [r.body for r in responses] == [b"reply-1", b"reply-2", b"reply-3", b"", b"reply-5"]


@settings(max_examples=200, deadline=None)
@given(points=st.lists(st.integers(min_value=0, max_value=len(PIPELINED)), max_size=40))
def test_pipelined_requests_split_anywhere(points: list[int]) -> None:
    events, out = drive(split(PIPELINED, points))
    reference_events, reference_out = drive([PIPELINED])
    assert normalize(events) == normalize(reference_events)
    assert out == reference_out


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=40), min_size=1, max_size=3),
    chunked=st.booleans(),
    data=st.data(),
)
def test_generated_bodies_split_anywhere(bodies: list[bytes], chunked: bool, data) -> None:
    wire = b"".join(
        request_bytes(b"POST", b"/%d" % i, body=[body] if chunked else body, chunked=chunked)
        for i, body in enumerate(bodies)
    )
    points = data.draw(st.lists(st.integers(min_value=0, max_value=len(wire)), max_size=30))
    events, out = drive(split(wire, points))
    events = normalize(events)
    for index, body in enumerate(bodies, start=1):
        assert body_of(events, index) == body
    assert [e.stream_id for e in events if isinstance(e, StreamEnded)] == list(
        range(1, len(bodies) + 1)
    )
    reference_events, reference_out = drive([wire])
    assert events == normalize(reference_events)
    assert out == reference_out


def test_every_single_split_offset_of_one_request() -> None:
    wire = request_bytes(
        b"POST", b"/split", [(b"x-long", b"v" * 30)], body=b"the body, with\r\nnewlines"
    )
    reference, reference_out = drive([wire])
    assert normalize(reference)[1:] == [
        DataReceived(stream_id=1, data=b"the body, with\r\nnewlines"),
        StreamEnded(stream_id=1),
        ConnectionClosed(error=None),
    ]
    for offset in range(1, len(wire)):
        events, out = drive([wire[:offset], wire[offset:]])
        assert normalize(events) == normalize(reference), offset
        assert out == reference_out, offset


def test_one_byte_at_a_time_chunked_request() -> None:
    wire = request_bytes(b"POST", b"/", body=[b"ab", b"cdef"], chunked=True) + GET
    reference, reference_out = drive([wire])
    events, out = drive([wire[i : i + 1] for i in range(len(wire))])
    assert normalize(events) == normalize(reference)
    assert out == reference_out
    assert [e.stream_id for e in events if isinstance(e, RequestReceived)] == [1, 2]


# ---- pipelining ---------------------------------------------------------------------------


def test_pipelining_releases_the_next_request_after_the_response() -> None:
    server = make_server()
    second = b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"
    events = server.receive_data(GET + second, 1.0)
    assert kinds(events) == [RequestReceived, StreamEnded]
    assert events[0].stream_id == 1
    assert events[0].target == b"/"
    assert not server.wants_read  # the second request waits in the buffer
    assert server.send(SendResponse(stream_id=1, status=200, headers=[]), 2.0) == []
    assert server.send(SendData(stream_id=1, data=b"first"), 2.0) == []
    released = server.send(SendData(stream_id=1, data=b"", end_stream=True), 2.0)
    assert kinds(released) == [RequestReceived, StreamEnded]
    assert released[0].stream_id == 2
    assert released[0].target == b"/second"
    assert server.wants_read
    assert respond(server, 2, b"second", now=3.0) == []
    responses = parse_responses(server.data_to_send(), [b"GET", b"GET"])
    assert [(r.status, r.body) for r in responses] == [(200, b"first"), (200, b"second")]
    assert not server.closed


def test_pipelined_responses_come_out_in_order_when_sent_separately() -> None:
    server = make_server()
    server.receive_data(GET * 3, 0.0)
    chunks = []
    for sid in (1, 2, 3):
        respond(server, sid, b"r%d" % sid)
        chunks.append(server.data_to_send())
    assert all(chunk.startswith(b"HTTP/1.1 200 OK") for chunk in chunks)
    responses = parse_responses(b"".join(chunks), [b"GET"] * 3)
    assert [r.body for r in responses] == [b"r1", b"r2", b"r3"]


def test_commands_for_the_pipelined_stream_before_its_turn_are_ignored() -> None:
    server = make_server()
    server.receive_data(GET + GET, 0.0)
    assert server.send(SendResponse(stream_id=2, status=200, headers=[]), 0.0) == []
    assert server.data_to_send() == b""
    released = respond(server, 1, b"one")
    assert kinds(released) == [RequestReceived, StreamEnded]
    assert released[0].stream_id == 2


# ---- deadlines ----------------------------------------------------------------------------


def test_keep_alive_deadline_after_response() -> None:
    server = make_server(now=0.0, keep_alive_timeout=7.0, header_timeout=3.0)
    assert server.next_deadline() == 7.0
    server.receive_data(GET, 1.0)
    assert server.next_deadline() is None  # a request is in flight
    respond(server, 1, now=4.0)
    assert server.data_to_send().startswith(b"HTTP/1.1 200 OK")
    assert server.next_deadline() == 4.0 + 7.0
    assert server.handle_deadline(10.9) == []
    assert not server.closed
    assert server.handle_deadline(11.0) == [ConnectionClosed(error=None)]
    assert server.closed
    assert server.data_to_send() == b""
    assert server.next_deadline() is None
    assert server.receive_data(GET, 12.0) == []


def test_partial_head_then_header_timeout_rejects_with_408() -> None:
    server = make_server(now=0.0, keep_alive_timeout=5.0, header_timeout=10.0)
    assert server.receive_data(b"GET / HTTP/1.1\r\nHo", 1.0) == []
    assert server.next_deadline() == 1.0 + 10.0
    assert server.receive_data(b"st: a\r\n", 8.0) == []
    assert server.next_deadline() == 11.0  # measured from the first byte of the head
    assert server.handle_deadline(10.5) == []
    events = server.handle_deadline(11.0)
    assert len(events) == 1
    rejected = events[0]
    assert isinstance(rejected, RequestRejected)
    assert rejected.stream_id == 1
    assert isinstance(rejected.error, RemoteProtocolError)
    assert rejected.error.error_status_hint == 408
    assert not server.closed  # the answer is still to be written
    assert answer_rejection(server, rejected) == []
    data = server.data_to_send()
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    response = parse_one(data)
    assert b"close" in response.header_tokens(b"connection")
    assert response.body == b"rejected"
    assert server.closed


def test_header_timeout_for_a_partial_pipelined_request() -> None:
    server = make_server(now=0.0, keep_alive_timeout=5.0, header_timeout=10.0)
    server.receive_data(GET + b"GET /next HTTP/1.1\r\n", 1.0)
    respond(server, 1, now=3.0)
    assert server.next_deadline() == 3.0 + 10.0
    events = server.handle_deadline(13.0)
    assert isinstance(events[-1], RequestRejected)
    assert events[-1].stream_id == 2
    assert events[-1].error.error_status_hint == 408


def test_no_deadline_fires_early_and_none_during_a_request() -> None:
    server = make_server(now=0.0, keep_alive_timeout=5.0)
    assert server.handle_deadline(4.999) == []
    events = server.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc", 1.0
    )
    assert kinds(events) == [RequestReceived, DataReceived]
    assert server.next_deadline() is None
    assert server.handle_deadline(1000.0) == []
    assert not server.closed


# ---- HTTP/1.0 and connection management ---------------------------------------------------


def test_http10_request_closes_after_response() -> None:
    server = make_server()
    events = server.receive_data(b"GET /old HTTP/1.0\r\n\r\n", 0.0)
    assert kinds(events) == [RequestReceived, StreamEnded]
    assert events[0].http_version == "1.0"
    assert not server.closed
    closing = respond(server, 1, b"legacy")
    assert closing == [ConnectionClosed(error=None)]
    assert server.closed
    response = parse_one(server.data_to_send(), eof=True)
    assert response.status == 200
    assert response.body == b"legacy"
    assert b"close" in response.header_tokens(b"connection")


def test_http10_response_without_length_is_close_delimited() -> None:
    server = make_server()
    server.receive_data(b"GET / HTTP/1.0\r\n\r\n", 0.0)
    server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0)
    server.send(SendData(stream_id=1, data=b"streamed "), 0.0)
    closing = server.send(SendData(stream_id=1, data=b"body", end_stream=True), 0.0)
    assert closing == [ConnectionClosed(error=None)]
    data = server.data_to_send()
    assert b"chunked" not in data.lower()  # HTTP/1.0 has no chunked framing
    assert data.endswith(b"\r\n\r\nstreamed body")
    assert parse_one(data, eof=True).body == b"streamed body"
    assert server.closed


def test_http10_keep_alive_request_gets_a_valid_response() -> None:
    server = make_server()
    events = server.receive_data(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0.0)
    assert kinds(events) == [RequestReceived, StreamEnded]
    assert (b"connection", b"keep-alive") in events[0].headers
    closing = respond(server, 1, b"hello")
    data = server.data_to_send()
    response = parse_one(data, eof=server.closed)
    assert response.status == 200
    assert response.body == b"hello"
    # h11 does not do HTTP/1.0 keep-alive: the response says so and the connection closes.
    assert b"close" in response.header_tokens(b"connection")
    assert closing == [ConnectionClosed(error=None)]
    assert server.closed


def test_client_connection_close() -> None:
    pair = Pair()
    pair.client_send(
        h11.Request(method="GET", target="/", headers=[("Host", "a"), ("Connection", "close")]),
        h11.EndOfMessage(),
    )
    closing = respond(pair.server, 1, b"bye")
    assert closing == [ConnectionClosed(error=None)]
    assert pair.server.closed
    events = pair.client_events()
    response = events[0]
    assert isinstance(response, h11.Response)
    assert (b"connection", b"close") in [(k, v.lower()) for k, v in response.headers]
    assert events[1] == h11.Data(data=b"bye")
    assert isinstance(events[2], h11.EndOfMessage)
    assert isinstance(events[3], h11.ConnectionClosed)


def test_max_requests_closes_after_the_last_allowed_response() -> None:
    server = make_server(max_requests=2)
    server.receive_data(GET, 0.0)
    assert respond(server, 1, b"one") == []
    first = parse_one(server.data_to_send())
    assert b"close" not in first.header_tokens(b"connection")
    assert not server.closed
    events = server.receive_data(GET + GET, 1.0)
    assert kinds(events) == [RequestReceived, StreamEnded]
    assert events[0].stream_id == 2
    closing = respond(server, 2, b"two")
    assert closing == [ConnectionClosed(error=None)]  # the third request is never released
    second = parse_one(server.data_to_send())
    assert second.body == b"two"
    assert second.header_tokens(b"connection") == {b"close"}
    assert server.closed


# ---- HEAD ---------------------------------------------------------------------------------


def test_head_drops_body_and_keeps_content_length() -> None:
    server = make_server()
    events = server.receive_data(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n", 0.0)
    assert events[0].method == b"HEAD"
    server.send(SendResponse(stream_id=1, status=200, headers=[(b"content-length", b"1234")]), 0.0)
    server.send(SendData(stream_id=1, data=b"this body must not go out"), 0.0)
    assert server.send(SendData(stream_id=1, data=b"nor this", end_stream=True), 0.0) == []
    data = server.data_to_send()
    assert data.endswith(b"\r\n\r\n")
    assert b"must not" not in data
    assert b"nor this" not in data
    response = parse_one(data, b"HEAD")
    assert response.header(b"content-length") == b"1234"
    assert response.body == b""
    # Framing stayed right: the connection is reusable.
    assert not server.closed
    events = server.receive_data(GET, 1.0)
    assert events[0].stream_id == 2


# ---- Expect: 100-continue and 1xx ---------------------------------------------------------


EXPECT = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"


def test_expect_100_continue_flow() -> None:
    server = make_server()
    events = server.receive_data(EXPECT, 0.0)
    assert kinds(events) == [RequestReceived]
    assert events[0].expects_continue is True
    assert server.send(SendInformational(stream_id=1, status=100), 0.0) == []
    assert server.data_to_send() == b"HTTP/1.1 100 Continue\r\n\r\n"
    # A second 100 is pointless and is not sent.
    server.send(SendInformational(stream_id=1, status=100), 0.0)
    assert server.data_to_send() == b""
    events = server.receive_data(b"hello", 0.0)
    assert normalize(events) == [DataReceived(stream_id=1, data=b"hello"), StreamEnded(stream_id=1)]
    respond(server, 1, b"done")
    assert parse_one(server.data_to_send()).body == b"done"
    assert not server.closed


def test_no_100_once_the_body_started_arriving() -> None:
    server = make_server()
    events = server.receive_data(EXPECT, 0.0)
    assert events[0].expects_continue
    assert server.receive_data(b"he", 0.0) == [DataReceived(stream_id=1, data=b"he")]
    assert server.send(SendInformational(stream_id=1, status=100), 0.0) == []
    assert server.data_to_send() == b""
    # Other 1xx are still fine while the response has not started.
    server.send(SendInformational(stream_id=1, status=103, headers=[(b"link", b"</s>")]), 0.0)
    assert server.data_to_send() == b"HTTP/1.1 103 Early Hints\r\nlink: </s>\r\n\r\n"


def test_informational_responses_parse_with_h11() -> None:
    server = make_server()
    server.receive_data(EXPECT, 0.0)
    server.send(SendInformational(stream_id=1, status=100), 0.0)
    server.receive_data(b"12345", 0.0)
    server.send(SendInformational(stream_id=1, status=103, headers=[(b"link", b"</a>")]), 0.0)
    respond(server, 1, b"ok")
    response = parse_one(server.data_to_send(), b"POST")
    assert response.informational == [100, 103]
    assert response.body == b"ok"


def test_no_1xx_to_http10_clients() -> None:
    server = make_server()
    events = server.receive_data(
        b"POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n", 0.0
    )
    assert events[0].http_version == "1.0"
    assert events[0].expects_continue is False
    assert server.send(SendInformational(stream_id=1, status=100), 0.0) == []
    assert server.send(SendInformational(stream_id=1, status=103), 0.0) == []
    assert server.data_to_send() == b""


def test_answering_an_expect_request_without_the_100_closes() -> None:
    server = make_server()
    server.receive_data(EXPECT, 0.0)
    closing = respond(server, 1, b"no thanks", status=413)
    assert closing == [ConnectionClosed(error=None)]
    assert server.closed
    response = parse_one(server.data_to_send())
    assert response.status == 413
    assert response.body == b"no thanks"


# ---- rejections ---------------------------------------------------------------------------


def assert_rejected(
    events: list[Event], server: HTTP11Protocol, status: int, stream_id: int = 1
) -> None:
    assert events, "expected a RequestRejected"
    rejected = events[-1]
    assert isinstance(rejected, RequestRejected), events
    assert rejected.stream_id == stream_id
    assert isinstance(rejected.error, RemoteProtocolError)
    assert rejected.error.error_status_hint == status
    assert not any(isinstance(event, RequestReceived) for event in events)
    assert not server.closed  # still to answer
    assert server.wants_read is False
    assert server.receive_data(GET, 5.0) == []  # nothing more is read
    assert answer_rejection(server, rejected) == []
    data = server.data_to_send()
    assert data.startswith(b"HTTP/1.1 %d " % status)
    response = parse_one(data)
    assert response.status == status
    assert response.body == b"rejected"
    assert b"close" in response.header_tokens(b"connection")
    assert server.closed
    assert server.next_deadline() is None


REJECTIONS = {
    "malformed request line": (b"GARBAGE\r\n\r\n", 400),
    "request line with spaces": (b"GET / / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "bare CR in header": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", 400),
    "duplicate Host": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "missing Host in 1.1": (b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    "transfer-encoding gzip": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    ),
    "content-length and transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "transfer-encoding then content-length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    "HTTP/1.0 with chunked": (
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "control char in header value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n", 400),
    "DEL in header value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb\r\n\r\n", 400),
    "NUL in header value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400),
    "conflicting content-length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        400,
    ),
    "target x": (b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "asterisk with GET": (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "CONNECT": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
    "HTTP/2.0": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    "HTTP/0.9": (b"GET /\r\n\r\n", 400),
}


@pytest.mark.parametrize(("wire", "status"), REJECTIONS.values(), ids=REJECTIONS.keys())
def test_rejected_requests(wire: bytes, status: int) -> None:
    server = make_server()
    assert_rejected(server.receive_data(wire, 0.0), server, status)


@pytest.mark.parametrize(("wire", "status"), REJECTIONS.values(), ids=REJECTIONS.keys())
def test_rejected_requests_byte_by_byte(wire: bytes, status: int) -> None:
    server = make_server()
    events: list[Event] = []
    for i in range(len(wire)):
        events += server.receive_data(wire[i : i + 1], 0.0)
    assert_rejected(events, server, status)


def test_header_section_too_large_in_pieces() -> None:
    server = make_server(max_incomplete_size=1000)
    events = server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n", 0.0)
    pieces = 0
    while not events:
        events = server.receive_data(b"X-Pad: " + b"p" * 90 + b"\r\n", 0.0)
        pieces += 1
        assert pieces < 50, "the head was never refused"
    assert 5 <= pieces <= 12
    assert_rejected(events, server, 431)


def test_header_section_too_large_in_one_chunk() -> None:
    server = make_server(max_incomplete_size=1000)
    wire = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"p" * 2000 + b"\r\n\r\n"
    assert_rejected(server.receive_data(wire, 0.0), server, 431)


def test_many_small_headers_too_large_in_one_chunk() -> None:
    server = make_server(max_incomplete_size=1000)
    wire = (
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 20) for i in range(60))
        + b"\r\n"
    )
    assert_rejected(server.receive_data(wire, 0.0), server, 431)


def test_oversized_request_line_is_refused_whole_as_in_pieces() -> None:
    """A head over max_incomplete_size is refused whether it arrives in pieces or in one read.

    The limit is documented as covering the request head, and h11 enforces it on pieces
    (buffer length, request line included); the one-read check must agree.
    """
    wire = b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    in_pieces = make_server(max_incomplete_size=1000)
    events = in_pieces.receive_data(wire[:2000], 0.0) + in_pieces.receive_data(wire[2000:], 0.0)
    assert_rejected(events, in_pieces, 431)
    whole = make_server(max_incomplete_size=1000)
    assert_rejected(whole.receive_data(wire, 0.0), whole, 431)


def test_header_section_just_under_the_limit_is_accepted() -> None:
    server = make_server(max_incomplete_size=1000)
    wire = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 800 + b"\r\n\r\n"
    events = server.receive_data(wire, 0.0)
    assert kinds(events) == [RequestReceived, StreamEnded]


def test_options_asterisk_is_accepted() -> None:
    server = make_server()
    events = server.receive_data(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 0.0)
    assert kinds(events) == [RequestReceived, StreamEnded]
    assert events[0].method == b"OPTIONS"
    assert events[0].target == b"*"
    respond(server, 1, b"", headers=[(b"allow", b"GET, OPTIONS")])
    assert parse_one(server.data_to_send()).header(b"allow") == b"GET, OPTIONS"
    assert not server.closed


@pytest.mark.parametrize("target", [b"http://example.com/x?y=1", b"https://example.com"])
def test_absolute_form_target_is_accepted(target: bytes) -> None:
    server = make_server()
    events = server.receive_data(b"GET " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n", 0)
    assert kinds(events) == [RequestReceived, StreamEnded]
    assert events[0].target == target


def test_rejection_of_a_pipelined_request_after_a_good_one() -> None:
    server = make_server()
    events = server.receive_data(GET + b"BROKEN\tLINE\r\n\r\n", 0.0)
    assert kinds(events) == [RequestReceived, StreamEnded]
    released = respond(server, 1, b"good")
    assert len(released) == 1
    assert isinstance(released[0], RequestRejected)
    first = parse_one(server.data_to_send())
    assert first.body == b"good"
    assert_rejected(released, server, 400, stream_id=2)


def test_rejection_answered_with_end_stream_on_the_response_head() -> None:
    """SendResponse(end_stream=True) is a complete answer, for a rejection too."""
    server = make_server()
    events = server.receive_data(b"GARBAGE\r\n\r\n", 0.0)
    rejected = events[-1]
    assert isinstance(rejected, RequestRejected)
    server.send(
        SendResponse(
            stream_id=rejected.stream_id,
            status=400,
            headers=[(b"content-length", b"0")],
            end_stream=True,
        ),
        0.0,
    )
    response = parse_one(server.data_to_send())
    assert response.status == 400
    assert server.closed


def test_malformed_chunked_body_resets_the_stream_and_answers_400() -> None:
    server = make_server()
    events = server.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0.0
    )
    assert kinds(events) == [RequestReceived, StreamReset, RequestRejected]
    assert events[1] == StreamReset(stream_id=1)
    rejected = events[2]
    assert isinstance(rejected, RequestRejected)
    assert rejected.stream_id == 1
    assert rejected.error.error_status_hint == 400
    assert answer_rejection(server, rejected) == []
    response = parse_one(server.data_to_send())
    assert response.status == 400
    assert b"close" in response.header_tokens(b"connection")
    assert server.closed


def test_malformed_chunked_body_after_the_response_began_closes() -> None:
    server = make_server()
    events = server.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 0.0
    )
    assert kinds(events) == [RequestReceived]
    server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0)
    events = server.receive_data(b"zz\r\n", 0.0)
    assert kinds(events) == [StreamReset, ConnectionClosed]
    assert server.closed


# ---- EOF ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_eof_mid_body_resets_the_stream(head: bytes) -> None:
    server = make_server()
    events = server.receive_data(head, 0.0)
    assert body_of(events, 1) == b"abc"
    events = server.receive_data(b"", 1.0)
    assert kinds(events) == [StreamReset, ConnectionClosed]
    assert events[0] == StreamReset(stream_id=1)
    assert server.closed
    assert not server.wants_read
    assert server.send(SendResponse(stream_id=1, status=200, headers=[]), 1.0) == []
    assert server.data_to_send() == b""


def test_eof_when_idle_closes_quietly() -> None:
    server = make_server()
    server.receive_data(GET, 0.0)
    respond(server, 1)
    server.data_to_send()
    assert server.receive_data(b"", 1.0) == [ConnectionClosed(error=None)]
    assert server.closed
    assert server.data_to_send() == b""


def test_eof_mid_head_closes_without_an_answer() -> None:
    server = make_server()
    assert server.receive_data(b"GET / HTTP/1.1\r\n", 0.0) == []
    events = server.receive_data(b"", 0.0)
    assert len(events) == 1
    assert type(events[0]) is ConnectionClosed  # nobody to answer: not a RequestRejected
    assert events[0].error is not None
    assert server.closed
    assert server.data_to_send() == b""


def test_eof_after_a_complete_request_is_a_half_close() -> None:
    server = make_server()
    events = server.receive_data(GET, 0.0)
    assert kinds(events) == [RequestReceived, StreamEnded]
    events = server.receive_data(b"", 1.0)
    assert not any(isinstance(event, StreamReset) for event in events)
    assert not server.wants_read
    # The response can still be delivered...
    closing = respond(server, 1, b"still here", now=2.0)
    response = parse_one(server.data_to_send(), eof=True)
    assert response.status == 200
    assert response.body == b"still here"
    # ...and then the connection closes.
    assert server.closed
    assert ConnectionClosed(error=None) in events + closing


def test_pipelined_requests_then_eof_are_all_answered() -> None:
    """`printf 'GET..GET..' | nc host port`: both requests are answered, then the close."""
    server = make_server()
    events = server.receive_data(GET + GET, 0.0)
    events += server.receive_data(b"", 0.0)
    assert [e.stream_id for e in events if isinstance(e, RequestReceived)] == [1]
    events = respond(server, 1, b"one")
    assert [e.stream_id for e in events if isinstance(e, RequestReceived)] == [2]
    assert not any(isinstance(event, StreamReset) for event in events)
    respond(server, 2, b"two")
    responses = parse_responses(server.data_to_send(), [b"GET", b"GET"], eof=True)
    assert [r.body for r in responses] == [b"one", b"two"]
    assert server.closed


# ---- backpressure -------------------------------------------------------------------------


def test_body_backpressure_and_acknowledgement() -> None:
    server = make_server(body_buffer_size=100)
    events = server.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 300\r\n\r\n", 0.0)
    assert kinds(events) == [RequestReceived]
    assert server.wants_read
    events = server.receive_data(b"x" * 99, 0.0)
    assert body_of(events, 1) == b"x" * 99
    assert server.wants_read  # 99 < 100
    events = server.receive_data(b"y" * 51, 0.0)
    assert body_of(events, 1) == b"y" * 51
    assert not server.wants_read  # 150 unconsumed
    assert server.send(AcknowledgeData(stream_id=1, amount=50), 0.0) == []
    assert not server.wants_read  # 100 unconsumed: still at the limit
    server.send(AcknowledgeData(stream_id=1, amount=1), 0.0)
    assert server.wants_read
    server.send(AcknowledgeData(stream_id=1, amount=99), 0.0)
    assert server.wants_read
    assert server.data_to_send() == b""


def test_body_backpressure_released_by_full_acknowledgement() -> None:
    server = make_server(body_buffer_size=100)
    events = server.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 150\r\n\r\n" + b"z" * 150, 0.0
    )
    assert normalize(events)[1:] == [
        DataReceived(stream_id=1, data=b"z" * 150),
        StreamEnded(stream_id=1),
    ]
    assert not server.wants_read
    server.send(AcknowledgeData(stream_id=1, amount=150), 0.0)
    assert server.wants_read


def test_pipelined_request_waiting_stops_reading() -> None:
    server = make_server()
    server.receive_data(GET, 0.0)
    assert server.wants_read  # nothing buffered behind the request
    assert server.receive_data(b"GET /2 HTTP/1.1\r\n", 0.0) == []
    assert not server.wants_read
    events = respond(server, 1)
    assert events == []  # the second head is incomplete
    assert server.wants_read
    events = server.receive_data(b"Host: a\r\n\r\n", 0.0)
    assert kinds(events) == [RequestReceived, StreamEnded]


def test_stale_acknowledgement_does_not_release_the_next_stream() -> None:
    """An ack for stream 1 (the app read its body late) must not count for stream 2."""
    server = make_server(body_buffer_size=100)
    server.receive_data(GET, 0.0)
    respond(server, 1)
    assert parse_one(server.data_to_send()).status == 200
    events = server.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 400\r\n\r\n" + b"b" * 150, 0.0
    )
    assert events[0].stream_id == 2
    assert not server.wants_read
    assert server.send(AcknowledgeData(stream_id=1, amount=150), 0.0) == []
    assert server.send(AcknowledgeData(stream_id=9, amount=150), 0.0) == []
    assert server.data_to_send() == b""
    assert not server.wants_read


# ---- answering without reading the body ---------------------------------------------------


def test_unread_body_is_discarded_and_the_next_request_comes_out() -> None:
    server = make_server()
    events = server.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100, 0.0
    )
    assert body_of(events, 1) == b"a" * 100
    assert respond(server, 1, b"early") == []
    assert parse_one(server.data_to_send()).body == b"early"
    assert not server.closed
    assert server.wants_read
    events = server.receive_data(b"b" * 500, 1.0)
    assert events == []  # discarded, not delivered
    events = server.receive_data(b"c" * 400 + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n", 1.0)
    assert kinds(events) == [RequestReceived, StreamEnded]
    assert events[0].stream_id == 2
    assert events[0].target == b"/next"
    respond(server, 2, b"next")
    assert parse_one(server.data_to_send()).body == b"next"


def test_unread_chunked_body_is_discarded() -> None:
    server = make_server()
    server.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n", 0.0
    )
    respond(server, 1)
    events = server.receive_data(b"3\r\nefg\r\n0\r\n\r\n" + GET, 0.0)
    assert kinds(events) == [RequestReceived, StreamEnded]
    assert events[0].stream_id == 2


def test_unread_body_at_the_discard_limit_keeps_the_connection() -> None:
    limit = 256 * 1024
    server = make_server()
    server.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (limit + 10) + b"h" * 10,
        0.0,
    )
    respond(server, 1)
    events: list[Event] = []
    for _ in range(4):
        events += server.receive_data(b"d" * (limit // 4), 0.0)
    assert events == []
    events = server.receive_data(GET, 0.0)
    assert kinds(events) == [RequestReceived, StreamEnded]


def test_unread_body_over_the_discard_limit_closes() -> None:
    server = make_server()
    server.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (300 * 1024) + b"h" * 10,
        0.0,
    )
    respond(server, 1, b"stop")
    assert parse_one(server.data_to_send()).body == b"stop"
    events: list[Event] = []
    chunk = b"d" * (64 * 1024)
    for _ in range(5):
        events += server.receive_data(chunk, 0.0)
    assert events == [ConnectionClosed(error=None)]
    assert not any(isinstance(event, DataReceived) for event in events)
    assert server.closed
    assert server.data_to_send() == b""


def test_discarding_an_unread_body_still_has_a_deadline() -> None:
    """Once the response is done, nobody else watches the connection: it needs a deadline."""
    server = make_server(keep_alive_timeout=5.0, header_timeout=10.0)
    server.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100, 0.0
    )
    respond(server, 1, now=1.0)
    assert not server.closed
    deadline = server.next_deadline()
    assert deadline is not None
    assert deadline <= 1.0 + 10.0
    events = server.handle_deadline(deadline)
    assert events
    assert server.closed or isinstance(events[-1], RequestRejected)


def test_eof_while_discarding_closes() -> None:
    server = make_server()
    server.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100, 0.0
    )
    respond(server, 1)
    events = server.receive_data(b"", 0.0)
    assert kinds(events) == [ConnectionClosed]
    assert not any(isinstance(event, StreamReset) for event in events)
    assert server.closed


# ---- resets and closes requested by the application ---------------------------------------


def test_reset_stream_mid_response() -> None:
    server = make_server()
    server.receive_data(GET, 0.0)
    server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0)
    server.send(SendData(stream_id=1, data=b"partial"), 0.0)
    events = server.send(ResetStream(stream_id=1), 0.0)
    assert events == [ConnectionClosed(error=None)]
    assert server.closed
    data = server.data_to_send()
    assert b"partial" in data
    assert not data.endswith(b"0\r\n\r\n")  # never framed as complete
    assert parse_responses(data, eof=True)[0].complete is False
    assert server.send(SendData(stream_id=1, data=b"more", end_stream=True), 0.0) == []
    assert server.data_to_send() == b""


def test_reset_stream_while_the_body_is_arriving() -> None:
    server = make_server()
    server.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab", 0.0)
    events = server.send(ResetStream(stream_id=1), 0.0)
    assert events[-1] == ConnectionClosed(error=None)
    assert server.closed
    assert server.receive_data(b"cdefghij", 0.0) == []


def test_close_connection_while_idle() -> None:
    server = make_server()
    assert server.send(CloseConnection(), 0.0) == [ConnectionClosed(error=None)]
    assert server.closed
    assert server.data_to_send() == b""
    assert server.receive_data(GET, 0.0) == []


def test_close_connection_after_a_response_while_idle() -> None:
    server = make_server()
    server.receive_data(GET, 0.0)
    respond(server, 1)
    server.data_to_send()
    assert server.send(CloseConnection(), 0.0) == [ConnectionClosed(error=None)]
    assert server.closed


def test_close_connection_with_a_request_in_flight() -> None:
    server = make_server()
    server.receive_data(GET + GET, 0.0)
    assert server.send(CloseConnection(), 0.0) == []
    assert not server.closed
    closing = respond(server, 1, b"last")
    assert closing == [ConnectionClosed(error=None)]  # the pipelined request is not started
    response = parse_one(server.data_to_send())
    assert response.body == b"last"
    assert response.header_tokens(b"connection") == {b"close"}
    assert server.closed


# ---- invalid responses --------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"a\r\nInjected: yes", b"a\nb", b"a\rb"])
def test_response_header_with_crlf_raises(value: bytes) -> None:
    server = make_server()
    server.receive_data(GET, 0.0)
    with pytest.raises(LocalProtocolError) as info:
        server.send(SendResponse(stream_id=1, status=200, headers=[(b"x-bad", value)]), 0.0)
    assert not isinstance(info.value, h11.LocalProtocolError)
    assert info.value.error_status_hint == 500
    assert b"Injected" not in server.data_to_send()
    with pytest.raises(LocalProtocolError):
        validate_response_headers([(b"x-bad", value)])


def test_too_much_data_for_content_length_raises_local_error() -> None:
    server = make_server()
    server.receive_data(GET, 0.0)
    server.send(SendResponse(stream_id=1, status=200, headers=[(b"content-length", b"2")]), 0)
    with pytest.raises(LocalProtocolError):
        server.send(SendData(stream_id=1, data=b"too long", end_stream=True), 0.0)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x", b"a\x00b")],
        [(b"x", b"a\x01b")],
        [(b"x", b"a\x7f")],
        [(b"bad name", b"v")],
        [(b"", b"v")],
        [(b"x:y", b"v")],
        [(b"ok", b"fine"), (b"x", b"\n")],
        # NULs that would line up as separators in the joined form the fast check reads.
        [(b"x", b"a\x00b\x00c")],
        [(b"x", b"a\x00b\x00c"), (b"y", b"z")],
        [(b"x\x00y", b"z\x00w")],
    ],
)
def test_validate_response_headers_refuses(headers) -> None:
    with pytest.raises(LocalProtocolError):
        validate_response_headers(headers)


def test_validate_response_headers_accepts_valid_fields() -> None:
    validate_response_headers(
        [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"x-tab", b"a\tb"),
            (b"x-obs", b"caf\xe9"),
            (b"x-empty", b""),
            (b"x!#$%&'*+-.^_`|~", b"v"),
        ]
    )


# ---- stale and unknown stream ids ---------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        SendResponse(stream_id=7, status=200, headers=[]),
        SendData(stream_id=7, data=b"x", end_stream=True),
        SendInformational(stream_id=7, status=103),
        ResetStream(stream_id=7),
        SendResponse(stream_id=0, status=200, headers=[], end_stream=True),
    ],
)
def test_commands_for_unknown_streams_are_ignored(command) -> None:
    server = make_server()
    server.receive_data(GET, 0.0)
    assert server.send(command, 0.0) == []
    assert server.data_to_send() == b""
    assert not server.closed
    respond(server, 1, b"fine")
    assert parse_one(server.data_to_send()).body == b"fine"


@pytest.mark.parametrize(
    "command",
    [
        SendResponse(stream_id=1, status=200, headers=[]),
        SendData(stream_id=1, data=b"late", end_stream=True),
        SendInformational(stream_id=1, status=100),
        ResetStream(stream_id=1),
    ],
)
def test_commands_for_a_finished_stream_are_ignored(command) -> None:
    server = make_server()
    server.receive_data(GET, 0.0)
    respond(server, 1)
    server.data_to_send()
    assert server.send(command, 0.0) == []
    assert server.data_to_send() == b""
    assert not server.closed
    events = server.receive_data(GET, 1.0)
    assert events[0].stream_id == 2


def test_commands_before_any_request_are_ignored() -> None:
    server = make_server()
    assert server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0) == []
    assert server.send(SendData(stream_id=1, data=b"x", end_stream=True), 0.0) == []
    assert server.data_to_send() == b""
    assert not server.closed


def test_rejection_after_a_head_request_still_has_its_body() -> None:
    """The refused request is not a HEAD: its answer's body must go out (found by the
    state-machine property test; the framing used to carry over from the HEAD before it)."""
    server = make_server()
    events = server.receive_data(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\r\n\r\n", 0.0)
    assert kinds(events) == [RequestReceived, StreamEnded]
    released = respond(server, 1, b"", headers=[(b"x-head", b"1")])
    assert len(released) == 1
    rejected = released[0]
    assert isinstance(rejected, RequestRejected)
    assert answer_rejection(server, rejected) == []
    responses = parse_responses(server.data_to_send(), [b"HEAD", b"GET"], eof=True)
    assert [(r.status, r.body, r.complete) for r in responses] == [
        (200, b"", True),
        (400, b"rejected", True),
    ]
    assert server.closed


def test_small_heads_in_one_read_bigger_than_the_limit_are_accepted() -> None:
    """The head-size limit is per head: a read carrying many small pipelined heads is fine."""
    server = make_server(max_incomplete_size=1000)
    one = b"GET /p HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 150 + b"\r\n\r\n"
    events = server.receive_data(one * 20, 0.0)
    for stream_id in range(1, 21):
        assert kinds(events) == [RequestReceived, StreamEnded], stream_id
        assert events[0].stream_id == stream_id
        events = respond(server, stream_id)
    assert len(parse_responses(server.data_to_send(), [b"GET"] * 20)) == 20


# ---- an Upgrade the server does not take ------------------------------------------------


@pytest.mark.parametrize(
    ("upgrade", "ignored"), [("foo", True), ("websocket", True), (None, False)]
)
def test_unknown_upgrade_is_served_as_plain_http_and_flagged(
    upgrade: str | None, ignored: bool
) -> None:
    # RFC 9110 7.8: a server may ignore Upgrade. It is a plain request (websocket here too:
    # the default Pair serves no WebSockets), flagged so the layer above can log it.
    headers = [("Host", "example.com")]
    if upgrade is not None:
        headers += [("Connection", "Upgrade"), ("Upgrade", upgrade)]
    pair = Pair()
    events = pair.client_send(
        h11.Request(method="GET", target="/", headers=headers), h11.EndOfMessage(), now=1.0
    )
    assert kinds(events) == [RequestReceived, StreamEnded]
    request = events[0]
    assert isinstance(request, RequestReceived)
    assert request.kind is StreamKind.REQUEST
    assert request.upgrade_ignored is ignored
