"""An HTTP/2 load client that retries what RFC 9113 says it may, and counts what was lost.

RFC 9113 6.8: a GOAWAY's last-stream-id is the highest stream the server might have acted on;
a request on a higher stream was not processed and can be retried on a new connection (as can
one refused with REFUSED_STREAM, 8.7). So a request is *lost* when the server reset it
otherwise, or when its connection ended without it being answered although its stream was at
or below the last GOAWAY's last-stream-id (or no GOAWAY came at all). h2load counts requests
it had queued behind a GOAWAY as failed and does not retry them; this client tells the two
apart. Frames are handled with hyperframe and hpack directly: h2's client state machine
refuses every frame (a PING included) once a GOAWAY has arrived, which a graceful drain sends
before it finishes the streams in flight.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import hpack
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_REFUSED_STREAM = 0x7


@dataclass
class Tally:
    answered: int = 0
    retried: int = 0  # never processed (above a GOAWAY's last-stream-id, or refused): resent
    lost: list[str] = field(default_factory=list)
    goaways: int = 0
    connections: int = 0
    statuses: set[int] = field(default_factory=set)


def run(host: str, port: int, *, seconds: float, concurrency: int = 4) -> Tally:
    """Keep `concurrency` GET / requests in flight on one connection (a new one after each
    GOAWAY) for `seconds`."""
    tally = Tally()
    owed = 0  # requests to send again
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or owed:
        tally.connections += 1
        owed = _Connection(host, port, tally, deadline).run(max(concurrency, owed), owed)
    return tally


class _Connection:
    def __init__(self, host: str, port: int, tally: Tally, deadline: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.host = host
        self.tally = tally
        self.deadline = deadline
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.next_id = 1
        self.pending: set[int] = set()
        self.last_stream_id: int | None = None
        self.out = bytearray(_PREFACE + SettingsFrame(0).serialize())

    def start(self) -> None:
        block = self.encoder.encode(
            [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", self.host)]
        )
        frame = HeadersFrame(self.next_id, block, flags=["END_STREAM", "END_HEADERS"])
        self.out += frame.serialize()
        self.pending.add(self.next_id)
        self.next_id += 2

    def run(self, first: int, owed: int) -> int:
        tally = self.tally
        owed -= min(owed, first)
        for _ in range(first):
            self.start()
        buffer = b""
        try:
            while self.pending:
                if self.out:
                    self.sock.sendall(self.out)
                    self.out.clear()
                data = self.sock.recv(65536)
                if not data:
                    break
                buffer += data
                while len(buffer) >= 9:
                    frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
                    if len(buffer) < 9 + length:
                        break
                    frame.parse_body(memoryview(buffer[9 : 9 + length]))
                    buffer = buffer[9 + length :]
                    owed += self.handle(frame)
        except OSError as exc:
            tally.lost.extend(f"stream {s}: {exc!r}" for s in self.pending)
            self.pending.clear()
        finally:
            self.sock.close()
        for stream_id in sorted(self.pending):
            if self.last_stream_id is not None and stream_id > self.last_stream_id:
                owed += 1
                tally.retried += 1
            else:
                tally.lost.append(f"stream {stream_id}: connection closed before its answer")
        return owed

    def handle(self, frame: Frame) -> int:
        """Act on one frame; return how many requests it makes owed again."""
        tally = self.tally
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.out += SettingsFrame(0, flags=["ACK"]).serialize()
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            self.out += PingFrame(0, frame.opaque_data, flags=["ACK"]).serialize()
        elif isinstance(frame, HeadersFrame):
            headers = dict(self.decoder.decode(frame.data))
            status = headers.get(":status", headers.get(b":status"))
            if status is not None:
                tally.statuses.add(int(status))
            self._maybe_done(frame)
        elif isinstance(frame, DataFrame):
            if frame.flow_controlled_length:
                self.out += WindowUpdateFrame(0, frame.flow_controlled_length).serialize()
            self._maybe_done(frame)
        elif isinstance(frame, RstStreamFrame):
            self.pending.discard(frame.stream_id)
            if frame.error_code == _REFUSED_STREAM:
                tally.retried += 1
                return 1
            tally.lost.append(f"stream {frame.stream_id} reset ({frame.error_code})")
        elif isinstance(frame, GoAwayFrame):
            tally.goaways += 1
            self.last_stream_id = frame.last_stream_id
            above = {s for s in self.pending if s > frame.last_stream_id}
            self.pending -= above
            tally.retried += len(above)
            return len(above)
        return 0

    def _maybe_done(self, frame: Frame) -> None:
        if "END_STREAM" in frame.flags and frame.stream_id in self.pending:
            self.pending.discard(frame.stream_id)
            self.tally.answered += 1
            if self.last_stream_id is None and time.monotonic() < self.deadline:
                self.start()
