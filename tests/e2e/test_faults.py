"""Faults stay in their stream, and a peer hanging up is no server error: real sockets, on
asyncio and trio."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anyio
import h2.events
import pytest

import multicorn.app.http
import multicorn.app.scope
from multicorn.app.errors import ClientDisconnected

from .h2client import H2Client
from .support import host_port, read_until, serving

pytestmark = pytest.mark.anyio


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno == level]


@pytest.fixture
def server_log() -> Iterator[_Collect]:
    """What the server logs on "multicorn.error" (which does not propagate to caplog)."""
    handler = _Collect()
    logger = logging.getLogger("multicorn.error")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def boom_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the scope of a request for /boom raises, as a bug of ours would."""
    real = multicorn.app.scope.build_http_scope

    def build(event: Any, *args: Any, **kwargs: Any) -> Any:
        if event.target == b"/boom":
            raise RuntimeError("scope hook failed")
        return real(event, *args, **kwargs)

    monkeypatch.setattr(multicorn.app.http, "build_http_scope", build)


async def path_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served " + scope["path"].encode()})


def _reset(client: H2Client, stream_id: int) -> bool:
    return any(
        isinstance(e, h2.events.StreamReset) and e.stream_id == stream_id for e in client.events
    )


async def test_h2_fault_in_one_stream_spares_the_other(
    boom_scope: None, server_log: _Collect
) -> None:
    async with serving(path_app) as server:
        client = await H2Client.connect(*host_port(server))
        # One write, so both requests are handled in the same read on the server.
        client.conn.send_headers(1, client.request_headers("/boom"), end_stream=True)
        client.conn.send_headers(3, client.request_headers("/fine"), end_stream=True)
        await client.flush()
        failed, _ = await client.response(1)
        served, body = await client.response(3)
        # The connection carries on with new streams.
        again, _ = await client.response(await client.request("/again"))
        await client.aclose()
    assert failed[b":status"] == b"500"
    assert served[b":status"] == b"200" and body == b"served /fine"
    assert again[b":status"] == b"200"
    [record] = server_log.at(logging.ERROR)
    assert record.exc_info is not None and "scope hook failed" in str(record.exc_info[1])


async def test_h2_undecodable_method_spares_the_other_stream(server_log: _Collect) -> None:
    async with serving(path_app) as server:
        client = await H2Client.connect(*host_port(server))
        headers = client.request_headers("/")
        headers[0] = (b":method", b"G\xffT")
        client.conn.send_headers(1, headers, end_stream=True)
        client.conn.send_headers(3, client.request_headers("/fine"), end_stream=True)
        await client.flush()
        failed, _ = await client.response(1)
        served, body = await client.response(3)
        await client.aclose()
    # The HTTP/2 core may reset such a head itself; if it reaches the ASGI layer, a 500.
    assert failed.get(b":status") == b"500" or _reset(client, 1)
    assert served[b":status"] == b"200" and body == b"served /fine"
    assert len(server_log.at(logging.ERROR)) <= 1


async def test_h1_fault_keeps_the_connection(boom_scope: None, server_log: _Collect) -> None:
    request = b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\nGET /fine HTTP/1.1\r\nHost: a\r\n\r\n"
    async with serving(path_app) as server, await anyio.connect_tcp(*host_port(server)) as stream:
        await stream.send(request)
        data = await read_until(stream, b"served /fine")
    assert data.startswith(b"HTTP/1.1 500 ")
    assert b"HTTP/1.1 200 " in data
    assert len(server_log.at(logging.ERROR)) == 1


async def test_a_peer_hanging_up_mid_response_is_not_an_error(server_log: _Collect) -> None:
    outcome: list[BaseException] = []
    started = anyio.Event()
    finished = anyio.Event()

    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
                started.set()
                await anyio.sleep(0)
        except ClientDisconnected as exc:
            outcome.append(exc)
            raise  # as most apps do: let it propagate
        finally:
            finished.set()

    async with serving(streaming, log_level="debug") as server:
        async with await anyio.connect_tcp(*host_port(server)) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            await read_until(stream, b"HTTP/1.1 200")
            with anyio.fail_after(5):
                await started.wait()
        with anyio.fail_after(5):
            await finished.wait()
    assert outcome and isinstance(outcome[0], ClientDisconnected)
    assert server_log.at(logging.ERROR) == []
    assert any("went away" in r.getMessage() for r in server_log.at(logging.DEBUG))


async def test_h2_refused_response_head_costs_only_its_stream(server_log: _Collect) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"x-bad", b"one\r\ntwo")] if scope["path"] == "/bad" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serving(app) as server:
        client = await H2Client.connect(*host_port(server))
        client.conn.send_headers(1, client.request_headers("/bad"), end_stream=True)
        client.conn.send_headers(3, client.request_headers("/fine"), end_stream=True)
        await client.flush()
        failed, _ = await client.response(1)
        served, body = await client.response(3)
        await client.aclose()
    assert failed[b":status"] == b"500"
    assert served[b":status"] == b"200" and body == b"ok"
    assert len(server_log.at(logging.ERROR)) == 1
