"""Sans-IO tests of the HTTP/2 server core, driven by a real h2 client.

Bytes and commands go in, events and bytes come out; the client side is h2 in the client role
(see h2helpers), so every frame the server writes is parsed by an independent implementation.
Frames no well-behaved client sends (floods, hand-built CONTINUATION chains, PRIORITY_UPDATE)
are built by hand.
"""

from __future__ import annotations

import contextlib

import h2.events
import h2.exceptions
import hpack
import pytest
from h2.settings import SettingCodes
from hyperframe.frame import (
    DataFrame,
    GoAwayFrame,
    PingFrame,
    PriorityFrame,
    SettingsFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multicorn.protocol.errors import PeerAbuse, RemoteProtocolError
from multicorn.protocol.events import (
    AcknowledgeData,
    CloseConnection,
    ConnectionClosed,
    DataReceived,
    Event,
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
from multicorn.protocol.http2 import PREFACE, HTTP2Limits, HTTP2Protocol

from .h2helpers import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    MAX_STREAM_ID,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Pair,
    body_of,
    client_body,
    continuation_frame,
    empty_data_frame,
    goaways,
    headers_frame,
    merge_data,
    of_type,
    parse_frames,
    pings,
    priority_update,
    raw_frame,
    request_headers,
    resets,
)

KB = 1024


def kinds(events: list) -> list[type]:
    return [type(event) for event in events]


def closed_event(events: list[Event]) -> ConnectionClosed:
    closes = of_type(events, ConnectionClosed)
    assert len(closes) == 1, events
    assert events[-1] is closes[0], "ConnectionClosed must be the last event"
    return closes[0]


# ---- simple exchanges ---------------------------------------------------------------------


def test_settings_advertise_the_limits() -> None:
    p = Pair(
        max_concurrent_streams=7,
        max_header_list_size=3000,
        initial_window_size=1000,
        max_inbound_frame_size=32 * KB,
        connection_window_size=2 * 1024 * KB,
    )
    remote = p.client.remote_settings
    assert remote.max_concurrent_streams == 7
    assert remote.max_header_list_size == 3000
    assert remote.initial_window_size == 1000
    assert remote.max_frame_size == 32 * KB
    # The connection window starts at 65535 and is raised by a WINDOW_UPDATE on stream 0.
    assert p.client.outbound_flow_control_window == 2 * 1024 * KB


def test_simple_get_request_events() -> None:
    p = Pair()
    events = p.request(1, b"/search?q=h2", extra=[(b"user-agent", b"test/1.0")])
    assert events == [
        RequestReceived(
            stream_id=1,
            method=b"GET",
            target=b"/search?q=h2",
            http_version="2",
            headers=[(b"host", b"example.com"), (b"user-agent", b"test/1.0")],
            expects_continue=False,
        ),
        StreamEnded(stream_id=1),
    ]


def test_bodyless_request_ends_exactly_once() -> None:
    # h2 reports a HEADERS frame with END_STREAM as RequestReceived *and* StreamEnded; the
    # application must hear about the end of the request body once.
    p = Pair()
    events = p.request(1)
    assert kinds(events).count(StreamEnded) == 1, events


def test_simple_get_response_reaches_the_client() -> None:
    p = Pair()
    events = p.request(1, b"/index.html")
    request = events[0]
    assert isinstance(request, RequestReceived)
    assert request.method == b"GET"
    assert request.target == b"/index.html"
    assert request.http_version == "2"
    assert not any(name.startswith(b":") for name, _ in request.headers)
    assert request.headers[0] == (b"host", b"example.com")
    assert StreamEnded(stream_id=1) in events

    assert (
        p.server.send(
            SendResponse(stream_id=1, status=200, headers=[(b"content-type", b"text/plain")]), 0.0
        )
        == []
    )
    assert p.server.send(SendData(stream_id=1, data=b"hello", end_stream=True), 0.0) == []
    _, client_events = p.pump()
    responses = of_type(client_events, h2.events.ResponseReceived)
    assert len(responses) == 1
    assert responses[0].stream_id == 1
    assert responses[0].headers == [(b":status", b"200"), (b"content-type", b"text/plain")]
    assert client_body(client_events, 1) == b"hello"
    assert [e.stream_id for e in of_type(client_events, h2.events.StreamEnded)] == [1]
    assert p.server.pending_send(1) == 0
    assert not p.server.closed


def test_authority_becomes_the_first_and_only_host_header() -> None:
    p = Pair()
    events = p.request(1, extra=[(b"accept", b"*/*"), (b"host", b"example.com")])
    request = events[0]
    assert isinstance(request, RequestReceived)
    assert request.headers == [(b"host", b"example.com"), (b"accept", b"*/*")]


def test_host_header_is_kept_without_authority() -> None:
    p = Pair()
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/"),
        (b"host", b"fallback.example"),
    ]
    p.client.send_headers(1, headers, end_stream=True)
    request = p.to_server()[0]
    assert isinstance(request, RequestReceived)
    assert request.headers == [(b"host", b"fallback.example")]


def test_expect_100_continue_is_reported() -> None:
    p = Pair()
    events = p.request(1, method=b"POST", extra=[(b"expect", b"100-continue")], end_stream=False)
    request = events[0]
    assert isinstance(request, RequestReceived)
    assert request.expects_continue is True
    p.server.send(SendInformational(stream_id=1, status=100), 0.0)
    _, client_events = p.pump()
    informational = of_type(client_events, h2.events.InformationalResponseReceived)
    assert [e.headers for e in informational] == [[(b":status", b"100")]]


def test_request_is_parsed_the_same_when_fed_one_byte_at_a_time() -> None:
    p = Pair(handshake=False)
    p.client.send_headers(1, request_headers(b"/upload", b"POST"), end_stream=False)
    p.client.send_data(1, b"abc")
    p.client.send_data(1, b"defgh", end_stream=True)
    data = p.client.data_to_send()
    assert data.startswith(PREFACE)
    events: list[Event] = []
    for i in range(len(data)):
        events += p.server.receive_data(data[i : i + 1], 0.0)
    assert merge_data(events) == [
        RequestReceived(
            stream_id=1,
            method=b"POST",
            target=b"/upload",
            http_version="2",
            headers=[(b"host", b"example.com")],
        ),
        DataReceived(stream_id=1, data=b"abcdefgh"),
        StreamEnded(stream_id=1),
    ]


