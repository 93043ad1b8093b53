"""WebSocket over HTTP/1.1 end to end with the `websockets` client, on asyncio and trio.

Messages both ways (text, binary, 1 MiB, fragmented), subprotocols, accept headers,
permessage-deflate on and off, the ASGI scope over cleartext and TLS, close codes and reasons
in both directions, denials (403 for a close before the accept, the app's own
websocket.http.response), ASGI misuse by the application (500 before the accept, 1011 or 1000
after it), and a graceful server shutdown (1001). The client runs in a worker thread, so the
server under test has the event loop to itself.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import websockets.exceptions

from .support import serving
from .wsclient import Recorder, connect, echo_app, in_thread, ws_url

pytestmark = pytest.mark.anyio


def closed_with(ws: Any) -> tuple[int, str]:
    """Wait for the server's Close; its code and reason."""
    with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
        ws.recv(timeout=5)
    assert info.value.rcvd is not None, "the connection ended without a Close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


# ---- messages ---------------------------------------------------------------------------------


async def test_text_binary_large_and_fragmented_messages_echo() -> None:
    recorder = Recorder()
    big = bytes(range(256)) * 4096  # 1 MiB

    def client(url: str) -> list[Any]:
        with connect(url, max_size=2 * len(big)) as ws:
            replies = []
            ws.send("héllo")
            replies.append(ws.recv(timeout=5))
            ws.send(b"\x00\x01\xff")
            replies.append(ws.recv(timeout=5))
            ws.send(big)
            replies.append(ws.recv(timeout=5))
            ws.send(["frag", "ment", "ed"])  # one text message in three frames
            replies.append(ws.recv(timeout=5))
            ws.send([b"ab", b"cd"])
            replies.append(ws.recv(timeout=5))
            return replies

    async with serving(echo_app(recorder)) as server:
        url = ws_url(server)
        replies = await in_thread(lambda: client(url))
        await recorder.wait_done()
    assert replies[0] == "héllo"
    assert replies[1] == b"\x00\x01\xff"
    assert replies[2] == big
    assert replies[3] == "fragmented"
    assert replies[4] == b"abcd"
    got = [m for m in recorder.received if m["type"] == "websocket.receive"]
    # Text arrives as `text` only and binary as `bytes` only, fragments joined into one message.
    assert got[0] == {"type": "websocket.receive", "text": "héllo"}
    assert got[1] == {"type": "websocket.receive", "bytes": b"\x00\x01\xff"}
    assert got[3] == {"type": "websocket.receive", "text": "fragmented"}
    assert len(got) == 5


async def test_subprotocol_and_accept_headers() -> None:
    recorder = Recorder()
    app = echo_app(
        recorder,
        pick_subprotocol=lambda offered: offered[1],
        accept_headers=[(b"x-accepted-by", b"test"), (b"set-cookie", b"a=1")],
    )

    def client(url: str) -> tuple[str | None, str | None, str | None, str]:
        with connect(url, subprotocols=["chat.v1", "chat.v2"]) as ws:
            headers = ws.response.headers
            ws.send("x")
            return (
                ws.subprotocol,
                headers.get("x-accepted-by"),
                headers.get("set-cookie"),
                ws.recv(timeout=5),
            )

    async with serving(app) as server:
        url = ws_url(server)
        subprotocol, accepted_by, cookie, reply = await in_thread(lambda: client(url))
        await recorder.wait_done()
    assert subprotocol == "chat.v2"
    assert accepted_by == "test"
    assert cookie == "a=1"
    assert reply == "x"
    assert recorder.scopes[0]["subprotocols"] == ["chat.v1", "chat.v2"]


async def test_permessage_deflate_is_negotiated_and_round_trips() -> None:
    recorder = Recorder()
    # Several messages, so that both sides' compression contexts carry over between them.
    messages = ["compressible " * 10_000, b"\x00\x01" * 50_000, "compressible " * 10_000, "x"]

    def client(url: str) -> tuple[str | None, list[Any]]:
        with connect(url, compression="deflate") as ws:
            replies = []
            for message in messages:
                ws.send(message)
                replies.append(ws.recv(timeout=5))
            return ws.response.headers.get("sec-websocket-extensions"), replies

    async with serving(echo_app(recorder)) as server:
        url = ws_url(server)
        extensions, replies = await in_thread(lambda: client(url))
        await recorder.wait_done()
    assert extensions is not None and extensions.startswith("permessage-deflate")
    assert replies == messages
    offered = dict(recorder.scopes[0]["headers"])[b"sec-websocket-extensions"]
    assert b"permessage-deflate" in offered


async def test_permessage_deflate_is_not_negotiated_when_switched_off() -> None:
    recorder = Recorder()

    def client(url: str) -> tuple[str | None, str]:
        with connect(url, compression="deflate") as ws:
            ws.send("plain " * 1000)
            return ws.response.headers.get("sec-websocket-extensions"), ws.recv(timeout=5)

    async with serving(echo_app(recorder), ws_per_message_deflate=False) as server:
        url = ws_url(server)
        extensions, reply = await in_thread(lambda: client(url))
        await recorder.wait_done()
    assert extensions is None
    assert reply == "plain " * 1000


