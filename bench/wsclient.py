"""WebSocket echo load generator: `python bench/wsclient.py --port P --duration S ...`.

This module owns the client of the WebSocket echo scenarios (ws-echo, ws-echo-1m) and the
frame and handshake helpers the idle-WebSocket probe in `loadgen.py` shares. It speaks just
enough RFC 6455 to drive an echo server as hard as one process can: a raw asyncio protocol per
connection, the handshake by hand, and one frame built up front per connection and sent again
for every echo, so almost all of its CPU goes to the socket calls. Each connection keeps
`--window` messages in flight, sending one more for every echo it receives. It offers no
extensions (so no server compresses) and reuses one masking key per connection, which servers
cannot tell apart from fresh keys; the payload is `--size` bytes of ASCII, sent as text, or as
binary with `--binary`.

Echoed data frames are not kept: the reader parses each frame header and then only counts the
payload bytes as they arrive, so a 1 MiB echo costs the client no copy. Every echoed message's
length is checked against `--size`, and a wrong one counts as an error.

It prints one JSON object: messages echoed during the measured window, their payload bytes, the
window's length, errors, connections that upgraded, and this process's CPU seconds in the
window (so the runner can show whether the client or the server saturated). Several processes
can run side by side; the runner adds them up. Only 127.0.0.1 is contacted, and the run ends
after `--duration` seconds whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# Frames at least this long are written one by one: `frame * n` would copy n MiB to save calls.
_JOIN_LIMIT = 64 * 1024


def mask_payload(payload: bytes, mask: bytes) -> bytes:
    """`payload` XORed with the 4-byte `mask` repeated (RFC 6455 section 5.3).

    One big-integer XOR over the whole payload: a 1 MiB frame takes milliseconds, where a loop
    over its bytes would take a good part of a second.
    """
    length = len(payload)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")


def client_frame(payload: bytes, opcode: int, mask: bytes) -> bytes:
    """One final, masked client frame."""
    length = len(payload)
    if length < 126:
        header = bytes([0x80 | opcode, 0x80 | length])
    elif length < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    return header + mask + mask_payload(payload, mask)


def handshake_request(port: int, path: str = "/ws") -> tuple[bytes, bytes]:
    """An opening handshake with a fresh key, and the Sec-WebSocket-Accept it must get back."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    request = (
        b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (path.encode("ascii"), port, key)
    )
    return request, accept


def handshake_problem(head: bytes, accept: bytes) -> str | None:
    """Why the response head `head` (up to, not including, the blank line) is no upgrade."""
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 101"):
        return f"handshake answered {lines[0][:60]!r}"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"sec-websocket-accept") != accept:
        return "wrong Sec-WebSocket-Accept"
    return None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Stats:
    """Counters shared by the connections of one process."""

    def __init__(self) -> None:
        self.messages = 0
        self.errors = 0
        self.upgraded = 0
        self.failures: list[str] = []


