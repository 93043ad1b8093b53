"""Load limits end to end, on asyncio and trio, over HTTP/1.1, HTTP/2 and HTTP/3:

- `max_request_body_size`: a body announced larger than the cap is answered 413 without calling
  the application; a streamed one (chunked, or DATA without content-length) is answered 413 as
  it crosses the cap. The application never sees more than the cap. HTTP/1.1 then closes the
  connection; HTTP/2 and HTTP/3 go on serving it.
- `limit_concurrency`: past the limit, server-wide, a new request (or WebSocket handshake) gets
  503 with Retry-After and the application is not called; once a held request ends, a new one
  is served.
"""

from __future__ import annotations

import ssl
from typing import Any

import anyio
import h2.events
import httpx
import pytest

from . import support
from .h2client import H2Client
from .h3client import H3Client, quic_port
from .support import host_port, read_until, read_until_closed, serving

pytestmark = pytest.mark.anyio

LIMIT = 1000


@pytest.fixture(params=["h11", "httptools"])
def engine(request: pytest.FixtureRequest) -> Any:
    """The HTTP/1.1 tests run on both parsing engines."""
    support.ENGINE["http"] = request.param
    yield request.param
    support.ENGINE["http"] = "auto"


both_engines = pytest.mark.usefixtures("engine")


