"""A fault while one stream is handled costs that stream, never the connection.

Faults are injected by patching a function the core calls for one stream only (a stand-in for
a bug of ours); the other streams must be served as if nothing happened, and nothing may escape
`receive_data` or `send` except the documented outcomes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h2.connection
import h2.errors
import h2.events
import pytest

from multicorn.protocol import http2, request_head
from multicorn.protocol.errors import LocalProtocolError
from multicorn.protocol.events import (
    ConnectionClosed,
    Headers,
    RequestReceived,
    SendData,
    SendResponse,
    StreamEnded,
    StreamKind,
    StreamReset,
)
from multicorn.protocol.http2 import HTTP2Protocol

from .h2helpers import Pair, client_body, of_type, parse_frames, resets

INTERNAL_ERROR = 0x2


class Bug(Exception):
    pass


def assert_others_unharmed(p: Pair, *stream_ids: int) -> None:
    for sid in stream_ids:
        p.respond(sid, b"fine %d" % sid)
    _, client_events = p.pump()
    for sid in stream_ids:
        assert client_body(client_events, sid) == b"fine %d" % sid
    assert not p.server.closed


def test_fault_while_a_request_is_admitted_resets_only_that_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = request_head.check_request_head

    def check(
        method: bytes, path: bytes, headers: Headers, *, multiplexed: bool, protocol: bytes | None
    ) -> StreamKind:
        if path == b"/boom":
            raise Bug("a bug of ours")
        return real(method, path, headers, multiplexed=multiplexed, protocol=protocol)

    # The pseudo-header check HTTP/2 shares with HTTP/3 calls it.
    monkeypatch.setattr(request_head, "check_request_head", check)
    p = Pair()
    p.request(1)
    # Three requests in one read: the middle one trips the bug.
    for sid, path in ((3, b"/boom"), (5, b"/"), (7, b"/")):
        p.client.send_headers(sid, [*_head(path)], end_stream=True)
    events = p.to_server()
    assert [e.stream_id for e in of_type(events, RequestReceived)] == [5, 7]
    assert of_type(events, StreamReset) == []  # the application never knew stream 3
    data = p.server.data_to_send()
    assert [(r.stream_id, r.error_code) for r in resets(parse_frames(data))] == [
        (3, INTERNAL_ERROR)
    ]
    p.to_client(data)
    assert_others_unharmed(p, 1, 5, 7)


def test_fault_while_body_data_is_handled_resets_only_that_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = HTTP2Protocol._on_data

    def on_data(self: HTTP2Protocol, event: h2.events.DataReceived, events: list) -> None:
        if event.data == b"boom":
            raise Bug("a bug of ours")
        real(self, event, events)

    monkeypatch.setattr(HTTP2Protocol, "_on_data", on_data)
    p = Pair()
    p.request(1, method=b"POST", end_stream=False)
    p.request(3, method=b"POST", end_stream=False)
    p.client.send_data(1, b"boom")
    p.client.send_data(3, b"body", end_stream=True)
    events = p.to_server()
    assert StreamReset(stream_id=1) in events
    assert StreamEnded(stream_id=3) in events
    assert not of_type(events, ConnectionClosed)
    assert_others_unharmed(p, 3)
    assert [e.stream_id for e in of_type(p.client_events, h2.events.StreamReset)] == [1]


def test_fault_in_a_command_resets_only_that_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    real = http2.validate_response_headers

    def validate(headers: Headers) -> None:
        if (b"x-boom", b"1") in headers:
            raise Bug("a bug of ours")
        real(headers)

    monkeypatch.setattr(http2, "validate_response_headers", validate)
    p = Pair()
    p.request(1)
    p.request(3)
    events = p.server.send(SendResponse(stream_id=1, status=200, headers=[(b"x-boom", b"1")]), 0)
    assert events == [StreamReset(stream_id=1)]
    assert p.server.send(SendData(stream_id=1, data=b"late", end_stream=True), 0.0) == []
    assert_others_unharmed(p, 3)
    assert [e.stream_id for e in of_type(p.client_events, h2.events.StreamReset)] == [1]


def test_invalid_response_header_is_still_the_applications_error() -> None:
    # The documented outcome for a bad command stays what it was: LocalProtocolError.
    p = Pair()
    p.request(1)
    with pytest.raises(LocalProtocolError):
        p.server.send(SendResponse(stream_id=1, status=200, headers=[(b"x", b"a\r\nb")]), 0.0)


def _break_single_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    # A body that fits one frame, with nothing else waiting, is framed at once by h2.
    real = h2.connection.H2Connection.send_data

    def send_data(self: h2.connection.H2Connection, stream_id: int, data: bytes, **kw: Any) -> None:
        if data[:4] == b"boom":
            raise Bug("a bug of ours")
        real(self, stream_id, data, **kw)

    monkeypatch.setattr(h2.connection.H2Connection, "send_data", send_data)


def _break_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    # More than one frame's worth is framed through the stream's queue, by _take.
    real = HTTP2Protocol._take

    def take(stream: http2._Stream, size: int) -> bytes:
        if stream.out[0][:4] == b"boom":
            raise Bug("a bug of ours")
        return real(stream, size)

    monkeypatch.setattr(HTTP2Protocol, "_take", staticmethod(take))


@pytest.mark.parametrize(
    ("break_it", "body"),
    [(_break_single_frames, b"boom"), (_break_the_queue, b"boom" * 5000)],
    ids=["one frame, framed at once", "several frames, through the queue"],
)
def test_fault_while_framing_output_resets_only_that_stream(
    monkeypatch: pytest.MonkeyPatch,
    break_it: Callable[[pytest.MonkeyPatch], None],
    body: bytes,
) -> None:
    break_it(monkeypatch)
    p = Pair()
    p.request(1)
    p.request(3)
    for sid in (1, 3):
        p.server.send(SendResponse(stream_id=sid, status=200, headers=[]), 0.0)
    assert p.server.send(SendData(stream_id=1, data=body), 0.0) == [StreamReset(stream_id=1)]
    p.server.send(SendData(stream_id=3, data=b"fine", end_stream=True), 0.0)
    _, client_events = p.pump()
    assert client_body(client_events, 3) == b"fine"
    assert [e.stream_id for e in of_type(client_events, h2.events.StreamReset)] == [1]
    assert p.server.pending_send(1) == 0
    assert not p.server.closed


def _head(path: bytes) -> Headers:
    return [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"example.com"),
        (b":path", path),
    ]


def test_streams_beyond_the_concurrency_limit_are_refused_one_by_one() -> None:
    # RFC 9113 5.1.2: a HEADERS frame past the advertised limit is a stream error (here
    # REFUSED_STREAM, which the client may retry), not the end of the connection; the requests
    # before it in the same read are served.
    p = Pair(max_concurrent_streams=2)
    # A client that ignores our SETTINGS (h2's own client would refuse to send the third).
    p.client.remote_settings.max_concurrent_streams = 100
    p.client.remote_settings.acknowledge()
    head = [(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", "/")]
    for stream_id in (1, 3, 5):
        p.client.send_headers(stream_id, head, end_stream=True)
    events = p.to_server()
    assert [e.stream_id for e in of_type(events, RequestReceived)] == [1, 3]
    assert not of_type(events, ConnectionClosed)
    refused = [
        (e.stream_id, e.error_code) for e in p.to_client() if isinstance(e, h2.events.StreamReset)
    ]
    assert refused == [(5, h2.errors.ErrorCodes.REFUSED_STREAM)]
    # Once a stream is done there is room again.
    p.server.send(SendResponse(stream_id=1, status=204, headers=[], end_stream=True), p.now)
    p.to_client()
    p.client.send_headers(7, head, end_stream=True)
    assert [e.stream_id for e in of_type(p.to_server(), RequestReceived)] == [7]