# ---- request bodies and inbound flow control -----------------------------------------------


def test_post_body_split_over_several_data_frames() -> None:
    p = Pair()
    chunks = [b"first-", b"x" * 5000, b"-middle-", bytes(range(256)) * 10, b"-last"]
    p.client.send_headers(1, request_headers(b"/upload", b"POST"), end_stream=False)
    events = p.to_server()
    assert kinds(events) == [RequestReceived]
    for i, chunk in enumerate(chunks):
        p.client.send_data(1, chunk, end_stream=i == len(chunks) - 1)
        events += p.to_server()
    assert kinds(events).count(DataReceived) >= len(chunks)
    assert body_of(events, 1) == b"".join(chunks)
    assert events[-1] == StreamEnded(stream_id=1)
    assert kinds(events).count(StreamEnded) == 1


def test_inbound_stream_window_reopens_only_on_acknowledge() -> None:
    p = Pair(initial_window_size=1000)
    p.request(1, method=b"POST", end_stream=False)
    assert p.client.local_flow_control_window(1) == 1000
    p.client.send_data(1, b"a" * 1000)
    events = p.to_server()
    assert body_of(events, 1) == b"a" * 1000
    p.pump()  # nothing the server says on its own may reopen the window
    assert p.client.local_flow_control_window(1) == 0
    with pytest.raises(h2.exceptions.FlowControlError):
        p.client.send_data(1, b"b")

    assert p.server.send(AcknowledgeData(stream_id=1, amount=600), 0.0) == []
    p.pump()
    assert p.client.local_flow_control_window(1) == 600
    p.client.send_data(1, b"b" * 600, end_stream=True)
    events = p.to_server()
    assert body_of(events, 1) == b"b" * 600
    assert events[-1] == StreamEnded(stream_id=1)


def test_inbound_connection_window_reopens_on_acknowledge() -> None:
    p = Pair(initial_window_size=65535, connection_window_size=65535)
    p.request(1, method=b"POST", end_stream=False)
    p.request(3, method=b"POST", end_stream=False)
    assert p.client.outbound_flow_control_window == 65535
    p.client.send_data(1, b"1" * 16384)
    p.client.send_data(1, b"1" * 16384)
    p.client.send_data(1, b"1" * 7232)
    p.client.send_data(3, b"3" * 16384)
    p.client.send_data(3, b"3" * 9151)
    events = p.to_server()
    assert len(body_of(events, 1)) == 40000
    assert len(body_of(events, 3)) == 25535
    p.pump()
    assert p.client.outbound_flow_control_window == 0
    assert p.client.local_flow_control_window(3) == 0  # stream 3 has window, the connection not

    p.server.send(AcknowledgeData(stream_id=1, amount=40000), 0.0)
    p.pump()
    assert p.client.outbound_flow_control_window == 40000
    assert p.client.local_flow_control_window(3) == 40000


def test_padding_is_returned_without_an_acknowledge() -> None:
    p = Pair(initial_window_size=1000)
    p.request(1, method=b"POST", end_stream=False)
    # 744 data bytes + 1 pad-length byte + 255 padding bytes = the whole window.
    p.client.send_data(1, b"d" * 744, pad_length=255)
    events = p.to_server()
    assert body_of(events, 1) == b"d" * 744
    p.pump()
    # The padding never reaches the application, so the server gives it back by itself...
    assert p.client.local_flow_control_window(1) == 256
    # ...and the data bytes once the application has consumed them.
    p.server.send(AcknowledgeData(stream_id=1, amount=744), 0.0)
    p.pump()
    assert p.client.local_flow_control_window(1) == 1000


def test_data_beyond_the_window_is_a_connection_error() -> None:
    p = Pair(initial_window_size=100)
    p.request(1, method=b"POST", end_stream=False)
    p.client.send_data(1, b"a" * 100)
    p.to_server()
    p.to_client()
    # The client ignores the exhausted window (h2 refuses to, so the frame is built by hand).
    events = p.to_server(DataFrame(1, data=b"a" * 50).serialize())
    closed = closed_event(events)
    assert isinstance(closed.error, RemoteProtocolError)
    assert StreamReset(stream_id=1) in events
    assert p.server.closed
    frames = parse_frames(p.server.data_to_send())
    assert [g.error_code for g in goaways(frames)] == [0x3]  # FLOW_CONTROL_ERROR


def test_fifty_concurrent_streams_interleaved() -> None:
    p = Pair()
    stream_ids = list(range(1, 101, 2))
    for sid in stream_ids:
        p.client.send_headers(sid, request_headers(f"/s/{sid}".encode(), b"POST"))
    events = p.to_server()
    for part in range(3):
        for sid in stream_ids:
            p.client.send_data(sid, f"<{sid}:{part}>".encode(), end_stream=part == 2)
        events += p.to_server()

    requests = of_type(events, RequestReceived)
    assert [r.stream_id for r in requests] == stream_ids
    assert [r.target for r in requests] == [f"/s/{sid}".encode() for sid in stream_ids]
    for sid in stream_ids:
        assert body_of(events, sid) == f"<{sid}:0><{sid}:1><{sid}:2>".encode()
    assert sorted(e.stream_id for e in of_type(events, StreamEnded)) == stream_ids

    # Answer in reverse order, each with its own body.
    for sid in reversed(stream_ids):
        p.server.send(SendResponse(stream_id=sid, status=200, headers=[]), 0.0)
    for sid in reversed(stream_ids):
        p.server.send(SendData(stream_id=sid, data=f"response {sid}".encode() * 50), 0.0)
        p.server.send(SendData(stream_id=sid, data=b"", end_stream=True), 0.0)
    _, client_events = p.pump()
    assert sorted(r.stream_id for r in of_type(client_events, h2.events.ResponseReceived)) == (
        stream_ids
    )
    for sid in stream_ids:
        assert client_body(client_events, sid) == f"response {sid}".encode() * 50
    ended = [e.stream_id for e in of_type(client_events, h2.events.StreamEnded)]
    assert sorted(ended) == stream_ids
    assert p.server.next_deadline() == 5.0  # every stream is finished: the idle clock runs


# ---- outbound flow control and scheduling ------------------------------------------------------


