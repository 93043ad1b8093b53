"""Lingering close (RFC 9112 9.6), end to end on asyncio and trio: a client still sending when
the server refuses its request reads the whole refusal, every time, instead of a reset."""

from __future__ import annotations

import anyio
import pytest

from .support import host_port, serving

pytestmark = pytest.mark.anyio


async def never_called(scope, receive, send):  # pragma: no cover - the request is refused
    raise AssertionError("a refused request reached the application")


async def test_a_client_still_sending_reads_the_whole_431():
    async with serving(never_called, lifespan="off") as server:
        host, port = host_port(server)
        for _ in range(5):
            async with await anyio.connect_tcp(host, port) as client:
                # A head past h11_max_incomplete_size (16 KiB): 431 goes out while the
                # client is still sending, and 1 MiB more follows that the server never reads.
                await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
                for _ in range(16):
                    await client.send(b"b" * 65536)
                received = b""
                with anyio.fail_after(10):
                    while True:
                        try:
                            chunk = await client.receive()
                        except anyio.EndOfStream:
                            break
                        received += chunk
                assert received.startswith(b"HTTP/1.1 431 "), received[:100]
                head, _, body = received.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":", 1)[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                )
                assert len(body) == length
