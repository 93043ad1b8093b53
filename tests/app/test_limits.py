"""The body-size and concurrency limits, decided in the app layer once for every protocol: driven
by a fake protocol core (which records the commands it is sent) and the fake backend."""

from __future__ import annotations

from typing import Any

from multicorn.app.connection import ConnectionHandler
from multicorn.app.context import AppSettings, ConnectionInfo
from multicorn.app.registry import ConnectionRegistry
from multicorn.protocol.events import (
    AcknowledgeData,
    CloseConnection,
    DataReceived,
    RequestReceived,
    ResetStream,
    SendData,
    SendResponse,
    StreamEnded,
    StreamKind,
)

from .fakes import FakeProtocol, FakeRuntime, FakeTransport, FakeWaiter, make_context, make_handler

LIMIT = 1000


def post(stream_id: int = 1, length: int | None = None, **kw: Any) -> RequestReceived:
    headers = [(b"host", b"example.com")]
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    return RequestReceived(
        stream_id=stream_id,
        method=b"POST",
        target=kw.pop("target", b"/upload"),
        http_version="2",
        headers=headers,
        **kw,
    )


class Recorder:
    """Reads the body, recording each message, then answers 200; `hold` makes it wait for
    `release` first (after it has started), `head_first` sends its response head before
    reading, `partial` sends a first body chunk too."""

    def __init__(self, *, hold: bool = False, head_first: bool = False, partial: bool = False):
        self.calls = 0
        self.messages: list[dict[str, Any]] = []
        self.hold = hold
        self.head_first = head_first
        self.partial = partial
        self.release = FakeWaiter()
        self.send_error: BaseException | None = None

    @property
    def body(self) -> int:
        return sum(len(m.get("body", b"")) for m in self.messages)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        if self.hold:
            await self.release.wait()
        if self.head_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            if self.partial:
                await send({"type": "http.response.body", "body": b"so far", "more_body": True})
        while True:
            message = await receive()
            self.messages.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                break
        try:
            if not self.head_first:
                await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        except Exception as exc:
            self.send_error = exc


def limited(app: Any, *, multiplexed: bool = True, **settings: Any) -> tuple[Any, ...]:
    protocol = FakeProtocol()
    protocol.multiplexed = multiplexed
    settings.setdefault("max_request_body_size", LIMIT)
    handler, runtime, _ = make_handler(protocol, app, settings=AppSettings(**settings))
    return protocol, handler, runtime


def feed(protocol: FakeProtocol, handler: ConnectionHandler, *events: Any) -> None:
    protocol.feed(*events)
    handler.data_received(b"")


def statuses(protocol: FakeProtocol, stream_id: int = 1) -> list[int]:
    return [
        c.status
        for c in protocol.commands
        if isinstance(c, SendResponse) and c.stream_id == stream_id
    ]


def acknowledged(protocol: FakeProtocol) -> int:
    return sum(c.amount for c in protocol.commands if isinstance(c, AcknowledgeData))


# ---- max_request_body_size ----------------------------------------------------------------


def test_an_announced_body_over_the_cap_is_413_without_calling_the_app() -> None:
    app = Recorder()
    protocol, handler, runtime = limited(app)
    feed(protocol, handler, post(length=LIMIT + 1))
    runtime.run()
    assert app.calls == 0
    assert statuses(protocol) == [413]
    last = protocol.commands[-1]
    assert isinstance(last, SendData) and last.end_stream
    # Multiplexed: only the stream ends, never the connection.
    assert not any(isinstance(c, CloseConnection) for c in protocol.commands)
    assert not handler._streams


def test_on_http11_the_413_closes_the_connection() -> None:
    protocol, handler, runtime = limited(Recorder(), multiplexed=False)
    feed(protocol, handler, post(length=LIMIT + 1))
    runtime.run()
    kinds = [type(c) for c in protocol.commands]
    # CloseConnection first, so that the 413's head says `connection: close`.
    assert kinds[:3] == [CloseConnection, SendResponse, SendData]


