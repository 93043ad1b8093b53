"""Helpers for end-to-end tests: an in-process server on port 0 and a raw socket client."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio

from multicorn import Config, Server

# The HTTP/1.1 parsing engine servers in these tests use; test_http11.py runs on both.
ENGINE = {"http": "auto"}


@contextlib.asynccontextmanager
async def serving(app: Any, **settings: Any) -> AsyncIterator[Server]:
    settings.setdefault("bind", ["127.0.0.1:0"])
    settings.setdefault("http", ENGINE["http"])
    settings.setdefault("error_logfile", None)
    async with Server(app, Config(**settings)) as server:
        yield server


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 right now, for a server that must use one
    number for both (HTTP/3 on the HTTP/1.1 and HTTP/2 port)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise AssertionError("no port free for both TCP and UDP")


def host_port(server: Server) -> tuple[str, int]:
    url = server.bound_addresses[0]
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host.strip("[]"), int(port)


async def read_until_closed(stream: anyio.abc.ByteStream, limit: float = 5.0) -> bytes:
    chunks = []
    with anyio.fail_after(limit):
        while True:
            try:
                chunk = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                break
            chunks.append(chunk)
    return b"".join(chunks)


async def read_until(stream: anyio.abc.ByteStream, marker: bytes, limit: float = 5.0) -> bytes:
    data = b""
    with anyio.fail_after(limit):
        while marker not in data:
            data += await stream.receive()
    return data


async def raw_exchange(server: Server, request: bytes, limit: float = 5.0) -> bytes:
    """Send bytes, half-close, read everything until the server closes."""
    host, port = host_port(server)
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(request)
        return await read_until_closed(stream, limit)