# ---- the scope --------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_scope(tls: bool, certs: Any) -> None:
    recorder = Recorder()
    settings = {"certfile": certs.cert_path} if tls else {}
    options: dict[str, Any] = {"additional_headers": {"X-Custom": "yes"}}
    if tls:
        options["ssl"] = certs.client_context(alpn=["http/1.1"])

    def client(url: str) -> tuple[tuple[str, int], tuple[str, int]]:
        with connect(url, subprotocols=["one", "two"], **options) as ws:
            ws.send("x")
            ws.recv(timeout=5)
            return ws.local_address[:2], ws.remote_address[:2]

    async with serving(echo_app(recorder), **settings) as server:
        url = ws_url(server, "/chat%20room?a=1&b=%20")
        local, remote = await in_thread(lambda: client(url))
        await recorder.wait_done()
    scope = recorder.scopes[0]
    assert scope["type"] == "websocket"
    assert scope["scheme"] == ("wss" if tls else "ws")
    assert scope["http_version"] == "1.1"
    assert scope["path"] == "/chat room"
    assert scope["raw_path"] == b"/chat%20room"
    assert scope["query_string"] == b"a=1&b=%20"
    assert scope["root_path"] == ""
    assert scope["subprotocols"] == ["one", "two"]
    assert "method" not in scope
    headers = scope["headers"]
    assert all(name == name.lower() and isinstance(value, bytes) for name, value in headers)
    assert (b"x-custom", b"yes") in headers
    assert (b"upgrade", b"websocket") in headers
    assert tuple(scope["client"]) == local
    assert tuple(scope["server"]) == remote
    assert "websocket.http.response" in scope["extensions"]
    assert ("tls" in scope["extensions"]) is tls
    assert recorder.received[0] == {"type": "websocket.connect"}


# ---- closing ----------------------------------------------------------------------------------


async def test_client_close_code_and_reason_reach_the_app() -> None:
    recorder = Recorder()

    def client(url: str) -> None:
        with connect(url) as ws:
            ws.send("x")
            ws.recv(timeout=5)
            ws.close(4000, "bye")

    async with serving(echo_app(recorder)) as server:
        url = ws_url(server)
        await in_thread(lambda: client(url))
        await recorder.wait_done()
    assert recorder.disconnect() == {"type": "websocket.disconnect", "code": 4000, "reason": "bye"}


async def test_app_close_code_and_reason_reach_the_client() -> None:
    recorder = Recorder()

    def client(url: str) -> tuple[int, str]:
        with connect(url) as ws:
            ws.send("close")
            return closed_with(ws)

    async with serving(echo_app(recorder)) as server:
        url = ws_url(server)
        assert await in_thread(lambda: client(url)) == (4001, "done")
        await recorder.wait_done()
    # The client's answering Close echoes the code: that ends the WebSocket for the app too.
    assert recorder.disconnect()["code"] == 4001


# ---- denials ----------------------------------------------------------------------------------


def refused(url: str) -> Any:
    """Connect and expect the handshake to be refused; the HTTP response the client got."""
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        connect(url)
    return info.value.response


async def test_close_before_accept_is_a_403() -> None:
    calls = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        calls.append(await receive())
        await send({"type": "websocket.close", "code": 1008})

    async with serving(app) as server:
        url = ws_url(server)
        response = await in_thread(lambda: refused(url))
    assert response.status_code == 403
    assert calls == [{"type": "websocket.connect"}]


async def test_websocket_http_response_denial() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"www-authenticate", b"Bearer"), (b"content-type", b"text/plain")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"token"})

    async with serving(app) as server:
        url = ws_url(server)
        response = await in_thread(lambda: refused(url))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.body == b"no token"


# ---- ASGI misuse ------------------------------------------------------------------------------


async def test_send_before_accept_is_a_500_and_is_logged(tmp_path: Any) -> None:
    log = tmp_path / "error.log"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.send", "text": "too early"})

    async with serving(app, error_logfile=str(log)) as server:
        url = ws_url(server)
        response = await in_thread(lambda: refused(url))
    assert response.status_code == 500
    text = log.read_text()
    assert "Exception in ASGI application" in text
    assert "websocket.send is only valid once the WebSocket is accepted" in text


def misbehaving(after_accept: Any) -> Any:
    """An app that accepts, then does `after_accept(send)`."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        await after_accept(send)

    return app


async def accept_twice(send: Any) -> None:
    await send({"type": "websocket.accept"})


async def send_bytes_and_text(send: Any) -> None:
    await send({"type": "websocket.send", "bytes": b"b", "text": "t"})


async def just_return(send: Any) -> None:
    return


async def raise_error(send: Any) -> None:
    raise RuntimeError("application bug")


@pytest.mark.parametrize(
    ("after_accept", "code"),
    [(accept_twice, 1011), (send_bytes_and_text, 1011), (just_return, 1000), (raise_error, 1011)],
    ids=["accept-twice", "bytes-and-text", "return-without-close", "raise"],
)
async def test_misuse_after_accept_closes_the_websocket(after_accept: Any, code: int) -> None:
    def client(url: str) -> tuple[int, str]:
        with connect(url) as ws:
            return closed_with(ws)

    async with serving(misbehaving(after_accept)) as server:
        url = ws_url(server)
        received, _ = await in_thread(lambda: client(url))
    assert received == code


# ---- shutdown ---------------------------------------------------------------------------------


async def test_graceful_shutdown_closes_with_1001() -> None:
    recorder = Recorder()
    result: list[tuple[int, str]] = []

    def client(url: str) -> None:
        with connect(url) as ws:
            ws.send("x")
            ws.recv(timeout=5)
            result.append(closed_with(ws))

    with anyio.fail_after(10):
        # Leaving `serving` (before the task group) is the graceful shutdown.
        async with anyio.create_task_group() as tasks, serving(echo_app(recorder)) as server:
            url = ws_url(server)
            tasks.start_soon(in_thread, lambda: client(url))
            await recorder.accepted.wait()
            while len(recorder.received) < 2:  # the "x" went through
                await anyio.sleep(0.01)
        await recorder.wait_done()
    assert result and result[0][0] == 1001
    assert recorder.disconnect()["code"] == 1001
