"""The ASGI `websocket` bridge (app/websocket.py), driven by a fake protocol and a fake runtime.

A fake protocol core reports a WEBSOCKET stream and records the commands the bridge sends, so
these tests see exactly what goes to the HTTP layer (the handshake answer, frames as SendData,
acknowledgements) whatever HTTP version would carry it. The peer's frames are built, and the
bridge's parsed, by wsproto's client-side frame layer. Timers run on the fake clock.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage

from multicorn.app.logs import Loggers
from multicorn.protocol.events import (
    AcknowledgeData,
    Command,
    DataReceived,
    RequestReceived,
    ResetStream,
    SendData,
    SendResponse,
    StreamEnded,
    StreamKind,
)
from multicorn.protocol.http2 import HTTP2Limits
from multicorn.protocol.http11 import HTTP11Limits
from multicorn.protocol.negotiate import ProtocolLimits
from multicorn.protocol.websocket import WebSocketLimits

from .fakes import TEST_LOGGER, FakeProtocol, FakeWaiter, make_handler

HEADERS = [
    (b"host", b"example.com"),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-protocol", b"chat, v2"),
]


def handshake(
    stream_id: int = 1, headers: list[tuple[bytes, bytes]] | None = None
) -> RequestReceived:
    return RequestReceived(
        stream_id=stream_id,
        method=b"GET",
        target=b"/ws?room=1",
        http_version="1.1",
        headers=HEADERS if headers is None else headers,
        kind=StreamKind.WEBSOCKET,
    )


class Peer:
    """The client end: wsproto frames in both directions through the fake protocol."""

    def __init__(self, app: Any, **limits: Any) -> None:
        settings: dict[str, Any] = {"ping_interval": None, "ping_timeout": None}
        settings.update(limits)
        self.protocol = FakeProtocol()
        self.handler, self.runtime, self.transport = make_handler(
            self.protocol,
            app,
            protocol_limits=ProtocolLimits(
                http11=HTTP11Limits(), http2=HTTP2Limits(), websocket=WebSocketLimits(**settings)
            ),
        )
        self.client = Connection(ConnectionType.CLIENT)
        self._seen = 0

    def open(self, event: RequestReceived | None = None) -> None:
        self.protocol.feed(event or handshake())
        self.handler.data_received(b"")
        self.runtime.run()

    def send(self, *events: Event) -> None:
        data = b"".join(self.client.send(event) for event in events)
        self.raw(data)

    def raw(self, data: bytes) -> None:
        self.protocol.feed(DataReceived(stream_id=1, data=data))
        self.handler.data_received(b"")
        self.runtime.run()

    def end(self) -> None:
        self.protocol.feed(StreamEnded(stream_id=1))
        self.handler.data_received(b"")
        self.runtime.run()

    def new_commands(self) -> list[Command]:
        commands = self.protocol.commands[self._seen :]
        self._seen = len(self.protocol.commands)
        return commands

    def frames(self, commands: list[Command]) -> list[Event]:
        data = b"".join(c.data for c in commands if isinstance(c, SendData))
        self.client.receive_data(data)
        return list(self.client.events())


def echo_app(log: list[Any]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.append(scope)
        log.append(await receive())
        await send({"type": "websocket.accept", "subprotocol": "v2", "headers": [(b"x-a", b"1")]})
        while True:
            message = await receive()
            log.append(message)
            if message["type"] == "websocket.disconnect":
                return
            await send({**message, "type": "websocket.send"})

    return app


def test_accept_echo_and_peer_close() -> None:
    log: list[Any] = []
    peer = Peer(echo_app(log))
    peer.open()
    scope = log[0]
    assert scope["type"] == "websocket" and scope["scheme"] == "ws"
    assert (scope["path"], scope["query_string"]) == ("/ws", b"room=1")
    assert scope["subprotocols"] == ["chat", "v2"]
    assert "websocket.http.response" in scope["extensions"]
    assert log[1] == {"type": "websocket.connect"}
    [accept] = peer.new_commands()
    assert isinstance(accept, SendResponse) and accept.status == 200
    assert (b"sec-websocket-protocol", b"v2") in accept.headers
    assert (b"x-a", b"1") in accept.headers

    peer.send(TextMessage(data="hi"), BytesMessage(data=b"\x00"))
    assert log[2:] == [
        {"type": "websocket.receive", "text": "hi"},
        {"type": "websocket.receive", "bytes": b"\x00"},
    ]
    commands = peer.new_commands()
    assert any(isinstance(c, AcknowledgeData) for c in commands)
    [text, binary] = peer.frames(commands)
    assert isinstance(text, TextMessage) and text.data == "hi"
    assert isinstance(binary, BytesMessage) and binary.data == b"\x00"

    peer.send(CloseConnection(code=4000, reason="bye"))
    assert log[-1] == {"type": "websocket.disconnect", "code": 4000, "reason": "bye"}
    commands = peer.new_commands()
    [echo] = peer.frames(commands)
    assert isinstance(echo, CloseConnection) and echo.code == 4000
    # The WebSocket is over: the stream ends with the echo, and the task is done.
    last = [c for c in commands if isinstance(c, SendData)][-1]
    assert last.end_stream
    assert all(task.done for task in peer.runtime.tasks) and not peer.runtime.crashed


def test_bytes_are_acknowledged_only_while_the_queue_has_room() -> None:
    received: list[Any] = []
    gate = FakeWaiter()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await gate.wait()  # a slow application: it reads nothing until the test says so
        while True:
            message = await receive()
            received.append(message)
            if message["type"] == "websocket.disconnect":
                return

    peer = Peer(app, max_queued_messages=2)
    peer.open()
    peer.new_commands()
    sizes = []
    for i in range(3):
        data = peer.client.send(TextMessage(data=f"m{i}"))
        sizes.append(len(data))
        peer.raw(data)
    acks = [c for c in peer.new_commands() if isinstance(c, AcknowledgeData)]
    # Two messages fill the queue: the third one's bytes stay unacknowledged, so the HTTP
    # layer stops reading (HTTP/1.1) or granting window (HTTP/2).
    assert [a.amount for a in acks] == sizes[:1]
    gate.set()
    peer.runtime.run()
    assert [m["text"] for m in received] == ["m0", "m1", "m2"]
    acks = [c for c in peer.new_commands() if isinstance(c, AcknowledgeData)]
    assert sum(a.amount for a in acks) == sizes[1] + sizes[2]


@pytest.mark.parametrize(
    ("misuse", "reason"),
    [
        ([{"type": "websocket.accept"}], "accept twice"),
        ([{"type": "websocket.send", "bytes": b"a", "text": "a"}], "both bytes and text"),
        ([{"type": "websocket.send"}], "neither bytes nor text"),
        ([{"type": "http.response.start", "status": 200}], "an http message"),
    ],
)
def test_misuse_after_accept_closes_with_1011(
    misuse: list[dict[str, Any]], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=TEST_LOGGER)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        for message in misuse:
            await send(message)

    peer = Peer(app)
    peer.open()
    commands = peer.new_commands()
    assert isinstance(commands[0], SendResponse) and commands[0].status == 200
    [close] = peer.frames(commands[1:])
    assert isinstance(close, CloseConnection) and close.code == 1011, reason
    assert any("Exception in ASGI application" in r.getMessage() for r in caplog.records)
    # Still a closing handshake: the peer answers, then the stream ends.
    peer.send(close.response())
    assert [c for c in peer.new_commands() if isinstance(c, SendData)][-1].end_stream
    assert all(task.done for task in peer.runtime.tasks)


def test_send_before_accept_is_a_500() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.send", "text": "too soon"})

    peer = Peer(app)
    peer.open()
    response, body = peer.new_commands()
    assert isinstance(response, SendResponse) and response.status == 500
    assert isinstance(body, SendData) and body.end_stream


def test_close_before_accept_is_a_403() -> None:
    log: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1000})
        log.append(await receive())

    peer = Peer(app)
    peer.open()
    response, body = peer.new_commands()
    assert isinstance(response, SendResponse) and response.status == 403
    assert isinstance(body, SendData) and body.end_stream
    assert log == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


def test_denial_response() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"no", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"pe"})

    peer = Peer(app)
    peer.open()
    response, first, second = peer.new_commands()
    assert isinstance(response, SendResponse) and response.status == 401
    assert (b"www-authenticate", b"Bearer") in response.headers
    assert first == SendData(stream_id=1, data=b"no")
    assert second == SendData(stream_id=1, data=b"pe", end_stream=True)
    assert not peer.runtime.crashed


def test_a_denial_with_a_2xx_status_is_refused() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 200, "headers": []})

    peer = Peer(app)
    peer.open()
    response, _ = peer.new_commands()
    assert isinstance(response, SendResponse) and response.status == 500


def test_a_denial_cut_short_by_a_fault_resets_the_stream() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 404, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"a", "more_body": True})
        raise RuntimeError("boom")

    peer = Peer(app)
    peer.open()
    commands = peer.new_commands()
    assert commands[-1] == ResetStream(stream_id=1)


def test_returning_without_a_close_closes_with_1000_and_waits_for_the_answer() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})

    peer = Peer(app, handshake_timeout=5.0)
    peer.open()
    commands = peer.new_commands()
    [close] = peer.frames(commands[1:])
    assert isinstance(close, CloseConnection) and close.code == 1000
    assert not all(task.done for task in peer.runtime.tasks)  # the handshake is under way
    peer.send(close.response())
    assert [c for c in peer.new_commands() if isinstance(c, SendData)][-1].end_stream
    assert all(task.done for task in peer.runtime.tasks)


def test_a_close_never_answered_ends_after_the_handshake_timeout() -> None:
    log: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001, "reason": "done"})
        log.append(await receive())

    peer = Peer(app, handshake_timeout=5.0)
    peer.open()
    peer.new_commands()
    peer.runtime.advance(4.9)
    assert not log
    peer.runtime.advance(0.2)
    assert log == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]
    assert peer.new_commands()[-1] == SendData(stream_id=1, data=b"", end_stream=True)


def test_ping_timeout_closes_1011_and_tells_the_app() -> None:
    log: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        log.append(await receive())

    peer = Peer(app, ping_interval=1.0, ping_timeout=2.0)
    peer.open()
    peer.new_commands()
    peer.runtime.advance(1.0)
    [ping] = peer.frames(peer.new_commands())
    assert isinstance(ping, Ping)
    peer.runtime.advance(2.0)
    assert log == [{"type": "websocket.disconnect", "code": 1011, "reason": "ping timeout"}]
    commands = peer.new_commands()
    [close] = peer.frames(commands)
    assert isinstance(close, CloseConnection) and close.code == 1011
    assert isinstance(commands[-1], SendData) and commands[-1].end_stream


def test_a_handshake_the_app_never_answers_gets_503() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await receive()  # waits for ever: never accepts

    peer = Peer(app, handshake_timeout=3.0)
    peer.open()
    assert peer.new_commands() == []
    peer.runtime.advance(3.0)
    response, body = peer.new_commands()
    assert isinstance(response, SendResponse) and response.status == 503
    assert isinstance(body, SendData) and body.end_stream


def test_shutdown_closes_with_1001() -> None:
    log: list[Any] = []
    peer = Peer(echo_app(log))
    peer.open()
    peer.new_commands()
    peer.handler.shutdown()
    peer.runtime.run()
    [close] = peer.frames(peer.new_commands())
    assert isinstance(close, CloseConnection) and close.code == 1001
    peer.send(close.response())
    assert log[-1] == {
        "type": "websocket.disconnect",
        "code": 1001,
        "reason": "server shutting down",
    }


def test_a_wrong_version_gets_426_without_the_app() -> None:
    called: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    peer = Peer(app)
    peer.open(handshake(headers=[(b"host", b"a"), (b"sec-websocket-version", b"8")]))
    response, _ = peer.new_commands()
    assert isinstance(response, SendResponse) and response.status == 426
    assert (b"sec-websocket-version", b"13") in response.headers
    assert called == []


def test_peer_hanging_up_is_1006_and_send_raises() -> None:
    log: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        log.append(await receive())
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except OSError as exc:
            log.append(type(exc).__name__)

    peer = Peer(app)
    peer.open()
    peer.end()
    assert log == [
        {"type": "websocket.disconnect", "code": 1006, "reason": ""},
        "ClientDisconnected",
    ]


def test_bytes_before_the_accept_are_read_after_it() -> None:
    log: list[Any] = []
    peer = Peer(echo_app(log))
    peer.protocol.feed(
        handshake(), DataReceived(stream_id=1, data=peer.client.send(TextMessage(data="early")))
    )
    peer.handler.data_received(b"")
    peer.runtime.run()
    assert {"type": "websocket.receive", "text": "early"} in log


def test_access_log_line_names_the_handshake_answer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tests.app.access")
    log: list[Any] = []
    peer = Peer(echo_app(log))
    peer.handler.context.loggers = Loggers(
        error=logging.getLogger(TEST_LOGGER),
        access=logging.getLogger("tests.app.access"),
        access_format='"%(r)s" %(s)s',
    )
    peer.open()
    peer.send(CloseConnection(code=1000))
    [line] = [r.getMessage() for r in caplog.records if r.name == "tests.app.access"]
    assert line == '"GET /ws?room=1 HTTP/1.1" 101'


def test_a_websocket_accepted_during_shutdown_is_closed_with_1001() -> None:
    gate = FakeWaiter()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await gate.wait()
        await send({"type": "websocket.accept"})
        await receive()

    peer = Peer(app)
    peer.open()
    peer.handler.shutdown()
    peer.runtime.run()
    assert [type(c).__name__ for c in peer.new_commands()] == ["CloseConnection"]
    gate.set()
    peer.runtime.run()
    commands = peer.new_commands()
    assert isinstance(commands[0], SendResponse) and commands[0].status == 200
    [close] = peer.frames(commands[1:])
    assert isinstance(close, CloseConnection) and close.code == 1001