def test_a_body_at_the_cap_is_served() -> None:
    app = Recorder()
    protocol, handler, runtime = limited(app)
    feed(protocol, handler, post(length=LIMIT), DataReceived(stream_id=1, data=b"x" * LIMIT))
    feed(protocol, handler, StreamEnded(stream_id=1))
    runtime.run()
    assert app.body == LIMIT
    assert statuses(protocol) == [200]


def test_a_streamed_body_crossing_the_cap_gets_413_and_the_app_a_disconnect() -> None:
    app = Recorder()
    protocol, handler, runtime = limited(app)
    feed(protocol, handler, post(), DataReceived(stream_id=1, data=b"a" * 600))
    runtime.run()
    assert app.body == 600  # read, and acknowledged as read
    assert acknowledged(protocol) == 600
    feed(protocol, handler, DataReceived(stream_id=1, data=b"b" * 600))
    runtime.run()
    assert statuses(protocol) == [413]
    assert app.body == 600  # never more than the cap
    assert app.messages[-1] == {"type": "http.disconnect"}
    assert acknowledged(protocol) == 1200  # the dropped piece's credit came back too
    # The app's answer comes too late: its send() raises, as after a hang-up.
    assert app.send_error is not None


def test_unread_body_is_dropped_and_acknowledged_and_the_app_not_called() -> None:
    app = Recorder()
    protocol, handler, runtime = limited(app)
    # Both pieces arrive before the app's task runs: over the cap before it starts.
    feed(
        protocol,
        handler,
        post(),
        DataReceived(stream_id=1, data=b"a" * 600),
        DataReceived(stream_id=1, data=b"b" * 600),
        StreamEnded(stream_id=1),
    )
    runtime.run()
    assert app.calls == 0
    assert statuses(protocol) == [413]
    assert acknowledged(protocol) == 1200


def test_body_after_the_413_is_acknowledged_and_dropped() -> None:
    app = Recorder(hold=True)
    protocol, handler, runtime = limited(app)
    feed(protocol, handler, post())
    runtime.run()  # the app runs, and waits before reading
    feed(protocol, handler, DataReceived(stream_id=1, data=b"a" * 1500))
    runtime.run()
    commands = len(protocol.commands)
    feed(protocol, handler, DataReceived(stream_id=1, data=b"c" * 500), StreamEnded(stream_id=1))
    app.release.set()
    runtime.run()
    assert protocol.commands[commands:] == [AcknowledgeData(stream_id=1, amount=500)]
    assert app.messages == [{"type": "http.disconnect"}]
    assert statuses(protocol) == [413]


def test_a_head_waiting_for_its_body_is_replaced_by_the_413() -> None:
    app = Recorder(head_first=True)
    protocol, handler, runtime = limited(app)
    feed(protocol, handler, post())
    runtime.run()  # the app passed its head to send(); it waits for the first body chunk
    assert statuses(protocol) == []
    feed(protocol, handler, DataReceived(stream_id=1, data=b"x" * 1500))
    runtime.run()
    assert statuses(protocol) == [413]


def test_once_the_response_head_is_out_the_stream_is_reset() -> None:
    app = Recorder(head_first=True, partial=True)
    protocol, handler, runtime = limited(app)
    feed(protocol, handler, post())
    runtime.run()
    assert statuses(protocol) == [200]
    feed(protocol, handler, DataReceived(stream_id=1, data=b"x" * 1500))
    runtime.run()
    assert ResetStream(stream_id=1) in protocol.commands
    assert statuses(protocol) == [200]
    assert app.messages == [{"type": "http.disconnect"}]


def test_no_cap_by_default() -> None:
    app = Recorder()
    protocol, handler, runtime = limited(app, max_request_body_size=0)
    big = 10 * 1024 * 1024
    feed(protocol, handler, post(length=big), DataReceived(stream_id=1, data=b"x" * big))
    feed(protocol, handler, StreamEnded(stream_id=1))
    runtime.run()
    assert app.body == big
    assert statuses(protocol) == [200]


# ---- limit_concurrency --------------------------------------------------------------------


def get(stream_id: int, kind: StreamKind = StreamKind.REQUEST) -> RequestReceived:
    return RequestReceived(
        stream_id=stream_id,
        method=b"GET",
        target=b"/",
        http_version="2",
        headers=[(b"host", b"example.com")],
        kind=kind,
    )