def test_outbound_data_waits_for_the_client_window() -> None:
    p = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 100})
    p.request(1)
    p.server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0)
    p.server.send(SendData(stream_id=1, data=bytes(range(250)) * 4, end_stream=True), 0.0)
    body = bytes(range(250)) * 4
    _, client_events = p.pump()
    assert client_body(client_events, 1) == body[:100]
    assert not of_type(client_events, h2.events.StreamEnded)
    assert p.server.pending_send(1) == 900

    p.client.acknowledge_received_data(100, 1)  # a WINDOW_UPDATE of 100 for the stream
    _, client_events = p.pump()
    assert client_body(client_events, 1) == body[100:200]
    assert p.server.pending_send(1) == 800

    p.client.increment_flow_control_window(800, stream_id=1)
    _, client_events = p.pump()
    assert client_body(client_events, 1) == body[200:]
    assert [e.stream_id for e in of_type(client_events, h2.events.StreamEnded)] == [1]
    assert p.server.pending_send(1) == 0


def test_send_timeout_resets_a_stream_whose_window_never_opens() -> None:
    p = Pair(
        client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 100},
        send_timeout=10.0,
        keep_alive_timeout=5.0,
    )
    p.request(1, now=1.0)
    assert p.server.next_deadline() is None  # an open stream with nothing blocked
    p.server.send(SendResponse(stream_id=1, status=200, headers=[]), 2.0)
    p.server.send(SendData(stream_id=1, data=b"z" * 1000, end_stream=True), 2.0)
    p.pump(now=2.0)
    assert p.server.pending_send(1) == 900
    assert p.server.next_deadline() == 12.0
    assert p.server.handle_deadline(11.9) == []
    assert p.server.data_to_send() == b""

    assert p.server.handle_deadline(12.0) == [StreamReset(stream_id=1)]
    client_events = p.to_client()
    reset = of_type(client_events, h2.events.StreamReset)
    assert [(e.stream_id, e.error_code) for e in reset] == [(1, CANCEL)]
    assert p.server.pending_send(1) == 0
    assert p.server.send(SendData(stream_id=1, data=b"late"), 12.5) == []
    assert p.server.data_to_send() == b""
    assert not p.server.closed
    assert p.server.next_deadline() == 17.0  # now idle


def test_send_timeout_restarts_while_data_moves() -> None:
    p = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 100}, send_timeout=10.0)
    p.request(1)
    p.server.send(SendResponse(stream_id=1, status=200, headers=[]), 2.0)
    p.server.send(SendData(stream_id=1, data=b"z" * 1000, end_stream=True), 2.0)
    p.pump(now=2.0)
    assert p.server.next_deadline() == 12.0
    p.client.increment_flow_control_window(100, stream_id=1)
    p.pump(now=8.0)
    assert p.server.pending_send(1) == 800
    assert p.server.next_deadline() == 18.0
    assert p.server.handle_deadline(12.0) == []
    assert p.server.pending_send(1) == 800


def test_send_timeout_spares_a_stream_waiting_its_turn_while_others_move() -> None:
    # Stream 3 is held by the connection window, then waits behind stream 1 (non-incremental
    # streams go one at a time, RFC 9218 10) while the client keeps reading, slowly. Waiting
    # its turn is not a peer that stopped reading: it must not be reset.
    p = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20}, send_timeout=10.0)
    for sid in (1, 3, 5):
        p.request(sid)
    _queue_behind_an_exhausted_connection_window(p, 5)
    for sid, size in ((1, 200 * KB), (3, 400 * KB)):
        p.server.send(SendResponse(stream_id=sid, status=200, headers=[]), 0.0)
        p.server.send(SendData(stream_id=sid, data=bytes([sid]) * size, end_stream=True), 0.0)
    p.pump(now=0.0)
    got = {1: 0, 3: 0}
    for step in range(1, 30):
        now = step * 3.0  # 16 KB every 3 seconds
        events = p.server.handle_deadline(now)
        assert events == [], (now, events)
        p.client.increment_flow_control_window(16 * KB)
        _, client_events = p.pump(now=now)
        for sid in got:
            got[sid] += len(client_body(client_events, sid))
    assert got[1] == 200 * KB
    assert got[3] > 0
    assert not of_type(p.client_events, h2.events.StreamReset)
    # A connection that stops moving altogether still times out.
    deadline = p.server.next_deadline()
    assert deadline is not None and deadline <= 29 * 3.0 + 10.0
    assert p.server.handle_deadline(29 * 3.0 + 10.0) == [StreamReset(stream_id=3)]


def _queue_behind_an_exhausted_connection_window(p: Pair, filler: int) -> None:
    """Use up the client's 65535-byte connection window with `filler`'s response."""
    p.server.send(SendResponse(stream_id=filler, status=200, headers=[]), 0.0)
    p.server.send(SendData(stream_id=filler, data=b"f" * 65535, end_stream=True), 0.0)
    _, client_events = p.pump()
    assert len(client_body(client_events, filler)) == 65535
    assert p.client.inbound_flow_control_window == 0  # nothing more can move until it opens


def test_round_robin_between_incremental_streams_of_one_urgency() -> None:
    # Stream windows are large; only the connection window (opened 16 KB at a time, one frame's
    # worth) limits the server. Both streams are incremental (RFC 9218 4.2), so both must make
    # progress: neither waits for the other to finish.
    p = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    for sid in (1, 3):
        p.request(sid, extra=[(b"priority", b"i")])
    p.request(5)
    _queue_behind_an_exhausted_connection_window(p, 5)
    size = 100 * KB
    for sid in (1, 3):
        p.server.send(SendResponse(stream_id=sid, status=200, headers=[]), 0.0)
        p.server.send(SendData(stream_id=sid, data=bytes([sid]) * size, end_stream=True), 0.0)
    _, client_events = p.pump()
    assert client_body(client_events, 1) == client_body(client_events, 3) == b""

    got = {1: 0, 3: 0}
    history = []
    for _ in range(20):
        p.client.increment_flow_control_window(16 * KB)
        _, client_events = p.pump()
        for sid in got:
            got[sid] += len(client_body(client_events, sid))
        history.append(dict(got))
        if got[1] == size and got[3] == size:
            break
    assert got == {1: size, 3: size}
    for step in history:
        if step[1] < size and step[3] < size:
            assert abs(step[1] - step[3]) <= 16 * KB, history
    first_done = next(step for step in history if size in step.values())
    assert min(first_done.values()) >= size - 2 * 16 * KB, history


