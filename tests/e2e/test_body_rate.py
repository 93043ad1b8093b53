"""`min_request_body_rate` end to end, on asyncio and trio: a request body trickled below the
rate is answered 408 once the grace period of waiting has passed. HTTP/1.1 then closes the
connection; HTTP/2 and HTTP/3 end only the stream and go on serving the connection. A body
the application does not read is not the client's fault, however slowly it arrives.

A small grace (0.3 s) and a high rate (1000 B/s) keep these fast; the trickling clients send
5 bytes every 50 ms (100 B/s), and every loop is bounded.
"""

from __future__ import annotations

from typing import Any

import anyio
import h2.events
import pytest

from . import support
from .h2client import H2Client
from .h3client import H3Client, quic_port
from .support import host_port, read_until_closed, serving
from .test_limits import _parse

pytestmark = pytest.mark.anyio

RATE = 1000
GRACE = 0.3
PIECE = b"x" * 5
PAUSE = 0.05
SETTINGS: dict[str, Any] = {
    "min_request_body_rate": RATE,
    "min_request_body_rate_grace": GRACE,
    "lifespan": "off",
}


class BodyApp:
    """Reads the body and answers with its length; records how each body ended. `/late` sleeps
    for `late` seconds before it reads anything."""

    def __init__(self, late: float = 0.0) -> None:
        self.ended: dict[str, str] = {}
        self.late = late

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/late":
            await anyio.sleep(self.late)
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.ended[path] = "disconnect"
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.ended[path] = "complete"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % size})


async def _trickle(send: Any, pieces: int) -> None:
    """Send PIECE every PAUSE, `pieces` times at most, until the peer stops taking them."""
    for _ in range(pieces):
        try:
            await send(PIECE)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return
        await anyio.sleep(PAUSE)


@pytest.fixture(params=["h11", "httptools"])
def engine(request: pytest.FixtureRequest) -> Any:
    """The HTTP/1.1 tests run on both parsing engines."""
    support.ENGINE["http"] = request.param
    yield request.param
    support.ENGINE["http"] = "auto"


both_engines = pytest.mark.usefixtures("engine")


# ---- HTTP/1.1 -----------------------------------------------------------------------------


@both_engines
async def test_h11_a_trickled_body_gets_408_and_the_connection_closes() -> None:
    app = BodyApp()
    head = b"POST /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 10000\r\n\r\n"
    async with (
        serving(app, **SETTINGS) as server,
        await anyio.connect_tcp(*host_port(server)) as stream,
    ):
        await stream.send(head)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                # 100 pieces would take 5 s; the 408 comes after ~0.3 s of waiting.
                tg.start_soon(_trickle, stream.send, 100)
                response = await read_until_closed(stream)
                tg.cancel_scope.cancel()
    status, headers, body = _parse(response)
    assert status == 408
    assert headers[b"connection"] == b"close"
    assert body.startswith(b"408 ")
    assert app.ended["/slow"] == "disconnect"


@both_engines
async def test_h11_a_body_the_app_does_not_read_yet_is_not_punished() -> None:
    # The app sleeps for three grace periods before it reads. Meanwhile the 1 MiB body backs
    # up against flow control (the server stops reading at 64 KiB unread), so it arrives at
    # nothing like the rate; that is the app's doing, and only the app's waits count.
    app = BodyApp(late=3 * GRACE)
    size = 1024 * 1024
    head = b"POST /late HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    async with (
        serving(app, **SETTINGS) as server,
        await anyio.connect_tcp(*host_port(server)) as stream,
    ):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.send, head % size + b"x" * size)
                response = await read_until_closed(stream)
    status, _, body = _parse(response)
    assert (status, body) == (200, b"%d" % size)


@both_engines
async def test_h11_a_fast_body_is_served() -> None:
    app = BodyApp()
    async with (
        serving(app, **SETTINGS) as server,
        await anyio.connect_tcp(*host_port(server)) as stream,
    ):
        await stream.send(
            b"POST /fast HTTP/1.1\r\nhost: x\r\ncontent-length: 20000\r\nconnection: close\r\n\r\n"
        )
        for _ in range(10):  # 2000 bytes every 50 ms: 40 kB/s, for 0.5 s, past the grace
            await stream.send(b"y" * 2000)
            await anyio.sleep(PAUSE)
        status, _, body = _parse(await read_until_closed(stream))
    assert (status, body) == (200, b"20000")


# ---- HTTP/2 -------------------------------------------------------------------------------


async def test_h2_a_trickled_body_gets_408_and_the_connection_stays() -> None:
    app = BodyApp()
    async with serving(app, **SETTINGS) as server:
        client = await H2Client.connect(*host_port(server))
        try:
            stream_id = client.conn.get_next_available_stream_id()
            headers = client.request_headers("/slow", "POST")
            client.conn.send_headers(stream_id, [*headers, (b"content-length", b"10000")])
            await client.flush()

            def answered() -> bool:
                return any(
                    isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
                    and e.stream_id == stream_id
                    for e in client.events
                )

            # One task reads and writes (the client is not safe for two): a piece, then up to
            # PAUSE of reading; bounded at 100 rounds.
            with anyio.fail_after(5):
                for _ in range(100):
                    if answered():
                        break
                    client.conn.send_data(stream_id, PIECE)
                    await client.flush()
                    with anyio.move_on_after(PAUSE):
                        await client.receive()
            response, body = await client.response(stream_id)
            assert response[b":status"] == b"408"
            assert body.startswith(b"408 ")
            assert app.ended["/slow"] == "disconnect"

            # The connection carries on.
            after = await client.request("/after", body=b"z" * 100)
            response, body = await client.response(after)
            assert (response[b":status"], body) == (b"200", b"100")
            assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)
        finally:
            await client.aclose()


# ---- HTTP/3 -------------------------------------------------------------------------------


async def test_h3_a_trickled_body_gets_408_and_the_connection_stays(certs: Any) -> None:
    app = BodyApp()
    settings = {**SETTINGS, "quic_bind": ["127.0.0.1:0"], "certfile": certs.cert_path}
    async with (
        serving(app, **settings) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        headers = [*client.request_headers("/slow", "POST"), (b"content-length", b"10000")]
        stream = await client.open_stream(headers, end_stream=False)
        with anyio.fail_after(5):
            for _ in range(100):  # bounded: 5 s at most
                if stream.ended or stream.reset_code is not None:
                    break
                await client.send_data(stream, PIECE, end_stream=False)
                await anyio.sleep(PAUSE)
        await client.finished(stream)
        assert stream.status == 408

        after = await client.request("/after", "POST", body=b"z" * 100)
        assert (after.status, after.body) == (200, b"100")
        assert client.terminated is None
