"""WebSocket over HTTP/2 (RFC 8441 extended CONNECT) end to end, on asyncio and trio, over
cleartext h2c (prior knowledge) and over TLS with ALPN h2.

The client is tests/e2e/h2client.py's h2 connection; the WebSocket frames inside the stream's
DATA are built and read by wsproto's client-side frame layer. Checked: the server advertises
SETTINGS_ENABLE_CONNECT_PROTOCOL only while WebSocket is on, an extended CONNECT is accepted
with 200 and echoes messages (compressed too), WebSocket streams and plain requests share a
connection, the scope says HTTP/2, a wrong version is answered 426, and with WebSocket off an
extended CONNECT is reset.
"""

from __future__ import annotations

from typing import Any

import anyio
import h2.errors
import h2.events
import h2.settings
import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, TextMessage
from wsproto.extensions import Extension, PerMessageDeflate

from .h2client import H2Client
from .support import host_port, serving
from .wsclient import Recorder, echo_app

pytestmark = pytest.mark.anyio

ENABLE_CONNECT_PROTOCOL = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL


@pytest.fixture(params=["h2c", "tls"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


async def h2_connect(server: Any, transport: str, certs: Any) -> H2Client:
    tls = certs.client_context(alpn=["h2"]) if transport == "tls" else None
    client = await H2Client.connect(*host_port(server), tls=tls)
    # The server's SETTINGS come first; extended CONNECT may only be used after them.
    await client.receive_until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
    return client


def settings(transport: str, certs: Any, **extra: Any) -> dict[str, Any]:
    return {"certfile": certs.cert_path, **extra} if transport == "tls" else extra


class H2WebSocket:
    """One WebSocket on one HTTP/2 stream of an `H2Client`."""

    def __init__(self, client: H2Client, stream_id: int, extensions: list[Extension]) -> None:
        self.client = client
        self.stream_id = stream_id
        self.frames = Connection(ConnectionType.CLIENT, extensions)
        self._seen = 0  # how many of the client's events were looked at
        self.ended = False

    async def send(self, event: Event) -> None:
        await self.send_raw(self.frames.send(event))

    async def send_raw(self, data: bytes, limit: float = 5.0) -> None:
        """DATA frames within the peer's flow-control window, waiting for it to grow."""
        conn = self.client.conn
        with anyio.fail_after(limit):
            while data:
                room = min(
                    conn.local_flow_control_window(self.stream_id), conn.max_outbound_frame_size
                )
                if room == 0:
                    await self.client.receive(limit)
                    continue
                conn.send_data(self.stream_id, data[:room])
                data = data[room:]
                await self.client.flush()

    async def receive(self, limit: float = 5.0) -> Event | None:
        """The next WebSocket event on this stream, or None once the stream ended."""
        with anyio.fail_after(limit):
            while True:
                for event in self.frames.events():
                    return event
                if self.ended:
                    return None
                while self._seen == len(self.client.events):
                    await self.client.receive(limit)
                event = self.client.events[self._seen]
                self._seen += 1
                if getattr(event, "stream_id", None) != self.stream_id:
                    continue
                if isinstance(event, h2.events.DataReceived):
                    self.client.conn.acknowledge_received_data(
                        event.flow_controlled_length, self.stream_id
                    )
                    await self.client.flush()
                    if event.data:  # an empty DATA may carry END_STREAM after the Close
                        self.frames.receive_data(event.data)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    self.ended = True


def connect_headers(scheme: str, path: str = "/ws", **extra: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", scheme.encode()),
        (b":path", path.encode()),
        (b":authority", b"localhost"),
    ]
    extra.setdefault("sec_websocket_version", "13")
    headers += [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]
    return headers


async def open_websocket(
    client: H2Client, scheme: str, path: str = "/ws", *, deflate: bool = False, **extra: str
) -> tuple[dict[bytes, bytes], H2WebSocket]:
    """Send an extended CONNECT; the response headers, and the WebSocket on the stream."""
    if deflate:
        extra["sec_websocket_extensions"] = "permessage-deflate"
    stream_id = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream_id, connect_headers(scheme, path, **extra))
    await client.flush()

    def answered(event: Any) -> bool:
        return (
            isinstance(event, (h2.events.ResponseReceived, h2.events.StreamReset))
            and event.stream_id == stream_id
        )

    await client.receive_until(answered)
    headers: dict[bytes, bytes] = {}
    for event in client.events:
        if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
            headers = dict(event.headers)
    extensions: list[Extension] = []
    accepted = headers.get(b"sec-websocket-extensions")
    if deflate and accepted is not None:
        extension = PerMessageDeflate()
        extension.finalize(accepted.decode())
        extensions.append(extension)
    return headers, H2WebSocket(client, stream_id, extensions)


async def test_extended_connect_echoes_and_the_scope_says_http2(transport: str, certs: Any) -> None:
    recorder = Recorder()
    async with serving(echo_app(recorder), **settings(transport, certs)) as server:
        client = await h2_connect(server, transport, certs)
        assert client.conn.remote_settings[ENABLE_CONNECT_PROTOCOL] == 1
        scheme = "https" if transport == "tls" else "http"
        headers, ws = await open_websocket(client, scheme, "/ws?x=1", sec_websocket_protocol="a, b")
        assert headers[b":status"] == b"200"  # RFC 8441 5: a 2xx, not 101
        assert b"sec-websocket-accept" not in headers  # RFC 8441 5: no key, no accept
        await ws.send(TextMessage(data="hello over h2"))
        event = await ws.receive()
        assert isinstance(event, TextMessage) and event.data == "hello over h2"
        await ws.send(BytesMessage(data=b"\x00" * 100_000))  # past the initial window
        data = b""
        while len(data) < 100_000:
            event = await ws.receive()
            assert isinstance(event, BytesMessage)
            data += bytes(event.data)
        assert data == b"\x00" * 100_000
        await ws.send(CloseConnection(code=4000, reason="bye"))
        event = await ws.receive()
        assert isinstance(event, CloseConnection) and event.code == 4000
        assert await ws.receive() is None  # the server ends the stream after the Close
        await recorder.wait_done()
        await client.aclose()
    scope = recorder.scopes[0]
    assert scope["type"] == "websocket"
    assert scope["http_version"] == "2"
    assert scope["scheme"] == ("wss" if transport == "tls" else "ws")
    assert scope["path"] == "/ws"
    assert scope["query_string"] == b"x=1"
    assert scope["subprotocols"] == ["a", "b"]
    assert recorder.disconnect() == {"type": "websocket.disconnect", "code": 4000, "reason": "bye"}


async def test_websockets_and_requests_share_a_connection(transport: str, certs: Any) -> None:
    recorder = Recorder()
    async with serving(echo_app(recorder), **settings(transport, certs)) as server:
        client = await h2_connect(server, transport, certs)
        scheme = "https" if transport == "tls" else "http"
        _, first = await open_websocket(client, scheme, "/one")
        _, second = await open_websocket(client, scheme, "/two")
        get = await client.request("/plain")
        await first.send(TextMessage(data="to one"))
        await second.send(TextMessage(data="to two"))
        another_get = await client.request("/plain")
        reply_two = await second.receive()
        reply_one = await first.receive()
        assert isinstance(reply_one, TextMessage) and reply_one.data == "to one"
        assert isinstance(reply_two, TextMessage) and reply_two.data == "to two"
        for stream_id in (get, another_get):
            headers, body = await client.response(stream_id)
            assert headers[b":status"] == b"200" and body == b"http"
        # Both WebSockets are still open after the requests finished.
        await first.send(TextMessage(data="again"))
        reply = await first.receive()
        assert isinstance(reply, TextMessage) and reply.data == "again"
        for ws in (first, second):
            await ws.send(CloseConnection(code=1000))
        for ws in (first, second):
            event = await ws.receive()
            assert isinstance(event, CloseConnection) and event.code == 1000
        await client.aclose()
    assert sorted(scope["path"] for scope in recorder.scopes) == ["/one", "/two"]


async def test_permessage_deflate_over_h2(transport: str, certs: Any) -> None:
    recorder = Recorder()
    text = "squeeze me " * 5000
    async with serving(echo_app(recorder), **settings(transport, certs)) as server:
        client = await h2_connect(server, transport, certs)
        scheme = "https" if transport == "tls" else "http"
        headers, ws = await open_websocket(client, scheme, deflate=True)
        assert headers[b":status"] == b"200"
        assert headers[b"sec-websocket-extensions"].startswith(b"permessage-deflate")
        raw = ws.frames.send(TextMessage(data=text))
        assert raw[0] & 0x40  # RSV1: the client really sends it compressed
        assert len(raw) < len(text) // 10
        await ws.send_raw(raw)
        event = await ws.receive()
        assert isinstance(event, TextMessage) and event.data == text
        await client.aclose()


async def test_a_wrong_websocket_version_is_answered_426(transport: str, certs: Any) -> None:
    recorder = Recorder()
    async with serving(echo_app(recorder), **settings(transport, certs)) as server:
        client = await h2_connect(server, transport, certs)
        scheme = "https" if transport == "tls" else "http"
        headers, ws = await open_websocket(client, scheme, sec_websocket_version="8")
        await ws.receive()  # to the end of the stream
        await client.aclose()
    assert headers[b":status"] == b"426"
    assert headers[b"sec-websocket-version"] == b"13"
    assert recorder.calls == 0


async def test_extended_connect_is_reset_while_websocket_is_off(transport: str, certs: Any) -> None:
    recorder = Recorder()
    async with serving(echo_app(recorder), **settings(transport, certs, websocket=False)) as server:
        client = await h2_connect(server, transport, certs)
        # RFC 8441 3: not advertised (absent, or 0) while the server will not take it.
        assert client.conn.remote_settings.get(ENABLE_CONNECT_PROTOCOL, 0) == 0
        scheme = "https" if transport == "tls" else "http"
        _, ws = await open_websocket(client, scheme)
        await ws.receive()
        resets = [
            e
            for e in client.events
            if isinstance(e, h2.events.StreamReset) and e.stream_id == ws.stream_id
        ]
        assert [reset.error_code for reset in resets] == [h2.errors.ErrorCodes.PROTOCOL_ERROR]
        # The connection survives the stream error.
        headers, body = await client.response(await client.request("/after"))
        assert headers[b":status"] == b"200" and body == b"http"
        await client.aclose()
    assert recorder.calls == 0


async def test_graceful_shutdown_closes_h2_websockets_with_1001(transport: str, certs: Any) -> None:
    recorder = Recorder()
    with anyio.fail_after(10):
        async with serving(echo_app(recorder), **settings(transport, certs)) as server:
            client = await h2_connect(server, transport, certs)
            scheme = "https" if transport == "tls" else "http"
            _, ws = await open_websocket(client, scheme)
            await ws.send(TextMessage(data="x"))
            assert isinstance(await ws.receive(), TextMessage)
            # The server shuts down while the client reads its Close.
            begin = anyio.current_time()
            async with anyio.create_task_group() as tasks:
                closes: list[Event | None] = []

                async def read_close() -> None:
                    event = await ws.receive()
                    closes.append(event)
                    if isinstance(event, CloseConnection):
                        await ws.send(event.response())
                    # And on, so the server's PING is answered, until it closes the connection.
                    await client.receive_until(lambda event: False)

                tasks.start_soon(read_close)
                tasks.start_soon(server.shutdown)
        await recorder.wait_done()
        await client.aclose()
    assert anyio.current_time() - begin < 2  # not the graceful timeout (3 s)
    assert isinstance(closes[0], CloseConnection) and closes[0].code == 1001
    assert any(isinstance(event, h2.events.ConnectionTerminated) for event in client.events)
    assert recorder.disconnect()["code"] == 1001


async def test_a_finished_websocket_frees_its_stream(transport: str, certs: Any) -> None:
    """The client answers the server's Close but never ends its half of the stream: the
    server resets it (NO_ERROR) rather than hold one of the connection's stream slots."""
    recorder = Recorder()
    config = settings(transport, certs, h2_max_concurrent_streams=1)
    async with serving(echo_app(recorder), **config) as server:
        client = await h2_connect(server, transport, certs)
        scheme = "https" if transport == "tls" else "http"
        _, ws = await open_websocket(client, scheme)
        await ws.send(TextMessage(data="close"))
        event = await ws.receive()
        assert isinstance(event, CloseConnection) and event.code == 4001
        await ws.send(event.response())
        assert await ws.receive() is None
        resets = [e for e in client.events if isinstance(e, h2.events.StreamReset)]
        assert [reset.error_code for reset in resets] == [h2.errors.ErrorCodes.NO_ERROR]
        # The only stream slot is free again.
        headers, body = await client.response(await client.request("/next"))
        assert headers[b":status"] == b"200" and body == b"http"
        await client.aclose()