def test_non_incremental_streams_are_served_one_at_a_time_in_stream_id_order() -> None:
    # RFC 9218 10: non-incremental responses of one urgency are served in ascending stream id
    # order, each in full, whatever order the application produced them in. Incremental is
    # off by default (RFC 9218 4.2).
    p = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    for sid in (1, 3, 5, 7):
        p.request(sid)
    _queue_behind_an_exhausted_connection_window(p, 1)
    for sid in (7, 5, 3):
        p.server.send(SendResponse(stream_id=sid, status=200, headers=[]), 0.0)
        p.server.send(SendData(stream_id=sid, data=bytes([sid]) * 40000, end_stream=True), 0.0)
    p.pump()
    all_events: list = []
    for _ in range(12):
        p.client.increment_flow_control_window(16 * KB)
        _, client_events = p.pump()
        all_events += client_events
    for sid in (3, 5, 7):
        assert client_body(all_events, sid) == bytes([sid]) * 40000
    order = [e.stream_id for e in all_events if isinstance(e, h2.events.DataReceived)]
    assert order == sorted(order), order


def test_non_incremental_stream_held_by_its_window_lets_the_next_through() -> None:
    p = Pair()
    p.request(1)
    p.request(3)
    p.client.increment_flow_control_window(100_000)
    for sid in (1, 3):
        p.server.send(SendResponse(stream_id=sid, status=200, headers=[]), 0.0)
        p.server.send(SendData(stream_id=sid, data=bytes([sid]) * 70000, end_stream=True), 0.0)
    _, client_events = p.pump()
    # Stream 1 used its whole 65535-byte stream window; stream 3 used its own from what is
    # left of the connection's, rather than waiting for stream 1 to finish.
    assert len(client_body(client_events, 1)) == 65535
    assert len(client_body(client_events, 3)) == 65535


def test_incremental_streams_share_with_the_current_non_incremental_one() -> None:
    p = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    p.request(1)
    p.request(3)
    p.request(5)
    p.request(7, extra=[(b"priority", b"u=3, i")])
    _queue_behind_an_exhausted_connection_window(p, 1)
    for sid in (3, 5, 7):
        p.server.send(SendResponse(stream_id=sid, status=200, headers=[]), 0.0)
        p.server.send(SendData(stream_id=sid, data=bytes([sid]) * 40000, end_stream=True), 0.0)
    p.pump()
    p.client.increment_flow_control_window(4 * 16 * KB)
    _, client_events = p.pump()
    # Two rounds: stream 3 (the first non-incremental) and stream 7 (incremental) alternate;
    # stream 5 waits for stream 3 to finish.
    assert len(client_body(client_events, 3)) == 2 * 16 * KB
    assert len(client_body(client_events, 7)) == 2 * 16 * KB
    assert client_body(client_events, 5) == b""


def test_priority_update_can_make_a_stream_incremental() -> None:
    p = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    for sid in (1, 3, 5):
        p.request(sid)
    _queue_behind_an_exhausted_connection_window(p, 1)
    for sid in (3, 5):
        p.server.send(SendResponse(stream_id=sid, status=200, headers=[]), 0.0)
        p.server.send(SendData(stream_id=sid, data=bytes([sid]) * 40000, end_stream=True), 0.0)
    p.pump()
    # Stream 5 is queued behind stream 3; as an incremental stream it gets its turns at once.
    assert p.to_server(priority_update(5, b"i")) == []
    p.client.increment_flow_control_window(2 * 16 * KB)
    _, client_events = p.pump()
    assert len(client_body(client_events, 3)) == len(client_body(client_events, 5)) == 16 * KB


def test_lower_urgency_value_is_served_first() -> None:
    p = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    p.request(1)
    p.request(3)  # default urgency 3
    p.request(5, extra=[(b"priority", b"u=0")])
    _queue_behind_an_exhausted_connection_window(p, 1)
    for sid in (3, 5):  # the default-urgency stream queues first
        p.server.send(SendResponse(stream_id=sid, status=200, headers=[]), 0.0)
        p.server.send(SendData(stream_id=sid, data=bytes([sid]) * 40000, end_stream=True), 0.0)
    p.pump()
    _assert_served_first(p, first=5, second=3, size=40000)


def _assert_served_first(p: Pair, *, first: int, second: int, size: int) -> None:
    all_events: list = []
    p.client.increment_flow_control_window(16 * KB)  # room for exactly one frame
    _, client_events = p.pump()
    assert client_body(client_events, first) == bytes([first]) * 16 * KB
    assert client_body(client_events, second) == b""
    all_events += client_events
    for _ in range(10):
        p.client.increment_flow_control_window(16 * KB)
        _, client_events = p.pump()
        all_events += client_events
    assert client_body(all_events, first) == bytes([first]) * size
    assert client_body(all_events, second) == bytes([second]) * size
    order = [
        e.stream_id
        for e in all_events
        if isinstance(e, (h2.events.DataReceived, h2.events.StreamEnded))
    ]
    # Every frame of the urgent stream, through its end, comes before the other's first frame.
    assert order.index(second) > max(i for i, sid in enumerate(order) if sid == first)


@pytest.mark.parametrize("value", [b"u=0", b"u=1, i"])
def test_priority_update_frame_changes_the_urgency(value: bytes) -> None:
    p = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    for sid in (1, 3, 5):
        p.request(sid)
    _queue_behind_an_exhausted_connection_window(p, 1)
    assert p.to_server(priority_update(5, value)) == []
    for sid in (3, 5):
        p.server.send(SendResponse(stream_id=sid, status=200, headers=[]), 0.0)
        p.server.send(SendData(stream_id=sid, data=bytes([sid]) * 40000, end_stream=True), 0.0)
    p.pump()
    _assert_served_first(p, first=5, second=3, size=40000)


def test_priority_update_can_lower_the_urgency() -> None:
    p = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    p.request(1)
    p.request(3, extra=[(b"priority", b"u=1")])
    p.request(5, extra=[(b"priority", b"u=2")])
    _queue_behind_an_exhausted_connection_window(p, 1)
    p.to_server(priority_update(3, b"u=7"))
    for sid in (3, 5):
        p.server.send(SendResponse(stream_id=sid, status=200, headers=[]), 0.0)
        p.server.send(SendData(stream_id=sid, data=bytes([sid]) * 40000, end_stream=True), 0.0)
    p.pump()
    _assert_served_first(p, first=5, second=3, size=40000)


