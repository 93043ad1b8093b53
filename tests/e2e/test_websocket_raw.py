"""WebSocket over HTTP/1.1 with hand-written bytes, on asyncio and trio: what a hostile or
broken client does, and what the server must do about it.

- Bad opening handshakes (RFC 6455 4.2.1, 4.4) are answered 400 or 426 by the server itself
  and never reach the application.
- The message size limit is enforced from a frame's header, before its payload is sent; a
  deflate bomb is stopped at the limit while inflating, with the server's memory unmoved.
- Liveness: a client that never answers pings is failed with 1011; one that answers stays.
"""

from __future__ import annotations

import threading
import time
import zlib
from typing import Any

import anyio
import psutil
import pytest
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from .support import host_port, read_until, read_until_closed, serving
from .wsclient import (
    BINARY,
    CLOSE,
    KEY,
    PING,
    TEXT,
    RawWebSocket,
    Recorder,
    connect,
    echo_app,
    frame,
    handshake,
    header,
    in_thread,
    ws_url,
)

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


# ---- bad handshakes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (handshake(key=None), 400),
        (handshake(key=b"c2hvcnQ="), 400),  # "short": 5 bytes, not 16
        (handshake(connection=None), 400),
        (handshake(connection=b"keep-alive"), 400),
        (handshake(extra=b"Content-Length: 5\r\n") + b"hello", 400),
        (handshake(version=b"8"), 426),
    ],
    ids=["no-key", "short-key", "no-connection", "connection-keep-alive", "body", "version-8"],
)
async def test_bad_handshake_is_refused_before_the_app(request_bytes: bytes, status: int) -> None:
    recorder = Recorder()
    async with serving(echo_app(recorder)) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(request_bytes)
            data = await read_until_closed(stream)
    head = data.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 %d " % status), data
    assert header(head, b"sec-websocket-accept") is None
    if status == 426:
        # RFC 6455 4.4: the answer names the version the server speaks.
        assert header(head, b"sec-websocket-version") == b"13"
    assert recorder.calls == 0


# ---- limits -----------------------------------------------------------------------------------


async def test_a_frame_header_over_the_limit_is_refused_before_its_payload() -> None:
    recorder = Recorder()
    async with serving(echo_app(recorder), websocket_max_message_size=1024) as server:
        ws = await RawWebSocket.connect(server)
        # A header announcing 1 MiB, and none of the payload: the answer must not wait for it.
        await ws.send_raw(frame(BINARY, length=MiB))
        event = await ws.receive(limit=2)
        assert isinstance(event, CloseConnection)
        assert event.code == 1009
        assert await ws.receive() is None  # and the server closes the connection (7.1.7)
        await recorder.wait_done()
        await ws.aclose()
    assert recorder.disconnect()["code"] == 1009


async def test_a_message_at_the_limit_passes_and_one_byte_more_does_not() -> None:
    recorder = Recorder()
    async with serving(echo_app(recorder), websocket_max_message_size=1024) as server:
        ws = await RawWebSocket.connect(server)
        # Two fragments adding up to exactly the limit.
        await ws.send_raw(frame(BINARY, b"a" * 1000, fin=False) + frame(0x0, b"b" * 24))
        event = await ws.receive()
        assert isinstance(event, BytesMessage)
        assert bytes(event.data) == b"a" * 1000 + b"b" * 24
        await ws.send_raw(frame(BINARY, b"a" * 1000, fin=False) + frame(0x0, b"b" * 25))
        event = await ws.receive()
        assert isinstance(event, CloseConnection) and event.code == 1009
        await recorder.wait_done()
        await ws.aclose()
    assert recorder.disconnect()["code"] == 1009


def deflate_bomb(size: int) -> bytes:
    """One permessage-deflate payload (RFC 7692 7.2.1) inflating to `size` zero bytes.

    Each MiB of zeros is compressed with a full flush, which leaves the compressor as new: the
    same ~1 KiB block serves for every MiB, and the bomb costs nothing to build."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert block.endswith(b"\x00\x00\xff\xff")
    return (block * (size // MiB))[:-4]  # 7.2.1: the last empty block's tail is not sent


class PeakMemory:
    """Samples this process's resident memory in a thread: the server under test runs here."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def test_a_deflate_bomb_is_stopped_at_the_limit() -> None:
    recorder = Recorder()
    bomb = deflate_bomb(256 * MiB)
    assert len(bomb) < MiB  # a small frame: only inflating it could cost memory
    async with serving(echo_app(recorder), websocket_max_message_size=MiB) as server:
        ws = await RawWebSocket.connect(
            server, extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n", deflate=True
        )
        with PeakMemory() as memory:
            await ws.send_raw(frame(BINARY, bomb, rsv1=True))
            event = await ws.receive()
        assert isinstance(event, CloseConnection)
        assert event.code == 1009
        await recorder.wait_done()
        await ws.aclose()
    assert recorder.disconnect()["code"] == 1009
    assert memory.peak - memory.start < 50 * MiB
    assert [m for m in recorder.received if m["type"] == "websocket.receive"] == []


