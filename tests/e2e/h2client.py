"""A small HTTP/2 client over a real socket, built on h2's sans-IO client, for tests that need
frames no high-level client will send (resets in a loop, floods, zero windows, trailers)."""

from __future__ import annotations

import ssl
from typing import Any

import anyio
import h2.config
import h2.connection
import h2.events
import h2.settings


class H2Client:
    def __init__(self, stream: anyio.abc.ByteStream, settings: dict[int, int] | None = None):
        self.stream = stream
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.events: list[Any] = []
        self.closed = False
        self._buffer = b""

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        settings: dict[int, int] | None = None,
    ) -> H2Client:
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(host, port)
        if tls is not None:
            stream = await anyio.streams.tls.TLSStream.wrap(
                stream, hostname="localhost", ssl_context=tls, standard_compatible=False
            )
        client = cls(stream, settings)
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send(data)

    async def receive(self, limit: float = 5.0) -> list[Any]:
        """Read once (waiting up to `limit`); return the new h2 events."""
        with anyio.fail_after(limit):
            try:
                data = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                self.closed = True
                return []
        self._buffer += data
        events = []
        # Frame by frame, so a graceful GOAWAY can be survived before the next frame is read.
        while len(self._buffer) >= 9:
            size = 9 + int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < size:
                break
            frame, self._buffer = self._buffer[:size], self._buffer[size:]
            new = self.conn.receive_data(frame)
            events.extend(new)
            if any(
                isinstance(e, h2.events.ConnectionTerminated) and e.error_code == 0 for e in new
            ):
                # h2 stops all traffic on GOAWAY (python-hyper/h2#1181); RFC 9113 6.8 clients
                # finish the streams the server accepted, as nghttp, curl and browsers do.
                self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        self.events.extend(events)
        await self.flush()
        return events

    async def receive_until(self, predicate, limit: float = 5.0) -> list[Any]:
        with anyio.fail_after(limit):
            while not any(predicate(event) for event in self.events) and not self.closed:
                await self.receive(limit)
        return self.events

    def request_headers(self, path: str = "/", method: str = "GET", **extra: str) -> list:
        headers = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
        ]
        headers += [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]
        return headers

    async def request(self, path: str = "/", *, body: bytes = b"", **extra: str) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        headers = self.request_headers(path, "POST" if body else "GET", **extra)
        self.conn.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=True)
        await self.flush()
        return stream_id

    async def response(self, stream_id: int, limit: float = 5.0) -> tuple[dict, bytes]:
        def done(event):
            return (
                isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset))
                and event.stream_id == stream_id
            )

        await self.receive_until(done, limit)
        headers: dict = {}
        body = b""
        for event in self.events:
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
        await self.flush()
        return headers, body

    async def aclose(self) -> None:
        await self.stream.aclose()