# ---- trailers, informational responses, push ---------------------------------------------------


def test_trailers_end_the_stream() -> None:
    p = Pair()
    p.request(1, extra=[(b"te", b"trailers")])
    p.server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0)
    p.server.send(SendData(stream_id=1, data=b"body", end_stream=False), 0.0)
    p.server.send(SendTrailers(stream_id=1, headers=[(b"x-checksum", b"abc123")]), 0.0)
    _, client_events = p.pump()
    assert client_body(client_events, 1) == b"body"
    trailers = of_type(client_events, h2.events.TrailersReceived)
    assert [(t.stream_id, t.headers) for t in trailers] == [(1, [(b"x-checksum", b"abc123")])]
    assert [e.stream_id for e in of_type(client_events, h2.events.StreamEnded)] == [1]
    # Nothing after the trailers.
    assert p.server.send(SendData(stream_id=1, data=b"more"), 0.0) == []
    assert p.server.data_to_send() == b""


def test_trailers_wait_behind_flow_controlled_data() -> None:
    p = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 10})
    p.request(1)
    p.server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0)
    p.server.send(SendData(stream_id=1, data=b"0123456789abcdef"), 0.0)
    p.server.send(SendTrailers(stream_id=1, headers=[(b"x-done", b"1")]), 0.0)
    _, client_events = p.pump()
    assert client_body(client_events, 1) == b"0123456789"
    assert not of_type(client_events, h2.events.TrailersReceived)
    p.client.increment_flow_control_window(10, stream_id=1)
    _, client_events = p.pump()
    assert client_body(client_events, 1) == b"abcdef"
    assert [t.headers for t in of_type(client_events, h2.events.TrailersReceived)] == [
        [(b"x-done", b"1")]
    ]


def test_early_hints() -> None:
    p = Pair()
    p.request(1)
    link = (b"link", b"</style.css>; rel=preload; as=style")
    p.server.send(SendInformational(stream_id=1, status=103, headers=[link]), 0.0)
    _, client_events = p.pump()
    hints = of_type(client_events, h2.events.InformationalResponseReceived)
    assert [(h.stream_id, h.headers) for h in hints] == [(1, [(b":status", b"103"), link])]
    assert not of_type(client_events, h2.events.ResponseReceived)
    p.respond(1, b"page")
    _, client_events = p.pump()
    assert [r.headers for r in of_type(client_events, h2.events.ResponseReceived)] == [
        [(b":status", b"200")]
    ]
    assert client_body(client_events, 1) == b"page"


def test_push_promise() -> None:
    p = Pair()
    p.request(1, b"/index.html")
    events = p.server.send(
        PushPromise(stream_id=1, path=b"/style.css", headers=[(b"accept", b"text/css")]), 0.0
    )
    assert events == [
        RequestReceived(
            stream_id=2,
            method=b"GET",
            target=b"/style.css",
            http_version="2",
            headers=[(b"host", b"example.com"), (b"accept", b"text/css")],
        ),
        StreamEnded(stream_id=2),
    ]
    _, client_events = p.pump()
    pushed = of_type(client_events, h2.events.PushedStreamReceived)
    assert len(pushed) == 1
    assert pushed[0].pushed_stream_id == 2
    assert pushed[0].parent_stream_id == 1
    assert (b":path", b"/style.css") in pushed[0].headers
    assert (b":authority", b"example.com") in pushed[0].headers
    assert (b":method", b"GET") in pushed[0].headers

    p.respond(2, b"body{}", headers=[(b"content-type", b"text/css")])
    p.respond(1, b"<html>")
    _, client_events = p.pump()
    assert client_body(client_events, 2) == b"body{}"
    assert client_body(client_events, 1) == b"<html>"
    assert sorted(e.stream_id for e in of_type(client_events, h2.events.StreamEnded)) == [1, 2]

    # A second promise gets the next even id.
    p.request(3)
    events = p.server.send(PushPromise(stream_id=3, path=b"/app.js", headers=[]), 0.0)
    assert isinstance(events[0], RequestReceived)
    assert events[0].stream_id == 4


def test_no_push_when_the_client_disabled_it() -> None:
    p = Pair(client_settings={SettingCodes.ENABLE_PUSH: 0})
    p.request(1)
    assert p.server.send(PushPromise(stream_id=1, path=b"/style.css", headers=[]), 0.0) == []
    assert p.server.data_to_send() == b""


def test_no_push_beyond_the_clients_concurrency_limit() -> None:
    # RFC 9113 8.4: a SETTINGS_MAX_CONCURRENT_STREAMS of zero prevents the server from opening
    # the streams a push needs.
    p = Pair(client_settings={SettingCodes.MAX_CONCURRENT_STREAMS: 0})
    p.request(1)
    assert p.client.local_settings.max_concurrent_streams == 0
    assert p.server.send(PushPromise(stream_id=1, path=b"/style.css", headers=[]), 0.0) == []
    assert p.server.data_to_send() == b""


def test_push_from_a_pushed_stream_is_dropped_not_raised() -> None:
    # The application serving a promised request gets the push extension too (its
    # RequestReceived says HTTP/2); a push from there must not blow up the connection.
    p = Pair()
    p.request(1)
    events = p.server.send(PushPromise(stream_id=1, path=b"/a.css", headers=[]), 0.0)
    assert isinstance(events[0], RequestReceived)
    p.pump()
    assert p.server.send(PushPromise(stream_id=2, path=b"/b.png", headers=[]), 0.0) == []
    _, client_events = p.pump()
    assert not of_type(client_events, h2.events.PushedStreamReceived)
    p.respond(2, b"a{}")
    _, client_events = p.pump()
    assert client_body(client_events, 2) == b"a{}"


def test_push_after_the_response_ended_is_dropped_not_raised() -> None:
    # The response is complete but the request body is still arriving: the stream is
    # half-closed (local), where RFC 9113 8.4 forbids PUSH_PROMISE.
    p = Pair()
    p.request(1, method=b"POST", end_stream=False)
    p.respond(1)
    p.pump()
    assert p.server.send(PushPromise(stream_id=1, path=b"/a.css", headers=[]), 0.0) == []
    _, client_events = p.pump()
    assert not of_type(client_events, h2.events.PushedStreamReceived)


