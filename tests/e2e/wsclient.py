"""WebSocket clients for the end-to-end tests, usable from asyncio and trio test runs alike.

- `websockets`' sync client, run in a worker thread (`in_thread`): the library only speaks
  asyncio, and a thread keeps it off the event loop the server under test runs on;
- `RawWebSocket`: an anyio socket with a hand-written opening handshake, so that tests can send
  what no well-behaved client would (a frame header without its payload, a deflate bomb, no
  pongs). Frames from the server are read with wsproto's client-side frame layer, which never
  answers a ping by itself;
- an ASGI `Recorder` app that echoes messages and writes down what the server told it.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import websockets.sync.client
from wsproto.connection import Connection, ConnectionType
from wsproto.events import Event, Message
from wsproto.extensions import Extension, PerMessageDeflate

from multicorn import Server

from .support import host_port, read_until

T = TypeVar("T")

# RFC 6455 1.3's sample key: 16 bytes once base64-decoded.
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x37\xfa\x21\x3d"

# RFC 6455 5.2 opcodes.
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9


async def in_thread(function: Callable[[], T], limit: float = 10.0) -> T:
    """Run a blocking client in a worker thread; give up on it (and fail) after `limit`."""
    with anyio.fail_after(limit):
        return await anyio.to_thread.run_sync(function, abandon_on_cancel=True)


def connect(url: str, **options: Any) -> websockets.sync.client.ClientConnection:
    """`websockets`' sync client with short timeouts and no pings of its own."""
    options.setdefault("open_timeout", 5)
    options.setdefault("close_timeout", 5)
    options.setdefault("ping_interval", None)
    return websockets.sync.client.connect(url, **options)


def ws_url(server: Server, path: str = "/ws") -> str:
    """The server's first bound address as a ws:// or wss:// URL."""
    base = server.bound_addresses[0]
    return base.replace("https://", "wss://").replace("http://", "ws://") + path


def handshake(
    path: str = "/ws",
    *,
    key: bytes | None = KEY,
    version: bytes = b"13",
    connection: bytes | None = b"Upgrade",
    extra: bytes = b"",
) -> bytes:
    """An RFC 6455 4.1 opening handshake; each field can be left out or spoiled."""
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: localhost", b"Upgrade: websocket"]
    if connection is not None:
        lines.append(b"Connection: " + connection)
    if key is not None:
        lines.append(b"Sec-WebSocket-Key: " + key)
    lines.append(b"Sec-WebSocket-Version: " + version)
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    length: int | None = None,
) -> bytes:
    """A masked client frame (RFC 6455 5.2). `length` announces another payload length than
    the payload's own, for a header sent without (all of) its payload."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", size)
    masked = bytes(byte ^ MASK[i % 4] for i, byte in enumerate(payload))
    return head + MASK + masked


def header(head: bytes, name: bytes) -> bytes | None:
    """One header's value from a raw HTTP/1.1 response head, or None."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


class RawWebSocket:
    """A WebSocket client over a plain anyio socket, driven frame by frame by the test."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        head: bytes,
        leftover: bytes,
        extensions: Sequence[Extension] = (),
    ) -> None:
        self.stream = stream
        self.head = head
        self.frames = Connection(ConnectionType.CLIENT, list(extensions))
        self._pending: collections.deque[Event] = collections.deque()
        self._partial: Message[Any] | None = None  # a frame whose bytes are still arriving
        self.eof = False
        self.received_bytes = len(leftover)  # from the server, after the handshake's head
        if leftover:
            self.frames.receive_data(leftover)
            self._pending.extend(self.frames.events())

    @classmethod
    async def connect(
        cls, server: Server, path: str = "/ws", *, extra: bytes = b"", deflate: bool = False
    ) -> RawWebSocket:
        """Open a socket, handshake, and check the server switched protocols."""
        stream = await anyio.connect_tcp(*host_port(server))
        await stream.send(handshake(path, extra=extra))
        data = await read_until(stream, b"\r\n\r\n")
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        extensions: list[Extension] = []
        if deflate:
            accepted = header(head, b"sec-websocket-extensions")
            assert accepted is not None and accepted.startswith(b"permessage-deflate"), head
            extension = PerMessageDeflate()
            extension.finalize(accepted.decode())
            extensions.append(extension)
        return cls(stream, head, rest, extensions)

    async def send(self, event: Event) -> None:
        await self.stream.send(self.frames.send(event))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send(data)

    async def receive(self, limit: float = 5.0) -> Event | None:
        """The next event from the server, or None once it closed the connection."""
        with anyio.fail_after(limit):
            while not self._pending:
                if self.eof:
                    return None
                try:
                    data = await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                    self.eof = True
                    continue
                self.received_bytes += len(data)
                self.frames.receive_data(data)
                self._pending.extend(self._whole_frames(self.frames.events()))
            return self._pending.popleft()

    def _whole_frames(self, events: Iterable[Event]) -> list[Event]:
        """wsproto reports a frame in pieces as its bytes arrive (frame_finished False); TCP
        may split the server's writes anywhere, so join each frame's pieces into one event."""
        out: list[Event] = []
        for event in events:
            if isinstance(event, Message):
                if self._partial is not None:
                    event = replace(event, data=self._partial.data + event.data)
                    self._partial = None
                if not event.frame_finished:
                    self._partial = event
                    continue
            out.append(event)
        return out

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass
class Recorder:
    """What an application saw: its scopes and every message it received, and when it ended."""

    scopes: list[dict[str, Any]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    accepted: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)

    def disconnect(self) -> dict[str, Any]:
        """The websocket.disconnect the application got (the test waited for `done` first)."""
        ends = [m for m in self.received if m["type"] == "websocket.disconnect"]
        assert len(ends) == 1, self.received
        return ends[0]

    async def wait_done(self, limit: float = 5.0) -> None:
        with anyio.fail_after(limit):
            await self.done.wait()


def echo_app(
    recorder: Recorder,
    *,
    pick_subprotocol: Callable[[list[str]], str | None] = lambda offered: None,
    accept_headers: Sequence[tuple[bytes, bytes]] = (),
) -> Any:
    """Accepts, echoes each message in kind, and ends at the disconnect. Text "close" makes it
    close with 4001 "done"; any `http` request is answered "http" (for HTTP/2 mixes)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"http"})
            return
        recorder.calls += 1
        recorder.scopes.append(scope)
        try:
            message = await receive()
            recorder.received.append(message)
            await send(
                {
                    "type": "websocket.accept",
                    "subprotocol": pick_subprotocol(scope["subprotocols"]),
                    "headers": list(accept_headers),
                }
            )
            recorder.accepted.set()
            while True:
                message = await receive()
                recorder.received.append(message)
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") == "close":
                    await send({"type": "websocket.close", "code": 4001, "reason": "done"})
                    continue
                reply = {"type": "websocket.send"}
                if message.get("text") is not None:
                    reply["text"] = message["text"]
                else:
                    reply["bytes"] = message["bytes"]
                await send(reply)
        finally:
            recorder.done.set()

    return app