async def test_compressed_messages_within_the_limit_pass() -> None:
    recorder = Recorder()
    async with serving(echo_app(recorder), websocket_max_message_size=MiB) as server:
        ws = await RawWebSocket.connect(
            server, extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n", deflate=True
        )
        await ws.send_raw(frame(BINARY, deflate_bomb(MiB), rsv1=True))  # exactly the limit
        event = await ws.receive()
        assert isinstance(event, BytesMessage)
        assert bytes(event.data) == bytes(MiB)
        assert ws.received_bytes < 64 * 1024  # the echo came back compressed too
        await ws.send(TextMessage(data="close"))
        event = await ws.receive()
        assert isinstance(event, CloseConnection) and event.code == 4001
        await ws.send(event.response())
        await recorder.wait_done()
        await ws.aclose()


# ---- liveness ---------------------------------------------------------------------------------

PINGS = {"websocket_ping_interval": 0.2, "websocket_ping_timeout": 0.3}


async def test_a_client_that_never_answers_pings_is_failed_with_1011() -> None:
    recorder = Recorder()
    async with serving(echo_app(recorder), **PINGS) as server:
        ws = await RawWebSocket.connect(server)
        with anyio.fail_after(3):
            first = await ws.receive()
            assert isinstance(first, Ping)
            begin = anyio.current_time()
            second = await ws.receive()  # no pong: the next thing is the end
            waited = anyio.current_time() - begin
        assert isinstance(second, CloseConnection)
        assert second.code == 1011
        assert 0.1 < waited < 2.0  # about the ping timeout (0.3 s): neither at once nor never
        await recorder.wait_done()
        await ws.aclose()
    assert recorder.disconnect()["code"] == 1011


async def test_a_client_that_answers_pings_stays_connected() -> None:
    recorder = Recorder()
    async with serving(echo_app(recorder), **PINGS) as server:
        ws = await RawWebSocket.connect(server)
        pings = 0
        with anyio.move_on_after(1.3):  # six intervals
            while True:
                event = await ws.receive()
                assert isinstance(event, Ping), event
                pings += 1
                await ws.send(event.response())
        assert pings >= 4
        await ws.send(TextMessage(data="still here"))
        while isinstance(event := await ws.receive(), Ping):
            await ws.send(event.response())
        assert isinstance(event, TextMessage) and event.data == "still here"
        await ws.aclose()
        await recorder.wait_done()
    assert recorder.disconnect()["code"] == 1006


async def test_the_websockets_client_answers_pings_and_stays_connected() -> None:
    recorder = Recorder()

    def client(url: str) -> str:
        with connect(url) as ws:
            time.sleep(1.0)  # five intervals, the library answering each ping
            ws.send("still here")
            return str(ws.recv(timeout=5))

    async with serving(echo_app(recorder), **PINGS) as server:
        url = ws_url(server)
        assert await in_thread(lambda: client(url)) == "still here"
        await recorder.wait_done()
    assert recorder.disconnect()["code"] == 1000


async def test_the_opening_handshake_answer_is_rfc6455() -> None:
    """The 101 carries the accept token RFC 6455 1.3 computes from the sample key."""
    recorder = Recorder()
    async with serving(echo_app(recorder)) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(handshake())
            head = (await read_until(stream, b"\r\n\r\n")).partition(b"\r\n\r\n")[0]
    assert KEY == b"dGhlIHNhbXBsZSBub25jZQ=="
    assert head.startswith(b"HTTP/1.1 101 ")
    assert header(head, b"sec-websocket-accept") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert (header(head, b"upgrade") or b"").lower() == b"websocket"


# ---- the handshake's edges --------------------------------------------------------------------