@pytest.mark.parametrize("end_stream", [True, False])
def test_continue_after_the_final_response_is_dropped_not_raised(end_stream: bool) -> None:
    # The ASGI layer sends the 100 lazily, when the application first asks for the body; an
    # application that answered first (417, or a streaming 200) and reads afterwards gets
    # there after the final response. HTTP/1.1 drops such a 100; HTTP/2 must not raise.
    p = Pair()
    p.request(1, method=b"POST", extra=[(b"expect", b"100-continue")], end_stream=False)
    status = 417 if end_stream else 200
    p.server.send(SendResponse(stream_id=1, status=status, headers=[], end_stream=end_stream), 0)
    p.pump()
    assert p.server.send(SendInformational(stream_id=1, status=100), 0.0) == []
    _, client_events = p.pump()  # the client would fail on a 1xx after the final response
    assert not of_type(client_events, h2.events.InformationalResponseReceived)


# ---- connection lifetime ------------------------------------------------------------------------


def test_graceful_shutdown_in_two_steps() -> None:
    p = Pair()
    p.request(1, now=0.5)
    assert p.server.send(CloseConnection(), 1.0) == []
    assert not p.server.closed
    frames = parse_frames(p.server.data_to_send())
    assert [type(f.frame) for f in frames] == [GoAwayFrame, PingFrame]
    first = goaways(frames)[0]
    assert (first.last_stream_id, first.error_code) == (MAX_STREAM_ID, NO_ERROR)
    ping = pings(frames)[0]
    assert "ACK" not in ping.flags
    assert p.server.next_deadline() == 2.0

    # The client (which does not see the GOAWAY, see h2helpers) answers the PING.
    p.client.receive_data(b"".join(f.raw for f in frames if isinstance(f.frame, PingFrame)))
    assert p.to_server(now=1.1) == []
    frames = parse_frames(p.server.data_to_send())
    final = goaways(frames)
    assert [(g.last_stream_id, g.error_code) for g in final] == [(1, NO_ERROR)]
    assert not p.server.closed

    # A stream opened after the final GOAWAY is refused and never reaches the application.
    assert p.request(3, now=1.2) == []
    frames = parse_frames(p.server.data_to_send())
    assert [(r.stream_id, r.error_code) for r in resets(frames)] == [(3, REFUSED_STREAM)]

    # The accepted stream still completes; then the connection is done.
    assert p.respond(1, b"last words", now=1.3) == []
    client_events = p.to_client()
    assert client_body(client_events, 1) == b"last words"
    assert p.server.closed
    assert p.server.next_deadline() is None


def test_stream_opened_before_the_final_goaway_is_served() -> None:
    p = Pair()
    p.request(1)
    p.server.send(CloseConnection(), 1.0)
    ping_frames = [f.raw for f in parse_frames(p.server.data_to_send()) if f.raw[3] == 0x6]
    # Stream 3 was in flight when the first GOAWAY (last id 2^31-1) was sent.
    events = p.request(3, now=1.05)
    assert [e.stream_id for e in of_type(events, RequestReceived)] == [3]
    assert p.server.send(PushPromise(stream_id=3, path=b"/x", headers=[]), 1.05) == []
    p.client.receive_data(b"".join(ping_frames))
    p.to_server(now=1.1)
    final = goaways(parse_frames(p.server.data_to_send()))
    assert [(g.last_stream_id, g.error_code) for g in final] == [(3, NO_ERROR)]
    p.respond(1, now=1.2)
    assert not p.server.closed
    p.respond(3, now=1.3)
    assert p.server.closed


def test_final_goaway_after_a_second_without_the_ping_ack() -> None:
    p = Pair()
    p.request(1)
    p.server.send(CloseConnection(), 1.0)
    p.server.data_to_send()
    assert p.server.next_deadline() == 2.0
    assert p.server.handle_deadline(1.5) == []
    assert p.server.data_to_send() == b""
    assert p.server.handle_deadline(2.0) == []
    final = goaways(parse_frames(p.server.data_to_send()))
    assert [(g.last_stream_id, g.error_code) for g in final] == [(1, NO_ERROR)]
    assert not p.server.closed
    p.respond(1, now=2.5)
    assert p.server.closed


def test_graceful_shutdown_of_an_idle_connection() -> None:
    p = Pair()
    p.server.send(CloseConnection(), 1.0)
    frames = parse_frames(p.server.data_to_send())
    assert [type(f.frame) for f in frames] == [GoAwayFrame, PingFrame]
    assert p.server.handle_deadline(2.0) == []
    assert [g.last_stream_id for g in goaways(parse_frames(p.server.data_to_send()))] == [0]
    assert p.server.closed


def test_idle_connection_times_out() -> None:
    p = Pair(now=0.0, keep_alive_timeout=5.0)
    assert p.server.next_deadline() == 5.0
    p.request(1, now=1.0)
    assert p.server.next_deadline() is None
    p.respond(1, now=3.0)
    p.pump(now=3.0)
    assert p.server.next_deadline() == 8.0
    assert p.server.handle_deadline(7.9) == []
    assert not p.server.closed
    assert p.server.handle_deadline(8.0) == [ConnectionClosed()]
    assert p.server.closed
    final = goaways(parse_frames(p.server.data_to_send()))
    assert [(g.last_stream_id, g.error_code) for g in final] == [(1, NO_ERROR)]
    assert p.server.next_deadline() is None
    assert p.server.handle_deadline(100.0) == []


def test_eof_resets_open_streams_and_closes() -> None:
    p = Pair()
    p.request(1)
    p.request(3, method=b"POST", end_stream=False)
    p.server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0)
    events = p.server.receive_data(b"", 0.0)
    assert closed_event(events) == ConnectionClosed(error=None)
    assert sorted(e.stream_id for e in of_type(events, StreamReset)) == [1, 3]
    assert len(events) == 3
    assert p.server.closed
    assert not p.server.wants_read
    assert p.server.next_deadline() is None
    # Everything after the end is ignored, nothing raises.
    assert p.server.receive_data(b"more", 0.0) == []
    assert p.server.send(SendData(stream_id=1, data=b"x", end_stream=True), 0.0) == []
    assert p.server.send(ResetStream(stream_id=3), 0.0) == []


