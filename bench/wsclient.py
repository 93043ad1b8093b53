"""WebSocket echo load generator: `python bench/wsclient.py --port P --duration S ...`.

This module owns the ws-echo scenario's client. It speaks just enough RFC 6455 to drive an echo
server as hard as one process can: a raw asyncio protocol per connection, the handshake by
hand, and frames built once up front, so almost all of its CPU goes to the socket calls. Each
connection keeps `--window` messages in flight, sending one more for every echo it receives.
It offers no extensions (so no permessage-deflate) and reuses one masking key per connection,
which servers cannot tell apart from fresh keys; the payload is ASCII text of `--size` bytes.

It prints one JSON object: messages echoed during the measured window, its length, errors,
connections that upgraded, and this process's CPU seconds in the window (so the runner can
show whether the client or the server saturated). Several processes can run side by side; the
runner adds them up. Only 127.0.0.1 is contacted, and the run ends after `--duration` seconds
whatever happens.
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
from typing import cast

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING = 0x0, 0x1, 0x2, 0x8, 0x9


def client_frame(payload: bytes, opcode: int, mask: bytes) -> bytes:
    """One final, masked client frame."""
    length = len(payload)
    if length < 126:
        header = bytes([0x80 | opcode, 0x80 | length])
    elif length < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return header + mask + masked


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

    def __init__(self, port: int, size: int, window: int, stats: Stats) -> None:
        self.stats = stats
        self.window = window
        self.size = size
        self.mask = os.urandom(4)
        self.frame = client_frame(b"x" * size, _OP_TEXT, self.mask)
        self.key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(self.key + _GUID).digest())
        self.request = (
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (port, self.key)
        )
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.open = False
        self.sending = True
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during the handshake: {exc}"))
        self.open = False

    def _fail_handshake(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.open:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            lines = head.split(b"\r\n")
            if not lines[0].startswith(b"HTTP/1.1 101"):
                self._fail_handshake(f"handshake answered {lines[0][:60]!r}")
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if headers.get(b"sec-websocket-accept") != self.accept:
                self._fail_handshake("wrong Sec-WebSocket-Accept")
                return
            self.open = True
            self.stats.upgraded += 1
            self.ready.set_result(None)
            assert self.transport is not None
            self.transport.write(self.frame * self.window)
        self._read_frames()

    def _read_frames(self) -> None:
        buffer = self.buffer
        position = 0
        echoed = 0
        end = len(buffer)
        while end - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if end - position < 4:
                    break
                length = int.from_bytes(buffer[position + 2 : position + 4], "big")
                header = 4
            elif length == 127:
                if end - position < 10:
                    break
                length = int.from_bytes(buffer[position + 2 : position + 10], "big")
                header = 10
            if second & 0x80:  # servers must not mask; count it and skip the key
                self.stats.errors += 1
                header += 4
            if end - position < header + length:
                break
            opcode = first & 0x0F
            final = first & 0x80
            if opcode in (_OP_TEXT, _OP_BINARY, _OP_CONT):
                if final:
                    echoed += 1
                    if opcode != _OP_CONT and length != self.size:
                        self.stats.errors += 1
            elif opcode == _OP_PING and self.transport is not None:
                payload = buffer[position + header : position + header + length]
                self.transport.write(client_frame(payload, 0xA, self.mask))
            elif opcode == _OP_CLOSE:
                self.stats.errors += 1
                self.stats.failures.append("server sent a close frame")
            position += header + length
        self.buffer = buffer[position:]
        if echoed:
            self.stats.messages += echoed
            if self.sending and self.transport is not None:
                self.transport.write(self.frame * echoed)


async def run(
    port: int, duration: float, connections: int, window: int, size: int, connect_timeout: float
) -> dict[str, object]:
    """Open the connections, measure echoes for `duration` seconds, close everything."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    protocols: list[EchoConnection] = []
    transports: list[asyncio.BaseTransport] = []

    async def connect() -> None:
        transport, protocol = await loop.create_connection(
            lambda: EchoConnection(port, size, window, stats), "127.0.0.1", port
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
    return {
        "messages": end_messages - start_messages,
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
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    try:
        import uvloop  # optional: a faster client loop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(
        run(
            args.port, args.duration, args.connections, args.window, args.size, args.connect_timeout
        )
    )
    result["loop"] = runner.__module__.split(".")[0]
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