class Held:
    """Answers 200 once released; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.releases: dict[int, FakeWaiter] = {}

    def release(self, n: int) -> None:
        self.releases.setdefault(n, FakeWaiter()).set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        n = self.calls
        await self.releases.setdefault(n, FakeWaiter()).wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def handlers(app: Any, count: int, limit: int) -> tuple[list[Any], FakeRuntime, ConnectionRegistry]:
    """`count` connections of one server, sharing its registry (where streams are counted)."""
    runtime = FakeRuntime()
    registry = ConnectionRegistry(runtime)
    context = make_context(app, settings=AppSettings(limit_concurrency=limit))
    made = []
    for i in range(count):
        protocol = FakeProtocol()
        handler = ConnectionHandler(
            protocol=protocol,
            transport=FakeTransport(),
            runtime=runtime,
            context=context,
            info=ConnectionInfo(client=("192.0.2.1", 40000 + i), server=("127.0.0.1", 8000)),
            registry=registry,
        )
        made.append((protocol, handler))
    return made, runtime, registry


def test_past_the_limit_a_stream_gets_503_with_retry_after_until_one_ends() -> None:
    app = Held()
    [(protocol, handler)], runtime, registry = handlers(app, 1, limit=2)
    feed(protocol, handler, get(1), get(3))
    runtime.run()
    assert registry.streams == 2
    feed(protocol, handler, get(5))
    runtime.run()
    assert app.calls == 2  # the third was never handed to the app
    assert statuses(protocol, 5) == [503]
    response = next(c for c in protocol.commands if isinstance(c, SendResponse))
    assert (b"retry-after", b"1") in response.headers
    app.release(1)
    runtime.run()
    assert statuses(protocol, 1) == [200]
    assert registry.streams == 1
    feed(protocol, handler, get(7))
    runtime.run()
    assert app.calls == 3
    assert registry.streams == 2
    app.release(2)
    app.release(3)
    runtime.run()
    assert registry.streams == 0


def test_the_count_is_server_wide() -> None:
    app = Held()
    [(p1, h1), (p2, h2)], runtime, registry = handlers(app, 2, limit=2)
    feed(p1, h1, get(1))
    feed(p2, h2, get(1))
    runtime.run()
    feed(p2, h2, get(3))
    feed(p1, h1, get(3))
    runtime.run()
    assert statuses(p1, 3) == statuses(p2, 3) == [503]
    assert registry.streams == 2


def test_a_websocket_handshake_past_the_limit_is_denied_503() -> None:
    app = Held()
    [(protocol, handler)], runtime, _ = handlers(app, 1, limit=1)
    feed(protocol, handler, get(1))
    feed(protocol, handler, get(3, StreamKind.WEBSOCKET))
    runtime.run()
    assert statuses(protocol, 3) == [503]
    assert app.calls == 1


def test_off_by_default_and_then_nothing_is_counted() -> None:
    app = Held()
    [(protocol, handler)], runtime, registry = handlers(app, 1, limit=0)
    feed(protocol, handler, *(get(n) for n in range(1, 200, 2)))
    runtime.run()
    assert app.calls == 100
    assert registry.streams == 0


def test_a_stream_whose_bridge_fails_to_build_holds_no_slot() -> None:
    def broken(conn: Any, event: Any) -> Any:
        raise RuntimeError("bridge failed")

    runtime = FakeRuntime()
    registry = ConnectionRegistry(runtime)
    protocol = FakeProtocol()
    context = make_context(
        Held(),
        settings=AppSettings(limit_concurrency=1),
        bridges={StreamKind.REQUEST: broken},
    )
    handler = ConnectionHandler(
        protocol=protocol,
        transport=FakeTransport(),
        runtime=runtime,
        context=context,
        info=ConnectionInfo(client=None, server=None),
        registry=registry,
    )
    feed(protocol, handler, get(1), get(3))
    runtime.run()
    assert statuses(protocol, 1) == statuses(protocol, 3) == [500]
    assert registry.streams == 0