def test_eof_on_an_idle_connection() -> None:
    p = Pair()
    assert p.server.receive_data(b"", 0.0) == [ConnectionClosed()]
    assert p.server.closed


def test_client_reset_stream() -> None:
    p = Pair()
    p.request(1, method=b"POST", end_stream=False)
    p.client.reset_stream(1)
    assert p.to_server() == [StreamReset(stream_id=1)]
    # The application's late commands for the stream are dropped quietly.
    assert p.server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0) == []
    assert p.server.send(SendData(stream_id=1, data=b"x", end_stream=True), 0.0) == []
    assert p.server.data_to_send() == b""
    assert not p.server.closed


def test_server_reset_stream() -> None:
    p = Pair()
    p.request(1)
    p.server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0)
    p.server.send(SendData(stream_id=1, data=b"partial"), 0.0)
    assert p.server.send(ResetStream(stream_id=1), 0.0) == []
    _, client_events = p.pump()
    assert [e.stream_id for e in of_type(client_events, h2.events.StreamReset)] == [1]
    assert p.server.send(SendData(stream_id=1, data=b"x"), 0.0) == []


def test_connection_specific_response_headers_are_dropped() -> None:
    p = Pair()
    p.request(1)
    hop_by_hop = [
        (b"connection", b"keep-alive"),
        (b"transfer-encoding", b"chunked"),
        (b"keep-alive", b"timeout=5"),
        (b"upgrade", b"h2c"),
        (b"proxy-connection", b"keep-alive"),
    ]
    p.server.send(
        SendResponse(
            stream_id=1,
            status=200,
            headers=[(b"content-type", b"text/plain"), *hop_by_hop, (b"x-kept", b"1")],
        ),
        0.0,
    )
    p.server.send(SendData(stream_id=1, data=b"ok"), 0.0)
    p.server.send(SendTrailers(stream_id=1, headers=[(b"connection", b"close"), (b"x-t", b"2")]), 0)
    _, client_events = p.pump()  # h2 would raise on any of these headers
    response = of_type(client_events, h2.events.ResponseReceived)[0]
    assert response.headers == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"x-kept", b"1"),
    ]
    trailers = of_type(client_events, h2.events.TrailersReceived)[0]
    assert trailers.headers == [(b"x-t", b"2")]


# ---- abuse ----------------------------------------------------------------------------------


def _assert_calm(p: Pair, events: list[Event]) -> None:
    closed = closed_event(events)
    assert isinstance(closed.error, PeerAbuse)
    assert closed.error.error_status_hint == 429
    assert p.server.closed
    frames = parse_frames(p.server.data_to_send())
    assert [g.error_code for g in goaways(frames)] == [ENHANCE_YOUR_CALM]
    assert p.server.receive_data(p.client.data_to_send() or b"x", 1.0) == []


def test_rapid_reset_is_cut_off() -> None:
    p = Pair()
    events: list[Event] = []
    for i in range(1000):
        sid = 1 + 2 * i
        p.client.send_headers(sid, request_headers(), end_stream=True)
        p.client.reset_stream(sid)
        events = p.to_server()
        if of_type(events, ConnectionClosed):
            break
    assert 100 <= i + 1 < 300
    assert StreamReset(stream_id=sid) in events
    _assert_calm(p, events)


def test_resets_spread_over_time_are_allowed() -> None:
    p = Pair()
    for i in range(400):
        sid = 1 + 2 * i
        p.client.send_headers(sid, request_headers(), end_stream=True)
        p.client.reset_stream(sid)
        events = p.to_server(now=i * 0.02)  # 50 per second, the budget refills 100
        assert not of_type(events, ConnectionClosed)
    assert not p.server.closed


def test_resets_after_a_complete_response_are_free() -> None:
    # A client may cancel an upload once the response is in; that costs the server nothing.
    # The server asks first (RST_STREAM NO_ERROR once its response is complete, RFC 9113
    # 8.1), so the client's own cancel only goes out when its stack has not seen that yet.
    p = Pair()
    for i in range(400):
        sid = 1 + 2 * i
        p.request(sid, method=b"POST", end_stream=False)
        p.respond(sid)
        reset = [e for e in p.to_client() if isinstance(e, h2.events.StreamReset)]
        assert [(e.stream_id, e.error_code) for e in reset] == [(sid, 0)], i
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            p.client.reset_stream(sid)
        events = p.to_server()
        assert not of_type(events, ConnectionClosed), i
    assert not p.server.closed


def _flood(kind: str, p: Pair, count: int) -> bytes:
    if kind == "ping":
        for _ in range(count):
            p.client.ping(b"12345678")
        return p.client.data_to_send()
    if kind == "settings":
        frame = SettingsFrame(0, settings={SettingCodes.INITIAL_WINDOW_SIZE: 65535})
        return frame.serialize() * count
    if kind == "priority":
        return PriorityFrame(1, depends_on=0, stream_weight=16).serialize() * count
    assert kind == "empty-data"
    if not p.client.streams:
        p.request(1, method=b"POST", end_stream=False)
    return empty_data_frame(1) * count


@pytest.mark.parametrize("kind", ["ping", "settings", "priority", "empty-data"])
def test_control_frame_flood(kind: str) -> None:
    p = Pair()
    events = p.to_server(_flood(kind, p, 500))
    _assert_calm(p, events)


@pytest.mark.parametrize("kind", ["ping", "settings", "empty-data"])
def test_control_budget_refills_over_time(kind: str) -> None:
    p = Pair()
    total = 0
    for step in range(50):  # 500 frames at 40 per second; the budget refills 50 per second
        events = p.to_server(_flood(kind, p, 10), now=step * 0.25)
        assert not of_type(events, ConnectionClosed), step
        total += 10
        p.to_client()
    assert total == 500
    assert not p.server.closed
    if kind == "ping":
        assert len(of_type(p.client_events, h2.events.PingAckReceived)) == 500


def test_ping_burst_within_budget_is_answered() -> None:
    p = Pair()
    p.to_server(_flood("ping", p, 150))
    assert len(of_type(p.to_client(), h2.events.PingAckReceived)) == 150
    assert not p.server.closed


