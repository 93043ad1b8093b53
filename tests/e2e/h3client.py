"""An HTTP/3 client for the end-to-end tests: aioquic's sans-IO client connection over a real
UDP socket, driven by anyio so the same client runs beside a server on asyncio or on trio.

One background task receives datagrams and runs the QUIC timer; requests wait on per-stream
events. Besides plain requests it can send what a test needs to: any header list (malformed
heads), a request body in pieces, an extended CONNECT, a move to a new local address
(migration) and a new connection ID.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from aioquic.h3 import events as h3_events
from aioquic.h3.connection import H3Connection
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

Headers = list[tuple[bytes, bytes]]


@dataclass
class H3Stream:
    stream_id: int
    # Every header block: 1xx, the final head, trailers.
    headers: list[Headers] = field(default_factory=list)
    body: bytes = b""
    ended: bool = False
    reset_code: int | None = None  # the server reset the stream (RESET_STREAM) with this code
    changed: anyio.Event = field(default_factory=anyio.Event)

    @property
    def status(self) -> int:
        for block in self.headers:
            fields = dict(block)
            status = int(fields.get(b":status", b"0"))
            if status >= 200:
                return status
        raise AssertionError(f"no final response on stream {self.stream_id}: {self.headers}")

    @property
    def response_headers(self) -> dict[bytes, bytes]:
        for block in self.headers:
            if int(dict(block).get(b":status", b"0")) >= 200:
                return dict(block)
        return {}


class H3Client:
    """See the module docstring. Use `async with H3Client.connect(...) as client`."""

    def __init__(
        self, quic: QuicConnection, udp: anyio.abc.UDPSocket, host: str, port: int
    ) -> None:
        self.quic = quic
        self.h3 = H3Connection(quic)
        self.udp = udp
        self.host = host
        self.port = port
        self.streams: dict[int, H3Stream] = {}
        self.handshake_done = anyio.Event()
        self.terminated: quic_events.ConnectionTerminated | None = None
        self.changed = anyio.Event()  # set (and replaced) on every batch of input
        self.quic_events: list[quic_events.QuicEvent] = []
        self._sending = anyio.Lock()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        cafile: str,
        server_name: str = "localhost",
        limit: float = 5.0,
        **options: Any,
    ) -> AsyncIterator[H3Client]:
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=["h3"],
            cafile=cafile,
            server_name=server_name,
            **options,
        )
        udp = await _udp_socket(host)
        quic = QuicConnection(configuration=configuration)
        client = cls(quic, udp, host, port)
        quic.connect((host, port), now=_now())
        async with anyio.create_task_group() as tg:
            tg.start_soon(client._pump)
            await client.transmit()
            with anyio.fail_after(limit):
                await client.handshake_done.wait()
            try:
                yield client
            finally:
                if client.terminated is None:
                    quic.close()
                    with contextlib.suppress(Exception):
                        await client.transmit()
                tg.cancel_scope.cancel()
                await client.udp.aclose()

    # ---- requests -------------------------------------------------------------------------

    def request_headers(
        self, path: str = "/", method: str = "GET", extra: Headers | None = None
    ) -> Headers:
        return [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", f"localhost:{self.port}".encode()),
            (b":path", path.encode()),
            *(extra or []),
        ]

    async def open_stream(self, headers: Headers, *, end_stream: bool) -> H3Stream:
        stream_id = self.quic.get_next_available_stream_id()
        stream = self.streams[stream_id] = H3Stream(stream_id)
        self.h3.send_headers(stream_id, headers, end_stream=end_stream)
        await self.transmit()
        return stream

    async def send_data(self, stream: H3Stream, data: bytes, *, end_stream: bool) -> None:
        self.h3.send_data(stream.stream_id, data, end_stream=end_stream)
        await self.transmit()

    async def request(
        self,
        path: str = "/",
        method: str = "GET",
        *,
        body: bytes | None = None,
        extra: Headers | None = None,
        limit: float = 10.0,
    ) -> H3Stream:
        headers = self.request_headers(path, method, extra)
        stream = await self.open_stream(headers, end_stream=body is None)
        if body is not None:
            await self.send_data(stream, body, end_stream=True)
        await self.finished(stream, limit)
        return stream

    async def finished(self, stream: H3Stream, limit: float = 10.0) -> H3Stream:
        """Wait until the server ended or reset the stream (or the connection ended)."""
        with anyio.fail_after(limit):
            while not (stream.ended or stream.reset_code is not None or self.terminated):
                await stream.changed.wait()
        return stream

    async def wait_for(self, predicate: Any, limit: float = 10.0) -> None:
        with anyio.fail_after(limit):
            while not predicate():
                await self.changed.wait()

    # ---- the connection -------------------------------------------------------------------

    async def rebind(self) -> None:
        """Send from a new local port from now on (RFC 9000 9: the server must follow)."""
        old, self.udp = self.udp, await _udp_socket(self.host)
        await old.aclose()  # the pump's receive on it ends; it carries on with the new one
        self.quic.send_ping(uid=1)  # something to send from the new address at once
        await self.transmit()

    async def transmit(self) -> None:
        # The pump and the test's task both send; anyio lets one task write at a time.
        async with self._sending:
            for data, (host, port) in self.quic.datagrams_to_send(now=_now()):
                with contextlib.suppress(OSError, anyio.ClosedResourceError):
                    await self.udp.sendto(data, host, port)

    async def _pump(self) -> None:
        while self.terminated is None:
            timer = self.quic.get_timer()
            timeout = None if timer is None else max(0.0, timer - _now())
            udp = self.udp
            with anyio.move_on_after(timeout if timeout is not None else float("inf")):
                try:
                    data, (host, port) = await udp.receive()
                except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                    if self.udp is udp:
                        return  # closed: the client is done
                    continue  # rebind() replaced the socket
                self.quic.receive_datagram(data, (host, port), now=_now())
                self._process()
                await self.transmit()
                continue
            self.quic.handle_timer(now=_now())
            self._process()
            await self.transmit()

    def _process(self) -> None:
        while (event := self.quic.next_event()) is not None:
            self.quic_events.append(event)
            if isinstance(event, quic_events.HandshakeCompleted):
                self.handshake_done.set()
            elif isinstance(event, quic_events.ConnectionTerminated):
                self.terminated = event
                for stream in self.streams.values():
                    stream.changed.set()
            elif isinstance(event, quic_events.StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.reset_code = event.error_code
                    self._wake(stream)
            for h3_event in self.h3.handle_event(event):
                self._h3_event(h3_event)
        changed, self.changed = self.changed, anyio.Event()
        changed.set()

    def _h3_event(self, event: h3_events.H3Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", -1))
        if stream is None:
            return
        if isinstance(event, h3_events.HeadersReceived):
            stream.headers.append(list(event.headers))
            stream.ended = stream.ended or event.stream_ended
        elif isinstance(event, h3_events.DataReceived):
            stream.body += event.data
            stream.ended = stream.ended or event.stream_ended
        self._wake(stream)

    @staticmethod
    def _wake(stream: H3Stream) -> None:
        changed, stream.changed = stream.changed, anyio.Event()
        changed.set()


def _now() -> float:
    return time.monotonic()


async def _udp_socket(host: str) -> anyio.abc.UDPSocket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return await anyio.create_udp_socket(family=family, local_host=host)


def quic_port(server: Any) -> int:
    """The port of the server's first QUIC listener."""
    return int(server.bound_quic_addresses[0].rsplit(":", 1)[1])
