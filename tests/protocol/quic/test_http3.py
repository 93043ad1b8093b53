"""HTTP/3 over QuicEndpoint, driven by aioquic's own client in memory (see h3helpers.py)."""

from __future__ import annotations

import pytest
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import ErrorCode, FrameType, Setting, encode_frame

from multicorn.protocol.events import (
    AcknowledgeData,
    CloseConnection,
    ConnectionClosed,
    DataReceived,
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
from multicorn.protocol.http3 import HTTP3Limits
from multicorn.protocol.request_head import MalformedHead
from tests.protocol.quic.h3helpers import Pair, Pki


def of_type(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def respond(p: Pair, stream_id: int, body: bytes = b"ok", **kwargs: object) -> None:
    p.send(
        SendResponse(stream_id=stream_id, status=200, headers=[(b"content-type", b"text/plain")]),
        SendData(stream_id=stream_id, data=body, end_stream=True),
    )


def test_handshake_reports_one_connection(pki: Pki) -> None:
    p = Pair(pki)
    assert p.server.alpn_protocol == "h3"
    assert p.server.handshake_complete
    assert p.events() == []
    assert p.endpoint.connections == [p.server]


def test_get(pki: Pki) -> None:
    p = Pair(pki)
    sid = p.request(b"/hello?x=1", extra=[(b"user-agent", b"test"), (b"accept", b"*/*")])
    p.transfer()
    events = p.events()
    assert events == [
        RequestReceived(
            stream_id=sid,
            method=b"GET",
            target=b"/hello?x=1",
            http_version="3",
            headers=[(b"host", b"localhost"), (b"user-agent", b"test"), (b"accept", b"*/*")],
        ),
        StreamEnded(stream_id=sid),
    ]


def test_response_with_body_round_trips(pki: Pki) -> None:
    p = Pair(pki)
    sid = p.request()
    p.transfer()
    p.events()
    body = bytes(range(256)) * 400  # 100 KiB: several packets, flow control windows
    p.send(
        SendResponse(
            stream_id=sid,
            status=200,
            # connection-specific fields are dropped (RFC 9114 4.2)
            headers=[(b"content-type", b"application/octet-stream"), (b"connection", b"close")],
        ),
        SendData(stream_id=sid, data=body[:50000]),
    )
    p.transfer()
    p.send(SendData(stream_id=sid, data=body[50000:], end_stream=True))
    p.transfer()
    head, got, trailers, ended = p.response(sid)
    assert head == [(b":status", b"200"), (b"content-type", b"application/octet-stream")]
    assert got == body
    assert trailers is None
    assert ended


def test_informational_and_trailers(pki: Pki) -> None:
    p = Pair(pki)
    sid = p.request()
    p.transfer()
    p.events()
    p.send(
        SendInformational(stream_id=sid, status=103, headers=[(b"link", b"</a.css>")]),
        SendResponse(stream_id=sid, status=200, headers=[]),
        SendData(stream_id=sid, data=b"body"),
        SendTrailers(stream_id=sid, headers=[(b"x-checksum", b"abc")]),
        # too late for a 1xx: ignored rather than sent as trailers
        SendInformational(stream_id=sid, status=103, headers=[]),
    )
    p.transfer()
    heads = [e.headers for e in p.h3_events if getattr(e, "headers", None)]
    assert heads == [
        [(b":status", b"103"), (b"link", b"</a.css>")],
        [(b":status", b"200")],
        [(b"x-checksum", b"abc")],
    ]
    _head, body, _trailers, ended = p.response(sid)
    assert body == b"body"
    assert ended


def test_fifty_concurrent_streams(pki: Pki) -> None:
    p = Pair(pki)
    sids = [p.request(b"/n/%d" % i) for i in range(50)]
    p.transfer()
    received = of_type(p.events(), RequestReceived)
    assert sorted(e.stream_id for e in received) == sorted(sids)
    assert {e.target for e in received} == {b"/n/%d" % i for i in range(50)}
    for sid in reversed(sids):
        respond(p, sid, b"answer %d" % sid)
    p.transfer()
    for sid in sids:
        assert p.response(sid)[1] == b"answer %d" % sid
    assert p.terminated() is None


def test_requests_whose_packets_arrive_out_of_order(pki: Pki) -> None:
    p = Pair(pki)
    flights = []
    for path in (b"/one", b"/two", b"/three"):
        stream_id = p.request(path)
        datagrams: list = []
        while not datagrams:  # past the client's pacer
            datagrams = p.client.datagrams_to_send(p.now)
            p.now += 0.001
        flights.append((stream_id, datagrams))
    # The last request's packet comes first, the first one's last.
    for _stream_id, datagrams in reversed(flights):
        for data, _addr in datagrams:
            p.endpoint_events += p.endpoint.receive_datagram(data, p.client_addr, p.now)
    received = of_type(p.events(), RequestReceived)
    assert [e.target for e in received] == [b"/three", b"/two", b"/one"]
    for stream_id, _datagrams in flights:
        respond(p, stream_id, b"body")
    p.transfer()
    assert all(p.response(stream_id)[1] == b"body" for stream_id, _ in flights)


def test_post_body(pki: Pki) -> None:
    p = Pair(pki)
    body = b"x" * 30000
    sid = p.request(b"/upload", method=b"POST", body=body, extra=[(b"content-length", b"30000")])
    p.transfer()
    events = p.events()
    assert of_type(events, RequestReceived)[0].method == b"POST"
    assert b"".join(e.data for e in of_type(events, DataReceived)) == body
    assert events[-1] == StreamEnded(stream_id=sid)
    # Acknowledging is accepted (aioquic grants credit by itself) and changes nothing.
    assert p.send(AcknowledgeData(stream_id=sid, amount=len(body))) == []


def test_expect_continue(pki: Pki) -> None:
    p = Pair(pki)
    p.request(method=b"POST", extra=[(b"expect", b"100-continue")], body=b"", end=False)
    p.transfer()
    assert of_type(p.events(), RequestReceived)[0].expects_continue


@pytest.mark.parametrize(
    ("pseudo", "extra"),
    [
        # aioquic's own check (a connection error there, a stream error here)
        (None, [(b"X-Upper", b"1")]),
        (None, [(b"connection", b"keep-alive")]),
        # request_head.py's checks
        (
            [
                (b":method", b"GE T"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", b"/"),
            ],
            [],
        ),
        (None, [(b"x-bad", b"a\x01b")]),
        (
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost")],
            [],
        ),
        (
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", b"/a%zz"),
            ],
            [],
        ),
    ],
    ids=[
        "uppercase-name",
        "connection-specific",
        "method-with-space",
        "control-char",
        "no-path",
        "bad-percent-escape",
    ],
)
def test_malformed_head_costs_only_its_stream(pki: Pki, pseudo: list | None, extra: list) -> None:
    p = Pair(pki)
    bad = p.request(pseudo=pseudo, extra=extra)
    good = p.request(b"/fine")
    p.transfer()
    events = p.events()
    assert [e.stream_id for e in of_type(events, RequestReceived)] == [good]
    assert of_type(events, StreamReset) == []  # the application never knew the bad stream
    assert p.resets()[bad] == ErrorCode.H3_MESSAGE_ERROR
    assert p.stops()[bad] == ErrorCode.H3_MESSAGE_ERROR
    respond(p, good, b"fine")
    p.transfer()
    assert p.response(good)[1] == b"fine"
    assert p.terminated() is None
    # And the connection goes on serving.
    later = p.request(b"/later")
    p.transfer()
    assert [e.target for e in of_type(p.events(), RequestReceived)] == [b"/later"]
    assert later not in p.resets()


def test_malformed_head_with_a_body_to_come(pki: Pki) -> None:
    p = Pair(pki)
    bad = p.request(extra=[(b"X-Upper", b"1"), (b"content-length", b"3")], body=b"abc")
    p.transfer()
    assert p.events() == []
    assert p.resets()[bad] == ErrorCode.H3_MESSAGE_ERROR
    assert p.terminated() is None


def test_body_in_flight_after_a_malformed_head_is_dropped(pki: Pki) -> None:
    p = Pair(pki)
    bad = p.request(method=b"POST", extra=[(b"X-Upper", b"1")], end=False)
    p.client_to_server()  # the server resets the stream, but the client has not heard yet
    assert p.h3 is not None
    p.h3.send_data(bad, b"more body", end_stream=False)
    p.client_to_server()
    p.transfer()
    assert p.events() == []
    assert p.resets()[bad] == ErrorCode.H3_MESSAGE_ERROR
    assert p.terminated() is None
    after = p.request(b"/after")
    p.transfer()
    assert [e.target for e in of_type(p.events(), RequestReceived)] == [b"/after"]
    assert after not in p.resets()


def test_content_length_mismatch_resets_the_stream(pki: Pki) -> None:
    p = Pair(pki)
    sid = p.request(method=b"POST", extra=[(b"content-length", b"10")], body=b"abc")
    p.transfer()
    events = p.events()
    assert of_type(events, RequestReceived)
    assert StreamReset(stream_id=sid) in events
    assert p.resets()[sid] == ErrorCode.H3_MESSAGE_ERROR
    assert p.terminated() is None


def test_unservable_request_is_rejected_on_its_stream(pki: Pki) -> None:
    p = Pair(pki)
    sid = p.request(pseudo=[(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
    p.transfer()
    (event,) = p.events()
    assert isinstance(event, RequestRejected)
    assert event.stream_id == sid
    assert event.error.error_status_hint == 501
    respond(p, sid, b"no proxy here")
    p.transfer()
    assert p.response(sid)[0][0] == (b":status", b"200")


def test_unknown_method_is_answered_501_as_on_every_version(pki: Pki) -> None:
    p = Pair(pki)
    sid = p.request(method=b"FOO")
    p.transfer()
    (event,) = p.events()
    assert isinstance(event, RequestRejected)
    assert event.stream_id == sid
    assert event.error.error_status_hint == 501
    assert not isinstance(event.error, MalformedHead)


def test_client_reset_reaches_the_application(pki: Pki) -> None:
    p = Pair(pki)
    sid = p.request(method=b"POST", body=b"part", end=False)
    p.transfer()
    p.events()
    p.client.reset_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
    p.client.stop_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
    p.transfer()
    assert p.events() == [StreamReset(stream_id=sid)]
    # Commands for it afterwards are dropped quietly.
    assert p.send(SendResponse(stream_id=sid, status=200, headers=[])) == []


def test_reset_stream_command(pki: Pki) -> None:
    p = Pair(pki)
    sid = p.request()
    other = p.request()
    p.transfer()
    p.events()
    p.send(SendResponse(stream_id=sid, status=200, headers=[]), ResetStream(stream_id=sid))
    respond(p, other)
    p.transfer()
    assert p.resets()[sid] == ErrorCode.H3_INTERNAL_ERROR
    assert p.response(other)[1] == b"ok"


def test_pending_send_counts_what_flow_control_holds(pki: Pki) -> None:
    p = Pair(pki)
    sid = p.request()
    p.transfer()
    p.events()
    big = b"z" * (1536 * 1024)  # more than the client's 1 MiB stream window
    p.send(SendResponse(stream_id=sid, status=200, headers=[]), SendData(stream_id=sid, data=big))
    assert p.server.pending_send(sid) >= len(big)
    p.transfer()
    # The client's window lets part of it out; aioquic's client grants more as it receives.
    assert p.server.pending_send(sid) < len(big)
    p.send(SendData(stream_id=sid, data=b"", end_stream=True))
    p.transfer()
    assert p.response(sid)[1] == big
    assert p.server.pending_send(sid) == 0


def test_close_connection_sends_goaway_and_finishes_in_flight(pki: Pki) -> None:
    p = Pair(pki)
    first = p.request()
    p.transfer()
    p.events()
    assert p.send(CloseConnection()) == []
    p.transfer()
    # RFC 9114 5.2: GOAWAY on the server's control stream (stream 3), naming stream 4, the
    # first request not served.
    control = p.server_stream_bytes(3)
    assert encode_frame(FrameType.GOAWAY, encode_uint_var(first + 4)) in control
    assert not p.server.closed
    # A request the client opens anyway is refused, safe to retry.
    late = p.request(b"/late")
    p.transfer()
    assert p.events() == []
    assert p.resets()[late] == ErrorCode.H3_REQUEST_REJECTED
    # The accepted one finishes, then the connection closes cleanly.
    respond(p, first, b"last")
    p.transfer()
    assert p.response(first)[1] == b"last"
    assert p.server.closed
    p.advance(5.0)  # the closing and draining periods (RFC 9000 10.2) end
    end = p.terminated()
    assert end is not None
    assert end.error_code == ErrorCode.H3_NO_ERROR
    assert p.events() == [ConnectionClosed()]
    assert p.endpoint.connections == []


def test_close_connection_when_idle_closes_at_once(pki: Pki) -> None:
    p = Pair(pki)
    p.send(CloseConnection())
    p.transfer()
    assert encode_frame(FrameType.GOAWAY, encode_uint_var(0)) in p.server_stream_bytes(3)
    assert p.server.closed
    p.advance(5.0)
    assert p.terminated() is not None
    assert p.endpoint.connections == []


def test_a_drain_does_not_wait_long_for_a_client_that_vanished(pki: Pki) -> None:
    p = Pair(pki)
    p.send(CloseConnection())
    # Nothing reaches the client any more, so nothing is acknowledged; only the server's
    # timers (loss detection re-sending the GOAWAY) run.
    now = p.now
    for _ in range(40):
        now += 0.1
        p.endpoint.handle_deadline(now)
        p.endpoint.datagrams_to_send(now)
        if p.server.closed:
            break
    assert p.server.closed
    assert now - p.now <= 2.5  # _ACK_PATIENCE (1 s) and the next loss timer after it


def test_idle_timeout_closes_without_error(pki: Pki) -> None:
    p = Pair(pki)
    sid = p.request(method=b"POST", body=b"x", end=False)
    p.transfer()
    p.events()
    for _ in range(40):
        p.advance(1.0)
    events = p.events()
    assert events == [StreamReset(stream_id=sid), ConnectionClosed()]
    assert p.endpoint.connections == []


def test_websocket_extended_connect(pki: Pki) -> None:
    p = Pair(pki, limits=HTTP3Limits(extended_connect=True))
    assert p.h3 is not None
    assert p.h3.received_settings is not None
    assert p.h3.received_settings.get(Setting.ENABLE_CONNECT_PROTOCOL) == 1
    sid = p.request(
        pseudo=[
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":path", b"/chat"),
            (b":authority", b"localhost"),
        ],
        extra=[(b"sec-websocket-version", b"13")],
        end=False,
    )
    p.transfer()
    (event,) = p.events()
    assert isinstance(event, RequestReceived)
    assert event.kind is StreamKind.WEBSOCKET
    assert event.method == b"CONNECT"
    assert event.target == b"/chat"
    # Accepted: from then on the stream carries bytes both ways.
    p.send(SendResponse(stream_id=sid, status=200, headers=[]))
    p.send(SendData(stream_id=sid, data=b"\x81\x02hi"))
    assert p.h3 is not None
    p.h3.send_data(sid, b"\x81\x82abcd\x09\x0b", end_stream=False)
    p.transfer()
    assert p.events() == [DataReceived(stream_id=sid, data=b"\x81\x82abcd\x09\x0b")]
    assert p.response(sid)[1] == b"\x81\x02hi"


def test_extended_connect_is_off_by_default(pki: Pki) -> None:
    p = Pair(pki)
    assert p.h3 is not None
    assert p.h3.received_settings is not None
    assert Setting.ENABLE_CONNECT_PROTOCOL not in p.h3.received_settings
    sid = p.request(
        pseudo=[
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":path", b"/chat"),
            (b":authority", b"localhost"),
        ],
        end=False,
    )
    p.transfer()
    assert p.events() == []
    assert p.resets()[sid] == ErrorCode.H3_MESSAGE_ERROR


def test_protocol_shape(pki: Pki) -> None:
    p = Pair(pki)
    server = p.server
    assert server.multiplexed
    assert server.data_to_send() == b""
    assert server.next_deadline() is None
    assert server.handle_deadline(p.now) == []
    assert server.wants_read
    assert not server.closed
    assert server.pending_send(0) == 0