@pytest.mark.parametrize(
    ("limit", "fragment"),
    [(64 * KB, 4096), (1000, 100)],
)
def test_continuation_flood_is_refused_before_it_is_buffered(limit: int, fragment: int) -> None:
    p = Pair(max_header_list_size=limit)
    block = hpack.Encoder().encode(request_headers())
    flood = headers_frame(1, block, end_headers=False, end_stream=True)
    flood += continuation_frame(1, b"\x00" * fragment, end_headers=False) * (4 * limit // fragment)
    fed = 0
    events: list[Event] = []
    step = fragment + 9
    while fed < len(flood):
        events = p.to_server(flood[fed : fed + step])
        fed += step
        if events:
            break
    assert fed < len(flood) // 2
    assert fed <= limit + 2 * step  # refused as soon as the block passed the limit
    assert not of_type(events, RequestReceived)
    _assert_calm(p, events)


def test_large_header_block_within_the_limit_spans_continuation_frames() -> None:
    p = Pair()
    value = bytes(33 + (i * 7919) % 94 for i in range(30000))  # poorly compressible
    events = p.request(1, extra=[(b"x-large", value)])
    request = events[0]
    assert isinstance(request, RequestReceived)
    assert request.headers[1] == (b"x-large", value)
    # The guard's count starts again with the next header block.
    events = p.request(3, extra=[(b"x-large", value[::-1])])
    assert isinstance(events[0], RequestReceived)
    assert not p.server.closed


def test_oversized_literal_header_is_refused() -> None:
    p = Pair(max_header_list_size=1000)
    events = p.request(1, extra=[(b"x-big", b"a" * 100 * KB)])
    assert not of_type(events, RequestReceived)
    _assert_calm(p, events)


def test_hpack_bomb_through_the_dynamic_table_is_refused() -> None:
    p = Pair(max_header_list_size=1000)
    value = b"v" * 700
    events = p.request(1, extra=[(b"x-a", value)])  # the entry lands in the dynamic table
    assert isinstance(events[0], RequestReceived)
    # The next block is a handful of bytes that decode to three copies of that entry.
    p.client.send_headers(3, request_headers(extra=[(b"x-a", value)] * 3), end_stream=True)
    data = p.client.data_to_send()
    assert len(data) < 100
    events = p.server.receive_data(data, 0.0)
    assert not of_type(events, RequestReceived)
    closed = closed_event(events)
    assert isinstance(closed.error, RemoteProtocolError)
    assert StreamReset(stream_id=1) in events
    assert p.server.closed
    frames = parse_frames(p.server.data_to_send())
    assert len(goaways(frames)) == 1
    assert goaways(frames)[0].error_code != NO_ERROR


GARBAGE = {
    "http1": b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "zeros": b"\x00" * 100,
    "tls-hello": bytes.fromhex("160301020001000200fc0303") + b"\x11" * 60,
    # Looks like a huge HEADERS frame right after the 24 bytes where the preface should be.
    "fake-headers": b"X" * 24 + b"\x02\x00\x00\x01\x04\x00\x00\x00\x01" + b"\x00" * 40,
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_instead_of_the_preface_is_a_protocol_error(name: str) -> None:
    server = HTTP2Protocol(limits=HTTP2Limits(), now=0.0)
    events = server.receive_data(GARBAGE[name], 0.0)
    closed = closed_event(events)
    assert isinstance(closed.error, RemoteProtocolError)
    # Not a peer overspending a budget: a peer that does not speak HTTP/2 at all.
    assert not isinstance(closed.error, PeerAbuse)
    assert server.closed
    assert [g.error_code for g in goaways(parse_frames(server.data_to_send()))] in (
        [],
        [PROTOCOL_ERROR],
    )


def test_garbage_instead_of_the_preface_gets_goaway_protocol_error() -> None:
    server = HTTP2Protocol(limits=HTTP2Limits(), now=0.0)
    server.receive_data(GARBAGE["http1"], 0.0)
    frames = parse_frames(server.data_to_send())
    assert [g.error_code for g in goaways(frames)] == [PROTOCOL_ERROR]


def test_preface_split_anywhere_is_accepted() -> None:
    for cut in range(1, len(PREFACE)):
        p = Pair(handshake=False)
        p.client.send_headers(1, request_headers(), end_stream=True)
        data = p.client.data_to_send()
        events = p.server.receive_data(data[:cut], 0.0)
        events += p.server.receive_data(data[cut:], 0.0)
        assert isinstance(events[0], RequestReceived), cut


# ---- robustness ------------------------------------------------------------------------------

_frames = st.lists(
    st.tuples(
        st.integers(0, 0x10),
        st.integers(0, 255),
        st.sampled_from([0, 1, 2, 3, 5, 7]),
        st.binary(max_size=48),
    ),
    max_size=8,
).map(lambda frames: b"".join(raw_frame(*frame) for frame in frames))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=300), _frames), chunk=st.integers(1, 64))
def test_random_input_after_the_preface_never_raises(data: bytes, chunk: int) -> None:
    p = Pair()
    p.request(1, method=b"POST", end_stream=False)
    events: list[Event] = []
    for i in range(0, len(data), chunk):
        events += p.server.receive_data(data[i : i + chunk], 0.0)
    assert all(
        isinstance(
            e,
            (
                RequestReceived,
                RequestRejected,
                DataReceived,
                StreamEnded,
                StreamReset,
                ConnectionClosed,
            ),
        )
        for e in events
    )
    closes = of_type(events, ConnectionClosed)
    assert len(closes) <= 1
    if closes:
        assert events[-1] is closes[0]
        assert p.server.closed
    assert p.server.closed == bool(closes)
    # The application may still be answering; that must not raise either.
    p.server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0)
    p.server.send(SendData(stream_id=1, data=b"x" * 100, end_stream=True), 0.0)
    p.server.data_to_send()
    p.server.handle_deadline(1000.0)
    p.server.receive_data(b"", 0.0)
    assert p.server.closed


def test_window_update_opening_a_blocked_stream_triggers_the_flush() -> None:
    p = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
    p.request(1)
    p.server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0)
    p.server.send(SendData(stream_id=1, data=b"hello", end_stream=True), 0.0)
    _, client_events = p.pump()
    assert client_body(client_events, 1) == b""
    p.client.increment_flow_control_window(5, stream_id=1)
    _, client_events = p.pump()
    assert client_body(client_events, 1) == b"hello"
    assert [e.stream_id for e in of_type(client_events, h2.events.StreamEnded)] == [1]
