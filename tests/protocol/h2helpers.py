"""Helpers for the sans-IO HTTP/2 tests: a real h2 client facing an HTTP2Protocol.

In the style of aioquic's `client_and_server`/`transfer` helpers: the client is an
`h2.connection.H2Connection` in the client role, so request frames are produced and response
frames are parsed by an independent HTTP/2 implementation. `Pair.pump()` moves bytes both ways
until neither side has anything left to say.

An h2 client stops working once it has received a GOAWAY (it refuses even to answer a PING),
while a real client keeps finishing its streams. Tests of the shutdown sequence therefore read
the server's output with `parse_frames()` and hand the client everything except GOAWAY frames
(`Pair.to_client(drop_goaway=True)`).
"""

from __future__ import annotations

from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
)

from multicorn.protocol.events import (
    DataReceived,
    Event,
    Headers,
    SendData,
    SendResponse,
)
from multicorn.protocol.http2 import HTTP2Limits, HTTP2Protocol

from .helpers import normalize

ENHANCE_YOUR_CALM = 0xB
PROTOCOL_ERROR = 0x1
NO_ERROR = 0x0
REFUSED_STREAM = 0x7
CANCEL = 0x8
MAX_STREAM_ID = 2**31 - 1


def make_client() -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    return h2.connection.H2Connection(config=config)


def request_headers(
    path: bytes = b"/",
    method: bytes = b"GET",
    authority: bytes = b"example.com",
    scheme: bytes = b"https",
    extra: Headers | None = None,
) -> Headers:
    return [
        (b":method", method),
        (b":scheme", scheme),
        (b":authority", authority),
        (b":path", path),
        *(extra or []),
    ]


@dataclass
class RawFrame:
    """One frame of a byte stream: hyperframe's parse and the exact bytes it came from."""

    frame: Frame
    raw: bytes


def parse_frames(data: bytes) -> list[RawFrame]:
    """Split a server's output into frames (no preface: the server side sends none)."""
    frames: list[RawFrame] = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 9, "truncated frame header"
        frame, length = Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
        end = pos + 9 + length
        assert end <= len(data), "truncated frame body"
        frame.parse_body(memoryview(data[pos + 9 : end]))
        frames.append(RawFrame(frame, data[pos:end]))
        pos = end
    return frames


def goaways(frames: list[RawFrame]) -> list[GoAwayFrame]:
    return [f.frame for f in frames if isinstance(f.frame, GoAwayFrame)]


def resets(frames: list[RawFrame]) -> list[RstStreamFrame]:
    return [f.frame for f in frames if isinstance(f.frame, RstStreamFrame)]


def pings(frames: list[RawFrame]) -> list[PingFrame]:
    return [f.frame for f in frames if isinstance(f.frame, PingFrame)]


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """A frame built by hand, for frame types or sequences no client library would send."""
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream_id.to_bytes(4, "big")
        + payload
    )


def priority_update(stream_id: int, value: bytes) -> bytes:
    """RFC 9218 7.1 PRIORITY_UPDATE (type 0x10) on stream 0."""
    return raw_frame(0x10, 0, 0, stream_id.to_bytes(4, "big") + value)


def headers_frame(stream_id: int, block: bytes, *, end_headers: bool, end_stream: bool) -> bytes:
    frame = HeadersFrame(stream_id, data=block)
    if end_headers:
        frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    data: bytes = frame.serialize()
    return data


def continuation_frame(stream_id: int, block: bytes, *, end_headers: bool) -> bytes:
    frame = ContinuationFrame(stream_id, data=block)
    if end_headers:
        frame.flags.add("END_HEADERS")
    data: bytes = frame.serialize()
    return data


def empty_data_frame(stream_id: int) -> bytes:
    data: bytes = DataFrame(stream_id, data=b"").serialize()
    return data


# The same merge as the HTTP/1.1 tests use: frame boundaries are arbitrary too.
merge_data = normalize


def body_of(events: list[Event], stream_id: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id
    )


def client_body(events: list[h2.events.Event], stream_id: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
    )


def of_type(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


class Pair:
    """An h2 client wired to an HTTP2Protocol."""

    def __init__(
        self,
        now: float = 0.0,
        *,
        client_settings: dict[int, int] | None = None,
        scheme: bytes = b"https",
        handshake: bool = True,
        **limits: object,
    ) -> None:
        self.now = now
        self.server = HTTP2Protocol(
            limits=HTTP2Limits(**limits),  # type: ignore[arg-type]
            now=now,
            scheme=scheme,
        )
        self.client = make_client()
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(client_settings)
        self.server_events: list[Event] = []
        self.client_events: list[h2.events.Event] = []
        if handshake:
            self.pump()
            assert self.server_events == []

    # ---- moving bytes ---------------------------------------------------------------------

    def to_server(self, data: bytes | None = None, now: float | None = None) -> list[Event]:
        """Feed the client's pending output (or `data`) to the server."""
        if data is None:
            data = self.client.data_to_send()
        if not data:
            return []
        events = self.server.receive_data(data, self.now if now is None else now)
        self.server_events += events
        return events

    def to_client(
        self, data: bytes | None = None, *, drop_goaway: bool = False
    ) -> list[h2.events.Event]:
        """Feed the server's pending output (or `data`) to the client; the client's h2 events."""
        if data is None:
            data = self.server.data_to_send()
        if drop_goaway:
            data = b"".join(
                f.raw for f in parse_frames(data) if not isinstance(f.frame, GoAwayFrame)
            )
        if not data:
            return []
        events = self.client.receive_data(data)
        self.client_events += events
        return events

    def pump(self, now: float | None = None) -> tuple[list[Event], list[h2.events.Event]]:
        """Exchange bytes until neither side has anything left to send."""
        server_events: list[Event] = []
        client_events: list[h2.events.Event] = []
        for _ in range(1000):
            upstream = self.client.data_to_send()
            server_events += self.to_server(upstream, now=now)
            downstream = self.server.data_to_send()
            client_events += self.to_client(downstream)
            if not upstream and not downstream:
                return server_events, client_events
        raise AssertionError("the peers never went quiet")

    # ---- requests and responses -----------------------------------------------------------

    def request(
        self,
        stream_id: int,
        path: bytes = b"/",
        *,
        method: bytes = b"GET",
        extra: Headers | None = None,
        body: bytes | None = None,
        end_stream: bool = True,
        now: float | None = None,
    ) -> list[Event]:
        """Send one request from the client; the server's events."""
        headers = request_headers(path, method, extra=extra)
        self.client.send_headers(stream_id, headers, end_stream=end_stream and body is None)
        if body is not None:
            self.client.send_data(stream_id, body, end_stream=end_stream)
        return self.to_server(now=now)

    def respond(
        self,
        stream_id: int,
        body: bytes = b"ok",
        *,
        status: int = 200,
        headers: Headers | None = None,
        now: float | None = None,
    ) -> list[Event]:
        at = self.now if now is None else now
        events = self.server.send(
            SendResponse(stream_id=stream_id, status=status, headers=list(headers or [])), at
        )
        events += self.server.send(SendData(stream_id=stream_id, data=body, end_stream=True), at)
        return events