class LimitsApp:
    """Records how much body each request handed the app; `/hold/NAME` waits until the test
    releases NAME; anything else reads the body and answers with its length."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.seen: dict[str, int] = {}  # body bytes the app received, by path
        self.ended: dict[str, str] = {}  # how the body ended: "complete" or "disconnect"
        self.releases: dict[str, anyio.Event] = {}
        self.held: dict[str, anyio.Event] = {}
        self.first_piece = anyio.Event()

    def release(self, name: str) -> None:
        self.releases.setdefault(name, anyio.Event()).set()

    async def wait_held(self, *names: str) -> None:
        with anyio.fail_after(5):
            for name in names:
                await self.held.setdefault(name, anyio.Event()).wait()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        path = scope["path"]
        self.calls.append(path)
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close"})
            return
        if path.startswith("/hold/"):
            name = path.removeprefix("/hold/")
            self.held.setdefault(name, anyio.Event()).set()
            with anyio.fail_after(10):
                await self.releases.setdefault(name, anyio.Event()).wait()
            await _respond(send, b"released " + name.encode())
            return
        self.seen[path] = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.ended[path] = "disconnect"
                return
            self.seen[path] += len(message.get("body", b""))
            if self.seen[path]:
                self.first_piece.set()
            if not message.get("more_body", False):
                break
        self.ended[path] = "complete"
        await _respond(send, b"%d" % self.seen[path])


async def _respond(send: Any, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _parse(response: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def _h11_send(server: Any, request: bytes) -> bytes:
    """Send `request` and read until the server closes."""
    async with await anyio.connect_tcp(*host_port(server)) as stream:
        await stream.send(request)
        return await read_until_closed(stream)


async def _h11_exchange(server: Any, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    return _parse(await _h11_send(server, request))


def _post(path: str, body: bytes, *, chunked: bool = False, extra: bytes = b"") -> bytes:
    if chunked:
        framing = b"transfer-encoding: chunked\r\n"
        pieces = [body[i : i + 400] for i in range(0, len(body), 400)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        framing = b"content-length: %d\r\n" % len(body)
        payload = body
    return b"POST %s HTTP/1.1\r\nhost: x\r\n%s%s\r\n%s" % (path.encode(), framing, extra, payload)


def _get(path: str, *, close: bool = False) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    return b"GET %s HTTP/1.1\r\nhost: x\r\n%s\r\n" % (path.encode(), connection)


# ---- max_request_body_size: HTTP/1.1 -----------------------------------------------------


@both_engines
async def test_h11_announced_body_over_the_cap_is_413_without_the_app() -> None:
    app = LimitsApp()
    async with serving(app, max_request_body_size=LIMIT, lifespan="off") as server:
        status, headers, body = await _h11_exchange(server, _post("/big", b"x" * (LIMIT + 1)))
    assert status == 413
    assert headers[b"connection"] == b"close"
    assert body.startswith(b"413 ")  # the phrase differs across Python versions
    assert app.calls == []


@both_engines
async def test_h11_expect_continue_over_the_cap_gets_413_and_no_100() -> None:
    app = LimitsApp()
    request = (
        b"POST /big HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\nexpect: 100-continue\r\n\r\n"
    )
    async with serving(app, max_request_body_size=LIMIT, lifespan="off") as server:
        response = await _h11_send(server, request)  # and never the body: it waits for a 100
    assert response.startswith(b"HTTP/1.1 413 ")
    assert b" 100 " not in response
    assert app.calls == []


@both_engines
async def test_h11_body_at_the_cap_is_served() -> None:
    app = LimitsApp()
    async with serving(app, max_request_body_size=LIMIT, lifespan="off") as server:
        for chunked in (False, True):
            request = _post("/exact", b"x" * LIMIT, chunked=chunked, extra=b"connection: close\r\n")
            status, _, body = await _h11_exchange(server, request)
            assert (status, body) == (200, b"%d" % LIMIT)


@both_engines
async def test_h11_chunked_body_over_the_cap_is_413_and_the_app_sees_at_most_the_cap() -> None:
    app = LimitsApp()
    async with serving(app, max_request_body_size=LIMIT, lifespan="off") as server:
        status, headers, _ = await _h11_exchange(
            server, _post("/chunked", b"x" * 2000, chunked=True)
        )
    assert status == 413
    assert headers[b"connection"] == b"close"
    # Sent in one piece, the body is over the cap before the app is even started: not called.
    assert app.seen.get("/chunked", 0) <= LIMIT
    assert app.ended.get("/chunked", "disconnect") == "disconnect"


@both_engines
async def test_h11_chunked_body_crossing_the_cap_while_the_app_reads() -> None:
    app = LimitsApp()
    head = b"POST /slow HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    async with (
        serving(app, max_request_body_size=LIMIT, lifespan="off") as server,
        await anyio.connect_tcp(*host_port(server)) as stream,
    ):
        await stream.send(head + b"320\r\n" + b"a" * 800 + b"\r\n")
        with anyio.fail_after(5):
            await app.first_piece.wait()  # the app has read the first 800 bytes
        await stream.send(b"190\r\n" + b"b" * 400 + b"\r\n0\r\n\r\n")
        status, headers, _ = _parse(await read_until_closed(stream))
    assert status == 413
    assert headers[b"connection"] == b"close"
    assert app.seen["/slow"] == 800
    assert app.ended["/slow"] == "disconnect"


# ---- max_request_body_size: HTTP/2 -------------------------------------------------------


async def _h2_post(
    client: H2Client, path: str, pieces: list[bytes], *, length: int | None
) -> tuple[dict, bytes]:
    stream_id = client.conn.get_next_available_stream_id()
    headers = client.request_headers(path, "POST")
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    client.conn.send_headers(stream_id, headers)
    for i, piece in enumerate(pieces):
        client.conn.send_data(stream_id, piece, end_stream=i == len(pieces) - 1)
        await client.flush()
    return await client.response(stream_id)


async def test_h2_body_over_the_cap_is_413_and_the_connection_stays() -> None:
    app = LimitsApp()
    async with serving(app, max_request_body_size=LIMIT, lifespan="off") as server:
        client = await H2Client.connect(*host_port(server))
        try:
            # Announced: refused without calling the app.
            headers, _ = await _h2_post(client, "/announced", [b"x" * 1500], length=1500)
            assert headers[b":status"] == b"413"
            assert "/announced" not in app.calls
            # Streamed without content-length: refused as it crosses the cap.
            headers, _ = await _h2_post(client, "/streamed", [b"x" * 600] * 3, length=None)
            assert headers[b":status"] == b"413"
            assert app.seen.get("/streamed", 0) <= LIMIT
            # The connection carries on.
            headers, body = await _h2_post(client, "/after", [b"x" * LIMIT], length=LIMIT)
            assert (headers[b":status"], body) == (b"200", b"%d" % LIMIT)
            assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)
        finally:
            await client.aclose()


# ---- max_request_body_size: HTTP/3 -------------------------------------------------------


def _quic(certs: Any, **extra: Any) -> dict[str, Any]:
    return {
        "quic_bind": ["127.0.0.1:0"],
        "certfile": certs.cert_path,
        "lifespan": "off",
        **extra,
    }


async def test_h3_body_over_the_cap_is_413_and_the_connection_stays(certs: Any) -> None:
    app = LimitsApp()
    async with (
        serving(app, **_quic(certs, max_request_body_size=LIMIT)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        announced = await client.request(
            "/announced", "POST", body=b"x" * 1500, extra=[(b"content-length", b"1500")]
        )
        assert announced.status == 413
        assert "/announced" not in app.calls

        stream = await client.open_stream(
            client.request_headers("/streamed", "POST"), end_stream=False
        )
        for i in range(3):
            await client.send_data(stream, b"x" * 600, end_stream=i == 2)
        await client.finished(stream)
        assert stream.status == 413
        assert app.seen.get("/streamed", 0) <= LIMIT

        after = await client.request("/after", "POST", body=b"x" * LIMIT)
        assert (after.status, after.body) == (200, b"%d" % LIMIT)
        assert client.terminated is None


# ---- limit_concurrency -------------------------------------------------------------------


@both_engines
async def test_h11_past_the_concurrency_limit_is_503_until_a_request_ends(tmp_path: Any) -> None:
    app = LimitsApp()
    log = tmp_path / "access.log"
    logging = {"access_logfile": str(log), "access_logformat": '"%(r)s" %(s)s %(b)s'}
    async with serving(app, limit_concurrency=2, lifespan="off", **logging) as server:
        address = host_port(server)
        async with (
            await anyio.connect_tcp(*address) as first,
            await anyio.connect_tcp(*address) as second,
        ):
            await first.send(_get("/hold/a", close=True))
            await second.send(_get("/hold/b", close=True))
            await app.wait_held("a", "b")

            status, headers, body = await _h11_exchange(server, _get("/third", close=True))
            assert status == 503
            assert headers[b"retry-after"] == b"1"
            assert body == b"503 Service Unavailable\n"
            assert "/third" not in app.calls

            app.release("a")
            assert _parse(await read_until_closed(first))[0] == 200
            status, _, _ = await _h11_exchange(server, _get("/fourth", close=True))
            assert status == 200
            app.release("b")
            assert _parse(await read_until_closed(second))[0] == 200
    # The refusal is in the access log like any response (Uvicorn logs its 503s too).
    lines = log.read_text().splitlines()
    assert '"GET /third HTTP/1.1" 503 24' in lines, lines


@both_engines
async def test_a_websocket_past_the_concurrency_limit_gets_503() -> None:
    app = LimitsApp()
    handshake = (
        b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )
    async with serving(app, limit_concurrency=1, lifespan="off") as server:
        async with await anyio.connect_tcp(*host_port(server)) as held:
            await held.send(_get("/hold/a", close=True))
            await app.wait_held("a")
            status, headers, _ = await _h11_exchange(server, handshake)
            assert status == 503
            assert headers[b"retry-after"] == b"1"
            assert "/ws" not in app.calls
            app.release("a")
            await read_until_closed(held)
        # Below the limit again: the handshake is served.
        async with await anyio.connect_tcp(*host_port(server)) as stream:
            await stream.send(handshake)
            assert (await read_until(stream, b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")


async def test_h2_streams_past_the_concurrency_limit_get_503() -> None:
    app = LimitsApp()
    async with serving(app, limit_concurrency=2, lifespan="off") as server:
        client = await H2Client.connect(*host_port(server))
        try:
            held_a = await client.request("/hold/a")
            held_b = await client.request("/hold/b")
            await app.wait_held("a", "b")
            headers, _ = await client.response(await client.request("/third"))
            assert headers[b":status"] == b"503"
            assert headers[b"retry-after"] == b"1"
            assert "/third" not in app.calls
            app.release("a")
            assert (await client.response(held_a))[0][b":status"] == b"200"
            headers, _ = await client.response(await client.request("/fourth"))
            assert headers[b":status"] == b"200"
            app.release("b")
            assert (await client.response(held_b))[0][b":status"] == b"200"
        finally:
            await client.aclose()


async def test_h3_streams_past_the_concurrency_limit_get_503(certs: Any) -> None:
    app = LimitsApp()
    async with (
        serving(app, **_quic(certs, limit_concurrency=2)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        held_a = await client.open_stream(client.request_headers("/hold/a"), end_stream=True)
        held_b = await client.open_stream(client.request_headers("/hold/b"), end_stream=True)
        await app.wait_held("a", "b")
        third = await client.request("/third")
        assert third.status == 503
        assert third.response_headers[b"retry-after"] == b"1"
        assert "/third" not in app.calls
        app.release("a")
        assert (await client.finished(held_a)).status == 200
        assert (await client.request("/fourth")).status == 200
        app.release("b")
        assert (await client.finished(held_b)).status == 200


async def test_the_concurrency_limit_is_server_wide_across_protocols(certs: Any) -> None:
    app = LimitsApp()
    async with (
        serving(app, **_quic(certs, limit_concurrency=2)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as h3,
        httpx.AsyncClient(verify=certs.verify()) as h11,
    ):
        url = server.bound_addresses[0]
        h2 = await H2Client.connect(*host_port(server), tls=_h2_tls(certs))
        try:
            # One held over HTTP/2, one over HTTP/3: HTTP/1.1 and both of them are refused.
            held_h2 = await h2.request("/hold/a")
            held_h3 = await h3.open_stream(h3.request_headers("/hold/b"), end_stream=True)
            await app.wait_held("a", "b")
            response = await h11.get(url + "/third")
            assert (response.status_code, response.headers["retry-after"]) == (503, "1")
            headers, _ = await h2.response(await h2.request("/fourth"))
            assert headers[b":status"] == b"503"
            assert (await h3.request("/fifth")).status == 503
            app.release("a")
            app.release("b")
            assert (await h2.response(held_h2))[0][b":status"] == b"200"
            assert (await h3.finished(held_h3)).status == 200
            assert (await h11.get(url + "/sixth")).status_code == 200
        finally:
            await h2.aclose()


def _h2_tls(certs: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs.ca_path)
    context.set_alpn_protocols(["h2"])
    return context