class EchoConnection(asyncio.Protocol):
    """One WebSocket connection that keeps `window` echo messages in flight."""

    def __init__(self, port: int, size: int, window: int, binary: bool, stats: Stats) -> None:
        self.stats = stats
        self.window = window
        self.size = size
        self.mask = os.urandom(4)
        # The payload never changes, so the masked frame is built once and resent as is.
        self.frame = client_frame(b"x" * size, _OP_BINARY if binary else _OP_TEXT, self.mask)
        self.request, self.accept = handshake_request(port)
        self.transport: asyncio.Transport | None = None
        self.buffer = b""  # unparsed bytes: a partial header, or a whole control frame to come
        self.skip = 0  # payload bytes of the current data frame still to arrive
        self.skip_final = False  # whether that frame ends its message
        self.message_bytes = 0  # payload bytes of the message being received so far
        self.open = False
        self.sending = True
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during the handshake: {exc}"))
        self.open = False

    def _fail_handshake(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    def _send(self, count: int) -> None:
        if not self.sending or self.transport is None:
            return
        if len(self.frame) < _JOIN_LIMIT:
            self.transport.write(self.frame * count)
        else:
            for _ in range(count):
                self.transport.write(self.frame)

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data, self.buffer = self.buffer[:end], self.buffer[end + 4 :], b""
            problem = handshake_problem(head, self.accept)
            if problem is not None:
                self._fail_handshake(problem)
                return
            self.open = True
            self.stats.upgraded += 1
            self.ready.set_result(None)
            self._send(self.window)
        self._read_frames(data)

    def _message_done(self) -> None:
        if self.message_bytes != self.size:
            self.stats.errors += 1
        self.message_bytes = 0

    def _read_frames(self, data: bytes) -> None:
        echoed = 0
        position = 0
        end = len(data)
        if self.skip:
            taken = min(self.skip, end)
            self.skip -= taken
            position = taken
            if self.skip:
                return
            if self.skip_final:
                self._message_done()
                echoed += 1
        if self.buffer:  # small: never more than a header or a control frame
            data = self.buffer + data[position:]
            position, end = 0, len(data)
        while end - position >= 2:
            first, second = data[position], data[position + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if end - position < 4:
                    break
                length = int.from_bytes(data[position + 2 : position + 4], "big")
                header = 4
            elif length == 127:
                if end - position < 10:
                    break
                length = int.from_bytes(data[position + 2 : position + 10], "big")
                header = 10
            if second & 0x80:  # servers must not mask; count it and skip the key
                self.stats.errors += 1
                header += 4
            opcode = first & 0x0F
            final = bool(first & 0x80)
            if opcode in (_OP_TEXT, _OP_BINARY, _OP_CONT):
                if end - position < header:
                    break
                self.message_bytes += length
                available = end - position - header
                if available < length:  # the rest of the payload is counted as it arrives
                    self.skip, self.skip_final = length - available, final
                    position = end
                    break
                if final:
                    self._message_done()
                    echoed += 1
            else:
                if end - position < header + length:
                    break
                if opcode == _OP_PING and self.transport is not None:
                    payload = data[position + header : position + header + length]
                    self.transport.write(client_frame(payload, _OP_PONG, self.mask))
                elif opcode == _OP_CLOSE:
                    self.stats.errors += 1
                    self.stats.failures.append("server sent a close frame")
            position += header + length
        self.buffer = data[position:] if position < end else b""
        if echoed:
            self.stats.messages += echoed
            self._send(echoed)


async def run(
    port: int,
    duration: float,
    connections: int,
    window: int,
    size: int,
    binary: bool,
    connect_timeout: float,
) -> dict[str, object]:
    """Open the connections, measure echoes for `duration` seconds, close everything."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    protocols: list[EchoConnection] = []
    transports: list[asyncio.BaseTransport] = []

    async def connect() -> None:
        transport, protocol = await loop.create_connection(
            lambda: EchoConnection(port, size, window, binary, stats), "127.0.0.1", port
        )
        transports.append(transport)
        protocols.append(protocol)
        await protocol.ready

    results = await asyncio.gather(
        *(asyncio.wait_for(connect(), connect_timeout) for _ in range(connections)),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            stats.failures.append(f"{type(result).__name__}: {result}")
    start_messages, start, start_cpu = stats.messages, time.monotonic(), _cpu_seconds()
    if stats.upgraded:
        await asyncio.sleep(duration)
    end_messages, elapsed = stats.messages, time.monotonic() - start
    cpu = _cpu_seconds() - start_cpu
    for protocol in protocols:
        protocol.sending = False
    close = client_frame(b"\x03\xe8", _OP_CLOSE, b"\0\0\0\0")
    for transport in transports:
        with contextlib.suppress(Exception):
            cast(asyncio.Transport, transport).write(close)
            transport.close()
    await asyncio.sleep(0.05)
    messages = end_messages - start_messages
    return {
        "messages": messages,
        "bytes": messages * size,
        "seconds": elapsed,
        "errors": stats.errors,
        "upgraded": stats.upgraded,
        "connections": connections,
        "failures": sorted(set(stats.failures))[:5],
        "cpu_seconds": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--window", type=int, default=16, help="messages in flight per connection")
    parser.add_argument("--size", type=int, default=64, help="message size in bytes")
    parser.add_argument("--binary", action="store_true", help="binary messages (default: text)")
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    runner: Callable[[Coroutine[Any, Any, dict[str, object]]], dict[str, object]]
    try:
        import uvloop  # optional: a faster client loop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(
        run(
            args.port,
            args.duration,
            args.connections,
            args.window,
            args.size,
            args.binary,
            args.connect_timeout,
        )
    )
    result["loop"] = runner.__module__.split(".")[0]
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
