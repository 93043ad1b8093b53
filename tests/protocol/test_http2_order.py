"""The HTTP/2 core's output is one ordered byte stream, whatever mix of work produced it.

HEADERS must precede DATA on a stream, and every header block must reach the client in the
order it was HPACK-encoded (the dynamic table is shared by the whole connection). The concrete
tests below are sequences that once put DATA before HEADERS during a graceful shutdown; the
hypothesis test interleaves commands, client frames and reads at random and checks the output
with hyperframe, an HPACK decoder and a real h2 client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.events
import h2.exceptions
import h2.stream
import hpack
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    SendResponse,
    SendTrailers,
    StreamReset,
)

from .h2helpers import Pair, client_body, of_type, parse_frames, request_headers


class OutputChecker:
    """Reads everything the server writes, in order, and fails on the first misplaced frame."""

    def __init__(self) -> None:
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 2**31
        self.block = b""  # a header block waiting for its CONTINUATION frames
        self.block_stream = 0
        self.started: set[int] = set()  # streams whose response HEADERS arrived
        self.ended: set[int] = set()  # streams that carried END_STREAM or RST_STREAM
        self.end_pending: set[int] = set()  # END_STREAM on a header block not yet complete

    def feed(self, data: bytes) -> None:
        for raw in parse_frames(data):
            self.frame(raw.frame)

    def frame(self, frame: object) -> None:
        sid: int = getattr(frame, "stream_id", 0)
        if self.block_stream:
            # RFC 9113 6.10: a header block is contiguous; nothing may interleave.
            assert isinstance(frame, ContinuationFrame), f"{frame} inside a header block"
            assert sid == self.block_stream
            self.block += frame.data
            if "END_HEADERS" in frame.flags:
                self.finish_block()
            return
        if isinstance(frame, ContinuationFrame):
            raise AssertionError("CONTINUATION without a header block")
        if isinstance(frame, RstStreamFrame):
            self.ended.add(sid)
            return
        if isinstance(frame, (HeadersFrame, DataFrame, PushPromiseFrame)):
            assert sid not in self.ended, f"{frame} after the end of stream {sid}"
        if isinstance(frame, (HeadersFrame, PushPromiseFrame)):
            self.block = frame.data
            self.block_stream = sid
            if isinstance(frame, HeadersFrame):
                self.started.add(sid)
                if "END_STREAM" in frame.flags:
                    self.end_pending.add(sid)
            if "END_HEADERS" in frame.flags:
                self.finish_block()
        elif isinstance(frame, DataFrame):
            assert sid in self.started, f"DATA before HEADERS on stream {sid}"
            if "END_STREAM" in frame.flags:
                self.ended.add(sid)

    def finish_block(self) -> None:
        # Decoding in output order with one decoder is exactly what a client does: a block
        # that overtook an earlier one refers to table entries that are not there yet.
        headers = self.decoder.decode(self.block, raw=True)
        assert headers, "empty header block"
        if self.block_stream in self.end_pending:
            self.end_pending.discard(self.block_stream)
            self.ended.add(self.block_stream)
        self.block = b""
        self.block_stream = 0


def _drain_then_write(p: Pair) -> bytes:
    p.request(1)
    p.server.send(SendResponse(stream_id=1, status=200, headers=[(b"x-a", b"1")]), 0.0)
    p.server.send(SendData(stream_id=1, data=b"first"), 0.0)
    p.server.send(CloseConnection(), 0.0)
    p.server.send(SendData(stream_id=1, data=b"second", end_stream=True), 0.0)
    return p.server.data_to_send()


def test_data_queued_after_close_connection_stays_behind_its_headers() -> None:
    p = Pair()
    data = _drain_then_write(p)
    checker = OutputChecker()
    checker.feed(data)
    assert 1 in checker.ended
    events = p.to_client(data, drop_goaway=True)
    assert client_body(events, 1) == b"firstsecond"


def test_ping_ack_and_window_update_in_one_read_keep_the_order() -> None:
    # The final GOAWAY (on the PING ACK) and DATA released by a WINDOW_UPDATE in the same read.
    p = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
    p.request(1)
    p.server.send(SendData(stream_id=1, data=b""), 0.0)
    p.server.send(CloseConnection(), 0.0)
    drain = p.server.data_to_send()
    p.client.receive_data(b"".join(f.raw for f in parse_frames(drain) if f.raw[3] == 0x6))
    p.server.send(SendResponse(stream_id=1, status=200, headers=[(b"x-b", b"2")]), 0.0)
    p.server.send(SendData(stream_id=1, data=b"body", end_stream=True), 0.0)
    # The client's PING ACK and a WINDOW_UPDATE for stream 1 arrive together.
    p.client.increment_flow_control_window(4, stream_id=1)
    p.to_server(now=0.1)
    data = p.server.data_to_send()
    checker = OutputChecker()
    checker.feed(data)
    assert 1 in checker.ended
    assert [f.frame.last_stream_id for f in parse_frames(data) if isinstance(f.frame, GoAwayFrame)]
    events = p.to_client(data, drop_goaway=True)
    assert client_body(events, 1) == b"body"


# ---- random interleavings -------------------------------------------------------------------


@dataclass
class _Model:
    """What an application knows about each stream, so it only issues commands it may."""

    started: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)
    unacked: dict[int, int] = field(default_factory=dict)
    streams: list[int] = field(default_factory=list)


# Weighted by repetition: commands and requests come often, reads rarely, so that several
# pieces of work pile up between two reads (where ordering mistakes hide).
_OPS = [
    *["request"] * 3,
    "post",
    "bad-request",
    "connect",
    "client-data",
    "client-end",
    "window-update",
    "ping",
    "client-reset",
    *["respond"] * 4,
    *["data"] * 4,
    *["data-end"] * 2,
    "trailers",
    "reset",
    *["close"] * 2,
    "ack",
    "read",
]
_ops = st.lists(
    st.tuples(st.sampled_from(_OPS), st.integers(0, 7), st.integers(0, 3000)),
    min_size=10,
    max_size=50,
)


def _client_op(p: Pair, model: _Model, op: str, pick: int, size: int) -> None:
    client = p.client
    if op in ("request", "post"):
        sid = client.get_next_available_stream_id()
        extra = [(b"priority", b"u=%d%s" % (pick % 8, b", i" if size % 2 else b""))]
        client.send_headers(sid, request_headers(extra=extra), end_stream=op == "request")
        model.streams.append(sid)
        return
    if op in ("bad-request", "connect"):
        # A malformed head (reset, never reported) or a plain CONNECT (RequestRejected, which
        # the driver answers; see _note). Either way the server has no request to serve.
        sid = client.get_next_available_stream_id()
        if op == "connect":
            head = [(b":method", b"CONNECT"), (b":authority", b"example.com:443")]
        else:
            head = request_headers(method=b"G{T")
        client.send_headers(sid, head, end_stream=size % 2 == 0)
        model.streams.append(sid)
        model.finished.add(sid)
        return
    if op == "ping":
        client.ping(b"12345678")
        return
    if op == "window-update":
        client.increment_flow_control_window(size + 1)
        if model.streams:
            sid = model.streams[pick % len(model.streams)]
            stream = client.streams.get(sid)
            if stream is not None and not stream.closed:
                client.increment_flow_control_window(size + 1, stream_id=sid)
        return
    if not model.streams:
        return
    sid = model.streams[pick % len(model.streams)]
    stream = client.streams.get(sid)
    # Ask h2 only for what its state allows: a refused transition closes its stream for good.
    if stream is None or stream.closed:
        return
    if op == "client-reset":
        client.reset_stream(sid)
    elif stream.state_machine.state is h2.stream.StreamState.OPEN:
        if op == "client-data":
            room = min(client.local_flow_control_window(sid), size)
            client.send_data(sid, b"d" * room)
        else:
            client.end_stream(sid)


def _server_op(p: Pair, model: _Model, op: str, pick: int, size: int) -> list[Event]:
    send = p.server.send
    if op == "close":
        return send(CloseConnection(), p.now)
    live = [s for s in model.streams if s not in model.finished]
    if op == "ack":
        owed = [s for s, n in model.unacked.items() if n]
        if not owed:
            return []
        sid = owed[pick % len(owed)]
        amount = model.unacked.pop(sid)
        return send(AcknowledgeData(stream_id=sid, amount=amount), p.now)
    if not live:
        return []
    sid = live[pick % len(live)]
    if op == "respond":
        if sid in model.started:
            return []
        model.started.add(sid)
        headers = [(b"x-n", b"%d" % size), (b"x-s", b"%d" % sid)]
        return send(SendResponse(stream_id=sid, status=200, headers=headers), p.now)
    if op == "reset":
        model.finished.add(sid)
        return send(ResetStream(stream_id=sid), p.now)
    if sid not in model.started:
        return []
    if op == "trailers":
        model.finished.add(sid)
        return send(SendTrailers(stream_id=sid, headers=[(b"x-t", b"%d" % size)]), p.now)
    end = op == "data-end"
    if end:
        model.finished.add(sid)
    return send(SendData(stream_id=sid, data=b"r" * size, end_stream=end), p.now)


def _note(p: Pair, model: _Model, events: list[Event]) -> None:
    for event in events:
        if isinstance(event, RequestRejected):
            # What the connection driver does: answer on the stream at once.
            status = event.error.error_status_hint
            sid = event.stream_id
            more = p.server.send(SendResponse(stream_id=sid, status=status, headers=[]), p.now)
            more += p.server.send(SendData(stream_id=sid, data=b"no", end_stream=True), p.now)
            _note(p, model, more)
        elif isinstance(event, StreamReset):
            model.finished.add(event.stream_id)
        elif isinstance(event, DataReceived):
            model.unacked[event.stream_id] = model.unacked.get(event.stream_id, 0) + len(event.data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops)
def test_random_interleavings_keep_every_stream_in_order(ops: list[tuple[str, int, int]]) -> None:
    p = Pair(initial_window_size=4096, max_inbound_frame_size=16384)
    p.client.config.validate_outbound_headers = False  # for the malformed heads
    model = _Model()
    checker = OutputChecker()

    def read() -> None:
        data = p.server.data_to_send()
        checker.feed(data)
        # The h2 client (GOAWAY frames held back, see h2helpers) must accept every frame.
        p.to_client(data, drop_goaway=True)

    for op, pick, size in ops:
        p.now += 0.01
        if op == "read":
            read()
            continue
        if op in ("respond", "data", "data-end", "trailers", "reset", "close", "ack"):
            events = _server_op(p, model, op, pick, size)
        else:
            _client_op(p, model, op, pick, size)
            events = p.to_server()
        assert not of_type(events, ConnectionClosed), events
        _note(p, model, events)
        if p.server.closed:
            break
    read()
    # Every request the server accepted was reported once.
    requests = [e.stream_id for e in of_type(p.server_events, RequestReceived)]
    assert len(requests) == len(set(requests))
    assert checker.block_stream == 0, "the output ends inside a header block"
    assert not of_type(p.client_events, h2.events.ConnectionTerminated)