async def test_frames_sent_before_the_accept_are_delivered_after_it() -> None:
    recorder = Recorder()
    inner = echo_app(recorder)

    async def slow_to_accept(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await anyio.sleep(0.2)
        await inner(scope, receive, send)

    async with serving(slow_to_accept) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            # The handshake and two messages in one write, before any answer.
            await stream.send(handshake() + frame(TEXT, b"early") + frame(BINARY, b"bird"))
            data = await read_until(stream, b"\r\n\r\n")
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            ws = RawWebSocket(stream, head, rest)
            first, second = await ws.receive(), await ws.receive()
            assert isinstance(first, TextMessage) and first.data == "early"
            assert isinstance(second, BytesMessage) and bytes(second.data) == b"bird"


async def test_an_app_that_never_answers_the_handshake_is_timed_out() -> None:
    told: list[Any] = []

    async def undecided(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            told.append(await receive())  # neither accepts nor declines: waits to be told

    async with serving(undecided, websocket_handshake_timeout=0.3) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(handshake())
            data = await read_until(stream, b"\r\n\r\n", limit=3)
    assert data.startswith(b"HTTP/1.1 503 ")
    assert [message["type"] for message in told] == ["websocket.disconnect"]


async def test_a_slow_reader_gets_every_message_in_order() -> None:
    recorder = Recorder()
    inner = echo_app(recorder)
    release = anyio.Event()

    async def slow_reader(scope: Any, receive: Any, send: Any) -> None:
        async def late_receive() -> Any:
            message = await receive()
            if message["type"] == "websocket.receive":
                await release.wait()
            return message

        await inner(scope, late_receive if scope["type"] == "websocket" else receive, send)

    async with serving(slow_reader, websocket_max_queue=2) as server:
        ws = await RawWebSocket.connect(server)
        for i in range(50):
            await ws.send(BytesMessage(data=bytes([i]) * 10_000))
        await anyio.sleep(0.1)
        release.set()
        for i in range(50):
            event = await ws.receive()
            assert isinstance(event, BytesMessage), event
            assert bytes(event.data) == bytes([i]) * 10_000
        await ws.aclose()
        await recorder.wait_done()


# ---- protocol errors and control frames -------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(TEXT, b"\xff\xfe"), 1007),  # RFC 6455 8.1: text must be UTF-8
        (bytes([0x82, 0x02]) + b"no", 1002),  # 5.1: a client frame must be masked
        (frame(0x3), 1002),  # 5.2: a reserved opcode
        (frame(CLOSE, b"\x03\xe7"), 1002),  # 7.4.2: 999 is not a code one may send
        (frame(PING, b"p" * 126), 1002),  # 5.5: control frames carry at most 125 bytes
    ],
    ids=["bad-utf8", "unmasked", "reserved-opcode", "bad-close-code", "long-ping"],
)
async def test_protocol_errors_fail_the_websocket(data: bytes, code: int) -> None:
    recorder = Recorder()
    async with serving(echo_app(recorder)) as server:
        ws = await RawWebSocket.connect(server)
        await ws.send_raw(data)
        event = await ws.receive()
        assert isinstance(event, CloseConnection)
        assert event.code == code
        assert await ws.receive() is None
        await recorder.wait_done()
        await ws.aclose()
    assert recorder.disconnect()["code"] == code


async def test_a_client_ping_is_answered_and_a_bare_close_is_1005() -> None:
    recorder = Recorder()
    async with serving(echo_app(recorder)) as server:
        ws = await RawWebSocket.connect(server)
        await ws.send(Ping(payload=b"are you there"))
        event = await ws.receive()
        assert isinstance(event, Pong) and event.payload == b"are you there"
        await ws.send_raw(frame(CLOSE))  # no status code at all
        event = await ws.receive()
        assert isinstance(event, CloseConnection)
        assert await ws.receive() is None
        await recorder.wait_done()
        await ws.aclose()
    # RFC 6455 7.1.5: a Close without a code is reported as 1005.
    assert recorder.disconnect()["code"] == 1005


async def test_send_after_the_client_left_raises_an_oserror() -> None:
    errors: list[BaseException] = []
    gone = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except OSError as exc:  # ASGI 2.4: an IOError subclass
            errors.append(exc)
        gone.set()

    async with serving(app) as server:
        ws = await RawWebSocket.connect(server)
        await ws.aclose()
        with anyio.fail_after(5):
            await gone.wait()
    assert len(errors) == 1
